"""app/sampler.py under the real MicroPython unix port with the firmware's heap, against a fake app and the sim's
device models (tests/firmware/upy/sampler_cases.py); the virtual-device tests run it end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from upy_support import LIB, SCRIPTS, build, case_outcomes, env

from lifeline import upy
from lifeline.virtual.firmware import SIM

CASES = re.findall(r"^def case_(\w+)\(", (SCRIPTS / "sampler_cases.py").read_text(), re.M)


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpy")
    upy.compile_package(LIB / "drivers", out)
    upy.compile_package(upy.ROOT / "protocol", out)
    upy.compile_module(SIM / "simdev.py", out / "simdev.mpy")
    for name in ("__init__", "sampler", "filters"):
        upy.compile_module(LIB / "app" / f"{name}.py", out / "app" / f"{name}.mpy")
    return build(out, "drivercheck", "sampler_cases")


@pytest.fixture(scope="module")
def outcome(mpy_dir: Path) -> dict[str, str]:
    """Case name -> its PASS/FAIL line and traceback, from one interpreter run."""
    return case_outcomes(upy.run("-m drivercheck", "sampler_cases", env=env(mpy_dir), heap=upy.FIRMWARE_HEAP,
                                 timeout=60))


@pytest.mark.parametrize("case", CASES)
def test_sampler_case(case: str, outcome: dict[str, str]) -> None:
    assert case in outcome, f"{case} did not run under MicroPython: {outcome}"
    assert outcome[case].startswith("PASS"), outcome[case]
