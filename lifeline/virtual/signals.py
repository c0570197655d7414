"""The stop signals held while a child process is started and its handle kept.

A tool's handler for SIGINT, SIGTERM or SIGHUP raises in the main thread wherever it happens to be. Raised
inside Popen, after the fork, or before the caller has stored what Popen returned, it left a child nobody held,
so nobody stopped it: a broker holding its port, a gateway in a session of its own. Inside `held()` the signals
are only noted; the tool's own handlers get them as the block ends, once the child is where its stop finds it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
