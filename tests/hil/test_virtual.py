"""The virtual board behaves like a board on a serial port: raw REPL and raw-paste over pyserial and
mpremote, Ctrl-C interrupts the running program, Ctrl-D at the REPL reboots into main.py, and output
nobody reads is dropped rather than stalling the board or surfacing as stale bytes later."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from lifeline.virtual.device import VirtualDevice

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture
def vdev(tmp_path: Path) -> Iterator[VirtualDevice]:
    with VirtualDevice(tmp_path / "flash", name="t") as dev:
        yield dev


def read_until(port: serial.Serial, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(marker) and time.monotonic() < deadline:
        data += port.read(1)
    assert data.endswith(marker), f"no {marker!r} in {data!r}"
    return data


def read_until_either(port: serial.Serial, first: bytes, second: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not (data.endswith(first) or data.endswith(second)) and time.monotonic() < deadline:
        data += port.read(1)
    assert data.endswith((first, second)), f"neither {first!r} nor {second!r} in {data!r}"
    return data


def mpremote(dev: VirtualDevice, *args: str) -> str:
    r = subprocess.run([MPREMOTE, "connect", dev.port, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_raw_repl_and_raw_paste_over_pyserial(vdev: VirtualDevice) -> None:
    vdev.power_on()
    with serial.Serial(vdev.port, 115200, timeout=0.2) as s:
        s.write(b"\r\x03\x03\x01")
        read_until(s, b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"print(6 * 7)\x04")
        assert read_until(s, b"\x04>") == b"OK42\n\x04\x04>"
        s.write(b"\x05A\x01")
        header = s.read(4)
        assert header[:2] == b"R\x01", header  # raw-paste supported; then a 16-bit window size
        s.write(b"import os\nprint(os.getcwd())\x04")
        out = read_until(s, b"\x04>")
        assert str(vdev.flash_dir).encode() in out


def test_mpremote_resume_copies_and_hashes(vdev: VirtualDevice, tmp_path: Path) -> None:
    vdev.power_on()
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 40)
    mpremote(vdev, "resume", "fs", "mkdir", "data")
    mpremote(vdev, "resume", "fs", "cp", str(src), ":data/blob.bin")
    assert (vdev.flash_dir / "data" / "blob.bin").read_bytes() == src.read_bytes()
    assert hashlib.sha256(src.read_bytes()).hexdigest() in mpremote(vdev, "resume", "fs", "sha256sum",
                                                                  ":data/blob.bin")


def test_boots_main_then_ctrl_c_interrupts_and_ctrl_d_reboots(vdev: VirtualDevice) -> None:
    (vdev.flash_dir / "main.py").write_text(
        "import time\nprint('main up')\nwhile True:\n    time.sleep(0.05)\n")
    vdev.power_on()
    with serial.Serial(vdev.port, 115200, timeout=0.2) as s:
        s.write(b"\r\x03")  # at once: a Ctrl-C while the interpreter is still starting must not kill it
        # Whether that early Ctrl-C lands before or inside main.py depends on the machine's load, so
        # interrupt again once main.py is certainly running.
        if not read_until_either(s, b">>> ", b"main up\n").endswith(b">>> "):
            s.write(b"\x03")
            read_until(s, b">>> ")  # main.py was interrupted: the board is at its REPL
        s.write(b"\x04")  # soft reset: the board boots again and runs main.py
        read_until(s, b"main up\n")
    assert vdev.boots == 2 and vdev.exit_codes == [0]
    assert vdev.console().count(b"main up") == 2


def test_soft_reset_at_the_raw_repl_gives_a_clean_board(vdev: VirtualDevice) -> None:
    """mpremote without `resume` soft-resets: the running main.py stops, its heap is freed, and main.py is
    not run again (a board's soft reset in raw REPL mode runs boot.py only)."""
    (vdev.flash_dir / "boot.py").write_text("print('boot ran')\n")
    (vdev.flash_dir / "main.py").write_text(
        "import time\nheld = [bytearray(1000) for _ in range(60)]\nprint('main up')\n"
        "while True:\n    time.sleep(0.05)\n")
    vdev.power_on()
    deadline = time.monotonic() + 10
    while b"main up" not in vdev.console() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = mpremote(vdev, "exec", "import gc\ngc.collect()\nprint('free', gc.mem_free(), 'held' in globals())")
    free = int(out.split()[1])
    assert free > 100_000 and out.split()[2] == "False", out  # most of the heap, none of it main.py's
    console = vdev.console()
    assert console.count(b"main up") == 1 and console.count(b"boot ran") == 2
    assert b"MPY: soft reboot" in console


def test_output_without_a_listener_is_dropped(vdev: VirtualDevice) -> None:
    (vdev.flash_dir / "main.py").write_text(
        "n = 0\nwhile n < 2000:\n    print('line', n, 'x' * 100)\n    n += 1\nprint('done')\n")
    vdev.power_on()
    deadline = time.monotonic() + 20
    while b"done" not in vdev.console() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"done" in vdev.console(), "the board stalled on output nobody read"
    with serial.Serial(vdev.port, 115200, timeout=0.3) as s:
        s.write(b"\r")
        late = s.read(4096)
    assert b"line" not in late  # nothing stale: only the REPL's answer to our key press
    assert b">>>" in late


def test_power_off_is_a_power_cut(vdev: VirtualDevice) -> None:
    (vdev.flash_dir / "main.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    vdev.power_on()
    pid = vdev.pid
    assert pid is not None
    vdev.power_off()
    assert not vdev.running
    time.sleep(0.5)
    assert not vdev.running and vdev.boots == 1  # no reboot after a cut
    vdev.power_on()
    assert vdev.running and vdev.pid != pid
