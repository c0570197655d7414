"""Rejected input, kept raw for inspection: a bounded table, counts by reason, one log line per interval.

A flood of bad packets (a misprovisioned device, a fuzzer, an attacker) must neither fill the disk nor the
journal, and must not hide which kind of bad it was. So every reject is counted by reason; the first of a
reason logs at once and later ones within the interval are folded into the next line; the table keeps the
newest `max_rows` rows. Rows are written into the ingest batch's transaction: this module never commits.

`lifeline quarantine list` and `lifeline quarantine show ID` read the store while the daemon runs.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gateway.logs import event

log = logging.getLogger("lifeline.gateway.quarantine")

# What the ingest path rejects, by reason (docs/gateway.md explains each).
REASONS = ("oversize", "malformed", "schema", "unknown-device", "bad-mac", "device-mismatch", "topic",
           "replay", "internal")
MAX_RAW = 65536  # bytes of one payload kept; the broker's message_size_limit bounds what can arrive


@dataclass(frozen=True)
class Row:
    id: int
    at: float
    reason: str
    detail: str
    topic: str
    size: int
    raw: bytes


class Quarantine:
    def __init__(self, conn: sqlite3.Connection, max_rows: int = 10_000,
                 log_interval_s: float = 60.0) -> None:
        self._conn = conn
        self.max_rows = max_rows
        self.log_interval_s = log_interval_s
        conn.execute("CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "at REAL NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, topic TEXT NOT NULL, "
                     "size INTEGER NOT NULL, raw BLOB NOT NULL)")
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def put(self, reason: str, detail: str, topic: str, raw: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        cur = self._conn.execute(
            "INSERT INTO quarantine (at, reason, detail, topic, size, raw) VALUES (?, ?, ?, ?, ?, ?)",
            (now, reason, detail[:500], topic[:300], len(raw), raw[:MAX_RAW]))
        if cur.lastrowid is not None and cur.lastrowid % 64 == 0:  # trim in steps, not per row
            self._conn.execute("DELETE FROM quarantine WHERE id <= ?", (cur.lastrowid - self.max_rows,))
        self.counts[reason] += 1
        last = self._logged_at.get(reason)
        if last is None or now - last >= self.log_interval_s:
            event(log, "quarantined", logging.WARNING, reason=reason, detail=detail[:200], topic=topic,
                  size=len(raw), suppressed=self._suppressed.pop(reason, 0), total=self.counts[reason])
            self._logged_at[reason] = now
        else:
            self._suppressed[reason] += 1

    def tick(self, now: float) -> None:
        """Log the rejects folded away during an interval that has now ended."""
        for reason, n in list(self._suppressed.items()):
            if now - self._logged_at.get(reason, 0.0) >= self.log_interval_s:
                event(log, "quarantined", logging.WARNING, reason=reason, suppressed=n,
                      total=self.counts[reason])
                del self._suppressed[reason]
                self._logged_at[reason] = now


def rows(conn: sqlite3.Connection, reason: str | None = None, limit: int = 50) -> list[Row]:
    sql = "SELECT id, at, reason, detail, topic, size, raw FROM quarantine"
    args: tuple[object, ...] = ()
    if reason:
        sql += " WHERE reason = ?"
        args = (reason,)
    sql += " ORDER BY id DESC LIMIT ?"
    return [Row(*r) for r in conn.execute(sql, (*args, limit))]


def row(conn: sqlite3.Connection, row_id: int) -> Row | None:
    r = conn.execute("SELECT id, at, reason, detail, topic, size, raw FROM quarantine WHERE id = ?",
                     (row_id,)).fetchone()
    return None if r is None else Row(*r)


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="site.toml (its [store] path is read)")
    where.add_argument("--store", type=Path, help="the gateway's SQLite store")
    sub = parser.add_subparsers(dest="action", required=True)
    lst = sub.add_parser("list", help="newest rejected messages")
    lst.add_argument("--reason", choices=REASONS)
    lst.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", help="one rejected message in full")
    show.add_argument("id", type=int)


def open_readonly(args: argparse.Namespace) -> sqlite3.Connection:
    """The store, read-only, so inspection never takes a write lock from the running daemon."""
    if args.store is not None:
        path = Path(args.store)
    else:
        from gateway.config import load

        path = load(args.config).store_path
    if not path.exists():
        raise FileNotFoundError(f"no gateway store at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _diagnostic(raw: bytes) -> str:
    """Best-effort CBOR decode for a human: the envelope, and the body inside it if it parses."""
    import cbor2

    try:
        outer = cbor2.loads(raw)
    except Exception as exc:
        return f"not CBOR: {exc}"
    text = repr(outer)
    value = getattr(outer, "value", None)
    if isinstance(value, (list, tuple)) and len(value) == 4 and isinstance(value[2], bytes):
        try:
            text += "\nbody: " + repr(cbor2.loads(value[2]))
        except Exception as exc:
            text += f"\nbody: not CBOR: {exc}"
    return text


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gateway.config import ConfigError

    console = Console()
    try:
        conn = open_readonly(args)
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    with conn:
        if args.action == "list":
            table = Table("id", "time (UTC)", "reason", "topic", "bytes", "detail")
            for r in rows(conn, args.reason, args.limit):
                table.add_row(str(r.id), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at)), r.reason,
                              r.topic, str(r.size), r.detail)
            console.print(table)
            totals = conn.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()
            console.print("kept: " + (", ".join(f"{reason} {n}" for reason, n in totals) or "none"))
            return 0
        one = row(conn, args.id)
        if one is None:
            console.print(f"[red]no quarantined message {args.id}[/red]")
            return 1
        r = one
        console.print(f"id {r.id}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.at))} UTC\n"
                      f"reason {r.reason}: {r.detail}\ntopic {r.topic}\nsize {r.size} bytes"
                      + (f" (first {len(r.raw)} kept)" if len(r.raw) < r.size else ""))
        console.print("hex: " + r.raw[:512].hex() + ("..." if len(r.raw) > 512 else ""))
        console.print(_diagnostic(r.raw), markup=False)
        return 0
