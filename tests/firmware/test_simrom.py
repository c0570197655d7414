"""firmware/sim/simrom.py, a virtual device's ROMFS start-up, refuses a missing or mis-sized reservation with the
reason instead of mounting a torn image; with the right one, main.py runs on modules from /rom alone (the sim
backend, loaded before it from the sim's own image, is no module of the board's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lifeline import upy
from lifeline.virtual.firmware import SIM_IMAGE, SIMROM, build_romfs


@pytest.fixture(scope="module")
def image(mpy: Path) -> Path:
    return build_romfs(mpy)


def start(flash: Path, image: Path, main: str, reserve: int | None, mpy: Path) -> tuple[int, str]:
    """The board's image with `reserve` bytes reserved for it; the sim's image (build_firmware's) with its own."""
    flash.mkdir(exist_ok=True)
    shutil.copyfile(image, flash / ".romfs")
    sim = mpy / SIM_IMAGE
    shutil.copyfile(sim, flash / ".sim.romfs")
    (flash / "main.py").write_text(main)
    env = {"MICROPYPATH": ".frozen", "LIFELINE_SIMROM": "x" * sim.stat().st_size}
    if reserve is not None:
        env["LIFELINE_ROMFS"] = "x" * reserve
    run = upy.run(SIMROM, "main.py", cwd=flash, env=env, heap=upy.FIRMWARE_HEAP, timeout=30)
    return run.returncode, run.stdout + run.stderr


def test_main_imports_from_the_image_alone(tmp_path: Path, image: Path, mpy: Path) -> None:
    main = ("import sys\nfrom protocol import cbor\nfrom app import clock\n"
            "print(sys.path, cbor.__file__, clock.__file__)\n")
    rc, out = start(tmp_path / "flash", image, main, image.stat().st_size, mpy)
    assert rc == 0, out
    assert out.split() == ["['/rom/lib',", "'/rom',", "'.frozen']", "/rom/lib/protocol/cbor.mpy",
                           "/rom/lib/app/clock.mpy"]


@pytest.mark.parametrize("reserve, reason", [
    (None, "LIFELINE_ROMFS is not set"),
    (100, "LIFELINE_ROMFS reserves 100 bytes for a"),
])
def test_a_missing_or_mis_sized_reservation_is_refused(tmp_path: Path, image: Path, reserve: int | None,
                                                       reason: str, mpy: Path) -> None:
    rc, out = start(tmp_path / "flash", image, "print('ran')\n", reserve, mpy)
    assert rc == 1 and reason in out and "ran" not in out, out
