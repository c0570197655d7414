"""flashq and persist under the real MicroPython unix port with a 64K heap, one process per case, on a
host directory and on littlefs (the ESP32's file system, over a disk image)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from upy_support import SCRIPTS, build, env, queue_dir

from lifeline import upy

CASES = re.findall(r"^def case_(\w+)\(", (SCRIPTS / "flashq_cases.py").read_text(), re.M)


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"), "flashq", "persist", "lfsdisk", "flashq_cases")


@pytest.mark.parametrize("fs", ["posix", "littlefs"])
@pytest.mark.parametrize("case", CASES)
def test_flashq_case(case: str, fs: str, mpy_dir: Path, tmp_path: Path) -> None:
    where = queue_dir(fs, tmp_path, mpy_dir)
    result = upy.run("-m flashq_cases", where, case, env=env(mpy_dir), timeout=60)
    assert result.returncode == 0 and f"PASS {case}" in result.stdout, result.stdout + result.stderr
