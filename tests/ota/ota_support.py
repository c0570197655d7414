"""Helpers of the OTA suites: the relay that serves releases as the gateway does (for tests of the node
alone), a site with the real gateway daemon in the path (OtaSite), provisioning the release key, and reading
births and "ota" events."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway import ota_relay
from gateway.ota_relay import NodeOta, Releases
from lifeline import release
from lifeline.virtual.flashdir import KEY, FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import STIMULUS, sped_up
from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import ROOT, GatewayProcess, Site, environment, lifeline_cmd
from protocol import senml_resolve, topics

SITE, DEV = "site-a", "dev-01"
Build = Callable[..., release.Release]


class Relay:
    """The gateway's part, served from gateway/ota_relay.Releases over paho; `tamper` flips one byte of the
    release at that offset in what it serves; `hold` stops the node at an offset (for a power cut there)."""

    def __init__(self, port: int, site: str = SITE) -> None:
        self.releases = Releases(site)
        self.tamper: int | None = None
        self.served: list[tuple[int, int]] = []  # (offset, length) of every chunk sent, in order
        self.hold: int | None = None  # requests from this offset on are not answered (while set)
        self.held: list[int] = []  # offsets of requests held back
        self._cv = threading.Condition()
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
        with self._cv:
            if self.hold is not None and off >= self.hold:  # the node waits here, asking again every 2 s
                self.held.append(off)
                self._cv.notify_all()
                return
        if self.tamper is not None and off <= self.tamper < off + len(payload) - 4:
            b = bytearray(payload)
            b[4 + self.tamper - off] ^= 0x01
            payload = bytes(b)
        client.publish(topic, payload, qos=0)
        with self._cv:
            self.served.append((off, len(payload) - 4))
            self._cv.notify_all()

    @property
    def lock(self) -> threading.Condition:
        return self._cv

    def wait(self, pred: Callable[[list[tuple[int, int]]], bool], timeout: float) -> bool:
        """Until pred(served) holds; False after timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: pred(self.served), timeout)

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


class OtaSite:
    """A site whose real gateway daemon (`lifeline gateway`, site.toml's [ota] serving `releases`) relays
    releases to virtual boards running the real firmware, each logged in to the site broker as its device:
    node -> site broker -> gateway -> site broker -> node, as deployed. What the nodes did is read from the
    gateway's store (gateway/ota_relay.Ledger: sealed births and ota events the gateway checked)."""

    def __init__(self, tmp: Path, mpy: Path, key: Ed25519PrivateKey, releases: list[Path],
                 devices: dict[str, str], before_gateway: Callable[[Site], None] | None = None) -> None:
        """`before_gateway`: run once the brokers are up, before the gateway starts (a district service that
        must hear the gateway's first reports)."""
        paths = ", ".join(json.dumps(str(p)) for p in releases)
        self.tmp, self.mpy, self.key = tmp, mpy, key
        self.site = Site(tmp / "site", tls=False, extra_toml=f"[ota]\nreleases = [{paths}]\n")
        self.profiles = devices
        for dev, profile in devices.items():
            self.site.add(dev, profile, key=KEY)
        self.before_gateway = before_gateway
        self.gw: GatewayProcess | None = None
        self.district: Recorder | None = None
        self.devices: dict[str, FlashDirDevice] = {}

    def start(self) -> OtaSite:
        self.site.start()
        if self.before_gateway is not None:
            self.before_gateway(self.site)
        self.gw = GatewayProcess(self.site).start()
        asyncio.run(self.gw.ready())
        self.district = self.site.recorder(raw=True)
        for dev, profile in self.profiles.items():
            d = FlashDirDevice(self.tmp / dev, self.mpy, sped_up(profile), self.site.ports["site"], STIMULUS[profile],
                               dev=dev, site=self.site.id)
            d._write("device.json", {**d.read("device.json"), "ota_key": release.public_hex(self.key),
                                      "broker": {"host": "127.0.0.1", "port": self.site.ports["site"], "user": dev}})
            d._write("secrets.json", {**d.read("secrets.json"), "mqtt_password": self.site.passwords[dev]})
            self.devices[dev] = d.start()
        return self

    def nodes(self) -> dict[str, NodeOta]:
        store = self.site.dir / "gateway.sqlite"
        if not store.exists():
            return {}
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            with conn:
                return ota_relay.read(conn)
        except sqlite3.OperationalError:  # the daemon is mid-write to a table being made
            return {}
        finally:
            conn.close()

    def wait(self, pred: Callable[[dict[str, NodeOta]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.nodes()):
                return True
            time.sleep(0.5)
        return pred(self.nodes())

    def running(self) -> dict[str, str]:
        return {dev: n.running for dev, n in self.nodes().items()}

    def lifeline(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`lifeline ARGS` on this site's config, from this tree, as an operator at the site box runs it."""
        return subprocess.run([*lifeline_cmd(), *args, "--config", str(self.site.config_path)], capture_output=True,
                              text=True, env=environment(), cwd=ROOT, timeout=timeout)

    def upstream(self, kind: str) -> list[dict[str, Any]]:
        """What the district received of one uplink kind (each publish checked with the site's seal)."""
        assert self.district is not None
        return [e.body for e in self.district.entries(kind)]

    def consoles(self) -> str:
        return "\n".join(f"--- {dev}\n{d.console()[-3000:]}" for dev, d in self.devices.items())

    def stop(self) -> None:
        for d in self.devices.values():
            d.stop()
        if self.district is not None:
            self.district.close()
        if self.gw is not None:
            self.gw.stop()
        self.site.stop()

    def __enter__(self) -> OtaSite:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
