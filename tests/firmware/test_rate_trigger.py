"""The local rate trigger of a pre-alarm level ("fall", "fall_s"; app/filters.py): what it fires on, what it
hands back for the gateway's rate rule, and what the config check refuses. The virtual-device bench test
(hil_tests/test_e2e.py, the burst) runs it on MicroPython against a real gateway."""

from __future__ import annotations

import sys

import pytest

from lifeline import upy

sys.path.insert(0, str(upy.FIRMWARE / "lib"))
from app.checks import check_level
from app.filters import Level

WATER = {"below": 250000, "hyst": 20000, "fall": 20000, "fall_s": 4}


def falls(level: Level, readings: list[tuple[int, float]]) -> list[tuple[int, float] | None]:
    return [level.fell(v, ms) for ms, v in readings]


def test_a_fall_fires_once_with_the_highest_reading_of_the_window() -> None:
    lv = Level(WATER)
    got = falls(lv, [(0, 320000), (2000, 321000), (4000, 319000), (6000, 300000), (6500, 286000)])
    assert got == [None, None, None, (2000, 321000), None]  # once: the pack already carries the pre-fall reading
    assert lv.falling and not lv.active


def test_a_fall_slower_than_the_window_does_not_fire() -> None:
    lv = Level(WATER)
    assert falls(lv, [(i * 2000, 320000 - i * 9000) for i in range(6)]) == [None] * 6  # 18 kPa per 4 s
    assert not lv.falling


def test_the_fall_ends_when_the_window_holds_no_higher_reading_then_fires_again() -> None:
    lv = Level(WATER)
    falls(lv, [(0, 320000), (2000, 290000)])
    assert lv.falling
    assert falls(lv, [(8000, 290000), (10000, 290000)]) == [None, None]
    assert not lv.falling
    assert falls(lv, [(12000, 260000)]) == [(10000, 290000)]


def test_a_long_steady_decline_keeps_the_window_bounded() -> None:
    """The window keeps each reading higher than every later one: a steady decline kept all of fall_s (a
    set_prealarm may send up to 1e9 s). An hour of a draining main at 0.5 s was 7,200 tuples, past a 64K heap:
    a MemoryError in the sampler at every boot, the profile kept on flash. A fall still fires from the window."""
    lv = Level({"below": 1, "fall": 100000, "fall_s": 3600})
    assert falls(lv, [(i * 500, 900000 - i * 10) for i in range(7200)]) == [None] * 7200  # 72 kPa in the hour
    assert len(lv.top) <= 32, len(lv.top)
    top = lv.fell(700000, 3600000)
    assert top is not None and top[1] - 700000 >= 100000, top


def test_a_level_without_fall_never_fires() -> None:
    lv = Level({"below": 250000})
    assert falls(lv, [(0, 320000), (1000, 100000)]) == [None, None]
    assert not lv.falling


@pytest.mark.parametrize("spec", [
    {"below": 1, "fall": 10},  # no window
    {"below": 1, "fall_s": 4},  # no size
    {"below": 1, "fall": 0, "fall_s": 4},
    {"below": 1, "fall": 10, "fall_s": -1},
    {"below": 1, "fall": True, "fall_s": 4},
    {"is": True, "fall": 10, "fall_s": 4},  # a switch has no rate
])
def test_bad_fall_fields_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="fall"):
        check_level(spec)


def test_the_water_level_with_its_fall_is_accepted() -> None:
    assert check_level(dict(WATER)) == WATER


def test_after_a_clear_readings_go_at_once_for_hold_s() -> None:
    """The gateway's rate window still holds the fall when the level clears; only a reading after the
    recovery lets it clear, and a routine batch would bring it minutes later."""
    lv = Level(dict(WATER, hold_s=60))
    assert not lv.holding(lv.step(320000), 0)
    assert not lv.holding(lv.step(100000), 2000)  # past the level its readings go at once anyway
    assert lv.holding(lv.step(300000), 10000)  # cleared: the hold starts
    assert lv.holding(lv.step(318000), 69999)
    assert not lv.holding(lv.step(318000), 70000)


def test_a_level_without_hold_s_does_not_hold() -> None:
    lv = Level(dict(WATER))
    lv.step(100000)
    assert not lv.holding(lv.step(300000), 10000)


@pytest.mark.parametrize("hold", [0, -1, True, "60"])
def test_bad_hold_s_is_refused(hold: object) -> None:
    with pytest.raises(ValueError, match="hold_s"):
        check_level(dict(WATER, hold_s=hold))
