"""Helpers of the OTA suites: the relay that serves releases as the gateway does, provisioning the release
key, and reading births and "ota" events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.ota_relay import Releases
from lifeline import release
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from protocol import senml_resolve, topics

SITE, DEV = "site-a", "dev-01"
Build = Callable[..., release.Release]


class Relay:
    """The gateway's part, served from gateway/ota_relay.Releases over paho; `tamper` flips one byte of the
    release at that offset in what it serves."""

    def __init__(self, port: int, site: str = SITE) -> None:
        self.releases = Releases(site)
        self.tamper: int | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-{site}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.device_filter(site, topics.OTA_REQ), qos=0)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        chunk = self.releases.answer(msg.topic, msg.payload)
        if chunk is None:
            return
        topic, payload = chunk.topic, chunk.payload
        off = int.from_bytes(payload[:4], "big")
        if self.tamper is not None and off <= self.tamper < off + len(payload) - 4:
            b = bytearray(payload)
            b[4 + self.tamper - off] ^= 0x01
            payload = bytes(b)
        client.publish(topic, payload, qos=0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def provision(dev: FlashDirDevice, key: Ed25519PrivateKey) -> None:
    """The release key's public half in device.json, as `lifeline flash` would write it."""
    d = dev.read("device.json")
    d["ota_key"] = release.public_hex(key)
    dev._write("device.json", d)


def births(listener: Listener) -> list[dict[str, Any]]:
    return [b for b in listener.of(topics.STATE) if b.get("st") == "online"]


def ota_events(listener: Listener) -> list[dict[str, Any]]:
    """Each "ota" event's records as {name: value}."""
    out = []
    for body in listener.of(topics.EVENT):
        if body.get("ev") == "ota":
            out.append({r["n"]: r.get("v", r.get("vs", r.get("vb"))) for r in senml_resolve.resolve(list(body["e"]))})
    return out
