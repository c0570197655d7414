"""The serial stimulus driver against the reference stimulus-board firmware (hil_tests/stimboard), run on a
virtual board: engineering units scale to loop current, voltage, relay state and pulse rate; ramps run
on the board's clock; errors are refused with their reason."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifeline.virtual.device import VirtualDevice
from lifeline.virtual.stimulus import SerialStimulus, StimulusError, Unsupported

FIRMWARE = Path(__file__).resolve().parents[2] / "hil_tests" / "stimboard" / "main.py"
RIG: dict[str, dict[str, Any]] = {
    "ch4": {"out": "I0", "lo": 0, "hi": 100}, "level": {"out": "V0", "lo": 0, "hi": 5, "vlo": 0, "vhi": 3.3},
    "cover": {"out": "R1"}, "net": {"out": "R0", "invert": True}, "rain_rate": {"out": "P0", "mm_per_tip": 0.2},
}


@pytest.fixture
def board(tmp_path: Path) -> Iterator[VirtualDevice]:
    with VirtualDevice(tmp_path / "stim", name="stim") as dev:
        shutil.copy(FIRMWARE, dev.flash_dir / "main.py")
        dev.power_on()
        yield dev


@pytest.fixture
def stim(board: VirtualDevice) -> Iterator[SerialStimulus]:
    s = SerialStimulus(board.port, RIG)
    yield s
    s.close()


def get(stim: SerialStimulus, out: str) -> float:
    return float(stim.command(f"GET {out}").split("/")[0])


def test_values_scale_to_the_outputs(stim: SerialStimulus) -> None:
    stim.set(ch4=50.0, level=2.5, cover=True, rain_rate=36.0)
    assert get(stim, "I0") == pytest.approx(12.0)  # 4 + 16 * 50 / 100 mA
    assert get(stim, "V0") == pytest.approx(1.65)
    assert get(stim, "R1") == 1.0
    assert get(stim, "P0") == pytest.approx(180.0)  # 36 mm/h at 0.2 mm per tip
    stim.network(False)
    assert get(stim, "R0") == 1.0  # inverted: the relay opens the access point's supply when energised
    stim.network(True)
    assert get(stim, "R0") == 0.0


def test_ramps_run_on_the_board_clock(stim: SerialStimulus) -> None:
    stim.set(ch4=0.0)
    before = time.monotonic()
    stim.ramp("ch4", [(1.0, 100.0), (1.5, 50.0)])
    after = time.monotonic()
    time.sleep(0.4)
    asked = time.monotonic()
    mid = get(stim, "I0")
    answered = time.monotonic()
    # The board's ramp began between `before` and `after`, and it answered between `asked` and `answered`.
    assert 4.0 + 16.0 * (asked - after) - 0.01 <= mid <= 4.0 + 16.0 * (answered - before) + 0.01
    time.sleep(1.7)
    assert get(stim, "I0") == pytest.approx(12.0)
    stim.set(ch4=25.0)  # a SET cancels what is left of a ramp
    assert get(stim, "I0") == pytest.approx(8.0)


def test_refusals(stim: SerialStimulus, board: VirtualDevice) -> None:
    with pytest.raises(StimulusError, match="no output X9"):
        stim.command("SET X9 1")
    with pytest.raises(StimulusError, match="a relay is 0 or 1"):
        stim.command("SET R0 3")
    with pytest.raises(Unsupported, match="relay"):
        stim.ramp("cover", [(1.0, 1.0)])
    with pytest.raises(Unsupported, match="no output for 'tilt_x'"):
        stim.set(tilt_x=0.01)
    with pytest.raises(Unsupported, match="sim backend"):
        stim.hang()
    with pytest.raises(StimulusError, match="does not have"):
        SerialStimulus(board.port, {"ch4": {"out": "I7"}})
