"""Sensor drivers and their sim device models under the real MicroPython unix port with a 64K heap.

Each driver's case module runs in one interpreter process (its cases are quick); every case shows up
here as its own test, so a failure is reported by name with the interpreter's traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from upy_support import LIB, SCRIPTS, case_outcomes, env

from lifeline import upy
from lifeline.virtual.firmware import SIM

DRIVERS = ["loop420", "adxl345", "nmea", "level", "cover", "rain"]
CASES = [(driver, case) for driver in DRIVERS
         for case in re.findall(r"^def case_(\w+)\(", (SCRIPTS / f"drivers_{driver}_cases.py").read_text(), re.M)]


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drivers as .mpy, laid out as on a board's /lib, beside simdev (firmware/sim) and the compiled case
    modules."""
    out = tmp_path_factory.mktemp("mpy")
    upy.compile_package(LIB / "drivers", out)
    upy.compile_module(SIM / "simdev.py", out / "simdev.mpy")
    for script in ["drivercheck", *(f"drivers_{d}_cases" for d in DRIVERS)]:
        upy.compile_module(SCRIPTS / f"{script}.py", out / f"{script}.mpy")
    return out


_outcomes: dict[str, dict[str, str]] = {}


def outcome(driver: str, mpy_dir: Path) -> dict[str, str]:
    """Case name -> its PASS/FAIL line and the traceback after it, one interpreter run per driver."""
    if driver not in _outcomes:
        _outcomes[driver] = case_outcomes(upy.run("-m drivercheck", f"drivers_{driver}_cases", env=env(mpy_dir),
                                                  timeout=60))
    return _outcomes[driver]


@pytest.mark.parametrize(("driver", "case"), CASES)
def test_driver_case(driver: str, case: str, mpy_dir: Path) -> None:
    found = outcome(driver, mpy_dir)
    assert case in found, f"{case} did not run under MicroPython: {found}"
    assert found[case].startswith("PASS"), found[case]
