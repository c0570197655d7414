"""The ESP32 backend against the ESP32 API as micropython-esp32-stubs types it (MicroPython 1.29).

hal/esp32.py is the one module written against machine, network and esp32, and no board runs it here,
so mypy checks its calls (names, arities, keywords, argument types) against the stubs: the nearest
thing to running it. The stubs put their modules at the top of site-packages, where mypy does not look
for them, and come with a MicroPython typeshed of their own, so the check gets a directory of links and
a config of its own; errors inside the stubs are theirs and stay silent (follow_imports_for_stubs)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from lifeline import upy

BACKEND = upy.FIRMWARE / "lib" / "hal" / "esp32.py"


def _link_tops(dist_name: str, into: Path, skip: tuple[str, ...] = ()) -> Path:
    """Links to a distribution's top-level modules and packages; returns where they are installed."""
    dist = importlib.metadata.distribution(dist_name)
    root = Path(str(dist.locate_file("")))
    for top in sorted({f.parts[0] for f in dist.files or ()}):
        if top.endswith(".dist-info") or top in skip or not (root / top).exists():
            continue
        (into / top).symlink_to(root / top)
    return root


def mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    _link_tops("micropython-esp32-stubs", stubs, skip=("stdlib",))
    typeshed = _link_tops("micropython-stdlib-stubs", stubs, skip=("stdlib",))  # _mpy_shed, their helpers
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\ncheck_untyped_defs = True\nfollow_imports = silent\nfollow_imports_for_stubs = True\n"
                      f"custom_typeshed_dir = {typeshed}\n"
                      f"mypy_path = {stubs}:{upy.FIRMWARE / 'lib'}:{upy.ROOT}\n"
                      f"cache_dir = {tmp_path / 'cache'}\n")
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


def test_esp32_backend_calls_the_esp32_api_as_the_stubs_type_it(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"  # the check must be able to fail: an API that is not there, a bad keyword
    wrong.write_text("import machine\nimport esp32\n\nmachine.soft_rest()\n"
                     "esp32.wake_on_ext0(machine.Pin(4), esp32.WAKEUP_ANY_HIGH, edge=1)\n")
    run = mypy(tmp_path, BACKEND, wrong)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if e.startswith(str(BACKEND))] == [], run.stdout
    assert any('has no attribute "soft_rest"' in e for e in errors), run.stdout
    assert any("wake_on_ext0" in e for e in errors), run.stdout
    assert len(errors) == 2, run.stdout
