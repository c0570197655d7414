"""The firmware as virtual devices run it: what a board is flashed with, compiled once, and beside it (never
in a board's image) the sim modules that stand in for a board's hardware, so that a virtual device runs
exactly what a board gets plus those.

The sim modules live in firmware/sim/: the sim backend (hal_sim), the sim world and its device models
(simworld, simdev), the ROMFS start-up (simrom) and, in firmware/sim/esp32_machine/, the machine, network,
esp32 and ntptime modules an ESP32 has built in, over the sim world, so hal/esp32.py runs on the unix port.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from lifeline import upy

SIM = upy.FIRMWARE / "sim"
ESP32_MACHINE = SIM / "esp32_machine"
SIMROM = SIM / "simrom.py"
SIM_IMAGE = "sim.romfs"  # in build_firmware's tree: the sim backend's own ROM image (simrom.py)


def compile_sim(out: Path) -> Path:
    """The sim modules as .mpy in out/sim/ and the ESP32 stand-ins in out/esp32_machine/, each a directory of
    top-level modules, and the sim's ROM image; returns `out`."""
    for source in sorted(set(SIM.glob("*.py")) - {SIMROM}):  # simrom.py runs as a script, from source
        upy.compile_module(source, out / "sim" / f"{source.stem}.mpy", source.stem)
    upy.compile_package(ESP32_MACHINE, out)
    (out / SIM_IMAGE).write_bytes(upy.romfs_image({p.name: p for p in (out / "sim").glob("*.mpy")}))
    return out


def build_firmware(out: Path) -> Path:
    """firmware/lib and protocol/ as .mpy, the way `lifeline flash` ships them, and beside them (never
    flashed) the sim modules (compile_sim); returns their root."""
    upy.compile_package(upy.FIRMWARE / "lib", out)
    upy.compile_package(upy.ROOT / "protocol", out)
    return compile_sim(out)


def build_romfs(mpy: Path) -> Path:
    """The board's modules of build_firmware as a ROMFS image in a board's layout (lib/, lib/protocol/): the
    partition a board built with ROMFS imports from in place (docs/firmware.md, "ROMFS"), holding what
    `lifeline flash --romfs` deploys and no sim module. Returns its path."""
    files = {f"lib/{p.relative_to(mpy / 'lib')}": p for p in (mpy / "lib").rglob("*.mpy")}
    files |= {f"lib/{p.relative_to(mpy)}": p for p in (mpy / "protocol").rglob("*.mpy")}
    image = mpy.parent / "firmware.romfs"
    image.write_bytes(upy.romfs_image(files))
    return image


def import_path(lib: list[Path], sim: Path, hal: str = "sim") -> str:
    """MICROPYPATH for a virtual device whose board modules are in the `lib` directories and whose
    compiled sim modules (compile_sim) are in `sim`: the board's modules first, then the sim's, with the
    ESP32 stand-ins in front of everything when the device runs hal/esp32.py."""
    dirs = [*lib, sim / "sim"]
    if hal == "esp32":
        dirs.insert(0, sim / "esp32_machine")
    return ":".join([*map(str, dirs), ".frozen"])


@functools.cache
def compiled_sim() -> Path:
    """compile_sim once for this process (a virtual board flashed by `lifeline flash` gets no sim module
    with its firmware), removed when the process ends."""
    out = Path(tempfile.mkdtemp(prefix="lifeline-sim-"))
    atexit.register(shutil.rmtree, out, True)
    return compile_sim(out)
