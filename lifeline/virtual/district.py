"""A recorder on the district broker for benchmarks: counts what arrives and when."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lifeline.virtual import wire

# Given a topic and payload, how many device messages it accounts for (a batched pack holds many).
Counter = Callable[[str, bytes], int]


class Recorder:
    """A QoS 1 subscription (lifeline/virtual/wire.py, so the recorder takes little CPU from what it measures)."""

    def __init__(self, host: str, port: int, topic: str, count: Counter,
                 on_message: Callable[[str, bytes, float], None] | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.device_messages = 0
        self.mqtt_messages = 0
        self.first: float | None = None
        self.last: float | None = None
        self._count = count
        self._hook = on_message
        self._lock = threading.Lock()
        self.errors: list[str] = []  # messages the count function or the hook failed on
        self._sub = wire.Subscriber(host, port, f"recorder-{time.time_ns()}", topic, self._on_message, auth)
        self.subscribed = self._sub.subscribed  # set once the broker has granted the subscription

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._take(topic, payload)
        except Exception as exc:  # the reader thread would die on it and silently stop counting
            self.errors.append(f"{topic}: {exc!r}")

    def _take(self, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        n = self._count(topic, payload)
        with self._lock:
            self.mqtt_messages += 1
            self.device_messages += n
            self.first = self.first or now
            self.last = now
        if self._hook:
            self._hook(topic, payload, now)

    def wait_for(self, device_messages: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.device_messages >= device_messages:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._sub.close()
