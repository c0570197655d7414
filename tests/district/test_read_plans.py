"""The desk's reads of the readings table, the largest by far (a thousand nodes store some four million a day,
kept raw for 30 days), seek their rows by an index on both engines: none reads the whole table. Each test
runs the desk's own function, takes every statement it sends that touches `readings`, and asks the engine
for that statement's plan (PostgreSQL told to avoid a sequential scan whenever it has any other way)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event, inspect, text

from district import queries, store


@contextmanager
def statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the engine meanwhile that names the readings table, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if " readings" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def whole_scans(engine: Engine, read: Callable[[Connection], object]) -> list[str]:
    """The plans of `read`'s statements that read every row of readings."""
    with statements(engine) as seen, store.reader(engine) as conn:
        read(conn)
    assert seen, "no statement read readings"
    scans = []
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            for sql, params in seen:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, params))
                if "Seq Scan on readings" in plan:
                    scans.append(plan)
        else:
            for sql, params in seen:
                plan = "\n".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
                if any(line.startswith("SCAN readings") for line in plan.splitlines()):
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


def test_a_database_made_before_the_index_gets_it_at_start(engine: Engine) -> None:
    now = time.time()
    some_readings(engine, now)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX readings_message")
    url = engine.url.render_as_string(hide_password=False) if engine.dialect.name == "postgresql" else \
        str(engine.url.database)
    reopened = store.open_engine(url)
    try:
        store.open_engine(url).dispose()  # a second start adds nothing
        assert "readings_message" in {i["name"] for i in inspect(reopened).get_indexes("readings")}
        assert whole_scans(reopened, lambda c: queries.response_times(c, since=now - queries.RESPONSE_WINDOW_S)) == []
    finally:
        reopened.dispose()
