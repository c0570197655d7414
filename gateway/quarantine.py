"""Rejected input, kept raw for inspection: a bounded table, counts by reason, one log line per interval.

A flood of bad packets (a misprovisioned device, a fuzzer, an attacker) must neither fill the disk nor the
journal, and must not hide which kind of bad it was. So every reject is counted by reason; the first of a
reason logs at once and later ones within the interval are folded into the next line; the table keeps the
newest rows within two bounds, `max_rows` and `max_bytes` of raw payloads (10,000 payloads of 64 KiB would
otherwise outgrow the site's disk), evicting the oldest first and counting what each bound evicted. Rows are
written into the ingest batch's transaction: this module never commits, and its counts and bytes go back with
a rollback (`committed`, `rollback`), as the rows do.

`lifeline quarantine list` and `lifeline quarantine show ID` read the store while the daemon runs.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from gateway.logs import event

log = logging.getLogger("lifeline.gateway.quarantine")

# What the ingest path rejects, by reason (docs/gateway.md explains each).
REASONS = ("oversize", "malformed", "schema", "unknown-device", "bad-mac", "device-mismatch", "topic",
           "replay", "internal")
MAX_RAW = 65536  # bytes of one payload kept; the broker's message_size_limit bounds what can arrive
MAX_BYTES = 32 * 1024 * 1024  # raw payload bytes kept, by default
LOW_WATER = 0.9  # a byte pass frees down to this fraction, so the next few puts do not start another


@dataclass(frozen=True)
class Listed:
    """A reject as `lifeline quarantine list` shows it: its payload's size, never the payload, up to 64 KiB a
    row (a list of 1000 such rows read 94 MB)."""
    id: int
    at: float
    reason: str
    detail: str
    topic: str
    size: int


@dataclass(frozen=True)
class Row(Listed):
    raw: bytes


class Quarantine:
    def __init__(self, conn: sqlite3.Connection, max_rows: int = 10_000,
                 log_interval_s: float = 60.0, max_bytes: int = MAX_BYTES) -> None:
        self._conn = conn
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.log_interval_s = log_interval_s
        conn.execute("CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "at REAL NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, topic TEXT NOT NULL, "
                     "size INTEGER NOT NULL, raw BLOB NOT NULL)")
        self.counts: Counter[str] = Counter()
        self.evicted: Counter[str] = Counter()  # rows deleted, by the bound that deleted them: rows, bytes
        self._bytes: int = conn.execute("SELECT coalesce(sum(length(raw)), 0) FROM quarantine").fetchone()[0]
        if self._bytes > self.max_bytes:  # a smaller bound than the store was filled under
            self._trim_bytes()
        self._logged_at: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self.committed()

    @property
    def held_bytes(self) -> int:
        """The raw payloads' bytes it believes it holds, which it keeps under `max_bytes`."""
        return self._bytes

    def committed(self) -> None:
        """The caller committed: what was counted stands."""
        self._saved = (dict(self.counts), dict(self.evicted), self._bytes)

    def rollback(self) -> None:
        """The caller rolled back, and the rows put or evicted since its last commit with it: a batch redone or
        delivered again would count its rejects twice, and the bytes kept drift from the table's."""
        counts, evicted, self._bytes = self._saved
        self.counts.clear()
        self.counts.update(counts)
        self.evicted.clear()
        self.evicted.update(evicted)

    def put(self, reason: str, detail: str, topic: str, raw: bytes, now: float | None = None,
            exc: BaseException | None = None) -> None:
        """Keep one reject. `exc`, an exception the gateway did not expect, has its traceback on the
        interval's log line and nowhere else, so that a device repeating the message cannot flood the log."""
        now = time.time() if now is None else now
        kept = raw[:MAX_RAW]
        cur = self._conn.execute(
            "INSERT INTO quarantine (at, reason, detail, topic, size, raw) VALUES (?, ?, ?, ?, ?, ?)",
            (now, reason, detail[:500], topic[:300], len(raw), kept))
        self._bytes += len(kept)
        if cur.lastrowid is not None and cur.lastrowid % 64 == 0:  # trim in steps, not per row
            self._evict("rows", cur.lastrowid - self.max_rows)
        if self._bytes > self.max_bytes:
            self._trim_bytes()
        self.counts[reason] += 1
        last = self._logged_at.get(reason)
        if last is None or now - last >= self.log_interval_s:
            trace = {"exc": "".join(traceback.format_exception(exc))} if exc is not None else {}
            event(log, "quarantined", logging.WARNING, reason=reason, detail=detail[:200], topic=topic,
                  size=len(raw), suppressed=self._suppressed.pop(reason, 0), total=self.counts[reason], **trace)
            self._logged_at[reason] = now
        else:
            self._suppressed[reason] += 1

    def _trim_bytes(self) -> None:
        """Evict the oldest rows until the raw bytes kept are down to LOW_WATER of the bound."""
        excess = self._bytes - int(self.max_bytes * LOW_WATER)
        last = self._conn.execute(
            "SELECT id FROM (SELECT id, sum(length(raw)) OVER (ORDER BY id) AS freed FROM quarantine) "
            "WHERE freed >= ? ORDER BY id LIMIT 1", (excess,)).fetchone()
        if last is not None:
            self._evict("bytes", last[0])

    def _evict(self, bound: str, last_id: int) -> None:
        """Delete the rows up to `last_id`, counted under `bound` and taken off the bytes kept."""
        n, freed = self._conn.execute("SELECT count(*), coalesce(sum(length(raw)), 0) FROM quarantine "
                                      "WHERE id <= ?", (last_id,)).fetchone()
        if n:
            self._conn.execute("DELETE FROM quarantine WHERE id <= ?", (last_id,))
            self._bytes -= freed
            self.evicted[bound] += n

    def clock_stepped(self, step: float) -> None:
        """The wall clock was set by `step` seconds: a reason's log interval runs on from where it was."""
        for reason in self._logged_at:
            self._logged_at[reason] += step

    def tick(self, now: float) -> None:
        """Log the rejects folded away during an interval that has now ended."""
        for reason, n in list(self._suppressed.items()):
            if now - self._logged_at.get(reason, 0.0) >= self.log_interval_s:
                event(log, "quarantined", logging.WARNING, reason=reason, suppressed=n,
                      total=self.counts[reason])
                del self._suppressed[reason]
                self._logged_at[reason] = now


def rows(conn: sqlite3.Connection, reason: str | None = None, limit: int = 50) -> list[Listed]:
    sql = "SELECT id, at, reason, detail, topic, size FROM quarantine"
    args: tuple[object, ...] = ()
    if reason:
        sql += " WHERE reason = ?"
        args = (reason,)
    sql += " ORDER BY id DESC LIMIT ?"
    return [Listed(*r) for r in conn.execute(sql, (*args, limit))]


def evicted(conn: sqlite3.Connection) -> int:
    """Rows the bounds have deleted since the store was made: ids are never reused (AUTOINCREMENT, and a
    rollback takes its ids back), and only eviction deletes a row."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'quarantine'").fetchone()
    return 0 if seq is None else max(0, int(seq[0]) - conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])


def row(conn: sqlite3.Connection, row_id: int) -> Row | None:
    r = conn.execute("SELECT id, at, reason, detail, topic, size, raw FROM quarantine WHERE id = ?",
                     (row_id,)).fetchone()
    return None if r is None else Row(*r)
