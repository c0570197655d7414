"""`lifeline status`: the devices of a site (online, boot, firmware, last seen, battery, signal, sequence gaps),
its active alarms and what waits for the district, read from the gateway's store while the daemon runs."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.alarms import Transition
from gateway.outbox import queued
from gateway.registry import Health
from gateway.rules import Level
from gateway.sequence import sequence_stats
from gateway.site_config import ConfigError, load
from gateway.store import created_at
from lifeline.store_access import StoreError, add_store_arguments, open_readonly, plain, store_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser, "site.toml (devices and the [store] path)")


def _span(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _age(now: float, t: float | None) -> str:
    return "never" if t is None else _span(max(0.0, now - t))


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        cfg = load(args.config) if args.config else None
        conn = open_readonly(args, ("device_health",), cfg)
        classes = {d.id: d.cls for d in cfg.devices.values()} if cfg else {}
        budget_mb = cfg.disk_budget_mb if cfg else None
    except (ConfigError, StoreError) as exc:
        print(exc, file=sys.stderr)  # one line as it is: a terminal-wide wrap would break a path
        return 2
    now = time.time()
    with conn:
        console.print(_store_line(store_path(args, cfg), created_at(conn), now),
                      soft_wrap=True)  # a path unbroken
        health = {dev: Health(**json.loads(text))
                  for dev, text in conn.execute("SELECT dev, health FROM device_health")}
        seq = sequence_stats(conn)
        rows: list[tuple[str, ...]] = []
        for dev in sorted(set(health) | set(classes)):
            h = health.get(dev) or Health(dev)
            dups, replays, gaps = seq.get(dev, (0, 0, 0))
            state = "not listed" if cfg and dev not in classes else "online" if h.online else "offline"
            rows.append((dev, classes.get(dev, ""), state,
                         str(h.boot) if h.boot >= 0 else "", plain(h.fw), _age(now, h.last_seen),
                         "" if h.batt is None else f"{h.batt:g}", "" if h.rssi is None else f"{h.rssi:g}",
                         str(gaps), str(dups), str(replays)))
        online = sum(row[2] == "online" for row in rows)
        unlisted = sum(row[2] == "not listed" for row in rows)
        listed = len(rows) - unlisted
        console.print(f"devices: {listed} ({online} online, {listed - online} offline)"
                      + (f"; {unlisted} more in the store, not in site.toml" if unlisted else ""))
        console.print(_columns(rows), soft_wrap=True)
        console.print(_alarm_table(conn, now))
        console.print(_queued(conn, now, budget_mb))
    return 0


def _store_line(path: Path, created: float | None, now: float) -> Text:
    """The store read, and when the gateway created it: a store younger than the site's service is a new one
    the gateway started on (a misspelt [store] path, a store moved away), the old one's data left behind."""
    when = "" if created is None else time.strftime(", created %Y-%m-%d %H:%M UTC", time.gmtime(created)) \
        + f" ({_age(now, created)} ago)"
    return Text(f"store: {plain(str(path))}{when}")


_STATE_STYLE = {"online": "green", "offline": "red", "not listed": "dim"}  # not listed: taken off site.toml


def _columns(rows: list[tuple[str, ...]]) -> Text:
    """The devices as aligned columns in one text, the state coloured: a rich Table takes about a millisecond
    a row, and a site of 20,000 devices waited 27 s, shown nothing, for its table."""
    header = ("device", "class", "state", "boot", "firmware", "last seen", "battery", "rssi", "gaps", "dups",
              "replays")
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(header)]
    text = Text("  ".join(name.ljust(w) for name, w in zip(header, widths, strict=True)).rstrip() + "\n",
                style="bold")
    for row in rows:
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            last = i == len(row) - 1
            state = _STATE_STYLE.get(cell) if i == 2 else None
            text.append(cell if last else cell.ljust(w), style=state)
            text.append("\n" if last else "  ")
    text.rstrip()
    return text


def _queued(conn: sqlite3.Connection, now: float, budget_mb: float | None) -> str:
    """What waits in the outbox for the district (sent but not yet acknowledged included): while its link is
    down, how much and since when."""
    try:
        lanes, used = queued(conn)
    except sqlite3.OperationalError:  # the daemon has not created the outbox yet
        return "queued for the district: nothing (no outbox yet)"
    parts = [f"{name} {n}" + (f" (oldest {_age(now, t)})" if t is not None else "") for name, (n, t) in lanes.items()]
    size = f"{used / 2**10:.0f} KB" if used < 2**20 else f"{used / 2**20:.1f} MB"
    held = f"{size} in the outbox" + (f" (budget {budget_mb:g} MB)" if budget_mb is not None else "")
    return "queued for the district: " + ", ".join(parts) + "; " + held


def _alarm_table(conn: sqlite3.Connection, now: float) -> Any:
    """Active alarms as the alarm engine stored them (alarms.py's alarm_active table), highest level first."""
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
        if t.value is None:
            value = ""
        elif t.rule_kind == "stale":  # the device's silence in seconds when the alarm last moved
            value = f"silent {_span(t.value)}"
        else:
            value = f"{t.value:g}" + (f" {t.unit}" if t.unit else "")
        table.add_row(alarm_id[:12], f"[{colour[label]}]{label}[/{colour[label]}]", t.device, t.metric or "stale",
                      t.point or "", value, f"{t.rule} v{t.rule_version}", _age(now, raised_at) + " ago",
                      "yes" if acked_at is not None else "no", str(resends))
    return table
