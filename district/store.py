"""The district's database: one engine for SQLite or PostgreSQL, and the writes of what sites send.

Every write is idempotent, because a site may deliver an item twice and several workers take items in any
order: a device message is new only if its (site, dev, seq) row could be inserted; an alarm's state follows
its transition with the latest gateway time, whichever order the transitions arrive in (`_follows` for
transitions of one time). The caller holds one transaction over a batch and acknowledges the batch's MQTT
messages only after it commits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Inspector,
    MetaData,
    Row,
    Table,
    Update,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    inspect,
    make_url,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

from district import schema
from district.schema import (
    alarm_events,
    alarm_revivals,
    alarms,
    audit,
    devices,
    messages,
    ota_progress,
    ota_releases,
    readings,
    refusals,
    reports,
    rollups,
    sites,
    work_order_steps,
    work_orders,
)
from gateway import logs, systemd

log = logging.getLogger("lifeline.district.store")

LEVELS = ("blue", "yellow", "orange", "red")  # docs/rules.md; orange and red open a work order
WORK_ORDER_LEVELS = {"orange", "red"}
STATE_AHEAD_S = 300.0  # how far past its arrival a gateway time is believed where the newest wins (device_state,
# ota_report; gateway_state for a session, a time in ms)
SQLITE_BUSY_MS = 10_000
# a call the database failed, which rolled back whole: SQLite locked past its busy timeout, PostgreSQL's connection
# ended, no pooled connection free in time
DB_FAILED = (OperationalError, InterfaceError, PoolTimeout)
_READ_ONLY = "lifeline_read_only"
# What a step of an older database's upgrade is allowed (EXTEND_TIMEOUT_USEC past the unit's TimeoutStartSec):
# a minute, and a second for each UPGRADE_ROWS_PER_S rows it reads: 10 to 30 times what an index of readings
# took here (docs/district.md, "Running it"). Past that, systemd takes the start as hung.
UPGRADE_BASE_S = 60
UPGRADE_ROWS_PER_S = 100_000


def url_of(database: str, base: Path | None = None) -> str:
    """district.toml's `database`: a PostgreSQL URL, an SQLAlchemy URL, or a path to an SQLite file."""
    if database.startswith("postgresql://"):
        return "postgresql+psycopg://" + database.removeprefix("postgresql://")
    if "://" in database:
        return database
    path = Path(database)
    if base is not None and not path.is_absolute():
        path = base / path
    return f"sqlite:///{path}"


def open_engine(database: str, base: Path | None = None) -> Engine:
    """On SQLite every transaction takes the write lock when it begins (BEGIN IMMEDIATE). Workers and the
    desk both read, then write, in one transaction; in WAL mode a reader whose snapshot another process has
    since written past cannot become a writer, and SQLite answers "database is locked" at once instead of
    waiting. Taking the lock first makes them queue (busy_timeout); connections that only read (`reader`) do not
take it. PostgreSQL needs none of this. A database made by an older version gets what it lacks."""
    engine = create_engine(url_of(database, base))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _begin)
    began = time.monotonic()
    said: list[str] = []  # the upgrade's steps said (`_upgrading`)
    schema.metadata.create_all(engine)
    # A fold before `rollups.numbers` weighed a bucket's mean by the bucket's count, taking every reading for a
    # number, so a bucket with a mean counts all its readings as numbers (exact for a number series, the best
    # left to know of a mixed one) and a bucket without one none.
    if _add_column(engine, said, rollups, "numbers INTEGER NOT NULL DEFAULT 0",
                   update(rollups).where(rollups.c.mean.is_not(None)).values(numbers=rollups.c.count)):
        log.info("rollups: added the count of numbers of each bucket")
    if _add_column(engine, said, alarms, "step INTEGER"):  # rows from before stay NULL and are ordered by time
        log.info("alarms: added the number of the transition each state comes from")
    if _add_column(engine, said, alarms, "revived FLOAT"):  # an alarm revived before: timed from its arrival
        log.info("alarms: added the time a backlog's alarm was made live")
    # An ack given before covers its alarm as it stands (an escalation since was taken as acknowledged then).
    if _add_column(engine, said, alarms, "acked_step INTEGER",
                   update(alarms).where(alarms.c.acked.is_not(None)).values(acked_step=alarms.c.step)):
        log.info("alarms: added the step each acknowledgement was given at")
    if _add_column(engine, said, alarms, "acked_last FLOAT", update(alarms).values(acked_last=alarms.c.acked)):
        log.info("alarms: added the time of the acknowledgement that covers each alarm")
    if _add_column(engine, said, alarms, "rose_step INTEGER"):  # unknown for an alarm before: the desk checks it
        log.info("alarms: added the step of each alarm's latest rise")
    if _once(engine, said, alarm_events,
             lambda found: "step" in {c["name"] for c in found.get_columns("alarm_events")}, "ACCESS EXCLUSIVE",
             _key_by_step, "column alarm_events.step and its key alarm_events_once", (alarm_events, alarms)):
        log.info("alarm_events: added the step of each transition to the key that stores it once")
    if _add_column(engine, said, devices, "pruned BIGINT"):
        log.info("devices: added the newest sequence number the retention deleted")
    if _add_column(engine, said, devices, "pruned_boot BIGINT"):
        log.info("devices: added the boot of the newest message the retention deleted")
    for table, name in ((readings, "readings_message"), (readings, "readings_time"),
                        (work_order_steps, "work_order_steps_order"), (alarms, "alarms_received"),
                        (work_orders, "work_orders_open")):
        if _add_index(engine, said, table, name):
            log.info("%s: added the index %s", table.name, name)
    # A message's span from the readings it still has, in one pass over them joined to their messages: the others
    # (folded, kept messages_days against raw_days of readings: some 13 times as many) are not rewritten, and no
    # message waits on a lookup of its own, which PostgreSQL, without statistics yet, did by reading every reading.
    spans = (select(readings.c.message, func.min(readings.c.t).label("t_first"),
                    func.max(readings.c.t).label("t_last"))
             .group_by(readings.c.message).subquery())
    _add_column(engine, said, messages, "t_last FLOAT")
    if _add_column(engine, said, messages, "t_first FLOAT", update(messages).where(messages.c.id == spans.c.message)
                   .values(t_first=spans.c.t_first, t_last=spans.c.t_last), reads=(readings,)):
        log.info("messages: added the span of each message's readings")
    if _add_index(engine, said, messages, "messages_span"):
        log.info("messages: added the index messages_span")
    if _add_column(engine, said, reports, "digest VARCHAR(32)"):  # rows from before stay NULL: never a conflict
        log.info("reports: added the digest that stores each report once")
    if _add_index(engine, said, reports, "reports_once"):
        log.info("reports: added the index reports_once")
    try:
        schema.ONE_RUNNING_ROLLOUT.create(engine, checkfirst=True)  # a database made before it had none
    except IntegrityError:  # two already run at one site (the race it closes): the check alone guards until then
        log.warning("two rollouts run at one site: one running rollout a site is checked, not yet indexed")
    if said:
        logs.event(log, "database-upgraded", steps=len(said), took_s=round(time.monotonic() - began, 1))
        systemd.notify("STATUS=")  # the last step's, which `systemctl status` would show on
    return engine


def _add_column(engine: Engine, said: list[str], table: Table, ddl: str, fill: Update | None = None,
                reads: Sequence[Table] = ()) -> bool:
    """A database made by an older version gets a column it lacks (`ddl`, its name first), filled by `fill`
    (which reads `table` and `reads`); True if it was added."""
    name = ddl.split()[0]

    def add(conn: Connection) -> None:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
        if fill is not None:
            conn.execute(fill)

    return _once(engine, said, table, lambda found: name in {c["name"] for c in found.get_columns(table.name)},
                 "ACCESS EXCLUSIVE", add, f"column {table.name}.{name}", () if fill is None else (table, *reads))


def _key_by_step(conn: Connection) -> None:
    """alarm_events gets `step` and the key by it (schema.ALARM_EVENTS_ONCE) in place of (alarm, ev, t_gw), an
    inline constraint SQLite cannot drop: there the table is rebuilt, its ids kept. The row of each alarm's
    latest transition takes the alarm's step, so its gateway's resends of it after the upgrade are known."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE alarm_events ADD COLUMN step INTEGER")
        conn.exec_driver_sql("ALTER TABLE alarm_events DROP CONSTRAINT alarm_events_once")
    else:
        new = alarm_events.to_metadata(MetaData(), name="alarm_events_new")
        new.indexes.clear()
        new.create(conn)
        kept = [c.name for c in alarm_events.columns if c.name != "step"]
        conn.execute(new.insert().from_select(kept, select(*(alarm_events.c[c] for c in kept))))
        conn.exec_driver_sql("DROP TABLE alarm_events")
        conn.exec_driver_sql("ALTER TABLE alarm_events_new RENAME TO alarm_events")
    ev = alarm_events.c.ev
    conn.execute(update(alarm_events).where(
        alarm_events.c.alarm == alarms.c.id, alarm_events.c.t_gw == alarms.c.t_last, alarms.c.step.is_not(None),
        alarm_events.c.level.is_not_distinct_from(alarms.c.level),
        ((alarms.c.state == "cleared") & (ev == "cleared")) | ((alarms.c.state == "inhibited") & (ev == "inhibited"))
        | ((alarms.c.state == "open") & ev.not_in(("cleared", "inhibited")))).values(step=alarms.c.step))
    schema.ALARM_EVENTS_ONCE.create(conn)


def _add_index(engine: Engine, said: list[str], table: Table, name: str) -> bool:
    """A database made by an older version gets an index of `table` it lacks, or has on other columns (dropped
    and built again, under a lock that keeps readers out on PostgreSQL, as a DROP INDEX needs), built once, which
    takes a while on a large table; True if it was added."""
    index = next(i for i in table.indexes if i.name == name)

    def columns(found: Inspector) -> list[Any] | None:
        return next((i["column_names"] for i in found.get_indexes(table.name) if i["name"] == name), None)

    def make(conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        index.create(conn)

    return _once(engine, said, table, lambda found: columns(found) == [c.name for c in index.columns],
                 "SHARE ROW EXCLUSIVE" if columns(inspect(engine)) is None else "ACCESS EXCLUSIVE", make,
                 f"index {name} of {table.name}", (table,))


def _once(engine: Engine, said: list[str], table: Table, present: Callable[[Inspector], bool], lock: str,
          make: Callable[[Connection], object], what: str, reads: Sequence[Table]) -> bool:
    """`make` (the step `what`, reading the rows of `reads`, told and added to `said`) run unless `present`; the
    check is repeated under the table's lock (`lock` on PostgreSQL, the write lock on SQLite), so processes
    starting at once make it once."""
    if present(inspect(engine)):
        return False
    _upgrading(engine, what, reads)
    said.append(what)
    with engine.begin() as conn:  # on SQLite, BEGIN IMMEDIATE: the write lock
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"LOCK TABLE {table.name} IN {lock} MODE")
        if present(inspect(conn)):
            return False
        make(conn)
    return True


def _upgrading(engine: Engine, what: str, reads: Sequence[Table]) -> None:
    """Say the step `what` begins, before READY=1 and maybe minutes long: a log line, and to systemd a status
    and its allowance, sized by the rows it reads, so a long build is not taken for a hung start, nor the
    reverse (a thread renewing it while the statement runs would renew a lock waited on for good as well)."""
    with reader(engine) as conn:  # SQLite's plain BEGIN: a count waits on no writer
        rows = sum(conn.execute(select(func.count()).select_from(t)).scalar_one() for t in reads)
    allowed = UPGRADE_BASE_S + rows // UPGRADE_ROWS_PER_S
    logs.event(log, "database-upgrade", step=what, rows=rows, allowed_s=allowed)
    systemd.notify(f"STATUS=upgrading the database: {what}, {rows} rows\nEXTEND_TIMEOUT_USEC={allowed * 1_000_000}")


def shown(database: str) -> str:
    """district.toml's `database` as a log line may show it: a URL's password hidden."""
    return make_url(database).render_as_string(hide_password=True) if "://" in database else database


def failure(exc: Exception) -> str:
    """A failed call's reason in one line: the driver's error's type and the first line of its message."""
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig).strip().splitlines() or [""]
    return f"{type(orig).__name__}: {reason[0]}"


def reader(engine: Engine) -> Connection:
    """A connection for reading only, as the desk's pages and the metrics read: on SQLite its transaction is
    a plain BEGIN, a WAL snapshot that never holds a worker's write back (a long history query would
    otherwise stall ingest for its whole length)."""
    return engine.connect().execution_options(**{_READ_ONLY: True})


def _begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


def _sqlite_connect(dbapi: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    """WAL so that the desk reads while workers write; a busy writer is waited for, not an error. Python's
    sqlite3 module is told to leave transactions alone (isolation_level None) and SQLAlchemy's "begin" event
    emits BEGIN itself: the documented way to get working SAVEPOINTs (begin_nested) from pysqlite."""
    dbapi.isolation_level = None
    cur = dbapi.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def dialect_insert(conn: Connection, table: Any) -> postgresql.Insert | sqlite.Insert:
    """INSERT with the engine's ON CONFLICT (both engines have one; SQLAlchemy spells it per dialect)."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


class DeviceMessage(NamedTuple):
    """One device message of a telemetry body, checked: its resolved readings (names without the device's
    base name) and the device's own sealed bytes."""
    dev: str
    seq: int
    boot: int
    pri: int
    records: Sequence[Mapping[str, Any]]
    sealed: bytes | None


def add_message(conn: Connection, site: str, dev: str, seq: int, boot: int, records: Iterable[Mapping[str, Any]],
                *, received: float, pri: int = 0, hist: bool = False, verified: bool = False,
                sealed: bytes | None = None) -> bool:
    """One device message; False if the district already had it."""
    return add_messages(conn, site, [DeviceMessage(dev, seq, boot, pri, list(records), sealed)], received=received,
                        hist=hist, verified=verified)[0]


def add_messages(conn: Connection, site: str, batch: list[DeviceMessage], *, received: float, hist: bool = False,
                 verified: bool = False, seen: dict[str, float] | None = None) -> list[bool]:
    """A body's device messages in three or four statements, whatever their number (one at a time, building and
    running three statements each was most of a worker's time); per message, whether it was new. The unique
    key decides, so a copy within the batch or one another worker stored first is not new; so does the
    retention's mark of each device (`devices.pruned`), so a redelivery or replay of a message it deleted is
    not new either. `seen`, if given, gets when each device of a new message was seen (`seen_at`), for the
    worker's notices."""
    if not batch:
        return []
    # Only a message read more than a day before could have been deleted (messages_days is a day at least),
    # so live ones, the most by far, are not looked up (a node whose clock ran ahead by more escapes the mark).
    spanned = [(m, _span(m.records)) for m in batch]
    older = sorted({m.dev for m, span in spanned if span["t_first"] is None or span["t_first"] < received - 86_400})
    pruned: dict[str, tuple[int | None, int]] = {dev: (boot, mark) for dev, mark, boot in conn.execute(
        select(devices.c.dev, devices.c.pruned, devices.c.pruned_boot).where(
            devices.c.site == site, devices.c.dev.in_(older), devices.c.pruned.is_not(None)))} if older else {}
    taken = [(m, span) for m, span in spanned if _after_mark(m, pruned.get(m.dev))]
    # A batch's two flags are written into the statement (four forms, each compiled once), not bound a row at a
    # time: psycopg parses each placeholder of the many-row INSERT in Python at every batch (a statement too long
    # to cache), about 45 of the 107 µs a message took here on PostgreSQL
    stmt = dialect_insert(conn, messages).values(hist=true() if hist else false(),
                                                 verified=true() if verified else false())
    inserted = conn.execute(stmt.on_conflict_do_nothing().returning(messages.c.id, messages.c.dev, messages.c.seq_key),
                            [{"site": site, "dev": m.dev, "seq_key": schema.seq_key(m.seq), "boot": m.boot,
                              "pri": m.pri, "sealed": m.sealed, "received": received, **span}
                             for m, span in taken]).all() if taken else []
    ids = {(r.dev, r.seq_key): r.id for r in inserted}
    new: list[bool] = []
    rows: list[dict[str, Any]] = []
    devs = {} if seen is None else seen  # dev -> when it was seen
    for m in batch:
        row_id = ids.pop((m.dev, schema.seq_key(m.seq)), None)  # popped: a second copy in the batch is not new
        new.append(row_id is not None)
        if row_id is None:
            continue
        devs[m.dev] = max(devs.get(m.dev, 0.0), seen_at(m.records, received, hist))
        rows.extend({"message": row_id, "site": site, "dev": m.dev, "n": r["n"], "t": r["t"], "u": r.get("u"),
                     "v": r.get("v"), "vs": r.get("vs"), "vb": r.get("vb"), "vd": r.get("vd"), "s": r.get("s")}
                    for r in m.records)
    if rows:
        conn.execute(readings.insert(), rows)
    if devs:
        up = dialect_insert(conn, devices)
        conn.execute(up.on_conflict_do_update(index_elements=[devices.c.site, devices.c.dev],
                                              set_={"last_seen": up.excluded.last_seen},
                                              where=func.coalesce(devices.c.last_seen, 0) < up.excluded.last_seen),
                     [{"site": site, "dev": dev, "state": "online", "last_seen": devs[dev]} for dev in sorted(devs)])
    return new


def _span(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """A message's t_first and t_last: the desk finds it by them once its readings are folded."""
    if not records:
        return {"t_first": None, "t_last": None}
    times = [r["t"] for r in records]
    return {"t_first": min(times), "t_last": max(times)}


def seen_at(records: Iterable[Mapping[str, Any]], received: float, hist: bool) -> float:
    """When a message shows its device was alive: as it comes for a live one; for one of a site's backlog, its
    newest reading's time (no later than it came), or a device that died in the outage reads seen just now."""
    return received if not hist else min(received, max((float(r["t"]) for r in records), default=received))


def _after_mark(m: DeviceMessage, mark: tuple[int | None, int] | None) -> bool:
    """Whether a message is past its device's retention mark (boot, seq_key): a newer boot's number may be lower,
    the counter having been reset (a corrupted one, as the gateway's window allows at a new boot)."""
    if mark is None:
        return True
    boot, key = mark
    if boot is None:
        return schema.seq_key(m.seq) > key
    return (m.boot, schema.seq_key(m.seq)) > (boot, key)


def _rank(level: str | None) -> int:
    return LEVELS.index(level) + 1 if level in LEVELS else 0


def apply_alarm(conn: Connection, site: str, body: Mapping[str, Any], *, received: float, hist: bool = False) -> bool:
    """One alarm transition; False if it was a resend the district already had. Opens a work order when a
    live alarm reaches orange or red, by a live transition or by one from the site's backlog. A transition
    stored without a number (a gateway from before the numbers; an upgrade keeps those rows) is the one its
    gateway, once upgraded too, re-sends numbered: it reads what it stored then as step 0 (gateway/alarms.py). And
    the other way round: workers sharing a backlog may store that step 0 resend before the backlog's copy."""
    ev, level, t_gw, step = body["ev"], body.get("level"), float(body["t_gw"]), body.get("step")
    if conn.execute(select(alarm_events.c.id).where(
            alarm_events.c.alarm == body["id"], alarm_events.c.ev == ev, alarm_events.c.t_gw == t_gw,
            alarm_events.c.step.is_(None) if step is not None else alarm_events.c.step == 0,
            alarm_events.c.level.is_not_distinct_from(level))).first() is not None:
        return False
    new = conn.execute(dialect_insert(conn, alarm_events).values(
        alarm=body["id"], ev=ev, level=level, prev=body.get("prev"), value=body.get("value"), t_gw=t_gw,
        received=received, resend=body.get("resend", 0), hist=hist, step=step).on_conflict_do_nothing()
        .returning(alarm_events.c.id)).first() is not None
    if not new:
        return False
    pos = body.get("pos") or (None, None)
    state = "cleared" if ev == "cleared" else "inhibited" if ev == "inhibited" else "open"
    current = {"level": level, "state": state, "value": body.get("value"), "t_last": t_gw,
               "cleared": t_gw if ev == "cleared" else None, "step": body.get("step")}
    stmt = dialect_insert(conn, alarms).values(
        id=body["id"], site=site, dev=body["dev"], cls=body.get("cls"), metric=body.get("metric"), kind=body["kind"],
        peak=level, peak_rank=_rank(level), hist=hist, unit=body.get("unit"), point=body.get("point"), lat=pos[0],
        lon=pos[1], rule=body.get("rule"), raised=t_gw if ev == "raised" else None,
        t_dev=body.get("t_dev") if ev == "raised" else None, received=received, **current)
    conn.execute(stmt.on_conflict_do_update(index_elements=[alarms.c.id], set_=current,
                                            where=_follows(ev, t_gw, body.get("step"))))
    if ev == "raised":
        conn.execute(update(alarms).where(alarms.c.id == body["id"])
                     .values(raised=t_gw, t_dev=body.get("t_dev"), hist=hist))
    if _rank(level) > 0:
        conn.execute(update(alarms).where(alarms.c.id == body["id"], alarms.c.peak_rank < _rank(level))
                     .values(peak=level, peak_rank=_rank(level)))
    if ev in ("raised", "escalated") and step is not None:
        conn.execute(update(alarms).where(alarms.c.id == body["id"],
                                          alarms.c.rose_step.is_(None) | (alarms.c.rose_step < step))
                     .values(rose_step=step))
    if ev == "escalated":  # a higher level the officer has not seen wants a fresh ack, as at the gateway
        conn.execute(update(alarms).where(
            alarms.c.id == body["id"], alarms.c.acked_last.is_not(None),
            true() if step is None else alarms.c.acked_step.is_(None) | (alarms.c.acked_step < step))
            .values(acked_last=None))
    if level in WORK_ORDER_LEVELS and (not hist or _live(conn, body["id"])):
        _open_order(conn, site, body, received, reopen=ev == "escalated")
    return True


def revive_alarm(conn: Connection, site: str, body: Mapping[str, Any], *, received: float) -> bool:
    """A live resend (its gateway re-sends an alarm until it is acknowledged) of a transition the district has
    from a site's backlog: if it is still the alarm's latest and the alarm not cleared, the alarm is live, not
    historical, and orange or red opens its order. The resend is that transition again, not new, so it was
    dropped and the alarm stayed historical for good. True if it was made live; `revived` says when, from which
    its alarm -> ack counts (district/queries.py). Not for one the officer acknowledged while it was historical:
    its clock is not started again after its ack (ack minus revived came out negative and the figure silently
    lost it), and it counts from when the desk received it. A row without a number is matched by a numbered resend
    too, as in apply_alarm. A row of alarm_revivals tells the metrics (district/metrics.py), which read only rows
    past those they read: an ack given while it was historical counts now, and they missed it."""
    step = body.get("step")
    revived = conn.execute(update(alarms).where(
        alarms.c.id == body["id"], alarms.c.site == site, alarms.c.hist.is_(True), alarms.c.state == "open",
        alarms.c.t_last == float(body["t_gw"]), alarms.c.level == body.get("level"),
        alarms.c.step.is_(None) if step is None else (alarms.c.step == step) | alarms.c.step.is_(None))
        .values(hist=False, revived=case((alarms.c.acked.is_(None), received), else_=alarms.c.received))
        .returning(alarms.c.level)).first()
    if revived is None:
        return False
    conn.execute(alarm_revivals.insert().values(alarm=body["id"], received=received))
    if revived.level in WORK_ORDER_LEVELS:
        _open_order(conn, site, body, received)
    return True


class Resent(NamedTuple):
    """What a transition asks beyond its own row (`resent_alarm`)."""
    revived: bool  # a live resend made its alarm live (revive_alarm)
    ack: bool  # its gateway missed the officer's ack: sent again (`step` is the one to send)
    step: int | None


def resent_alarm(conn: Connection, site: str, body: Mapping[str, Any], *, new: bool, received: float,
                 hist: bool) -> Resent:
    """After `apply_alarm`: a transition the district had (a resend, mostly) may make its alarm live
    (`revive_alarm`, whose UPDATE runs only for a historical alarm: it ran for every resend and rarely matched).
    A gateway re-sends an alarm until it is acknowledged, so a resend (or an escalation) of an alarm the officer
    has acknowledged as it stands (`acked_last`: no escalation since) means the officer's ack did not reach the
    site: it is sent again, at the step the officer acknowledged, which the gateway takes unless the alarm rose
    since (a fall since does not matter). Not at the alarm's step here: workers share a backlog, so a fall and
    its resend may be stored before the escalation they followed, and an ack of the fall's step covered the
    escalation at the site. An escalation since the ack is the officer's to acknowledge (apply_alarm made it
    unacknowledged), never the district's on its own."""
    if new and body["ev"] != "escalated":
        return Resent(False, False, None)
    row = conn.execute(select(alarms.c.hist, alarms.c.state, alarms.c.acked_last, alarms.c.acked_step)
                       .where(alarms.c.id == body["id"], alarms.c.site == site)).first()
    if row is None:
        return Resent(False, False, None)
    revived = (not (new or hist) and row.hist and row.state == "open"
               and revive_alarm(conn, site, body, received=received))
    return Resent(revived, row.acked_last is not None and row.state != "cleared", row.acked_step)


def _open_order(conn: Connection, site: str, body: Mapping[str, Any], received: float, *,
                reopen: bool = False) -> None:
    """The alarm's work order, unless it has one. `reopen`: an escalation, which reopens its order if that was
    closed while the alarm stayed (de-escalated, not cleared) and this escalation is the alarm's latest: an
    episode has one order, and a live red alarm whose order was closed had no step left that anyone could take."""
    note = f"{body.get('level')} {body.get('metric')}"
    opened = conn.execute(dialect_insert(conn, work_orders).values(
        alarm=body["id"], site=site, state="open", opened=received, updated=received)
        .on_conflict_do_nothing().returning(work_orders.c.id)).first()
    if opened is not None:
        conn.execute(work_order_steps.insert().values(order_id=opened.id, step="opened", actor="system",
                                                      at=received, note=note))
        return
    if not reopen:
        return
    latest = select(alarms.c.id).where(alarms.c.id == body["id"], alarms.c.state == "open",
                                       alarms.c.t_last == float(body["t_gw"]), alarms.c.level == body.get("level"))
    reopened = conn.execute(update(work_orders).where(
        work_orders.c.alarm == body["id"], work_orders.c.state == "closed", work_orders.c.alarm.in_(latest))
        .values(state="open", updated=received).returning(work_orders.c.id)).first()
    if reopened is not None:
        conn.execute(work_order_steps.insert().values(order_id=reopened.id, step="reopened", actor="system",
                                                      at=received, note=note))


def _live(conn: Connection, alarm_id: str) -> bool:
    """Whether the board shows an alarm as live: raised live and not cleared. A backlog's orange or red of one (it
    escalated while the site's link was down) opens its order; the gateway's resends of it never would, being
    that transition again."""
    row = conn.execute(select(alarms.c.hist, alarms.c.state).where(alarms.c.id == alarm_id)).first()
    return row is not None and not row.hist and row.state == "open"


def _follows(ev: str, t_gw: float, step: int | None) -> ColumnElement[bool]:
    """Whether a transition comes after the one an alarm's row holds. A gateway numbers an alarm's transitions
    (`step`), and where both have a number it decides. Without one (a gateway from before the numbers) the
    gateway time does: a gateway stamps every transition of a batch with the batch's time, so a device's backlog
    raises, escalates and clears one episode at one t_gw: a raise comes before anything else at its time, a
    clear after everything (an episode ends there), and of two other transitions at one time the later stored
    is taken."""
    if ev == "raised":
        by_time = alarms.c.t_last < t_gw
    elif ev == "cleared":
        by_time = alarms.c.t_last <= t_gw
    else:
        by_time = (alarms.c.t_last < t_gw) | ((alarms.c.t_last == t_gw) & (alarms.c.state != "cleared"))
    if step is None:
        return by_time
    return (alarms.c.step.is_not(None) & (alarms.c.step < step)) | (alarms.c.step.is_(None) & by_time)


def device_state(conn: Connection, site: str, body: Mapping[str, Any], *, received: float, hist: bool = False) -> None:
    """A device's birth or death as its gateway saw it: the newest by gateway time wins. A gateway stamps a
    batch's states with the batch's time, so a will and the next boot's birth can share one: at one time a
    later boot wins, and a boot's death follows its own birth. A gateway time more than STATE_AHEAD_S past the
    state's arrival (a site clock ahead) counts as that much past it: taken as it came, it made every state
    after it older news until the site's clock caught up with it, a dead device shown online meanwhile."""
    pos = body.get("pos") or (None, None)
    values = {"state": "online" if body["st"] == "online" else "offline", "boot": body.get("boot"),
              "t_state": min(float(body["t"]), received + STATE_AHEAD_S)}
    if body["st"] == "online":
        values.update(fw=body.get("fw"), prof=body.get("prof"), batt=body.get("batt"), rssi=body.get("rssi"),
                      lat=pos[0], lon=pos[1], last_seen=seen_at([body], received, hist))
    later = func.coalesce(devices.c.boot, -1) < body["boot"]
    if body["st"] != "online":
        later |= (devices.c.boot == body["boot"]) & (devices.c.state != "offline")
    stmt = dialect_insert(conn, devices).values(site=site, dev=body["dev"], **values)
    update_to: dict[str, Any] = dict(values)
    if "last_seen" in values:  # a backlog's birth may be older than a reading already taken
        update_to["last_seen"] = case((devices.c.last_seen > values["last_seen"], devices.c.last_seen),
                                      else_=values["last_seen"])
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[devices.c.site, devices.c.dev], set_=update_to,
        where=(func.coalesce(devices.c.t_state, 0) < values["t_state"])
        | ((devices.c.t_state == values["t_state"]) & later)))


def gateway_state(conn: Connection, site: str, online: bool, session: int, *, received: float) -> None:
    """A gateway's birth (online) or death (its will): a death of an older session than the newest birth is
    stale news and changes nothing. A session is at least its box's clock in ms, so one stored more than
    STATE_AHEAD_S past this birth's arrival is a clock's fault, and a birth within that is taken over it: the
    site's next box, its clock right, was ignored (the site read offline while live) until the district's clock
    passed the fault's. It is kept, not capped, so the faulty box's own sessions keep their order."""
    values: dict[str, Any] = {"online": online, "session": session, "last_seen": received}
    values["born" if online else "died"] = received
    stmt = dialect_insert(conn, sites).values(site=site, **values)
    newer = func.coalesce(sites.c.session, -1) < session
    ahead_ms = int((received + STATE_AHEAD_S) * 1000)
    if online and session <= ahead_ms:
        newer |= sites.c.session > ahead_ms
    where = newer if online else newer | (sites.c.session == session)
    conn.execute(stmt.on_conflict_do_update(index_elements=[sites.c.site], set_=values, where=where))


def forget_session(conn: Connection, site: str, *, actor: str, now: float) -> Row[Any] | None:
    """The site's stored gateway session cleared, and audited, so that its gateway's next birth is taken whatever
    its number (a box behind the numbers of the one before: docs/gateway.md, "The session number and the
    clock"). The site's row as it was, or None for a site never heard from."""
    row = conn.execute(select(sites).where(sites.c.site == site).with_for_update()).first()
    if row is not None and row.session is not None:
        conn.execute(update(sites).where(sites.c.site == site).values(session=None))
        conn.execute(audit.insert().values(actor=actor, at=now, what="forget-session", target=site,
                                           detail=f"session {row.session}"))
    return row


def session_began(session: int | None) -> float | None:
    """When a gateway session began by its box's clock (s), its number being at least that clock in ms; None for
    a counter of a gateway from before that (below 10^12 ms, 2001) or a number past any date a page writes."""
    return session / 1000 if session is not None and 10**12 <= session <= 8_640_000_000_000_000 else None


def ota_report(conn: Connection, site: str, progress: list[dict[str, Any]], offers: list[dict[str, Any]] | None,
               *, received: float) -> None:
    """A site's OTA report: each node's newest progress (by gateway time, at most STATE_AHEAD_S past the report's
    arrival, as `device_state`: one a clock far ahead stamped froze the node's progress), in one statement (an
    upsert a node held a worker 2.4 s for 10,000), and its releases replaced whole: each written over (ON
    CONFLICT) and the rest deleted, since a delete does not see the rows another worker's report inserts
    meanwhile, and inserting them too was a unique violation that refused it."""
    newest: dict[str, dict[str, Any]] = {}  # one row a node, for one statement (a row twice in it is an error)
    for p in progress:
        t = min(p["t"], received + STATE_AHEAD_S)
        if p["dev"] not in newest or newest[p["dev"]]["t"] <= t:
            newest[p["dev"]] = {"site": site, "dev": p["dev"], "v": p["v"], "done": p["done"], "total": p["total"],
                                "t": t, "received": received}
    if newest:
        up = dialect_insert(conn, ota_progress)
        conn.execute(up.on_conflict_do_update(
            index_elements=[ota_progress.c.site, ota_progress.c.dev],
            set_={c: up.excluded[c] for c in ("v", "done", "total", "t", "received")},
            where=ota_progress.c.t <= up.excluded.t), [newest[dev] for dev in sorted(newest)])  # in one lock order
    if offers is not None:
        conn.execute(delete(ota_releases).where(ota_releases.c.site == site,
                                                ota_releases.c.v.not_in([o["v"] for o in offers])))
        if offers:
            stmt = dialect_insert(conn, ota_releases)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[ota_releases.c.site, ota_releases.c.v],
                set_={c: stmt.excluded[c] for c in ("profiles", "n", "sig", "size", "offered")}),
                [{"site": site, "v": o["v"], "profiles": json.dumps(o["profiles"]), "n": o["n"], "sig": o["sig"],
                  "size": o["size"], "offered": received} for o in offers])


def add_report(conn: Connection, site: str, kind: str, dev: str | None, body: str, *, received: float) -> None:
    """A body kept as it came, as JSON text (district/upstream.report)."""
    add_reports(conn, site, kind, [(dev, body)], received=received)


def add_reports(conn: Connection, site: str, kind: str, items: Sequence[tuple[str | None, str]], *,
                received: float) -> None:
    """Bodies of one kind kept as they came, (dev, JSON text) each, in one statement: a telemetry body's thinned
    summaries, up to 105,000 in a MiB, were an INSERT each, 11 s of SQLite's write lock. One the site delivered
    before (a re-send after a lost PUBACK) is not stored again (`_report_digest`)."""
    if items:
        conn.execute(dialect_insert(conn, reports).on_conflict_do_nothing(
            index_elements=[reports.c.site, reports.c.digest]),
            [{"site": site, "kind": kind, "dev": dev, "body": body, "received": received,
              "digest": _report_digest(kind, body)} for dev, body in items])


def _report_digest(kind: str, body: str) -> str:
    """What makes a report one: its kind and body, but for the "hist" mark a gateway adds when it re-sends it in a
    later session (gateway/district_wire.historical). Each body carries its own time or sequence numbers, so two
    genuine reports differ."""
    if '"hist"' in body:
        doc = json.loads(body)
        if isinstance(doc, dict) and "hist" in doc:
            del doc["hist"]
            body = json.dumps(doc, allow_nan=False)
    return hashlib.blake2b(f"{kind}\0{body}".encode(), digest_size=16).hexdigest()


def alarm_site(conn: Connection, alarm_id: str) -> str | None:
    """The site an alarm episode belongs to, or None for one the district has not heard of."""
    row = conn.execute(select(alarms.c.site).where(alarms.c.id == alarm_id)).first()
    return None if row is None else str(row.site)


def refuse(conn: Connection, topic: str, reason: str, detail: str, payload: bytes, *, received: float) -> None:
    refuse_all(conn, topic, [(reason, detail, payload)], received=received)


def refuse_all(conn: Connection, topic: str, items: Sequence[tuple[str, str, bytes]], *, received: float) -> None:
    """Refusals of one publish, (reason, detail, payload) each, in one statement."""
    if items:
        conn.execute(refusals.insert(), [{"topic": topic, "reason": reason, "detail": detail[:500],
                                          "payload": payload, "received": received}
                                         for reason, detail, payload in items])


def open_alarm_count(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(alarms.c.level, func.count()).where(alarms.c.state == "open")
                        .group_by(alarms.c.level)).all()
    return {level: n for level, n in rows}
