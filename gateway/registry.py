"""Device registry (from site.toml: id, class, key, position) and device health (from what devices say).

Health is what an operator asks first when a reading is missing: is the device online, since which boot,
on which firmware, with what battery and signal, when was it last heard, how many sequence numbers went
missing. It lives in the store (rows written inside the ingest batch, never committed here), so
`lifeline status` can read it while the daemon runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway import device_states
from gateway.device_list import DeviceList
from gateway.numbers import finite
from gateway.store import from_json, to_json

MAX_WAKE_S = 7 * 86400.0  # a sleeping device's wake interval is taken as at most this: a command waits no longer


@dataclass(slots=True)
class Health:
    dev: str
    online: bool = False
    boot: int = -1
    boot_epoch: float | None = None  # the gateway's estimate of when boot `boot` started
    fw: str = ""
    prof: str = ""
    rst: str = ""
    last_seen: float | None = None
    rssi: float | None = None
    batt: float | None = None
    ip: str = ""
    sleep_s: float = 0.0  # a deep-sleeping device's wake interval, from its birth: how late it may hear a command
    births: int = 0
    deaths: int = 0
    messages: int = 0


class Registry:
    def __init__(self, conn: sqlite3.Connection, devices: DeviceList, capacity: int = device_states.CAPACITY) -> None:
        self.devices = devices
        self._health = device_states.DeviceStates(conn, "device_health", "health", _health_from_json, _health_json,
                                                  capacity)

    def replace(self, devices: DeviceList) -> None:
        """New registry from a reloaded config; health of devices that stay is kept, and so is their id string."""
        devices.share_ids(self.devices)
        self.devices = devices

    def health(self, dev: str) -> Health:
        h = self._health.get(dev)
        if h is None:
            h = Health(dev)
            self._health.put(dev, h)
        else:
            self._health.changed(dev)
        return h

    def seen(self, dev: str, now: float) -> None:
        h = self.health(dev)
        h.last_seen = now
        h.messages += 1

    def birth(self, dev: str, body: Mapping[str, Any], now: float, live: bool) -> None:
        """A birth. `live` (not a retained copy): its "t" on a boot clock then dates the boot itself."""
        h = self.health(dev)
        if body["boot"] != h.boot:
            h.boot_epoch = None
        h.online, h.boot, h.births = True, body["boot"], h.births + 1
        h.fw, h.prof, h.rst = body["fw"], body["prof"], body["rst"]
        h.rssi = finite(body.get("rssi"))
        h.batt = finite(body.get("batt"))
        ip = body.get("ip")
        h.ip = ip if isinstance(ip, str) else ""
        h.sleep_s = min(max(finite(body.get("sleep")) or 0.0, 0.0), MAX_WAKE_S)
        if live and body["clk"] == 1:  # a time that is no finite number (CBOR's integers have no bound) dates none
            t = finite(body["t"])
            h.boot_epoch = None if t is None else now - t

    def death(self, dev: str) -> None:
        h = self.health(dev)
        h.online = False
        h.deaths += 1

    def sleep_s(self, dev: str) -> float:
        h = self._health.peek(dev)
        return h.sleep_s if h is not None else 0.0

    def boot_epoch(self, dev: str, boot: int) -> float | None:
        h = self._health.peek(dev)
        return h.boot_epoch if h is not None and h.boot == boot else None

    def prefetch(self, devs: Iterable[str]) -> None:
        """Read the state of a batch's devices at once (device_states.DeviceStates.prefetch)."""
        self._health.prefetch(devs)

    def flush(self) -> None:
        self._health.flush()

    def rollback(self) -> None:
        self._health.forget()


_HEALTH_FIELDS = tuple(f.name for f in fields(Health))


def _health_json(h: Health) -> str:
    """A health row: its fields by name (dataclasses.asdict deep-copies each value first: 15 µs a row)."""
    return to_json({name: getattr(h, name) for name in _HEALTH_FIELDS})


def _health_from_json(text: str) -> Health:
    return Health(**from_json(text))
