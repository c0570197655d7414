"""The stop signals (SIGINT, SIGTERM, SIGHUP) in a tool that starts child processes.

`as_ctrl_c()`: SIGTERM (systemd, kill, a script's timeout) and SIGHUP (a dropped SSH session) end the tool as
Ctrl-C does, through its cleanup; killed outright by them, it left its children running.

`held()`: a handler that raises does so in the main thread wherever it happens to be. Raised inside Popen, after
the fork, or before the caller has stored what Popen returned, it left a child nobody held, so nobody stopped
it: a broker holding its port, a gateway in a session of its own. Inside `held()` the signals are only noted;
the tool's own handlers get them as the block ends, once the child is where its stop finds it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def as_ctrl_c() -> Iterator[None]:
    """KeyboardInterrupt on any stop signal for the block (Ctrl-C too where the tool was started ignoring it, as
    a background job of a script is)."""
    previous = {stop: signal.signal(stop, _interrupt if stop != signal.SIGINT else signal.default_int_handler)
                for stop in STOPS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold the stop signals for the block (in the main thread; a handler never runs in another)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for stop in STOPS:
            if signal.getsignal(stop) is not None:  # one set outside Python cannot be put back: left alone
                previous[stop] = signal.signal(stop, note)
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        for signum in caught:
            signal.raise_signal(signum)  # to the tool's handler, at once
