"""The desk's reads of the readings table, the largest by far (a thousand nodes store some four million a day,
kept raw for 30 days), seek their rows by an index on both engines: none reads the whole table. Each test
runs the desk's own function, takes every statement it sends that touches `readings`, and asks the engine
for that statement's plan (PostgreSQL told to avoid a sequential scan whenever it has any other way)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, bindparam, delete, event, func, inspect, select, text
from sqlalchemy.pool import Pool

from district import queries, retention, rollout, store
from district.schema import alarms, messages, readings, work_order_steps, work_orders
from protocol.district_verify import Verifier


@contextmanager
def statements(engine: Engine, table: str = "readings") -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the engine meanwhile that names `table`, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if f" {table}" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def whole_scans(engine: Engine, read: Callable[[Connection], object], table: str = "readings") -> list[str]:
    """The plans of `read`'s statements that read every row of `table`."""
    with statements(engine, table) as seen, store.reader(engine) as conn:
        read(conn)
    assert seen, "no statement read readings"
    scans = []
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            for sql, params in seen:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, params))
                if f"Seq Scan on {table}" in plan or "hashed SubPlan" in plan:  # a hashed one is read whole
                    scans.append(plan)
        else:
            for sql, params in seen:
                plan = "\n".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
                if any(line.startswith(f"SCAN {table}") for line in plan.splitlines()):
                    scans.append(plan)
        conn.rollback()
    return scans


def some_readings(engine: Engine, now: float) -> None:
    with engine.begin() as conn:
        for seq in range(20):
            store.add_message(conn, "s1", "gas1", seq, 1, [{"n": "ch4", "t": now - 100 + seq, "v": 1.0}],
                              received=now - 99 + seq)


def test_the_response_times_read_the_newest_readings_alone(engine: Engine) -> None:
    """sample -> desk is of the newest 20,000 live readings, and every page fetches the response times at each
    alarm and work-order notice (the metrics at each scrape): it read and sorted every reading the district
    held to find them, 2.3 s a fetch at three million readings (a day of a thousand nodes) on SQLite."""
    now = time.time()
    some_readings(engine, now)
    assert whole_scans(engine, lambda c: queries.response_times(c, since=now - queries.RESPONSE_WINDOW_S)) == []


def test_the_device_messages_behind_an_alarm_and_a_check_of_one_seek_their_rows(engine: Engine) -> None:
    """An alarm's messages are found by their device's span of times (messages_span), and a message's readings
    by its message: a desk holds a month of a thousand nodes' readings raw, and their messages for 400 days."""
    now = time.time()
    some_readings(engine, now)
    for table in ("readings", "messages"):
        assert whole_scans(engine, lambda c: queries.device_messages(c, "s1", "gas1", "ch4", now - 50, now),
                           table) == []
    assert whole_scans(engine, lambda c: queries.check_message(c, 3, Verifier({}, {}, track=False))) == []


def test_a_database_made_before_the_index_gets_it_at_start(engine: Engine, engine_url: str) -> None:
    now = time.time()
    some_readings(engine, now)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX readings_message")
        conn.exec_driver_sql("DROP INDEX readings_time")
        conn.exec_driver_sql("DROP INDEX work_order_steps_order")
        conn.exec_driver_sql("DROP INDEX work_orders_open")
    url = engine_url
    reopened = store.open_engine(url)
    try:
        store.open_engine(url).dispose()  # a second start adds nothing
        assert {"readings_message", "readings_time"} <= {i["name"] for i in inspect(reopened).get_indexes("readings")}
        assert "work_order_steps_order" in {i["name"] for i in inspect(reopened).get_indexes("work_order_steps")}
        assert "work_orders_open" in {i["name"] for i in inspect(reopened).get_indexes("work_orders")}
        assert whole_scans(reopened, lambda c: queries.response_times(c, since=now - queries.RESPONSE_WINDOW_S)) == []
    finally:
        reopened.dispose()


def test_a_database_made_before_the_messages_span_gets_it_at_start(engine: Engine, engine_url: str) -> None:
    """The span is filled from the readings a message still has; one whose readings were folded has none."""
    now = time.time()
    some_readings(engine, now)
    with engine.begin() as conn:
        folded = conn.execute(select(func.min(messages.c.id))).scalar_one()
        conn.execute(delete(readings).where(readings.c.message == folded))
        conn.exec_driver_sql("DROP INDEX messages_span")
        conn.exec_driver_sql("ALTER TABLE messages DROP COLUMN t_first")
        conn.exec_driver_sql("ALTER TABLE messages DROP COLUMN t_last")
    reopened = store.open_engine(engine_url)
    try:
        store.open_engine(engine_url).dispose()  # a second start adds nothing
        assert "messages_span" in {i["name"] for i in inspect(reopened).get_indexes("messages")}
        with reopened.connect() as conn:
            spans = conn.execute(select(messages.c.t_first, messages.c.t_last).order_by(messages.c.id)).all()
        assert spans == [(None, None)] + [(now - 100 + seq, now - 100 + seq) for seq in range(1, 20)]
        assert whole_scans(reopened, lambda c: queries.device_messages(c, "s1", "gas1", "ch4", now - 50, now),
                           "messages") == []
    finally:
        reopened.dispose()


def test_the_span_of_an_older_databases_messages_is_written_to_those_with_readings_alone(tmp_path: Path) -> None:
    """At start, an older database's messages get their span from the readings they still have. Those whose
    readings were folded have none (messages are kept messages_days, 400 days against 30 of readings: some 13
    times as many), and the fill rewrote each of them anyway, one correlated look-up a message (on PostgreSQL
    without statistics yet, a read of every reading each: 280,000 messages took over 14 minutes). SQLite's
    connection counts the rows written."""
    path = str(tmp_path / "district.sqlite")
    engine = store.open_engine(path)
    now = time.time()
    telemetry(engine, "gas1", range(100), now)  # folded below
    telemetry(engine, "gas1", range(100, 120), now)
    with engine.begin() as conn:
        conn.execute(delete(readings).where(readings.c.message <= 100))
        conn.exec_driver_sql("DROP INDEX messages_span")
        conn.exec_driver_sql("ALTER TABLE messages DROP COLUMN t_first")
        conn.exec_driver_sql("ALTER TABLE messages DROP COLUMN t_last")
    engine.dispose()
    opened: list[Any] = []

    def record(dbapi: Any, entry: Any) -> None:
        opened.append(dbapi)

    event.listen(Pool, "connect", record)
    try:
        reopened = store.open_engine(path)
    finally:
        event.remove(Pool, "connect", record)
    try:
        assert sum(c.total_changes for c in opened) == 20  # the rows the fill wrote
    finally:
        reopened.dispose()


def rows_read(engine: Engine, read: Callable[[Connection], object],
              tables: tuple[str, ...] = ("readings", "messages")) -> int:
    """How much of the tables `read` went through: on PostgreSQL the rows it fetched (its transaction's own
    statistics, once the tables are analyzed, as autovacuum keeps them), on SQLite its virtual machine's steps
    in tens (a progress handler's calls)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f"ANALYZE {', '.join(tables)}"))
    with store.reader(engine) as conn:
        if conn.dialect.name == "postgresql":
            fetched = text("SELECT sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)) "
                           "FROM pg_stat_xact_user_tables WHERE relname IN :tables").bindparams(
                bindparam("tables", tables, expanding=True))
            before = int(conn.execute(fetched).scalar_one())  # the backend's, not yet flushed: earlier work too
            read(conn)
            return int(conn.execute(fetched).scalar_one()) - before
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(count, 10)  # type: ignore[attr-defined]
        try:
            read(conn)
        finally:
            raw.set_progress_handler(None, 10)  # type: ignore[attr-defined]
        return steps[0]


def telemetry(engine: Engine, dev: str, seqs: range, now: float) -> None:
    with engine.begin() as conn:
        store.add_messages(conn, "s1", [store.DeviceMessage(dev, seq, 1, 0, [
            {"n": n, "t": now - 10_000 + seq, "v": 1.0} for n in ("ch4", "co", "o2")], None) for seq in seqs],
            received=now)


def test_a_sites_updates_read_each_nodes_outcome_alone(engine: Engine) -> None:
    """The OTA card (GET /api/ota) and the rollout driver's every pass look up each node's newest sealed "ota"
    event. The look-up went through every message the node ever sent to find it, some 40,000 a month for a
    node sending once a minute, for every node of the site at each fetch; it now seeks the node's "ota" readings
    alone, and reads as much for a node of 2,000 messages as for one of 100."""
    now = time.time()
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, 1, received=now)
        store.device_state(conn, "s1", {"dev": "gas1", "st": "online", "boot": 1, "t": now, "fw": "0.1.0",
                                        "prof": "gas"}, received=now)
        store.add_messages(conn, "s1", [store.DeviceMessage("gas1", 10**6, 2, 1, [
            {"n": "ota.v", "t": now, "vs": "0.2.0"}, {"n": "ota.ok", "t": now, "vb": True},
            {"n": "ota.res", "t": now, "vs": "ok"}], None)], received=now)
    telemetry(engine, "gas1", range(100), now)
    few = rows_read(engine, lambda c: rollout.view(c, "s1"))
    telemetry(engine, "gas1", range(100, 2000), now)
    many = rows_read(engine, lambda c: rollout.view(c, "s1"))
    with store.reader(engine) as conn:
        view = rollout.view(conn, "s1")
    assert view is not None and view["nodes"][0]["outcome"]["v"] == "0.2.0"
    assert many < few * 1.5, (few, many)


def test_a_retention_pass_reads_the_old_readings_alone(engine: Engine) -> None:
    """Worker 1 folds readings older than raw_days every 10 minutes, on SQLite under the write lock. A pass
    found its readings by reading every one the district held (30 days of them), 0.45 s at three million with
    the lock held, so at a thousand nodes' month every pass held each worker's batch past the busy timeout;
    it now reads the old ones alone, as much with 2,000 recent messages as with 100."""
    now = time.time()
    with engine.begin() as conn:
        store.add_messages(conn, "s1", [store.DeviceMessage("gas1", 10**6 + i, 1, 0, [
            {"n": "ch4", "t": now - 40 * 86400 + i, "v": 1.0}], None) for i in range(10)], received=now)
    telemetry(engine, "gas1", range(100), now)

    def fold(conn: Connection) -> None:
        assert retention.fold(conn, now=now, raw_days=30, rollup_s=300) == 10

    few = rows_read(engine, fold)  # rolled back: the same ten are there for the second pass
    telemetry(engine, "gas1", range(100, 2000), now)
    many = rows_read(engine, fold)
    assert many < few * 1.5, (few, many)


def orders_with_steps(engine: Engine, ids: range, now: float) -> None:
    """Closed work orders, each with its alarm and the five steps of its life."""
    with engine.begin() as conn:
        conn.execute(alarms.insert(), [{"id": f"{i:032x}", "site": "s1", "dev": "gas1", "kind": "level",
                                        "peak": "red", "peak_rank": 4, "state": "cleared", "received": now,
                                        "t_last": now} for i in ids])
        conn.execute(work_orders.insert(), [{"id": i, "alarm": f"{i:032x}", "site": "s1", "state": "closed",
                                             "team": "pipe 1", "opened": now, "updated": now, "round": 1}
                                            for i in ids])
        conn.execute(work_order_steps.insert(), [{"order_id": i, "step": step, "actor": "li.wei", "at": now}
                                                 for i in ids for step in ("opened", "ack", "dispatch", "report",
                                                                           "close")])


def test_an_orders_steps_are_read_alone(engine: Engine) -> None:
    """An order's panel (GET /api/work-orders/{id}) and every step taken on it read the order's steps: they read
    every step of every order the district ever made (tens of thousands of orders a year, five steps and more
    each). Now as much with 2,000 orders as with 100."""
    now = time.time()
    orders_with_steps(engine, range(1, 101), now)

    def panel(conn: Connection) -> None:
        order = queries.work_order(conn, 50)
        assert order is not None and len(order["steps"]) == 5

    tables = ("work_orders", "work_order_steps", "alarms")
    few = rows_read(engine, panel, tables)
    orders_with_steps(engine, range(101, 2001), now)
    many = rows_read(engine, panel, tables)
    assert many < few * 1.5, (few, many)


def test_a_sites_updates_are_read_in_as_many_statements_for_many_nodes_as_for_few(engine: Engine) -> None:
    """The OTA card sought each node's outcome in a statement of its own: 0.5 s for a site of 5,000 nodes
    (bench/district_reads.py) at each fetch. It now reads them all in one, seeking each node's "ota" readings
    by their series as before (no whole scan), with the same outcome a node."""
    now = time.time()

    def nodes(first: int, n: int) -> None:
        """Nodes that failed an update, then landed another; every fifth has not yet reported the second."""
        failed = [{"n": "ota.v", "t": now - 60, "vs": "0.1.0"}, {"n": "ota.ok", "t": now - 60, "vb": False},
                  {"n": "ota.res", "t": now - 60, "vs": "hash"}]
        with engine.begin() as conn:
            for i in range(first, first + n):
                dev = f"n{i}"
                store.device_state(conn, "s1", {"dev": dev, "st": "online", "boot": 1, "t": now, "fw": "0.1.0",
                                                "prof": "gas"}, received=now)
                landed = [{"n": "ota.v", "t": now - 10, "vs": f"0.{i}.0"}, {"n": "ota.ok", "t": now - 10, "vb": True}]
                for seq, records in enumerate([failed, [{"n": "ch4", "t": now - 30, "v": 1.0}]]
                                              + ([landed, [{"n": "ch4", "t": now - 5, "v": 1.0}]] if i % 5 else [])):
                    store.add_message(conn, "s1", dev, seq, 1, records, received=now - 60 + seq)

    def read() -> tuple[int, dict[str, Any]]:
        sent: list[str] = []
        listen = lambda *args: sent.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listen)
        try:
            with store.reader(engine) as conn:
                view = rollout.view(conn, "s1")
        finally:
            event.remove(engine, "before_cursor_execute", listen)
        assert view is not None
        return len(sent), {n["dev"]: n["outcome"] for n in view["nodes"]}

    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, 1, received=now)
        store.device_state(conn, "s1", {"dev": "quiet", "st": "online", "boot": 1, "t": now, "fw": "0.1.0"},
                           received=now)
    nodes(1, 3)
    few, _ = read()
    nodes(4, 30)
    many, outcomes = read()
    assert many == few, (few, many)
    assert outcomes["quiet"] is None
    assert outcomes["n7"] == {"v": "0.7.0", "ok": True, "res": "", "at": now - 60 + 2}
    assert outcomes["n10"] == {"v": "0.1.0", "ok": False, "res": "hash", "at": now - 60}
    assert whole_scans(engine, lambda c: rollout.view(c, "s1")) == []


def test_a_retention_pass_reads_about_a_chunk_when_many_readings_share_a_time(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readings of one time (a site's clock stuck, or made to) are split across passes by (time, message): a pass
    reads about CHUNK of them, as much with 3,000 of one time as with 300. Bounded by time alone, a pass read
    every reading of its last one's time (a million: 11 s under SQLite's write lock)."""
    monkeypatch.setattr(retention, "CHUNK", 100)
    now = time.time()
    t = now - 40 * 86400

    def stuck(seqs: range) -> None:
        with engine.begin() as conn:
            store.add_messages(conn, "s1", [store.DeviceMessage("gas1", seq, 1, 0, [{"n": "ch4", "t": t, "v": 1.0}],
                                                                None) for seq in seqs], received=now)

    def fold(conn: Connection) -> None:
        assert retention.fold(conn, now=now, raw_days=30, rollup_s=300) == 100

    stuck(range(300))
    few = rows_read(engine, fold)  # rolled back: the same readings are there for the second pass
    stuck(range(300, 3000))
    many = rows_read(engine, fold)
    assert many < few * 1.5, (few, many)


def test_a_retention_pass_reads_the_open_alarms_and_orders_alone(engine: Engine) -> None:
    """Each pass over old messages holds back those of a device with an alarm not cleared or an order not closed.
    It found them by reading every alarm and order the district ever had (kept for good), under SQLite's write
    lock at every pass: 90 ms at 200,000 alarms, a pass a second while the retention keeps up. Now as much with
    2,000 closed orders as with 100."""
    now = time.time()
    some_readings(engine, now)
    orders_with_steps(engine, range(1, 101), now)

    def prune(conn: Connection) -> None:
        assert retention.prune(conn, now=now + 500 * 86400, days=400) == (0, 20)  # every one still raw

    tables = ("alarms", "work_orders")
    few = rows_read(engine, prune, tables)
    orders_with_steps(engine, range(101, 2001), now)
    many = rows_read(engine, prune, tables)
    assert many < few * 1.5, (few, many)
