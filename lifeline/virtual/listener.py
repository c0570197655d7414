"""What one virtual device publishes, as its gateway would check it: a subscriber to the device's topics on
the site broker that authenticates every message with the device key and decodes it (cbor2 for the CBOR),
so the firmware tests and the firmware bench judge the firmware by what arrives on the wire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.virtual.flashdir import KEY
from protocol import message_check, topics


class Listener:
    """Subscribes to one device's topics on the site broker; keeps every message, decoded and
    verified with the device key (cbor2 for the CBOR), in arrival order."""

    def __init__(self, broker_port: int, site: str, dev: str, key: bytes = KEY, persistent: bool = False) -> None:
        """persistent: a session the broker keeps (and queues for) while this listener is away."""
        self.site, self.dev, self.key = site, dev, key
        self.messages: list[tuple[str, dict[str, Any], bytes, bool]] = []
        self.errors: list[str] = []
        self._cv = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{dev}-{time.time_ns()}",
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.subscribe(f"{topics.ROOT}/{site}/{dev}/#", qos=1)
        self.client.loop_start()

    def _key_for(self, kid: bytes) -> bytes | None:
        return self.key if kid == self.dev.encode() else None

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        _, _, kind = topics.parse_device(msg.topic)
        try:
            body = message_check.decode(msg.payload, self._key_for, kind, loads=cbor2.loads)
        except message_check.MessageError as exc:
            with self._cv:
                self.errors.append(f"{msg.topic}: {exc}")
            return
        with self._cv:
            self.messages.append((kind, dict(body), bytes(msg.payload), bool(msg.retain)))
            self._cv.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cv:
            return [b for k, b, _, _ in self.messages if k == kind]

    def wait(self, pred: Callable[[list[tuple[str, dict[str, Any], bytes, bool]]], bool],
             timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


