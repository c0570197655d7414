"""flashq's end-to-end mode (hold, confirm, resend) under the real MicroPython unix port with a 64K heap,
on a host directory and on littlefs, one process per case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from upy_support import SCRIPTS, build, env, queue_dir

from lifeline import upy

CASES = re.findall(r"^def case_(\w+)\(", (SCRIPTS / "flashq_hold_cases.py").read_text(), re.M)


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"), "flashq", "persist", "lfsdisk", "flashq_cases", "flashq_hold_cases")


@pytest.mark.parametrize("fs", ["posix", "littlefs"])
@pytest.mark.parametrize("case", CASES)
def test_flashq_hold_case(case: str, fs: str, mpy_dir: Path, tmp_path: Path) -> None:
    where = queue_dir(fs, tmp_path, mpy_dir)
    result = upy.run("-m flashq_hold_cases", where, case, env=env(mpy_dir), timeout=60)
    assert result.returncode == 0 and f"PASS {case}" in result.stdout, result.stdout + result.stderr
