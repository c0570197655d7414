"""app/sleeper.py's wake-pin logic (rain tips kept in RTC memory across deep sleeps) under the real
MicroPython unix port with a 64K heap, against a fake board; the virtual-device tests in
test_sleep_wake.py run it end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from upy_support import LIB, SCRIPTS, build, case_outcomes, env

from lifeline import upy
from lifeline.virtual.firmware import SIM

CASES = re.findall(r"^def case_(\w+)\(", (SCRIPTS / "sleeper_cases.py").read_text(), re.M)
WAKE_CASES = re.findall(r"^def case_(\w+)\(", (SCRIPTS / "sleeper_wake_cases.py").read_text(), re.M)


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpy")
    upy.compile_package(LIB / "drivers", out)
    upy.compile_module(SIM / "simdev.py", out / "simdev.mpy")
    upy.compile_module(LIB / "hal" / "__init__.py", out / "hal" / "__init__.mpy")
    for name in ("__init__", "sleeper", "watchdog"):
        upy.compile_module(LIB / "app" / f"{name}.py", out / "app" / f"{name}.mpy")
    return build(out, "persist", "mqtt", "drivercheck", "sleeper_cases", "sleeper_wake_cases")


@pytest.fixture(scope="module")
def outcome(mpy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Case name -> its PASS/FAIL line and traceback, from one interpreter run in a scratch directory."""
    return case_outcomes(upy.run("-m drivercheck", "sleeper_cases", env=env(mpy_dir),
                                 cwd=tmp_path_factory.mktemp("flash"), timeout=60))


@pytest.mark.parametrize("case", CASES)
def test_sleeper_case(case: str, outcome: dict[str, str]) -> None:
    assert case in outcome, f"{case} did not run under MicroPython: {outcome}"
    assert outcome[case].startswith("PASS"), outcome[case]


@pytest.fixture(scope="module")
def wake_outcome(mpy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """sleeper_wake_cases.py, which loads the MQTT client and asyncio's lock beside the sleeper: at the node's
    heap, as a wake runs them."""
    return case_outcomes(upy.run("-m drivercheck", "sleeper_wake_cases", env=env(mpy_dir), heap=upy.FIRMWARE_HEAP,
                                 cwd=tmp_path_factory.mktemp("flash"), timeout=60))


@pytest.mark.parametrize("case", WAKE_CASES)
def test_sleeper_wake_case(case: str, wake_outcome: dict[str, str]) -> None:
    assert case in wake_outcome, f"{case} did not run under MicroPython: {wake_outcome}"
    assert wake_outcome[case].startswith("PASS"), wake_outcome[case]
