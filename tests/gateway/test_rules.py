"""Rule model, validation, pure evaluation and risk points (gateway/rules.py, gateway/riskpoints.py)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.riskpoints import RiskPoint, RiskPoints, haversine_m
from gateway.rules import (
    Direction,
    Level,
    RateRule,
    RuleError,
    Run,
    SumRule,
    Threshold,
    default_ruleset,
    default_ruleset_paths,
    judge,
    load_ruleset,
    parse_ruleset,
    rate_signal,
    stale_level,
    sum_signal,
)

BLUE, YELLOW, ORANGE, RED = Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED

GAS: dict[str, Any] = {
    "version": 3,
    "gas": {
        "ch4": {
            "unit": "%LEL",
            "direction": "above",
            "levels": {"blue": 10, "yellow": 20, "orange": 25, "red": 50},
            "clear": {"blue": 8, "yellow": 16, "orange": 20, "red": 40},
            "for_samples": 2,
        },
        "stale": {"interval_s": 10, "levels": {"yellow": 3, "orange": 10}, "will": "orange"},
    },
}


def edited(path: str, value: Any) -> dict[str, Any]:
    """GAS with one dotted path set (or deleted when value is ...)."""
    data = copy.deepcopy(GAS)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


# ------------------------------------------------------------------------------------ default rule sets


def test_default_rule_sets_cover_every_device_class() -> None:
    rules = default_ruleset()
    assert {p.stem for p in default_ruleset_paths()} == {"gas", "water", "drainage", "bridge", "rain", "drone"}
    assert set(rules.classes) == {"gas", "water", "drainage", "bridge", "rain", "drone"}
    ch4 = rules.metric_rules("gas", "gas-1", "ch4")
    assert ch4 is not None and ch4.level is not None
    # GB/T 50493-2019 upper bounds of the first and second alarm levels (see docs/rules.md).
    assert ch4.level.levels[ORANGE] == 25 and ch4.level.levels[RED] == 50
    pressure = rules.metric_rules("water", "w-1", "pressure")
    assert pressure is not None and pressure.level is not None and pressure.rate is not None
    assert pressure.level.direction == "below" and pressure.level.levels[YELLOW] == 140000  # CJ/T 316-2009: 0.14 MPa
    rain = rules.metric_rules("rain", "r-1", "rain")
    assert rain is not None and rain.sum is not None
    assert rain.sum.windows[RED] == 3 * 3600 and rain.sum.threshold.levels[RED] == 100  # CMA rainstorm red
    assert rules.stale_rule("drone", "d-1") is None
    for cls in ("gas", "water", "drainage", "bridge", "rain"):
        assert rules.stale_rule(cls, "x") is not None


def test_docs_name_every_default_number() -> None:
    """docs/rules.md gives a source (or 'site setting') for every level in the shipped files."""
    doc = (Path(__file__).parents[2] / "docs" / "rules.md").read_text(encoding="utf-8")
    rules = default_ruleset()
    for cls, class_rules in rules.classes.items():
        for metric in class_rules.metrics:
            assert f"`{cls}.{metric}`" in doc, f"{cls}.{metric} not documented"


# ------------------------------------------------------------------------------------------ validation


def test_parse_builds_the_model() -> None:
    rules = parse_ruleset(GAS)
    assert rules.version == 3
    ch4 = rules.metric_rules("gas", "any", "ch4")
    assert ch4 is not None and ch4.id == "gas.ch4" and ch4.unit == "%LEL"
    assert ch4.level == Threshold(
        "above", {BLUE: 10, YELLOW: 20, ORANGE: 25, RED: 50}, {BLUE: 8, YELLOW: 16, ORANGE: 20, RED: 40}, 0.0, 2
    )
    stale = rules.stale_rule("gas", "any")
    assert stale is not None and stale.interval_s == 10 and stale.will is ORANGE and stale.id == "gas.stale"
    assert rules.metric_rules("gas", "any", "temp") is None
    assert rules.metric_rules("water", "any", "ch4") is None
    assert json.loads(rules.to_json()) == GAS


@pytest.mark.parametrize(
    ("path", "value", "where", "why"),
    [
        ("gas.ch4.levels.red", 24, "gas.ch4.levels.red", "must be above orange for an 'above' rule"),
        ("gas.ch4.levels.yellow", 10, "gas.ch4.levels.yellow", "must be above blue for an 'above' rule"),
        ("gas.ch4.direction", "sideways", "gas.ch4.direction", "must be one of 'above', 'below', not 'sideways'"),
        ("gas.ch4.direction", ..., "gas.ch4.direction", "missing: 'above' or 'below'"),
        ("gas.ch4.levels.pink", 60, "gas.ch4.levels.pink", "not a level (use blue, yellow, orange, red)"),
        ("gas.ch4.levels", {}, "gas.ch4.levels", "needs at least one of blue, yellow, orange, red"),
        ("gas.ch4.levels.red", "50", "gas.ch4.levels.red", "must be a number, not str"),
        ("gas.ch4.levels.red", True, "gas.ch4.levels.red", "must be a number, not bool"),
        ("gas.ch4.levels.red", math.inf, "gas.ch4.levels.red", "must be finite"),
        ("gas.ch4.clear.red", 55, "gas.ch4.clear.red", "must not be above the red level for an 'above' rule"),
        ("gas.ch4.clear.red", ..., "gas.ch4.clear.red", "missing: every level needs a clear level"),
        ("gas.ch4.clear", ..., "gas.ch4.clear", "missing: every level needs a clear level"),
        ("gas.ch4.for_samples", 0, "gas.ch4.for_samples", "must be an integer of at least 1"),
        ("gas.ch4.for_samples", 1.5, "gas.ch4.for_samples", "must be an integer of at least 1"),
        ("gas.ch4.for_s", -1, "gas.ch4.for_s", "must not be negative"),
        ("gas.ch4.hysteresis", 2, "gas.ch4.hysteresis", "unknown key"),
        ("gas.ch4.abs", "yes", "gas.ch4.abs", "must be true or false"),
        ("gas.temp", {"unit": "Cel"}, "gas.temp", "needs levels, rate or sum (or enabled = false)"),
        ("gas.temp", {"direction": "above"}, "gas.temp.direction", "only applies with levels"),
        (
            "gas.ch4.rate",
            {"window_s": 0, "direction": "rise", "levels": {"red": 5}, "clear": {"red": 1}},
            "gas.ch4.rate.window_s",
            "must be at least 1 s",
        ),
        (
            "gas.ch4.sum",
            {"window_s": 1e-300, "levels": {"red": 5}, "clear": {"red": 1}},
            "gas.ch4.sum.window_s",
            "must be at least 1 s",  # its bins were 1e-302 s: a reading's bin number overflowed
        ),
        (
            "gas.ch4.sum",
            {"window_s": {"blue": 1e9, "red": 1}, "levels": {"blue": 5, "red": 10}, "clear": {"blue": 1, "red": 2}},
            "gas.ch4.sum.window_s",
            "the longest window may be at most 100 times the shortest",  # 120 bins a shortest window, kept
        ),
        ("gas.ch4.levels", {"red": 10**400}, "gas.ch4.levels.red", "must be finite"),  # a bignum: OverflowError
        ("gas.ch4.unit", "\ud800", "gas.ch4.unit", "must be a string"),  # a lone surrogate, from JSON text
        (
            "gas.ch4.rate",
            {"window_s": 60, "direction": "up", "levels": {"red": 5}, "clear": {"red": 1}},
            "gas.ch4.rate.direction",
            "must be one of 'fall', 'rise', not 'up'",
        ),
        (
            "gas.ch4.rate",
            {"window_s": 60, "direction": "rise", "levels": {"red": -5}, "clear": {"red": -6}},
            "gas.ch4.rate.levels.red",
            "must be greater than 0 (a magnitude of change)",
        ),
        (
            "gas.ch4.rate",
            {"window_s": 60, "direction": "rise", "levels": {"red": 5}, "clear": {"red": -1}},
            "gas.ch4.rate.clear.red",
            "must not be negative (a magnitude of change)",
        ),
        (
            "gas.ch4.rate",
            {"direction": "rise", "levels": {"red": 5}, "clear": {"red": 1}},
            "gas.ch4.rate.window_s",
            "missing",
        ),
        (
            "gas.ch4.sum",
            {"window_s": {"blue": 60, "red": 120}, "levels": {"blue": 5, "red": 10}, "clear": {"blue": 1, "red": 2}},
            "gas.ch4.sum.levels.red",
            "must need more than blue: an amount not below it in a window not longer than its",
        ),
        (
            "gas.ch4.sum",
            {"window_s": {"blue": 60}, "levels": {"blue": 5, "red": 10}, "clear": {"blue": 1, "red": 2}},
            "gas.ch4.sum.window_s.red",
            "missing: every level needs a window",
        ),
        ("gas.stale.interval_s", 0, "gas.stale.interval_s", "must be greater than 0"),
        (
            "gas.stale.will",
            "purple",
            "gas.stale.will",
            "must be one of 'blue', 'yellow', 'orange', 'red', not 'purple'",
        ),
        ("gas.stale.levels.orange", 2, "gas.stale.levels.orange", "must be above yellow for an 'above' rule"),
        ("gas.ch4", [1, 2], "gas.ch4", "must be a table, not list"),
        ("gas.Ch4!", {}, "gas.Ch4!", "metric names are 1-64 of [A-Za-z0-9_-]"),
        ("Gas", {}, "Gas", "class names are 1-32 of [a-z0-9_-]"),
        ("version", ..., "version", "missing: an integer, raised on every change"),
        ("version", 0, "version", "must be an integer from 1 to 2**63-1"),
        ("version", True, "version", "must be an integer from 1 to 2**63-1"),
        ("version", "7", "version", "must be an integer from 1 to 2**63-1"),
        (
            "gas.devices.gas-7.ch4",
            {"levels": {"yellow": 30, "red": 25}},
            "gas.devices.gas-7.ch4.levels.red",
            "must be above yellow for an 'above' rule",
        ),
        (
            "gas.devices.gas-7.ch4",
            {"levels": {"red": 60}},
            "gas.devices.gas-7.ch4.clear.blue",
            "no such level in levels",
        ),
        ("gas.devices.gas 7", {}, "gas.devices.gas 7", "device and risk point ids are 1-64 of [A-Za-z0-9_-]"),
    ],
)
def test_validation_names_the_field_and_why(path: str, value: Any, where: str, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_ruleset(edited(path, value))
    assert caught.value.path == where
    assert caught.value.reason.startswith(why)
    assert str(caught.value) == f"{where}: {caught.value.reason}"


def test_below_rules_must_fall() -> None:
    data = edited(
        "gas.ch4", {"direction": "below", "levels": {"yellow": 140, "red": 150}, "clear": {"yellow": 150, "red": 160}}
    )
    with pytest.raises(RuleError, match=r"^gas\.ch4\.levels\.red: must be below yellow for a 'below' rule$"):
        parse_ruleset(data)
    data["gas"]["ch4"]["levels"] = {"yellow": 140, "red": 50}
    data["gas"]["ch4"]["clear"] = {"yellow": 130, "red": 60}
    with pytest.raises(RuleError, match=r"^gas\.ch4\.clear\.yellow: must not be below the yellow level"):
        parse_ruleset(data)


def test_device_overrides_merge_over_the_class_rule() -> None:
    data = copy.deepcopy(GAS)
    data["gas"]["devices"] = {
        "gas-7": {"ch4": {"levels": {"yellow": 30, "red": 60}, "clear": {"yellow": 25, "red": 50}}},
        "gas-8": {"ch4": {"enabled": False}, "stale": {"interval_s": 60}},
        "gas-9": {"stale": {"enabled": False}},
    }
    rules = parse_ruleset(data)
    seven = rules.metric_rules("gas", "gas-7", "ch4")
    assert seven is not None and seven.id == "gas.devices.gas-7.ch4" and seven.level is not None
    assert seven.level.levels == {YELLOW: 30, RED: 60} and seven.level.for_samples == 2 and seven.unit == "%LEL"
    assert rules.metric_rules("gas", "gas-8", "ch4") is None
    stale8 = rules.stale_rule("gas", "gas-8")
    assert (
        stale8 is not None
        and stale8.interval_s == 60
        and stale8.will is ORANGE
        and stale8.id == "gas.devices.gas-8.stale"
    )
    assert rules.stale_rule("gas", "gas-9") is None
    other = rules.metric_rules("gas", "gas-1", "ch4")
    assert other is not None and other.id == "gas.ch4"


def test_load_merges_files_and_takes_the_highest_version(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'version = 2\n[gas.ch4]\ndirection = "above"\nlevels = { red = 50 }\nclear = { red = 40 }\n'
    )
    (tmp_path / "b.json").write_text(
        json.dumps(
            {"version": 5, "water": {"pressure": {"direction": "below", "levels": {"red": 50}, "clear": {"red": 60}}}}
        )
    )
    rules = load_ruleset([tmp_path / "a.toml", tmp_path / "b.json"])
    assert rules.version == 5 and set(rules.classes) == {"gas", "water"}
    (tmp_path / "c.toml").write_text("version = 1\n[gas.temp]\nenabled = false\n")
    with pytest.raises(RuleError, match=r"c\.toml: gas: class already defined in .*a\.toml"):
        load_ruleset([tmp_path / "a.toml", tmp_path / "c.toml"])
    (tmp_path / "bad.toml").write_text("version = 1\n[gas.ch4\n")
    with pytest.raises(RuleError, match=r"bad\.toml: not valid TOML"):
        load_ruleset([tmp_path / "bad.toml"])
    (tmp_path / "nover.toml").write_text("[gas.temp]\nenabled = false\n")
    with pytest.raises(RuleError, match=r"nover\.toml: version: missing"):
        load_ruleset([tmp_path / "nover.toml"])
    with pytest.raises(RuleError, match=r"missing\.toml: cannot read"):
        load_ruleset([tmp_path / "missing.toml"])


# --------------------------------------------------------------------------------------------- judge

GAS_TH = Threshold("above", {BLUE: 10, YELLOW: 20, ORANGE: 25, RED: 50}, {BLUE: 8, YELLOW: 16, ORANGE: 20, RED: 40})


def run_judge(th: Threshold, samples: list[tuple[float, float]]) -> list[Level | None]:
    level: Level | None = None
    runs: dict[Level, Run] = {}
    out = []
    for t, v in samples:
        verdict = judge(th, level, runs, dict.fromkeys(th.levels, v), t)
        level, runs = verdict.level, dict(verdict.runs)
        out.append(level)
    return out


def test_judge_raises_escalates_and_holds_inside_the_band() -> None:
    assert run_judge(
        GAS_TH, [(0, 5), (1, 12), (2, 9), (3, 8), (4, 30), (5, 21), (6, 19), (7, 60), (8, 41), (9, 39)]
    ) == [None, BLUE, BLUE, None, ORANGE, ORANGE, YELLOW, RED, RED, ORANGE]


def test_judge_falls_to_the_highest_level_still_held() -> None:
    assert run_judge(GAS_TH, [(0, 60), (1, 7)]) == [RED, None]
    assert run_judge(GAS_TH, [(0, 60), (1, 17)]) == [RED, YELLOW]


def test_judge_below_rules_mirror_above() -> None:
    th = Threshold("below", {YELLOW: 140, RED: 50}, {YELLOW: 150, RED: 60})
    assert run_judge(th, [(0, 200), (1, 140), (2, 149), (3, 40), (4, 59), (5, 61), (6, 150)]) == [
        None,
        YELLOW,
        YELLOW,
        RED,
        RED,
        YELLOW,
        None,
    ]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["above", "below"]),
       st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=4, unique=True), st.floats(-2e6, 2e6))
def test_a_value_reaches_a_level_exactly_when_it_reaches_the_first(
    direction: Direction, limits: list[float], value: float
) -> None:
    """Threshold.reached_by, which lets the alarm engine skip judge() for most readings, is "some level reached"."""
    limits.sort(reverse=direction == "below")
    levels = dict(zip([BLUE, YELLOW, ORANGE, RED], limits, strict=False))
    th = Threshold(direction, levels, levels)
    reached = any(value >= v if direction == "above" else value <= v for v in levels.values())
    assert th.reached_by(value) == reached
    assert th.reached_by(th.first)
    assert bool(judge(th, None, {}, dict.fromkeys(levels, value), 0.0).runs) == reached  # what judge() would start


def test_pending_by_samples_and_by_seconds() -> None:
    by_samples = Threshold("above", {RED: 50}, {RED: 40}, 0.0, 3)
    assert run_judge(by_samples, [(0, 60), (1, 60), (2, 30), (3, 60), (4, 60), (5, 60)]) == [
        None,
        None,
        None,
        None,
        None,
        RED,
    ]
    by_seconds = Threshold("above", {RED: 50}, {RED: 40}, 30.0, 1)
    assert run_judge(by_seconds, [(0, 60), (20, 60), (29, 60), (30, 60)]) == [None, None, None, RED]
    assert run_judge(by_seconds, [(0, 60), (20, 45), (30, 60), (59, 60), (60, 60)]) == [None, None, None, None, RED]


def test_escalation_needs_its_own_pending_but_falling_does_not() -> None:
    th = Threshold("above", {YELLOW: 20, RED: 50}, {YELLOW: 16, RED: 40}, 0.0, 2)
    assert run_judge(th, [(0, 30), (1, 30), (2, 60), (3, 60), (4, 30)]) == [None, YELLOW, YELLOW, RED, YELLOW]


def test_a_clock_going_backwards_restarts_the_run() -> None:
    th = Threshold("above", {RED: 50}, {RED: 40}, 10.0, 1)
    assert run_judge(th, [(100, 60), (105, 60), (3, 60), (12, 60), (13, 60)]) == [None, None, None, None, RED]


def test_rate_signal_measures_the_largest_fall_within_the_window() -> None:
    rule = RateRule(60.0, "fall", Threshold("above", {RED: 100}, {RED: 40}))
    window: tuple[tuple[float, float], ...] = ()
    changes = []
    for t, v in [(0, 400), (10, 420), (20, 380), (30, 310), (90, 300), (100, 300)]:
        change, window = rate_signal(rule, window, v, t)
        changes.append(change)
    # 420 (t=10) is still in the window at t=30; by t=90 only 310 (t=30) is left, by t=100 nothing higher
    assert changes == [0, 0, 40, 110, 10, 0]
    assert len(window) <= 3
    rise = RateRule(10.0, "rise", Threshold("above", {RED: 1}, {RED: 0}))
    window = ()
    out = []
    for t2, v2 in [(0.0, 1.0), (5.0, 0.5), (9.0, 2.0), (16.0, 2.2), (30.0, 0.0)]:
        change, window = rate_signal(rise, window, v2, t2)
        out.append(round(change, 6))
    assert out == [0, 0, 1.5, 0.2, 0]


def test_sum_signal_adds_amounts_per_level_window() -> None:
    rule = SumRule({BLUE: 12 * 3600.0, RED: 3 * 3600.0}, Threshold("above", {BLUE: 50, RED: 100}, {BLUE: 40, RED: 80}))
    state = None
    signal: dict[Level, float] = {}
    for hour in range(12):  # 5 mm an hour for 12 hours, reported every 10 min
        for tenth in range(6):
            signal, state = sum_signal(rule, state, 5 / 6, hour * 3600 + tenth * 600)
    assert signal[BLUE] == pytest.approx(60, abs=1.0)  # 12 h of rain, to one bin of resolution
    assert signal[RED] == pytest.approx(15, abs=1.0)
    assert state is not None and len(state.bins) <= 12 * 3600 / rule.bin_s + 1
    later, state = sum_signal(rule, state, 0.0, 30 * 3600)
    assert later == {BLUE: 0.0, RED: 0.0}
    assert state.bins == ((math.floor(30 * 3600 / rule.bin_s), 0.0),)


def test_stale_level_by_silence_and_will() -> None:
    rules = parse_ruleset(GAS)
    stale = rules.stale_rule("gas", "x")
    assert stale is not None
    assert [stale_level(stale, age, False) for age in (0, 29, 30, 99, 100)] == [None, None, YELLOW, YELLOW, ORANGE]
    assert stale_level(stale, 0, True) is ORANGE


# ------------------------------------------------------------------------------ property tests: judge


@st.composite
def thresholds(draw: st.DrawFn) -> Threshold:
    chosen = draw(st.lists(st.sampled_from(list(Level)), min_size=1, max_size=4, unique=True))
    chosen.sort()
    value: float = draw(st.floats(-100, 100))
    levels: dict[Level, float] = {}
    clear: dict[Level, float] = {}
    for lv in chosen:
        value += draw(st.floats(0.5, 50))
        levels[lv] = value
        clear[lv] = value - draw(st.floats(0, 20))
    direction: Direction = draw(st.sampled_from(["above", "below"]))
    if direction == "below":
        levels = {lv: -v for lv, v in levels.items()}
        clear = {lv: -v for lv, v in clear.items()}
    return Threshold(direction, levels, clear, draw(st.sampled_from([0.0, 5.0, 30.0])), draw(st.integers(1, 4)))


def flip(th: Threshold, value: float) -> float:
    """Values are generated for 'above'; a 'below' threshold mirrors them."""
    return value if th.direction == "above" else -value


def reference(th: Threshold, samples: list[tuple[float, float]]) -> list[Level | None]:
    """Brute force from the whole history: pending from consecutive samples, hysteresis from clear levels."""
    sign = 1.0 if th.direction == "above" else -1.0
    level: Level | None = None
    out = []
    for i, (t, v) in enumerate(samples):
        target = None
        for lv, limit in sorted(th.levels.items()):
            k = 0
            while k <= i and sign * samples[i - k][1] >= sign * limit:
                k += 1
            if k >= th.for_samples and k > 0 and t - samples[i - k + 1][0] >= th.for_s:
                target = lv
        held = [lv for lv, c in th.clear.items() if level is not None and lv <= level and sign * v > sign * c]
        candidates = [x for x in [target, *held] if x is not None]
        level = max(candidates) if candidates else None
        out.append(level)
    return out


@settings(max_examples=300, deadline=None)
@given(thresholds(), st.lists(st.tuples(st.floats(0, 20), st.floats(-200, 400)), max_size=60))
def test_levels_follow_the_reference_and_move_only_by_valid_steps(
    th: Threshold, steps: list[tuple[float, float]]
) -> None:
    t = 0.0
    samples = []
    for dt, v in steps:
        t += dt
        samples.append((t, v))
    got = run_judge(th, samples)
    assert got == reference(th, samples)
    assert all(level is None or level in th.levels for level in got)


@settings(max_examples=300, deadline=None)
@given(thresholds(), st.data())
def test_noise_inside_the_hysteresis_band_never_flaps(th: Threshold, data: st.DataObject) -> None:
    ordered = sorted(th.levels)
    held = data.draw(st.sampled_from(ordered))
    limit, clear = flip(th, th.levels[held]), flip(th, th.clear[held])
    higher = [flip(th, th.levels[lv]) for lv in ordered if lv > held]
    top = higher[0] if higher else limit + 100
    assert clear <= limit < top
    # Raise `held`: enough samples at its level, spanning the pending duration.
    samples = [(float(i) * max(th.for_s, 1.0), flip(th, limit)) for i in range(th.for_samples + 1)]
    noise = data.draw(st.lists(st.floats(clear, top, exclude_min=True, exclude_max=True), min_size=1, max_size=80))
    t = samples[-1][0]
    for v in noise:
        t += data.draw(st.floats(0, 60))
        samples.append((t, flip(th, v)))
    levels = run_judge(th, samples)
    raised_at = levels.index(held)
    assert raised_at <= th.for_samples
    assert all(level == held for level in levels[raised_at:]), "a band-limited signal changed the level"


@settings(max_examples=300, deadline=None)
@given(thresholds(), st.data())
def test_a_spike_shorter_than_the_pending_duration_never_raises(th: Threshold, data: st.DataObject) -> None:
    lowest = min(th.levels)
    quiet_top = flip(th, th.levels[lowest])
    by_seconds = data.draw(st.booleans())
    if by_seconds:
        th = Threshold(th.direction, th.levels, th.clear, data.draw(st.floats(1, 120)), th.for_samples)
    elif th.for_samples == 1:
        th = Threshold(th.direction, th.levels, th.clear, th.for_s, data.draw(st.integers(2, 5)))
    t = 0.0
    samples: list[tuple[float, float]] = []
    for _ in range(data.draw(st.integers(1, 8))):
        for _ in range(data.draw(st.integers(1, 5))):  # quiet: below every level
            t += data.draw(st.floats(0.1, 60))
            samples.append((t, flip(th, quiet_top - data.draw(st.floats(0.001, 100)))))
        if by_seconds:
            # short of for_s by more than the rounding of base + offset (a few ulps of t, t < 1e5)
            span = data.draw(st.floats(0, th.for_s - 1e-6))
            count = data.draw(st.integers(1, 10))
            times = sorted(data.draw(st.lists(st.floats(0, span), min_size=count, max_size=count)))
        else:
            count = data.draw(st.integers(1, th.for_samples - 1))
            times = [data.draw(st.floats(0, 1000)) for _ in range(count)]
            times.sort()
        base = t + 0.1
        for offset in times:  # a spike: any size, but too short
            samples.append((base + offset, flip(th, quiet_top + data.draw(st.floats(0, 1e6)))))
        t = samples[-1][0]
    assert set(run_judge(th, samples)) == {None}


# --------------------------------------------------------------------------------------- risk points


def test_haversine_matches_known_distances() -> None:
    assert haversine_m(0, 0, 1, 0) == pytest.approx(111_195, abs=1)  # one degree of latitude
    assert haversine_m(29.56, 106.55, 29.56, 106.55) == 0
    # Chongqing to Chengdu, about 266 km as the crow flies
    assert haversine_m(29.563, 106.551, 30.572, 104.066) == pytest.approx(266_000, rel=0.01)


def test_nearest_point_in_range() -> None:
    points = RiskPoints(
        [
            RiskPoint("station-a", "gas", 29.5000, 106.5000, 300),
            RiskPoint("station-b", "gas", 29.5030, 106.5000, 300),
            RiskPoint("reservoir", "water", 29.6000, 106.6000, 2000),
        ]
    )
    hit = points.nearest(29.5010, 106.5)
    assert hit is not None and hit[0].id == "station-a" and hit[1] == pytest.approx(111.2, abs=0.5)
    hit = points.nearest(29.5020, 106.5)
    assert hit is not None and hit[0].id == "station-b"
    assert points.nearest(29.55, 106.5) is None
    hit = points.nearest(29.6100, 106.6)
    assert hit is not None and hit[0].id == "reservoir"
    tie = RiskPoints([RiskPoint("b", "gas", 0, 0.001, 500), RiskPoint("a", "gas", 0, -0.001, 500)])
    hit = tie.nearest(0, 0)
    assert hit is not None and hit[0].id == "a"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": "p", "class": "gas", "lat": 91, "lon": 0, "radius_m": 5}, r"riskpoints\[0\]\.lat: must be within"),
        ({"id": "p", "class": "gas", "lat": 0, "lon": 181, "radius_m": 5}, r"riskpoints\[0\]\.lon: must be within"),
        ({"id": "p", "class": "gas", "lat": 0, "lon": 0, "radius_m": 0}, r"riskpoints\[0\]\.radius_m: must be"),
        ({"id": "p", "class": "gas", "lat": 0, "lon": 0}, r"riskpoints\[0\]\.radius_m: missing"),
        ({"id": "p q", "class": "gas", "lat": 0, "lon": 0, "radius_m": 5}, r"riskpoints\[0\]\.id: must be"),
        ({"id": "p", "class": "Gas", "lat": 0, "lon": 0, "radius_m": 5}, r"riskpoints\[0\]\.class: must be"),
        ({"id": "p", "class": "gas", "lat": "0", "lon": 0, "radius_m": 5}, r"riskpoints\[0\]\.lat: must be a"),
        ({"id": "p", "class": "gas", "lat": 0, "lon": 0, "radius_m": 5, "name": "x"}, r"riskpoints\[0\]\.name: unk"),
    ],
)
def test_risk_point_validation(item: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        RiskPoints.parse([item])


def test_risk_point_ids_are_unique() -> None:
    item = {"id": "p", "class": "gas", "lat": 0, "lon": 0, "radius_m": 5}
    with pytest.raises(RuleError, match=r"riskpoints\.p: duplicate id"):
        RiskPoints.parse([item, item])


def test_shipped_stale_intervals_match_the_shipped_firmware_profiles() -> None:
    import json

    from lifeline import upy
    from lifeline.virtual import plan

    shipped = default_ruleset()
    for cls in ("gas", "water", "drainage", "bridge", "rain"):
        profile = json.loads((upy.FIRMWARE / "profiles" / f"{cls}.json").read_text())
        stale = shipped.stale_rule(cls, "any-device")
        assert stale is not None, cls
        assert stale.interval_s == plan.quiet_interval(profile), cls


def test_docs_link_the_alarm_body_to_the_district_wire() -> None:
    """The alarm body is specified once, in docs/protocol.md ("The district wire"); docs/rules.md links it."""
    doc = (Path(__file__).parents[2] / "docs" / "rules.md").read_text(encoding="utf-8")
    assert "(protocol.md#the-district-wire)" in doc
    assert "| `t_dev`, `t_gw` |" not in doc and "| `rule`, `rver` |" not in doc
