"""Ships firmware modules and MicroPython test scripts as .mpy, as `lifeline flash` does for a board:
the 64K heap cannot compile the larger modules from source."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from lifeline import upy
from lifeline.virtual.flashdir import FlashDirDevice

LIB = upy.FIRMWARE / "lib"
SCRIPTS = Path(__file__).parent / "upy"


class WrappedDevice(FlashDirDevice):
    """A FlashDirDevice whose main.py runs under a script of tests/firmware/upy (`micropython SCRIPT main.py`)
    that changes one thing about its starts: cutboot.py, crashboot.py."""

    script = ""

    def _spawn(self, soft: bool) -> subprocess.Popen[bytes]:
        argv = self.argv(str(SCRIPTS / self.script), str(upy.FIRMWARE / "main.py"))
        with self.log.open("ab") as out:
            return subprocess.Popen(argv, cwd=self.flash, stdout=out, stderr=subprocess.STDOUT,
                                    env=upy.environment(self._environment(self.hal)))


def build(out: Path, *names: str) -> Path:
    """Compile firmware/lib/NAME.py or tests/firmware/upy/NAME.py for each name into `out`."""
    for name in names:
        source = LIB / f"{name}.py"
        if not source.exists():
            source = SCRIPTS / f"{name}.py"
        upy.compile_module(source, out / f"{name}.mpy")
    return out


def env(mpy_dir: Path) -> dict[str, str]:
    return {"MICROPYPATH": f"{mpy_dir}:.frozen"}


def queue_dir(fs: str, tmp_path: Path, mpy_dir: Path) -> str:
    """Where a MicroPython script keeps its queue: a host directory ("posix"), or a freshly formatted
    littlefs image ("littlefs", needs lfsdisk built into mpy_dir)."""
    if fs == "posix":
        return str(tmp_path / "q")
    image = tmp_path / "flash.img"
    result = upy.run("-m lfsdisk", str(image), env=env(mpy_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return f"lfs:{image}"


def case_outcomes(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Case name -> its PASS/FAIL line and the traceback after it, from a drivercheck run's output; what the
    run printed whole under the name "" when no case ran."""
    blocks = re.split(r"^(?=PASS |FAIL )", result.stdout, flags=re.M)
    found = {m.group(1): b for b in blocks if (m := re.match(r"(?:PASS|FAIL) (\w+)", b))}
    return found or {"": f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"}
