"""A recorder on the district broker for benchmarks: counts what arrives and when."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# Given a topic and payload, how many device messages it accounts for (a batched pack holds many).
Counter = Callable[[str, bytes], int]


class Recorder:
    def __init__(self, host: str, port: int, topic: str, count: Counter,
                 on_message: Callable[[str, bytes, float], None] | None = None) -> None:
        self.device_messages = 0
        self.mqtt_messages = 0
        self.first: float | None = None
        self.last: float | None = None
        self._count = count
        self._hook = on_message
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"recorder-{time.time_ns()}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        n = self._count(msg.topic, msg.payload)
        with self._lock:
            self.mqtt_messages += 1
            self.device_messages += n
            self.first = self.first or now
            self.last = now
        if self._hook:
            self._hook(msg.topic, msg.payload, now)

    def wait_for(self, device_messages: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.device_messages >= device_messages:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
