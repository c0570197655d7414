"""Raw readings for `raw_days`, then one row per sensor and `rollup_s` bucket (count, numbers, min, max, mean);
messages (each device message's key and sealed bytes) for `messages_days`; the sites' reports (data quality,
events, acks, thinned summaries) for `reports_days`, refusals for `refusals_days`, and a desk session a day past
its expiry (`sweep`). The rest is the district's history, kept for good: alarms and their transitions, work
orders and their steps, commands, rollouts, the audit, and the rollups (docs/district.md, "What is kept, and how
long").

Worker 1 runs `fold` now and then; it works through the oldest readings in chunks, so a district that
switches retention on with years of readings catches up over several passes instead of one long lock.
Numbers (v) keep their spread, and so do booleans as 0 and 1, so that a bucket's mean is the share true and a
chart of a door contact's older spans has something to draw; a reading of any other kind (a sum alone, text,
data) keeps only its count. The gateway's thinning counts them the same way (docs/outbox.md).

A pass names its readings by a bound on (time, message), never by a list of them: a list of ten thousand keys
overflows PostgreSQL's parser stack, and SQLite caps bound parameters. A bound on time alone took every reading
of the last one's time, without end (a million of one time was one pass of 11 s under SQLite's write lock, past
the workers' busy timeout, and 580 MB); by message too, a pass takes at most one message's readings more than
CHUNK, and readings of one time are split across passes, each in exactly one. Its DELETE returns what it
removed, and only that is folded, so a late reading a worker commits meanwhile is either in this pass or left
for the next. Buckets merge in the database (ON CONFLICT), so no pass reads the rollups back.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Table,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    select,
    tuple_,
    union,
    update,
)

from district.schema import alarms, devices, messages, readings, refusals, reports, rollups, sessions, work_orders
from district.store import dialect_insert

CHUNK = 10_000  # readings a pass, plus any of the last one's message at its time
MESSAGES_CHUNK = 500  # messages looked at a pass (deleted by id: SQLite's older builds take 999 parameters)
SWEEP_ROWS = 1_000  # reports, and refusals, looked at a pass (the oldest ids)
SWEEP_BYTES = 16 << 20  # refused payloads deleted a pass at most: anyone may publish, a MiB at a time
SESSION_KEPT_S = 86_400  # after a session expires: a desk whose clock is behind the worker's still ends it itself
Key = tuple[str, str, str, float]


def fold(conn: Connection, *, now: float, raw_days: float, rollup_s: int) -> int:
    """Fold the oldest CHUNK readings older than `raw_days` by (time, message) (and any of the last one's message
    at its time) into their buckets; returns how many were folded."""
    cutoff = now - raw_days * 86_400
    bound = conn.execute(select(readings.c.t, readings.c.message).where(readings.c.t < cutoff)
                         .order_by(readings.c.t, readings.c.message).offset(CHUNK - 1).limit(1)).first()
    # The redundant second term is for PostgreSQL's planner, which estimates a row comparison by its time alone:
    # with many readings at the bound's time it took the pass for all of them and read the table whole.
    old = (readings.c.t < cutoff if bound is None else (tuple_(readings.c.t, readings.c.message) <= tuple_(*bound))
           & ((readings.c.t < bound[0]) | (readings.c.message <= bound[1])))
    rows = conn.execute(delete(readings).where(old).returning(
        readings.c.site, readings.c.dev, readings.c.n, readings.c.t.label("at"), readings.c.u, readings.c.v,
        readings.c.vb)).all()
    if not rows:
        return 0
    acc: dict[Key, dict[str, Any]] = defaultdict(lambda: {"count": 0, "numbers": 0, "mean": None, "min": None,
                                                          "max": None, "u": None})
    for r in rows:
        a = acc[(r.site, r.dev, r.n, r.at - r.at % rollup_s)]
        a["count"] += 1
        a["u"] = a["u"] or r.u
        x = r.v if r.v is not None else None if r.vb is None else float(r.vb)
        if x is not None:
            a["numbers"] += 1
            a["mean"] = x if a["mean"] is None else _weighed(a["mean"], a["numbers"] - 1, x, 1)
            a["min"] = x if a["min"] is None else min(a["min"], x)
            a["max"] = x if a["max"] is None else max(a["max"], x)
    stmt = dialect_insert(conn, rollups)
    new = stmt.excluded
    # a bucket's mean weighs by its numbers, not its count: a sum or a text beside them is no number
    merged = {"count": rollups.c.count + new.count, "numbers": rollups.c.numbers + new.numbers,
              "min": _merge(rollups.c.min, new.min, case((new.min < rollups.c.min, new.min), else_=rollups.c.min)),
              "max": _merge(rollups.c.max, new.max, case((new.max > rollups.c.max, new.max), else_=rollups.c.max)),
              "mean": _merge(rollups.c.mean, new.mean, _weighed(rollups.c.mean, cast(rollups.c.numbers, Float),
                                                                new.mean, cast(new.numbers, Float))),
              "u": _merge(rollups.c.u, new.u, new.u)}
    conn.execute(stmt.on_conflict_do_update(index_elements=[rollups.c.site, rollups.c.dev, rollups.c.n,
                                                            rollups.c.t], set_=merged),
                 [{"site": site, "dev": dev, "n": n, "t": t, "count": a["count"], "numbers": a["numbers"],
                   "min": a["min"], "max": a["max"], "mean": a["mean"], "u": a["u"]}
                  for (site, dev, n, t), a in acc.items()])
    return len(rows)


def _weighed(mean: Any, numbers: Any, other: Any, others: Any) -> Any:
    """The mean of two groups of numbers from each one's mean and count (a bucket's counts cast to floats: SQL
    divides integers whole), each mean weighed by its share: never past the larger mean, where a mean times its
    count, or a sum, passes a float's range for finite readings (inf on SQLite, on PostgreSQL an error that
    failed every pass after)."""
    return mean * (numbers / (numbers + others)) + other * (others / (numbers + others))


def _merge(old: ColumnElement[Any], new: ColumnElement[Any], both: ColumnElement[Any]) -> ColumnElement[Any]:
    """A bucket's column merged: the side that has a value, or `both` when each has one."""
    return case((old.is_(None), new), (new.is_(None), old), else_=both)


def prune(conn: Connection, *, now: float, days: float, after: int = 0) -> tuple[int, int]:
    """Delete the messages received more than `days` ago among the MESSAGES_CHUNK after id `after`; returns how
    many, and the id to go on after (`after` once the messages there are newer). Never one whose readings are
    still kept (not yet folded), nor one of a device with an alarm not cleared or a work order not closed: the
    officer may want what it sent. Each device keeps the newest (boot, sequence number) deleted
    (`devices.pruned_boot`, `devices.pruned`), at or below which ingest takes no message again, as the deleted
    rows' keys would have refused it; a later boot's lower number (a reset counter) is past it."""
    cutoff = now - days * 86_400
    rows = conn.execute(select(messages.c.id, messages.c.site, messages.c.dev, messages.c.seq_key, messages.c.boot,
                               messages.c.received,
                               exists().where(readings.c.message == messages.c.id).label("raw"))
                        .where(messages.c.id > after).order_by(messages.c.id).limit(MESSAGES_CHUNK)).all()
    # by indexes (alarms_open, work_orders_open): one OR over both tables read every alarm and order each pass
    unsettled = union(select(alarms.c.site, alarms.c.dev).where(alarms.c.state.in_(("open", "inhibited"))),
                      select(alarms.c.site, alarms.c.dev).join(work_orders, work_orders.c.alarm == alarms.c.id)
                      .where(work_orders.c.state != "closed"))
    held = {(r.site, r.dev) for r in conn.execute(unsettled)}
    gone, last = [], after
    for r in rows:
        if r.received >= cutoff:
            break
        last = r.id
        if not r.raw and (r.site, r.dev) not in held:
            gone.append(r)
    if gone:
        conn.execute(delete(messages).where(messages.c.id.in_([r.id for r in gone])))
        marks: dict[tuple[str, str], tuple[int, int]] = {}
        for r in gone:
            marks[(r.site, r.dev)] = max(marks.get((r.site, r.dev), (r.boot, r.seq_key)), (r.boot, r.seq_key))
        boot, key = bindparam("b", type_=BigInteger), bindparam("k", type_=BigInteger)
        newer = (devices.c.pruned.is_(None) | (devices.c.pruned_boot.is_(None) & (devices.c.pruned < key))
                 | (devices.c.pruned_boot < boot) | ((devices.c.pruned_boot == boot) & (devices.c.pruned < key)))
        conn.execute(update(devices).where(devices.c.site == bindparam("s"), devices.c.dev == bindparam("d"), newer)
                     .values(pruned=key, pruned_boot=boot),
                     [{"s": site, "d": dev, "b": b, "k": k} for (site, dev), (b, k) in marks.items()])
    return len(gone), last


def sweep(conn: Connection, *, now: float, reports_days: float, refusals_days: float) -> dict[str, int]:
    """Delete reports received more than `reports_days` ago and refusals more than `refusals_days` ago, each
    among the SWEEP_ROWS of lowest id (refusals up to SWEEP_BYTES of payload), and sessions a day past their
    expiry; returns how many of each. Ids follow the time received but for workers' clocks and commit order, so a
    few newer rows among them are stepped over and the window moves on past what was deleted."""
    gone = {"reports": _drop(conn, reports, now - reports_days * 86_400),
            "refusals": _drop(conn, refusals, now - refusals_days * 86_400, refusals.c.payload)}
    # sessions: one row a login, the few of a day once expired ones go: no index or window for them
    gone["sessions"] = int(conn.execute(delete(sessions).where(sessions.c.expires < now - SESSION_KEPT_S)).rowcount)
    return gone


def _drop(conn: Connection, table: Table, cutoff: float, size: ColumnElement[Any] | None = None) -> int:
    """The rows of `table` received before `cutoff` among the SWEEP_ROWS of lowest id, up to the one that
    brings the lengths of `size` to SWEEP_BYTES (a blob's length is in its header on both engines: no payload is
    read to find it)."""
    length = func.length(size) if size is not None else None
    key = table.c.id
    rows = conn.execute(select(key, table.c.received, *([] if length is None else [length]))
                        .order_by(key).limit(SWEEP_ROWS)).all()
    bound, held = None, 0
    for r in rows:
        if r[1] >= cutoff:
            continue
        bound = r[0]
        if length is not None:
            held += r[2] or 0
            if held >= SWEEP_BYTES:
                break
    if bound is None:
        return 0
    return int(conn.execute(delete(table).where(key <= bound, table.c.received < cutoff)).rowcount)
