"""Device registry (from site.toml: id, class, key, position) and device health (from what devices say).

Health is what an operator asks first when a reading is missing: is the device online, since which boot,
on which firmware, with what battery and signal, when was it last heard, how many sequence numbers went
missing. It lives in the store (rows written inside the ingest batch, never committed here), so
`lifeline status` can read it while the daemon runs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import DeviceConfig


@dataclass
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
    def __init__(self, conn: sqlite3.Connection, devices: Mapping[str, DeviceConfig]) -> None:
        self._conn = conn
        self.devices: Mapping[str, DeviceConfig] = devices
        conn.execute("CREATE TABLE IF NOT EXISTS device_health (dev TEXT PRIMARY KEY, health TEXT NOT NULL)")
        self._health: dict[str, Health] = {}
        self._load()
        self._dirty: set[str] = set()

    def _load(self) -> None:
        self._health = {dev: Health(**json.loads(text))
                        for dev, text in self._conn.execute("SELECT dev, health FROM device_health")}

    def replace(self, devices: Mapping[str, DeviceConfig]) -> None:
        """New registry from a reloaded config; health of devices that stay is kept."""
        self.devices = devices

    def key_for(self, kid: bytes) -> bytes | None:
        try:
            dev = self.devices.get(kid.decode())
        except UnicodeDecodeError:
            return None
        return None if dev is None else dev.key

    def health(self, dev: str) -> Health:
        h = self._health.get(dev)
        if h is None:
            h = self._health[dev] = Health(dev)
        self._dirty.add(dev)
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
        h.rssi = _number(body.get("rssi"))
        h.batt = _number(body.get("batt"))
        ip = body.get("ip")
        h.ip = ip if isinstance(ip, str) else ""
        h.sleep_s = _number(body.get("sleep")) or 0.0
        if live and body["clk"] == 1:
            h.boot_epoch = now - float(body["t"])

    def death(self, dev: str) -> None:
        h = self.health(dev)
        h.online = False
        h.deaths += 1

    def sleep_s(self, dev: str) -> float:
        h = self._health.get(dev)
        return h.sleep_s if h is not None else 0.0

    def boot_epoch(self, dev: str, boot: int) -> float | None:
        h = self._health.get(dev)
        return h.boot_epoch if h is not None and h.boot == boot else None

    def all(self) -> list[Health]:
        return [self._health.get(dev) or Health(dev) for dev in sorted(self.devices)]

    def flush(self) -> None:
        if self._dirty:
            self._conn.executemany("INSERT OR REPLACE INTO device_health (dev, health) VALUES (?, ?)",
                                   [(d, json.dumps(vars(self._health[d]))) for d in self._dirty])
            self._dirty.clear()

    def rollback(self) -> None:
        self._load()
        self._dirty.clear()


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


# ------------------------------------------------------------------------------------ lifeline status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="site.toml (devices and the [store] path)")
    where.add_argument("--store", type=Path, help="the gateway's SQLite store")


def _age(now: float, t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gateway.config import ConfigError, load
    from gateway.quarantine import open_readonly
    from gateway.sequence import sequence_stats

    console = Console()
    try:
        conn = open_readonly(args)
        classes = {d.id: d.cls for d in load(args.config).devices.values()} if args.config else {}
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    now = time.time()
    with conn:
        health = {dev: Health(**json.loads(text))
                  for dev, text in conn.execute("SELECT dev, health FROM device_health")}
        seq = sequence_stats(conn)
        table = Table("device", "class", "state", "boot", "firmware", "last seen", "battery", "rssi",
                      "gaps", "dups", "replays", title="devices")
        for dev in sorted(set(health) | set(classes)):
            h = health.get(dev) or Health(dev)
            dups, replays, gaps = seq.get(dev, (0, 0, 0))
            table.add_row(dev, classes.get(dev, ""), "[green]online[/green]" if h.online else "[red]offline[/red]",
                          str(h.boot) if h.boot >= 0 else "", h.fw, _age(now, h.last_seen),
                          "" if h.batt is None else f"{h.batt:g}", "" if h.rssi is None else f"{h.rssi:g}",
                          str(gaps), str(dups), str(replays))
        console.print(table)
        console.print(_alarm_table(conn, now))
    return 0


def _alarm_table(conn: sqlite3.Connection, now: float) -> Any:
    """Active alarms as the alarm engine stored them (alarms.py's alarm_active table), highest level first."""
    from rich.table import Table

    from gateway.alarms import Transition
    from gateway.rules import Level

    colour = {"blue": "blue", "yellow": "yellow", "orange": "dark_orange", "red": "red"}
    table = Table("alarm", "level", "device", "metric", "point", "value", "rule", "raised", "acked", "resends",
                  title="active alarms")
    try:
        rows = conn.execute("SELECT id, level, raised_at, acked_at, resends, last FROM alarm_active "
                            "ORDER BY level DESC, raised_at").fetchall()
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        rows = []
    for alarm_id, level, raised_at, acked_at, resends, last in rows:
        t = Transition.from_body(json.loads(last))
        label = Level(level).label
        value = "" if t.value is None else f"{t.value:g}" + (f" {t.unit}" if t.unit else "")
        table.add_row(alarm_id[:12], f"[{colour[label]}]{label}[/{colour[label]}]", t.device, t.metric or "stale",
                      t.point or "", value, f"{t.rule} v{t.rule_version}", _age(now, raised_at) + " ago",
                      "yes" if acked_at is not None else "no", str(resends))
    return table
