"""What the long-running processes (the gateway, a district worker, the desk) owe their systemd units.

A SIGHUP is a reload to them, but before the reload was installed (the imports, the store or the database
opened: half a second and more) it killed them: a `systemctl reload` or a logrotate postrotate run just after
a start took the service down. `hold_reload()`, the first thing `lifeline` does for these roles, notes a
SIGHUP instead; `ready()` installs the reload and then does a noted one, once.

Readiness (sd_notify(3)): the units are Type=notify, so `systemctl start` returns, and systemd lets a reload
through, once READY=1 says the process serves; a reload is told by RELOADING=1 and READY=1 around it, and a
long start's steps by STATUS and EXTEND_TIMEOUT_USEC (district/store.py). Without $NOTIFY_SOCKET (not run by
systemd) nothing is sent. Our own few lines: sdnotify, the pure-Python package, is
unkept since 2017, and systemd-python needs libsystemd's headers to install.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

_held: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold_reload() -> None:
    """Note a SIGHUP until `ready()`, instead of dying of it."""
    signal.signal(signal.SIGHUP, _note)


def ready(reload: Callable[[], None]) -> None:
    """The process serves: READY=1, SIGHUP calls `reload` on the running loop from now on, and a SIGHUP held
    since the start is done now, once (as a callback of the loop, as a signal's is)."""
    import asyncio  # the caller's already; at the top, 15 ms more before `lifeline` could hold a SIGHUP

    def told() -> None:
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            reload()
        finally:
            notify("READY=1")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, told)
    notify("READY=1")
    if _held:
        _held.clear()
        loop.call_soon(told)


def notify(state: str) -> None:
    """Send `state` to the service manager, if there is one; as sd_notify(3), a failure to is no error."""
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where:
        return
    address = "\0" + where[1:] if where.startswith("@") else where  # @: an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(address)
        s.sendall(state.encode())
