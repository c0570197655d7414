"""What every virtual device shares: the MicroPython unix port run as a board's chip in its flash directory,
kept powered through the sim backend's resets, deep sleeps and soft resets as a board's supply keeps its chip
running, cut when asked as a power loss cuts it (with what the chip's RTC domain kept), and the sim world beside
it started and stopped. Two kinds of virtual device build on it: lifeline/virtual/device.py, a blank board
behind a pty that `lifeline flash` flashes, and lifeline/virtual/flashdir.py, a flash directory provisioned in
place and run directly.

The sim backend ends the interpreter for what ends a chip's run (firmware/sim/hal_sim.py): exit code 3 for
a reset, 4 for a deep sleep (whose length it leaves in its reset mark), 5 for a soft reset. The supply
starts the board again at once after a reset or soft reset, after the sleep's length after a deep sleep,
and after a short pause after anything else (a crash), so that a crash loop cannot spin a core.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from lifeline import signals, upy

EXIT_RESET = 3
EXIT_DEEPSLEEP = 4
EXIT_SOFT = 5
SIM_MARK = ".hal.json"  # the sim backend's reset mark: what a chip keeps in its RTC domain, lost with the power
WORLD_HEAP = "2M"  # the unix port's own default, which the world gets when the device starts it
RESTART_PAUSE_S = 0.2


def world_port(flash: Path) -> int | None:
    """The sim world's control port, from the flash directory's sim.json (None without one)."""
    try:
        return int(json.loads((flash / "sim.json").read_text())["control_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def control(port: int, timeout: float = 2.0, **msg: Any) -> dict[str, Any]:
    """One control datagram to a sim world (docs/firmware.md); returns its reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(json.dumps(msg).encode(), ("127.0.0.1", port))
        reply: dict[str, Any] = json.loads(s.recv(1024))
        return reply


class UnixPortDevice:
    """One virtual board's chip and power supply. A subclass says how its interpreter is started
    (`_spawn`); `power_on()` boots it and keeps it running until `power_off()`."""

    def __init__(self, flash_dir: Path, heap: str = upy.FIRMWARE_HEAP, wrap: list[str] | None = None) -> None:
        """wrap: argv put in front of the interpreter's (the bench runs it under strace)."""
        self.flash_dir = Path(flash_dir)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.heap = heap
        self.wrap = wrap or []
        self.boots = 0
        self.exit_codes: list[int] = []  # every end of the interpreter but the one power_off() made
        self._proc: subprocess.Popen[bytes] | None = None
        self._powered = False
        self._closed = False
        self._lock = threading.Lock()
        self._kick = threading.Event()  # ends the supervisor's wait: set by power_off() and cut()
        self._supervisor: threading.Thread | None = None

    def _spawn(self, soft: bool) -> subprocess.Popen[bytes]:
        """Start the interpreter; `soft` when it follows a soft reset the host asked for at the raw REPL."""
        raise NotImplementedError

    def _soft_reset_asked(self, code: int) -> bool:
        """Whether this exit is a soft reset the host asked for (only a board with a REPL link has one)."""
        return False

    def argv(self, *args: str) -> list[str]:
        """The unix port's argv for this board: its heap, behind the wrapper if any."""
        return [*self.wrap, upy.micropython_binary(), "-X", f"heapsize={self.heap}", *args]

    # power

    def power_on(self) -> None:
        """Boot the board and keep it running through resets until power_off()."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.flash_dir}: device is closed")
            if self._powered:
                return
            self._powered = True
            self._kick.clear()
            self._boot(False)
        self._supervisor = threading.Thread(target=self._supervise, name=f"{self.flash_dir.name}-power",
                                            daemon=True)
        self._supervisor.start()

    def power_off(self) -> None:
        """Cut the power: SIGKILL, whatever the board was doing (a flash write included), and stay off. What
        the RTC domain kept (reset cause, RTC time and memory, a deep sleep's timer) goes with it."""
        with self._lock:
            self._powered = False
            self._kick.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)
            proc.wait()
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None
        self._forget_rtc()

    def cut(self) -> None:
        """A power cut the supply recovers from: SIGKILL if the board runs, the RTC domain's mark gone, and the
        board boots again at once, a sleeping one too (its wake timer went with the power)."""
        with self._lock:
            self._kick.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    def _forget_rtc(self) -> None:
        (self.flash_dir / SIM_MARK).unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _boot(self, soft: bool) -> None:
        with signals.held():
            self._proc = self._spawn(soft)
        self.boots += 1

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        if self.wrap:  # a wrapper (strace) that is killed detaches its child, which would run on
            with contextlib.suppress(OSError):
                for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)

    def _supervise(self) -> None:
        while True:
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            soft = self._soft_reset_asked(code)
            with self._lock:
                if not self._powered or self._proc is not proc:
                    return
                self.exit_codes.append(code)
            if not soft:
                self._kick.wait(self._downtime(code))
            with self._lock:
                if not self._powered or self._closed:
                    return
                if self._kick.is_set():  # cut(), while the board ran or while it was down
                    self._kick.clear()
                    self._forget_rtc()
                self._boot(soft)

    def _downtime(self, code: int) -> float:
        """How long the board stays down after its interpreter exits (see the module's doc)."""
        if code == EXIT_DEEPSLEEP:
            try:
                mark = json.loads((self.flash_dir / SIM_MARK).read_text())
                return float(mark.get("ms", 0)) / 1000.0
            except (OSError, ValueError, AttributeError):
                return RESTART_PAUSE_S
        return 0.0 if code in (EXIT_RESET, EXIT_SOFT) else RESTART_PAUSE_S

    # the sim world

    def start_world(self, env: dict[str, str], log: Path) -> None:
        """Start the sim world, untraced, and wait until it answers. The device starts its world itself when
        none answers; under a tracer (`wrap`) that world would be traced too, and the tracer would wait for
        it after the device's exit, so the device would never start again."""
        with log.open("ab") as out:
            subprocess.Popen(upy.command("-m simworld", heap=WORLD_HEAP), cwd=self.flash_dir, stdout=out,
                             stderr=subprocess.STDOUT, env=upy.environment(env))
        deadline = time.monotonic() + 10
        while True:
            try:
                self.control(timeout=0.2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise

    def control(self, timeout: float = 2.0, **msg: Any) -> dict[str, Any]:
        """One control datagram to this device's sim world; returns its reply."""
        port = world_port(self.flash_dir)
        if port is None:
            raise OSError(f"{self.flash_dir}: no sim.json, so no sim world")
        return control(port, timeout, **msg)

    def quit_world(self) -> None:
        """The sim world outlives resets on purpose; a device taken off the bench takes it along."""
        port = world_port(self.flash_dir)
        if port is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b'{"quit": true}', ("127.0.0.1", port))
