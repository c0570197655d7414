"""The gateway's one SQLite store: every module keeps its tables on the connection opened here.

Contract for the modules sharing it: writes on the ingest path are never committed by the module that makes
them; the ingest commits once per batch and only then acks the site broker. Python's default (deferred)
transaction handling is kept for that reason: the first INSERT/UPDATE/DELETE opens a transaction that stays
open until someone calls commit(), and `conn.in_transaction` tells the outbox whether a batch is open.

Pragmas, and why:
- journal_mode=WAL: readers (the CLI's `quarantine list`, `status`) never block the daemon's writer, and a
  commit is one sequential append to the log.
- synchronous=FULL: in WAL mode, NORMAL survives a process crash but a power cut can roll back the last
  commits since the previous checkpoint. Those commits were already acked to the site broker, which then
  deleted them, so NORMAL could lose readings on a box without a UPS. FULL fsyncs the log at each commit;
  the ingest commits once per batch, so that is one fsync per batch, not per message. (The outbox lowers it
  for its own delete-only commits, where a lost commit only means a harmless re-send.)
- busy_timeout=5000 ms: a second process writing the file (an operator's tool) makes the daemon wait briefly
  instead of failing a batch with "database is locked".
- wal_autocheckpoint=1000 pages (SQLite's default, stated so it is a decision) with journal_size_limit=64 MiB:
  after a burst the WAL is truncated back instead of keeping its high-water size on a small disk.
- cache_size=-2048 (2 MiB) and temp_store=MEMORY: the hot pages (the outbox's tail, its indexes) fit. A
  site of 50,000 devices reads the state of devices let go by primary key from all over four tables, so the
  cache fills whatever its size: at 8 MiB it was a tenth of the daemon's memory (docs/performance.md), and a
  page it misses is a read from the kernel's page cache.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson

BUSY_TIMEOUT_S = 5.0


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def to_json(value: Any) -> str:
    """Compact JSON text of per-device state (dicts, lists, tuples, str, int, float, bool, None), as the ingest
    commit writes it for every device of a batch: orjson takes a tenth to a quarter of json's time on these
    (docs/performance.md), and json.loads reads it. What orjson refuses (an int past 64 bits, a lone surrogate
    in a str) goes through json. A float that is not finite (a device's NaN battery level, say) is written as
    null, read back as unknown."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return _COMPACT.encode(value)


_LONG_INT = re.compile(r"\d{20}")


def from_json(text: str) -> Any:
    """Per-device state read back from its JSON text, as the ingest reads a device's state that was let go
    (gateway/device_states.py): with orjson, a third of json's time on these rows. orjson reads an int past 64
    bits as a float, so text with an integer of 20 digits or more goes through json, which keeps it exact."""
    if _LONG_INT.search(text) is not None:
        return json.loads(text)
    return orjson.loads(text)


def open_store(path: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) the store at `path`; ":memory:" gives a private in-memory store for tests."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal" and str(path) != ":memory:":
        conn.close()
        raise RuntimeError(f"{path}: SQLite refused WAL mode (got {mode}); is it on a network file system?")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA wal_autocheckpoint=1000")
    conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    conn.execute("PRAGMA cache_size=-2048")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def stamp_if_new(conn: sqlite3.Connection, now: float) -> bool:
    """Whether the store just opened is new (it has no table yet), then stamped with its creation time. A
    misspelt [store] path, or a store moved away, starts the gateway on a new store while the backlog, the
    sequence windows, the quarantine and the alarms stay in the old one: the gateway must say so, and `lifeline
    status` shows the time. A store made before the stamp existed has none, and is not new."""
    new = conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
    conn.execute("CREATE TABLE IF NOT EXISTS store_created (one INTEGER PRIMARY KEY CHECK (one = 0), t REAL NOT NULL)")
    if new:
        conn.execute("INSERT INTO store_created VALUES (0, ?)", (now,))
    return new


def created_at(conn: sqlite3.Connection) -> float | None:
    """When the gateway created the store, or None for a store made before it was stamped."""
    try:
        row = conn.execute("SELECT t FROM store_created").fetchone()
    except sqlite3.OperationalError:  # no such table: made before the stamp
        return None
    return None if row is None else float(row[0])
