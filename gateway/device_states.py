"""Per-device state kept in the store, with only the devices used lately held in memory.

Held as Python objects, each heard device cost about 1.15 KB over the sequence window, health, commit
confirmations and alarm tracks: 57 MB at 50,000 devices, against a 60 MB target for the whole daemon
(docs/performance.md). Every ingest commit already writes the state its batch changed into the store, so the
store holds all of it; memory keeps the `capacity` devices used most recently, and a device not among them is
read back on its next message (one lookup by primary key and a decode, paid only after it fell out).

Contract for the modules using it: a state object taken with `get` may be changed in place, and the change
marked with `changed`, until the next `flush`; nothing may be kept across a flush, which is where devices fall
out (only written ones, so nothing unwritten is lost). After a rolled-back transaction `forget` drops what is
held, and the store, rolled back too, is read again as devices come.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", str, int)  # a row key bound into an IN clause

CAPACITY = 1024  # devices held by default: about 1 MB of state; a site of up to this many never reads state back
PREFETCH = 500  # keys bound in one IN clause: devices read, outbox rows deleted (SQLite takes 32,766)


class DeviceStates(Generic[T]):
    """One table `table (dev TEXT PRIMARY KEY, <column> TEXT NOT NULL)` and the recently used part of it."""

    def __init__(self, conn: sqlite3.Connection, table: str, column: str, decode: Callable[[str], T],
                 encode: Callable[[T], str], capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        _create(conn, table, column)
        self._conn = conn
        self._select = f"SELECT {column} FROM {table} WHERE dev = ?"
        self._all = f"SELECT dev, {column} FROM {table}"
        self._write = f"INSERT OR REPLACE INTO {table} (dev, {column}) VALUES (?, ?)"
        self._decode = decode
        self._encode = encode
        self.capacity = capacity
        self._held: dict[str, T] = {}  # least recently used first
        self._dirty: set[str] = set()
        self.reads = 0  # states read back from the store (a device that had fallen out, or after a restart)

    def get(self, dev: str) -> T | None:
        """The state of `dev`, or None if the store has none."""
        state = self._held.pop(dev, None)
        if state is None:
            state = self._read(dev)
            if state is None:
                return None
        self._held[dev] = state
        return state

    def peek(self, dev: str) -> T | None:
        """The state of `dev` to read, not to change: one not held is read from the store and not held, as the
        commit confirmations read the state of thousands of devices between two commits, when nothing lets
        devices go."""
        state = self._held.get(dev)
        return self._read(dev) if state is None else state

    def _read(self, dev: str) -> T | None:
        row = self._conn.execute(self._select, (dev,)).fetchone()
        if row is None:
            return None
        self.reads += 1
        return self._decode(row[0])

    def prefetch(self, devs: Iterable[str]) -> None:
        """Read the states of those of `devs` not held, a query for up to PREFETCH of them: a batch's devices
        read at once cost about half of a lookup each (docs/performance.md)."""
        held = self._held
        for part, marks in chunks([dev for dev in devs if dev not in held]):
            for dev, text in self._conn.execute(f"{self._all} WHERE dev IN ({marks})", part):
                held[dev] = self._decode(text)
                self.reads += 1

    def put(self, dev: str, state: T) -> None:
        """A new state for `dev`, written at the next flush."""
        self._held.pop(dev, None)
        self._held[dev] = state
        self._dirty.add(dev)

    def changed(self, dev: str) -> None:
        """The held state of `dev` was changed in place: write it at the next flush."""
        self._dirty.add(dev)

    def flush(self) -> None:
        """Write the changed states into the current transaction (the caller commits), then let the least
        recently used devices beyond `capacity` fall out."""
        if self._dirty:
            held, encode = self._held, self._encode
            self._conn.executemany(self._write, [(dev, encode(held[dev])) for dev in self._dirty])
            self._dirty.clear()
        excess = len(self._held) - self.capacity
        if excess > 0:
            for dev in list(self._held)[:excess]:
                del self._held[dev]

    def forget(self) -> None:
        """Drop what is held, written or not: the transaction was rolled back."""
        self._held.clear()
        self._dirty.clear()

    def held(self) -> int:
        return len(self._held)

    def items(self) -> Iterator[tuple[str, T]]:
        """Every device's state: the store's, with what is held in its place (for a walk over all devices, rare:
        it decodes every row). Row by row, remembering only held devices: the sequence tracker walks them all
        at start, and every row at once was a transient of 12.6 MB at 50,000 devices (docs/performance.md)."""
        held_stored = set()
        for dev, text in self._conn.execute(self._all):
            state = self._held.get(dev)
            if state is None:
                yield dev, self._decode(text)
            else:
                held_stored.add(dev)
                yield dev, state
        for dev, state in list(self._held.items()):
            if dev not in held_stored:  # new since the last flush
                yield dev, state


def _create(conn: sqlite3.Connection, table: str, column: str) -> None:
    """The table, keyed by the device id alone (WITHOUT ROWID): a row written at every commit is then one B-tree
    update, not a table row and an index entry, about 1 µs less a device message for each of the three tables
    (docs/performance.md). A store made before keeps its rows: the table is rebuilt once, inside a savepoint,
    so a crash in the middle leaves the old table as it was."""
    shape = f"(dev TEXT PRIMARY KEY, {column} TEXT NOT NULL) WITHOUT ROWID"
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if row is None:
        conn.execute(f"CREATE TABLE {table} {shape}")
    elif "WITHOUT ROWID" not in row[0].upper():
        conn.execute(f"SAVEPOINT {table}_rebuild")
        conn.execute(f"CREATE TABLE {table}_rebuilt {shape}")
        conn.execute(f"INSERT INTO {table}_rebuilt (dev, {column}) SELECT dev, {column} FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_rebuilt RENAME TO {table}")
        conn.execute(f"RELEASE {table}_rebuild")


def chunks(keys: list[K]) -> Iterator[tuple[list[K], str]]:
    """`keys` in parts of up to PREFETCH, each with the "?,?,..." of its IN clause."""
    for i in range(0, len(keys), PREFETCH):
        part = keys[i:i + PREFETCH]
        yield part, ",".join("?" * len(part))
