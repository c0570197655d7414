"""The store-and-forward outbox: every item bound for the district is a row here before it is sent.

Rows are written by the ingest (alarm transitions, device state, data-quality events, command acks, device
data) inside its batch transaction: `put_*` never commits, so an item exists exactly when the batch that
produced it (and the alarm state beside it) is committed, and that commit happens before the site broker
gets its PUBACK. A batch's device messages go in at `flush`, just before that commit, as rows of up to
`row_entries` pack entries: a row each cost more than the rest of the outbox's work together. The uplink
leases rows through a second, read-only connection, which in WAL mode sees only committed data: nothing a
failed batch rolls back is ever sent, and an open batch never holds the uplink up. It publishes them with QoS 1
and calls `ack` once the district broker's PUBACK is in; only then is a row deleted, in a commit of its own
made while no batch is open. docs/outbox.md has the full argument.

Lanes drain in order ALARM, STATE, TELEMETRY, and oldest first (insertion order) within a lane. A disk
budget bounds the rows' bytes: past it the oldest telemetry is thinned to per-interval summaries, or
evicted when summarising would not save space; alarms, state rows and a device's alarm-priority packs (`pri`)
are never touched. What was thinned
or evicted goes upstream as a data-quality item. Such items, and a device's clock, gap and recovered reports,
wait as one row of each kind (`merge`): one a pass or a message would grow the untouched lane without end.
Each body is written with its CRC-32 (`crc`), checked at lease: a row a storage fault changed is set aside in
`outbox_corrupt`, never sent, as spliced into a publish it would spoil every row leased beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import cbor2

from gateway import district_wire
from gateway.device_states import chunks
from gateway.logs import event
from gateway.message_decode import loads_one
from gateway.numbers import finite
from protocol import district

log = logging.getLogger("lifeline.gateway.outbox")

ALARM = 0
STATE = 1
TELEMETRY = 2
LANES = ("alarm", "state", "telemetry")
STATE_KINDS = (district.UP_STATE, district.DQ, district.UP_ACK, district.UP_EVENT, district.UP_OTA)

# Bytes charged per row beyond its body: rowid, the other columns, the lane index entry and page slack.
# Measured on SQLite 3.40 with typical rows (see docs/outbox.md); the budget is an estimate, not a statfs.
ROW_OVERHEAD = 64
# A telemetry row's bytes at most, so that a publish can hold it whole with its telemetry map's head.
ROW_BYTES = district.MAX_UP_BODY - 256
LOW_WATER = 0.9  # a budget pass frees down to this fraction, so the next few puts do not start another
WINDOW_ENTRIES = 5000  # entries read per thinning window
PASS_ENTRIES = 50_000  # entries thinned per pass at most; eviction then takes the rest of the excess
EVICT_ROWS = 1000  # rows looked at per eviction query
MAX_RUNS = 16  # per device: summaries made of a thinning window, spans in a budget report
# A waiting report is added to up to this size, then the next starts a row of its own: a quarter of what one
# publish carries (MAX_UP_BODY), and a row rewritten at each pass stays cheap.
MERGE_BYTES = 256 * 1024
BUDGET_MERGE = "outbox-budget"  # the merge key of the budget's own reports: one waits for every pass
# What decoding a stored body raises when a storage fault changed it; the budget pass goes round such a row,
# which raised out of every pass: the outbox then outgrew its budget for good.
_CORRUPT = (cbor2.CBORError, ValueError, LookupError, TypeError, AttributeError)

# The body is the last column: reading a column stored after a body of many pages walks its overflow pages.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane INTEGER NOT NULL,
        kind TEXT NOT NULL,
        t REAL NOT NULL,
        thinned INTEGER NOT NULL DEFAULT 0,
        pri INTEGER NOT NULL DEFAULT 0,
        entries INTEGER NOT NULL DEFAULT 1,
        merge TEXT,
        crc INTEGER,
        body BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane)",
    """CREATE TABLE IF NOT EXISTS outbox_lanes (
        lane INTEGER PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL)""",
    # The lane totals include every row up to this id; rows past it are added when the totals are next read.
    """CREATE TABLE IF NOT EXISTS outbox_counted (one INTEGER PRIMARY KEY CHECK (one = 0), id INTEGER NOT NULL)""",
    # Rows whose body no longer matches its checksum, moved here unsent with the reason, for inspection.
    """CREATE TABLE IF NOT EXISTS outbox_corrupt (id INTEGER PRIMARY KEY, lane INTEGER NOT NULL, kind TEXT NOT NULL,
        t REAL NOT NULL, entries INTEGER NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)""",
)
CORRUPT_ROWS = 1000  # rows kept in outbox_corrupt, the newest: a failing card must not fill the disk with them
# Run after the row of outbox_counted exists, in the same transaction: a store made before counted every row by
# a trigger on INSERT as well, so its counted id is its highest, and the old triggers go with the same commit.
# The totals' "rows" are entries (an item, a device message or a summary); a store made before telemetry rows
# held several had one entry a row, and its trigger that subtracted 1 a row goes in that commit too.
_TRIGGERS = (
    "DROP TRIGGER IF EXISTS outbox_ins",
    "DROP TRIGGER IF EXISTS outbox_del",
    "DROP TRIGGER IF EXISTS outbox_del_counted",
    f"""CREATE TRIGGER IF NOT EXISTS outbox_del_entries AFTER DELETE ON outbox
        WHEN OLD.id <= (SELECT id FROM outbox_counted) BEGIN
        UPDATE outbox_lanes SET rows = rows - OLD.entries, bytes = bytes - length(OLD.body) - {ROW_OVERHEAD}
        WHERE lane = OLD.lane; END""",
)


class Item(NamedTuple):
    """One leased row. `body` is the CBOR the district receives: one item, or for telemetry a CBOR sequence
    (RFC 8742) of `entries` pack or summary entries. A NamedTuple, a third of a frozen dataclass's cost."""

    id: int
    lane: int
    kind: str
    thinned: bool
    body: bytes
    t: float = 0.0  # when it was queued
    entries: int = 1


_Stored = tuple[district_wire.TelemetryEntry, bytes]  # a pack entry decoded, and its bytes as stored


def _span(entry: Any) -> tuple[str, int, int, int]:
    """(dev, seq_lo, seq_hi, msgs) of a stored pack or summary entry; ValueError for anything else."""
    if isinstance(entry, dict) and isinstance(entry.get("dev"), str):
        lo, hi, msgs = ((entry.get("seq_lo"), entry.get("seq_hi"), entry.get("msgs")) if "seq_lo" in entry
                        else (entry.get("seq"), entry.get("seq"), 1))
        if type(lo) is int and type(hi) is int and type(msgs) is int:
            return entry["dev"], lo, hi, msgs
    raise ValueError("not a pack or summary entry")


def _packs(body: bytes) -> list[_Stored]:
    """A raw telemetry row's pack entries, each with the fields a summary reads checked."""
    out: list[_Stored] = []
    for entry, raw in district_wire.stored_entries(body):
        _span(entry)
        if "seq_lo" in entry or type(entry.get("boot")) is not int:
            raise ValueError("not a pack entry")
        out.append((cast(district_wire.TelemetryEntry, entry), raw))
    return out


def _corrupt(rid: int, body: bytes, exc: BaseException, action: str) -> None:
    event(log, "outbox row undecodable", logging.ERROR, id=rid, bytes=len(body), error=str(exc) or repr(exc),
          action=action)


def _damaged(lane: int, crc: int | None, body: bytes, entries: int) -> str | None:
    """Why a row must not be sent: its checksum fails, or, in a row of a store made before checksums (a backlog
    that drains once), its body is not `entries` CBOR items (the publish's array head counts them); None for a
    sound row."""
    if crc is not None:
        return None if zlib.crc32(body) == crc else "checksum"
    try:
        if lane == TELEMETRY:
            n = sum(1 for _ in district_wire.stored_entries(body))
        else:
            loads_one(body)
            n = 1
    except _CORRUPT:
        return "undecodable"
    return None if n == entries else "undecodable"


def _intact(crc: int | None, body: bytes) -> bool:
    """The body is as written: its checksum matches, or it has none (a row of a store made before them)."""
    return crc is None or zlib.crc32(body) == crc


def _runs(group: list[_Stored]) -> list[list[_Stored]]:
    """A device's messages in runs of consecutive sequence numbers (a number met twice, as after a device's
    flash was wiped, starts another)."""
    runs: list[list[_Stored]] = []
    for item in sorted(group, key=lambda m: m[0]["seq"]):
        if runs and item[0]["seq"] == runs[-1][-1][0]["seq"] + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


class _Runs:
    """Device messages of one device dropped or summarised in a budget pass, as runs of sequence numbers: a
    span reported upstream must not take in a number the gateway never held (a gap the district would then
    believe covered)."""

    def __init__(self) -> None:
        self.msgs = 0
        self._runs: list[list[int]] = []  # [seq_lo, seq_hi, msgs]

    def add(self, msgs: int, lo: int, hi: int) -> None:
        self.msgs += msgs
        _join(self._runs, lo, hi, msgs)

    def without(self, gone: _Runs) -> None:
        """Whole runs that lie inside a whole run of `gone` taken out: summaries evicted since, which the district
        will never get and whose messages the eviction's span accounts for."""
        whole = [(lo, hi) for lo, hi, msgs in gone.spans() if msgs == hi - lo + 1]
        self._runs = [r for r in self._runs
                      if r[2] != r[1] - r[0] + 1 or not any(lo <= r[0] and r[1] <= hi for lo, hi in whole)]
        self.msgs = sum(r[2] for r in self._runs)

    def spans(self) -> list[tuple[int, int, int]]:
        """(seq_lo, seq_hi, msgs) in order, runs that meet as one; past MAX_RUNS, joined across the smallest
        holes, so a device that lost every other message cannot swell the report: such a span holds fewer
        messages than its range (msgs says how many), which the district counts as covering none of it."""
        runs: list[list[int]] = []
        for lo, hi, msgs in sorted(self._runs):
            _join(runs, lo, hi, msgs)
        holes = sorted(range(len(runs) - 1), key=lambda i: runs[i + 1][0] - runs[i][1])
        across = set(holes[:max(0, len(runs) - MAX_RUNS)])
        out = runs[:1]
        for i in range(1, len(runs)):
            if i - 1 in across:
                out[-1][1], out[-1][2] = runs[i][1], out[-1][2] + runs[i][2]
            else:
                out.append(runs[i])
        return [(lo, hi, msgs) for lo, hi, msgs in out]


def _budget_merged(waiting: Mapping[str, Any], new: Mapping[str, Any]) -> district_wire.OutboxBudget:
    """Two budget reports as one: bytes before the first pass and after the last, each device's spans joined as
    a pass joins its own (those that meet as one, past MAX_RUNS across the smallest holes), and a run summarised
    by one pass and evicted by a later one in the evicted spans alone: the report's size follows the devices,
    not the passes."""
    def spans(key: str) -> dict[str, _Runs]:
        by_dev: dict[str, _Runs] = {}
        for report in (waiting, new):
            for span in report[key]:
                by_dev.setdefault(span["dev"], _Runs()).add(span["msgs"], span["seq_lo"], span["seq_hi"])
        return by_dev
    thinned, evicted = spans("thinned"), spans("evicted")
    for dev, runs in thinned.items():
        if dev in evicted:
            runs.without(evicted[dev])
    return district_wire.outbox_budget(waiting["t"], new["budget"], waiting["before"], new["after"],
                                       {dev: runs for dev, runs in thinned.items() if runs.msgs}, evicted,
                                       waiting.get("passes", 1) + new.get("passes", 1), new.get("t_last", new["t"]))


def _sequence_merged(waiting: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Two gap (or recovered) reports of a device as one: the first kept whole, then `reports`, `msgs` (the
    numbers they name), `since_last` and `spans` {first, last, msgs}, every report's range, those that meet as
    one and past MAX_RUNS joined across the smallest runs between (msgs then less than the span's range), so a
    device that loses every other message waits as one report of bounded size. Either may be merged already."""
    runs = _Runs()
    for report in (waiting, new):
        for span in report.get("spans") or [
                {"first": report["first"], "last": report["last"], "msgs": report["last"] - report["first"] + 1}]:
            runs.add(span["msgs"], span["first"], span["last"])
    return {**waiting, "reports": waiting.get("reports", 1) + new.get("reports", 1), "msgs": runs.msgs,
            "since_last": new.get("since_last", new["since"]),
            "spans": [{"first": lo, "last": hi, "msgs": msgs} for lo, hi, msgs in runs.spans()]}


# The data-quality reports of one kind about one device that wait in the outbox as one, and how two are one.
_MERGED: dict[Any, Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]] = {
    "clock": district_wire.clock_merged, "gap": _sequence_merged, "recovered": _sequence_merged}


def _join(runs: list[list[int]], lo: int, hi: int, msgs: int) -> None:
    """(lo, hi, msgs) added after the last of `runs`, as part of it when both are whole runs and meet."""
    last = runs[-1] if runs else None
    if last is not None and lo == last[1] + 1 and last[2] == last[1] - last[0] + 1 and msgs == hi - lo + 1:
        last[1], last[2] = hi, last[2] + msgs
    else:
        runs.append([lo, hi, msgs])


@dataclass
class BudgetReport:
    """What one budget pass did; upstream it becomes a data-quality item (district_wire.outbox_budget)."""

    budget: int
    before: int
    after: int = 0
    thinned: dict[str, _Runs] = field(default_factory=dict)
    evicted: dict[str, _Runs] = field(default_factory=dict)


class _Stats:
    """Running min/max/mean/count of one metric in one interval; strings keep their last value. The mean is
    of the numbers alone (`numbers`): a record may carry only a sum (RFC 8428), and it is counted, not averaged."""

    __slots__ = ("count", "last", "max", "min", "numbers", "total", "unit")

    def __init__(self, unit: str | None) -> None:
        self.unit = unit
        self.count = self.numbers = 0
        self.min = math.inf
        self.max = -math.inf
        self.total = 0.0
        self.last: str | None = None

    def add(self, rec: Mapping[str, Any]) -> None:
        self.count += 1
        if "vs" in rec:
            self.last = rec["vs"]
            return
        x = float(rec["vb"]) if "vb" in rec else finite(rec.get("v"))  # NaN, or an integer past a float: no number
        if x is not None:
            self.min = min(self.min, x)
            self.max = max(self.max, x)
            self.total += x
            self.numbers += 1

    def body(self, name: str, start: float) -> district_wire.MetricSummary:
        spread = (self.min, self.max, self.total / self.numbers) if self.numbers else None
        return district_wire.metric_summary(name, start, self.count, self.unit, self.last, spread)


def _rows(entries: list[bytes], most: int, most_bytes: int) -> Iterator[list[bytes]]:
    """Entries cut into runs, in order, of at most `most` entries and `most_bytes` bytes (one entry at least)."""
    if max(map(len, entries), default=0) * most <= most_bytes:  # the common case: no run of `most` can be too large
        yield from (entries[i:i + most] for i in range(0, len(entries), most))
        return
    run: list[bytes] = []
    size = 0
    for entry in entries:
        if run and (len(run) == most or size + len(entry) > most_bytes):
            yield run
            run, size = [], 0
        run.append(entry)
        size += len(entry)
    yield run


def queued(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, float | None]], int]:
    """Entries and the oldest row's queue time per lane, and the bytes charged to the budget, read without
    writing (`lifeline status`, on a read-only connection beside the daemon): the lane totals plus the rows put
    since they were last counted (`Outbox._count`), in one statement, so one snapshot: a count the daemon
    commits between two reads would add those rows twice."""
    lanes: dict[str, tuple[int, float | None]] = {}
    used = 0
    oldest_t = "(SELECT t FROM outbox WHERE lane = l.lane ORDER BY id LIMIT 1)"
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_counted'").fetchone() is None:
        # A store made before it (an upgrade's, the daemon not yet started on it): a trigger counted every row.
        query = f"SELECT l.lane, l.rows, l.bytes, {oldest_t} FROM outbox_lanes AS l"
    else:
        query = ("SELECT l.lane, l.rows + coalesce(u.entries, 0), l.bytes + coalesce(u.size, 0), "
                 f"{oldest_t} FROM outbox_lanes AS l LEFT JOIN "
                 f"(SELECT lane, total(entries) AS entries, total(length(body)) + count(*) * {ROW_OVERHEAD} AS size "
                 "FROM outbox WHERE id > (SELECT id FROM outbox_counted) GROUP BY lane) AS u ON u.lane = l.lane")
    for lane, entries, size, oldest in conn.execute(query):
        lanes[LANES[lane]] = (int(entries), oldest)
        used += int(size)
    return {name: lanes.get(name, (0, None)) for name in LANES}, used


class Outbox:
    """The outbox tables on the shared store connection, with in-memory leases for rows in flight."""

    def __init__(self, conn: sqlite3.Connection, budget_bytes: int, thin_interval_s: float = 300.0,
                 row_entries: int = 100) -> None:
        """`row_entries`: device messages a telemetry row holds at most; the uplink sets its `max_items`, so that
        a row fits in one publish. A row holds at most ROW_BYTES too."""
        if budget_bytes <= 0 or thin_interval_s <= 0 or row_entries < 1:
            raise ValueError("budget_bytes, thin_interval_s and row_entries must be positive")
        self.conn = conn
        self.budget_bytes = budget_bytes
        self.thin_interval_s = thin_interval_s
        self.row_entries = row_entries
        opened = conn.in_transaction
        for statement in _SCHEMA:
            conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        for column in ("pri", "entries"):  # a store made before them
            if column not in columns:
                conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} INTEGER NOT NULL "
                             f"DEFAULT {1 if column == 'entries' else 0}")
        if "merge" not in columns:
            conn.execute("ALTER TABLE outbox ADD COLUMN merge TEXT")
        if "crc" not in columns:  # a store made before: its rows have none, and go unchecked
            conn.execute("ALTER TABLE outbox ADD COLUMN crc INTEGER")
        # Only the rows a later report may be added to are in it: a telemetry INSERT pays nothing for it.
        conn.execute("CREATE INDEX IF NOT EXISTS outbox_by_merge ON outbox (merge) WHERE merge IS NOT NULL")
        conn.execute("INSERT OR IGNORE INTO outbox_lanes VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0)")
        conn.execute("INSERT OR IGNORE INTO outbox_counted VALUES (0, (SELECT coalesce(max(id), 0) FROM outbox))")
        for statement in _TRIGGERS:
            conn.execute(statement)
        if not opened:
            conn.commit()
        self._reader = self._open_reader(conn)
        self._open_lanes: set[int] = set()  # lanes put to since the connection was last seen idle
        self._pending: list[bytes] = []  # the open batch's pack entries, written by flush
        self._pending_t = 0.0  # when the first of them was put
        self._reports: dict[str, tuple[float, Mapping[str, Any]]] = {}  # the open batch's dq reports, by merge key
        # Set by every put; the uplink's alarm path waits on its own event so alarms never queue behind bulk.
        self.alarm_event = asyncio.Event()
        self.ready_event = asyncio.Event()
        self._leased: set[int] = set()  # row ids published and not yet PUBACKed
        self._acked: set[int] = set()  # PUBACKed, delete pending until the connection is idle
        self._bad: dict[int, str] = {}  # failed their check at lease, and why: moved to outbox_corrupt when idle
        self.corrupt_rows = 0  # rows set aside so, since the start
        self._cursor = [0, 0, 0]  # per lane: highest id leased since the last release_all
        self._merged: set[int] = set()  # committed rows the open batch added a report to: not leased until it ends
        self._thin_floor = 0  # every raw telemetry row at or below this id was thinned or was in flight
        self.thinned_msgs = 0
        self.evicted_msgs = 0
        self.acked_rows = 0
        self._over_logged = False

    @staticmethod
    def _open_reader(conn: sqlite3.Connection) -> sqlite3.Connection:
        """A query-only connection to the same file; an in-memory store (tests) has to share `conn`."""
        path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
        if not path:
            return conn
        reader = sqlite3.connect(path, timeout=5.0)
        reader.execute("PRAGMA query_only=1")
        return reader

    def close(self) -> None:
        """Close the reader connection (the shared one belongs to the caller)."""
        if self._reader is not self.conn:
            self._reader.close()

    # --- writing (inside the ingest's transaction; never commits) ---------------------------------------

    def put_alarm(self, body: Mapping[str, Any], now: float | None = None) -> int:
        """An alarm transition (alarms.Transition.body()); the uplink is woken at once."""
        rid = self._insert(ALARM, district.ALARM, now, district_wire.encode(body))
        self.alarm_event.set()
        return rid

    def put_state(self, kind: str, body: Mapping[str, Any], now: float | None = None) -> int | None:
        """Device state, a data-quality event, a command ack, a device event or an OTA report: `kind` is its up
        topic kind. A device's clock, gap or recovered report is held for `flush` (None), which adds the batch's
        to the device's report of that kind still waiting, if there is one: the budget never evicts this lane,
        and one report a flagged or lost message outgrew any budget during an outage."""
        if kind not in STATE_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(STATE_KINDS)}")
        combine = _MERGED.get(body.get("kind")) if kind == district.DQ else None
        if combine is not None:
            merge = f"{body['kind']}/{body['dev']}"
            held = self._reports.get(merge)
            self._reports[merge] = ((time.time() if now is None else now, body) if held is None
                                    else (held[0], combine(held[1], body)))
            self._open_lanes.add(STATE)
            self.ready_event.set()
            return None
        return self._insert(STATE, kind, now, district_wire.encode(body))

    def _merge(self, merge: str, new: Mapping[str, Any],
               combine: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]) -> bool:
        """`new` added by `combine` to the newest row of `merge` still waiting (not leased, not PUBACKed); False
        when there is none (or it no longer decodes or matches its checksum: a row of its own then takes `new`)."""
        row = self.conn.execute("SELECT id, crc, body FROM outbox WHERE merge = ? AND id > ? ORDER BY id DESC LIMIT 1",
                                (merge, self._cursor[STATE])).fetchone()
        if row is None or row[0] in self._acked or not _intact(row[1], row[2]):
            return False
        rid, _, old = row
        try:
            body = district_wire.encode(combine(loads_one(old), new))
        except _CORRUPT:
            return False
        if len(body) > MERGE_BYTES:
            return False
        self.conn.execute("UPDATE outbox SET body = ?, crc = ? WHERE id = ?", (body, zlib.crc32(body), rid))
        if rid <= self.conn.execute("SELECT id FROM outbox_counted").fetchone()[0]:  # else _count reads it as it is
            self.conn.execute("UPDATE outbox_lanes SET bytes = bytes + ? WHERE lane = ?", (len(body) - len(old), STATE))
        self._merged.add(rid)
        return True

    def put_telemetry(self, dev: str, seq: int, boot: int, records: Sequence[Mapping[str, Any]],
                      now: float | None = None, pri: int = 0, sealed: bytes | None = None,
                      retimed: bool = False) -> None:
        """One device data message, its records resolved to absolute time ({"n","u","t"} and the value fields
        the device sent: v, vb, vs or vd, and a sum s), written with the batch's others by `flush`. A pack the
        device sent at alarm priority (`pri` 1) keeps its flag upstream and is exempt from the disk budget, like
        an alarm: it is the evidence of one, and has a row of its own at once. `sealed`, `retimed`: the device's
        message as received, which goes up in place of the records (district_wire.telemetry_entry)."""
        body = district_wire.telemetry_entry(dev, seq, boot, records, pri, sealed, retimed)
        now = time.time() if now is None else now
        if pri:
            self._insert(TELEMETRY, district.TELEMETRY, now, body, pri)
            return
        if not self._pending:
            self._pending_t = now
        self._pending.append(body)
        self._open_lanes.add(TELEMETRY)
        self.ready_event.set()

    def flush(self) -> None:
        """Write the batch's device messages into the current transaction (the caller commits), as rows of up to
        `row_entries` pack entries in the order put: one INSERT a message was 5 µs of the gateway's 50, and one
        row a message cost the uplink a lease, an ack and a delete each (docs/performance.md)."""
        pending, n = self._pending, self.row_entries
        if pending:
            rows = [(len(part), b"".join(part)) for part in _rows(pending, n, ROW_BYTES)]
            self.conn.executemany(
                "INSERT INTO outbox (lane, kind, t, entries, crc, body) VALUES (?, ?, ?, ?, ?, ?)",
                [(TELEMETRY, district.TELEMETRY, self._pending_t, entries, zlib.crc32(body), body)
                 for entries, body in rows])
            self._pending = []
        for merge, (t, body) in self._reports.items():
            if not self._merge(merge, body, _MERGED[body["kind"]]):
                self._insert(STATE, district.DQ, t, district_wire.encode(body), merge=merge)
        self._reports = {}

    def rollback(self) -> None:
        """Forget the device messages put since the last flush: their batch was rolled back."""
        self._pending = []
        self._reports = {}
        self._merged.clear()

    def _insert(self, lane: int, kind: str, now: float | None, body: bytes, pri: int = 0,
                merge: str | None = None) -> int:
        """One row, not yet in the lane totals (`_count` adds it): a trigger counting each row as it went in cost
        4 µs of the gateway's 100 a device message (docs/performance.md)."""
        cur = self.conn.execute("INSERT INTO outbox (lane, kind, t, crc, body, pri, merge) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (lane, kind, time.time() if now is None else now, zlib.crc32(body), body, pri, merge))
        self._open_lanes.add(lane)
        self.ready_event.set()
        assert cur.lastrowid is not None
        return cur.lastrowid

    def committed(self) -> None:
        """Optional hook for the ingest, right after its commit: deletes PUBACKed rows and wakes the uplink
        now rather than at its next poll."""
        self._open_lanes.clear()
        self.flush_acks()
        self.alarm_event.set()
        self.ready_event.set()

    # --- sending ------------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No transaction is open on the shared connection, so a commit we make is ours alone."""
        return not self.conn.in_transaction

    def awaiting_commit(self, *lanes: int) -> bool:
        """Rows of these lanes were put and their batch is still open: the uplink polls for the commit."""
        if self.idle:
            self._open_lanes.clear()
        return any(lane in self._open_lanes for lane in lanes)

    def _readable(self) -> bool:
        return self._reader is not self.conn or self.idle

    def pending(self, lane: int, limit: int) -> tuple[int, float | None]:
        """How many committed entries wait unleased in a lane (counted until `limit` are seen), and the oldest
        counted one's queue time."""
        if not self._readable():
            return 0, None
        rows = self._reader.execute("SELECT id, entries, t FROM outbox WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                                    (lane, self._cursor[lane], limit))
        n, oldest = 0, None
        for rid, entries, t in rows:  # stepped, and only until `limit` entries are seen: a full row is often enough
            if rid in self._acked or rid in self._bad:  # its delete or move waits; `lease` skips it too
                continue
            n += entries
            oldest = t if oldest is None else min(oldest, t)
            if n >= limit:
                break
        rows.close()
        return n, oldest

    def lease(self, lane: int, limit: int, max_bytes: int | None = None) -> list[Item]:
        """The next committed rows of a lane, oldest first, marked in flight: as many as hold at most `limit`
        entries and `max_bytes` bytes, and always the first."""
        if not self._readable() or limit <= 0:
            return []
        if self.idle:
            self._merged.clear()
        rows = self._reader.execute(
            "SELECT id, kind, thinned, crc, body, t, entries FROM outbox WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
            (lane, self._cursor[lane], limit))
        items: list[Item] = []
        taken = size = 0
        most_bytes = math.inf if max_bytes is None else max_bytes
        for rid, kind, thinned, crc, body, t, entries in rows:  # stepped: a full row is often the only one taken
            if rid in self._merged:
                break
            skip = rid in self._acked or rid in self._bad
            reason = None if skip else _damaged(lane, crc, body, entries)
            if not (skip or reason) and crc is None and lane == TELEMETRY and not thinned:  # made before checksums
                try:
                    vouched = self._vouched(body)
                except _CORRUPT:  # readings no summary reads: raised, it stopped the uplink at every lease
                    reason = "undecodable"
                else:
                    if vouched is not None:  # its bytes as sent count: they may be twice those stored
                        body, thinned = vouched, 1
            if items and (taken + entries > limit or size + len(body) > most_bytes):
                break
            size += len(body)
            self._cursor[lane] = rid
            if skip:
                continue
            if reason:  # sent, it would spoil the publish of every row beside it
                self._bad[rid] = reason
                event(log, "outbox row set aside", logging.ERROR, id=rid, lane=LANES[lane], kind=kind,
                      entries=entries, bytes=len(body), reason=reason, table="outbox_corrupt")
                continue
            self._leased.add(rid)
            items.append(Item(rid, lane, kind, bool(thinned), body, t, entries))
            taken += entries
        rows.close()
        return items

    def _vouched(self, body: bytes) -> bytes | None:
        """A row of a store made before pack entries carried the device's message ("m", 2026-12-04) holds its
        readings alone ("e"), which the district refuses as made up at the site (`no-device-mac`): the backlog
        of an outage was lost at the upgrade. It goes up as what it is, the site's summary of each of its
        messages (its sequence numbers accounted for); None for any other row, and what a changed body raises
        when its readings do not read. Done as it is sent, not as the store is opened: 23 us a row, a minute of
        start-up for the largest such backlogs."""
        try:
            stored = _packs(body)
        except _CORRUPT:
            return None
        if not stored or any("m" in entry for entry, _ in stored):
            return None
        return b"".join(self._summary(entry["dev"], [(entry, raw)]) for entry, raw in stored)

    def ack(self, ids: Iterable[int]) -> None:
        """The district broker PUBACKed these rows: delete them (now if the connection is idle, else later)."""
        for rid in ids:
            if rid in self._leased:
                self._leased.discard(rid)
                self._acked.add(rid)
        self.flush_acks()

    def flush_acks(self) -> int:
        """Delete PUBACKed rows, and set aside those that failed their checksum, in a commit of our own; a no-op
        while someone else's batch is open.

        synchronous=NORMAL for this delete-only commit: if a power cut rolls it back, the rows are sent again
        and the district drops the duplicates, so an fsync per PUBACK would buy nothing.
        """
        if not (self._acked or self._bad) or not self.idle:
            return 0
        ids, bad = list(self._acked), dict(self._bad)
        with self._unsynced():
            if bad:
                self._set_aside(bad)
            for part, marks in chunks(ids):  # one statement a part: 2.5 us a row against 3.3 executed one by one
                self.conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part)
        self._acked.difference_update(ids)
        for rid in bad:
            del self._bad[rid]
        self.corrupt_rows += len(bad)
        self.acked_rows += len(ids)
        return len(ids)

    def _set_aside(self, bad: dict[int, str]) -> None:
        """Rows that failed their check at lease, moved out of the outbox (and its totals) into outbox_corrupt."""
        now = time.time()
        self.conn.executemany("INSERT OR REPLACE INTO outbox_corrupt (id, lane, kind, t, entries, at, reason, body) "
                              "SELECT id, lane, kind, t, entries, ?, ?, body FROM outbox WHERE id = ?",
                              [(now, reason, rid) for rid, reason in bad.items()])
        for part, marks in chunks(list(bad)):
            self.conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part)
        self.conn.execute("DELETE FROM outbox_corrupt WHERE id < (SELECT min(id) FROM (SELECT id FROM outbox_corrupt "
                          "ORDER BY id DESC LIMIT ?))", (CORRUPT_ROWS,))

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        """A commit of our own bookkeeping without the fsync (the level can only change between transactions): a
        power cut that rolls it back only means rows sent again (the district drops the duplicates) or counted
        again from the counted id, which rolls back with the totals."""
        self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
            self.conn.commit()
        except BaseException:
            self.conn.rollback()  # ours: it was entered with no transaction open
            raise
        finally:
            self.conn.execute("PRAGMA synchronous=FULL")

    def release_all(self) -> None:
        """The connection dropped: every row not PUBACKed may be sent again, from the head of each lane. The
        lanes are rewound even when the PUBACKed rows cannot be deleted now (a full disk): they wait in
        `_acked`, which leases skip, for the next delete."""
        try:
            self.flush_acks()
        finally:
            self._leased.clear()
            self._cursor = [0, 0, 0]
            self.alarm_event.set()
            self.ready_event.set()

    def last_id(self) -> int:
        """The newest committed row's id, 0 for none: a row above it was queued after this call (ids only grow,
        AUTOINCREMENT), whatever the wall clock did meanwhile."""
        row = self._reader.execute("SELECT max(id) FROM outbox").fetchone()
        return int(row[0] or 0)

    # --- metrics --------------------------------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        """Entries per lane (items, device messages, summaries), sent-but-unacked included (still on disk)."""
        self._count()
        return {LANES[lane]: rows for lane, rows in self.conn.execute("SELECT lane, rows FROM outbox_lanes")}

    def bytes_used(self) -> int:
        self._count()
        return int(self.conn.execute("SELECT total(bytes) FROM outbox_lanes").fetchone()[0])

    def _count(self) -> None:
        """Add the rows put since the last count to the lane totals, and move the counted id past them.

        The totals and the counted id are rows of the store, changed in the transaction that is open (a batch's:
        they commit or roll back with its rows) or in a commit of our own. A row deleted before it was counted
        is not subtracted (the delete trigger's WHEN), so a row sent and PUBACKed between two counts is never in
        the totals at all. Reading the rows past the counted id is a range of the primary key."""
        counted = self.conn.execute("SELECT id FROM outbox_counted").fetchone()[0]
        new = self.conn.execute("SELECT lane, count(*), total(entries), total(length(body)), max(id) FROM outbox "
                                "WHERE id > ? GROUP BY lane", (counted,)).fetchall()
        if not new:
            return
        with self._unsynced() if self.idle else contextlib.nullcontext():
            self.conn.executemany("UPDATE outbox_lanes SET rows = rows + ?, bytes = bytes + ? WHERE lane = ?",
                                  [(int(entries), int(size) + n * ROW_OVERHEAD, lane)
                                   for lane, n, entries, size, _top in new])
            self.conn.execute("UPDATE outbox_counted SET id = ?", (max(top for *_, top in new),))

    def oldest_age(self, now: float | None = None) -> dict[str, float | None]:
        """Seconds since the oldest row of each lane was queued (None for an empty lane)."""
        now = time.time() if now is None else now
        out: dict[str, float | None] = {}
        for lane, name in enumerate(LANES):
            row = self.conn.execute("SELECT t FROM outbox WHERE lane = ? ORDER BY id LIMIT 1", (lane,)).fetchone()
            out[name] = None if row is None else max(0.0, now - row[0])
        return out

    # --- disk budget ----------------------------------------------------------------------------------------

    def enforce_budget(self, now: float | None = None) -> BudgetReport | None:
        """Bring the outbox under budget by thinning, then evicting, the oldest unleased telemetry.

        Runs in its own transaction (so only when the connection is idle), which also carries the
        data-quality item reporting what was done. Returns None when nothing had to be done.
        """
        if not self.idle:
            return None
        # PUBACKed rows whose delete waited for an open batch go first: after a release_all they sit past the
        # cursor, where a summary could take the id of one and be deleted with it, unsent.
        self.flush_acks()
        used = self.bytes_used()
        if used <= self.budget_bytes:
            self._over_logged = False
            return None
        now = time.time() if now is None else now
        report = BudgetReport(self.budget_bytes, used)
        target = int(self.budget_bytes * LOW_WATER)
        floor = self._thin_floor
        try:
            work = 0
            while used > target and work < PASS_ENTRIES:
                done = self._thin_window(report)
                if done == 0:
                    break
                work += done
                used = self.bytes_used()
            if used > target:
                self._evict(report, used - target)
                used = self.bytes_used()
            report.after = used
            if report.thinned or report.evicted:
                body = district_wire.outbox_budget(now, report.budget, report.before, report.after, report.thinned,
                                                   report.evicted)
                if not self._merge(BUDGET_MERGE, body, _budget_merged):
                    self._insert(STATE, district.DQ, now, district_wire.encode(body), merge=BUDGET_MERGE)
                report.after = self.bytes_used()
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            self._thin_floor = floor  # the windows read are raw again: the next pass takes them first
            raise
        self.thinned_msgs += sum(s.msgs for s in report.thinned.values())
        self.evicted_msgs += sum(s.msgs for s in report.evicted.values())
        if report.thinned or report.evicted:
            event(log, "outbox-budget", logging.WARNING, budget=report.budget, before=report.before,
                  after=report.after, thinned=sum(s.msgs for s in report.thinned.values()),
                  evicted=sum(s.msgs for s in report.evicted.values()))
        if report.after > self.budget_bytes and not self._over_logged:
            event(log, "outbox over budget with no telemetry left to thin or evict", logging.WARNING,
                  budget=self.budget_bytes, used=report.after, depth=self.depth())
            self._over_logged = True
        return report

    def _thin_window(self, report: BudgetReport) -> int:
        """Summarise the oldest interval of raw telemetry per device; returns entries consumed (0: none left).

        The window's rows are replaced by rows that take their ids in order, so what they hold keeps its place in
        the drain: first the entries kept raw, then the summaries, one a run of a device's sequence numbers. A window
        whose replacement would need more rows than it had stays as it is (a single row of many devices, say),
        and eviction may take it."""
        # Rows at or below the lane's cursor are in flight or PUBACKed: never thinned, never evicted.
        first = self.conn.execute(
            "SELECT id, t FROM outbox WHERE lane = ? AND id > ? AND thinned = 0 AND pri = 0 ORDER BY id LIMIT 1",
            (TELEMETRY, max(self._thin_floor, self._cursor[TELEMETRY]))).fetchone()
        if first is None:
            return 0
        # Windows are aligned to the interval grid, as the summaries' buckets are, so one device's messages
        # of one interval usually land in one summary entry per metric.
        end_t = (math.floor(first[1] / self.thin_interval_s) + 1) * self.thin_interval_s
        window: list[tuple[int, float]] = []  # (id, t) of the raw rows taken
        window_bytes = 0
        by_dev: dict[str, list[_Stored]] = {}
        # Entries of rows the lease would send as the site's summaries (`_vouched`): kept raw, a rewritten row
        # (with a checksum) would send their readings alone, which the district refuses as made up at the site.
        unsealed: set[int] = set()  # id() of the decoded entries, alive until the window is written
        consumed = 0
        rows = self.conn.execute(
            "SELECT id, t, thinned, entries, crc, body FROM outbox WHERE lane = ? AND id >= ? AND pri = 0 ORDER BY id",
            (TELEMETRY, first[0]))
        for rid, t, thinned, entries, crc, body in rows:  # stepped row by row: a window is read, not the lane
            if t >= end_t or consumed >= WINDOW_ENTRIES:
                break
            consumed += entries
            self._thin_floor = rid
            if thinned:
                continue
            try:
                if not _intact(crc, body):  # summarised, its changed bytes would be sent as good
                    raise ValueError("checksum")
                packs = _packs(body)
            except _CORRUPT as exc:  # left as it is: eviction or the lease's check takes it
                _corrupt(rid, body, exc, "kept raw")
                continue
            window.append((rid, t))
            window_bytes += len(body)
            if crc is None and not any("m" in entry for entry, _ in packs):
                unsealed.update(id(entry) for entry, _ in packs)
            for entry, raw in packs:
                by_dev.setdefault(entry["dev"], []).append((entry, raw))
        rows.close()
        kept: list[bytes] = []
        summaries: list[bytes] = []
        made: list[tuple[str, list[_Stored]]] = []
        for dev, group in by_dev.items():
            # One summary a run of sequence numbers, its range exactly what it holds, for the runs that gain
            # most; the rest stay raw: too few messages to gain from a summary, or past MAX_RUNS.
            runs = _runs(group)
            bodies: list[bytes | None] = []
            for run in runs:
                try:
                    bodies.append(self._summary(dev, run))
                except _CORRUPT as exc:  # a record a storage fault changed: the run stays as stored
                    event(log, "outbox entries undecodable", logging.ERROR, dev=dev, seq_lo=run[0][0]["seq"],
                          seq_hi=run[-1][0]["seq"], error=str(exc) or repr(exc), action="kept raw")
                    bodies.append(None)
            gain = [0 if body is None else sum(len(raw) for _, raw in run) - len(body)
                    for run, body in zip(runs, bodies, strict=True)]
            best = set(sorted((i for i in range(len(runs)) if gain[i] > 0), key=lambda i: -gain[i])[:MAX_RUNS])
            for i, run in enumerate(runs):
                summary = bodies[i]
                if i in best and summary is not None:
                    summaries.append(summary)
                    made.append((dev, run))
                else:
                    for entry, raw in run:
                        if id(entry) not in unsealed:
                            kept.append(raw)
                            continue
                        try:
                            summaries.append(self._summary(dev, [(entry, raw)]))
                        except _CORRUPT:  # no records a summary can read (its run's failed too): as stored
                            kept.append(raw)
        n = self.row_entries
        parts = [(0, part) for part in _rows(kept, n, ROW_BYTES)]
        parts += [(1, part) for part in _rows(summaries, n, ROW_BYTES)]
        # Not smaller: the summaries of one message each of `unsealed` may outweigh what the runs gained.
        if not made or len(parts) > len(window) or sum(map(len, kept + summaries)) >= window_bytes:
            return max(consumed, 1)
        for ids, marks in chunks([rid for rid, _ in window]):
            self.conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        new = [(rid, TELEMETRY, district.TELEMETRY, t, thinned, len(part), b"".join(part))
               for (rid, t), (thinned, part) in zip(window, parts, strict=False)]
        self.conn.executemany("INSERT INTO outbox (id, lane, kind, t, thinned, entries, body, crc) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*row, zlib.crc32(row[6])) for row in new])
        # They take ids of rows already counted (the budget pass counted them all first): counted here.
        self.conn.execute("UPDATE outbox_lanes SET rows = rows + ?, bytes = bytes + ? WHERE lane = ?",
                          (sum(row[5] for row in new), sum(len(row[6]) + ROW_OVERHEAD for row in new), TELEMETRY))
        for dev, run in made:
            report.thinned.setdefault(dev, _Runs()).add(len(run), run[0][0]["seq"], run[-1][0]["seq"])
        return max(consumed, 1)

    def _summary(self, dev: str, run: list[_Stored]) -> bytes:
        """The summary entry of one run of a device's messages."""
        prefix = dev + ":"
        stats: dict[tuple[str, float], _Stats] = {}
        boots: set[int] = set()
        for msg, _raw in run:
            boots.add(msg["boot"])
            for rec in district_wire.entry_records(msg):
                name = rec["n"][len(prefix):] if rec["n"].startswith(prefix) else rec["n"]
                start = math.floor(rec["t"] / self.thin_interval_s) * self.thin_interval_s
                key = (name, start)
                if key not in stats:
                    stats[key] = _Stats(rec.get("u"))
                stats[key].add(rec)
        return district_wire.thinned_entry(dev, run[0][0]["seq"], run[-1][0]["seq"], len(run), sorted(boots),
                                           self.thin_interval_s,
                                           [st.body(name, start) for (name, start), st in sorted(stats.items())])

    def _evict(self, report: BudgetReport, excess: int) -> None:
        """Drop the oldest unleased telemetry rows (raw or thinned, not alarm-priority) until `excess` bytes are
        freed."""
        freed = 0
        while freed < excess:
            rows = self.conn.execute(
                "SELECT id, length(body) FROM outbox WHERE lane = ? AND id > ? AND pri = 0 ORDER BY id LIMIT ?",
                (TELEMETRY, self._cursor[TELEMETRY], EVICT_ROWS)).fetchall()
            gone = []
            for rid, size in rows:
                if freed >= excess:
                    break
                if rid in self._leased:
                    continue
                gone.append((rid,))
                freed += size + ROW_OVERHEAD
                (body,) = self.conn.execute("SELECT body FROM outbox WHERE id = ?", (rid,)).fetchone()
                try:
                    for entry, _ in district_wire.stored_entries(body):
                        dev, lo, hi, msgs = _span(entry)
                        report.evicted.setdefault(dev, _Runs()).add(msgs, lo, hi)
                except _CORRUPT as exc:  # reported as far as it decodes
                    _corrupt(rid, body, exc, "evicted")
            if not gone:
                return
            self.conn.executemany("DELETE FROM outbox WHERE id = ?", gone)

