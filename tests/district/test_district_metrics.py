"""The district's Prometheus metrics over a real PostgreSQL, read through prometheus_client's own exposition."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, event, func, select, update

from district import queries, store, workorders
from district.accounts import Session
from district.metrics import BUCKETS, DistrictCollector
from district.schema import alarms, messages, metadata, refusals, work_order_steps, work_orders
from lifeline.virtual.postgres import Postgres


def test_a_scrape_the_database_fails_says_so_in_one_line_and_the_next_one_reads_it(
        postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    """The server ended the desk's pooled connections (a restart, a failover): the scrape raised, the metrics
    server printed a traceback and Prometheus saw the whole target down. The scrape now answers
    lifeline_district_database_up 0 with one metrics-db-failed line, and the next one reads the database."""
    engine = store.open_engine(postgres.url)
    registry = CollectorRegistry()
    registry.register(DistrictCollector(engine))
    caplog.set_level(logging.INFO, logger="lifeline.district")
    try:
        assert b"lifeline_district_database_up 1.0" in generate_latest(registry)
        postgres.end_sessions()
        failed = generate_latest(registry).decode()
        assert "lifeline_district_database_up 0.0" in failed and "messages_total" not in failed, failed
        again = generate_latest(registry).decode()
        assert "lifeline_district_database_up 1.0" in again and "lifeline_district_messages_total 0.0" in again
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    [line] = [r for r in caplog.records if r.getMessage() == "metrics-db-failed"]
    assert "terminat" in line.fields["error"], line.fields  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info]


DAY = 86400.0
OPERATOR = Session("t", "li.wei", "supervisor", "c")


def history(engine: Engine, orders: int, now: float) -> None:
    """`orders` closed work orders of the last 60 days (each with its orange or red alarm, acked, and its steps)
    and as many blue and yellow alarms, written in bulk."""
    alarm_rows, order_rows, steps = [], [], []
    for i in range(2 * orders):
        t = now - 60 * DAY + i * 59 * DAY / (2 * orders)
        level = ("blue", "yellow", "orange", "red")[i % 4]
        alarm_rows.append({"id": f"h{i}", "site": ("s1", "s2")[i % 2], "dev": "gas1", "cls": "gas", "metric": "ch4",
                           "kind": "level", "level": None, "peak": level, "peak_rank": i % 4 + 1,
                           "state": "cleared", "hist": i % 7 == 0, "raised": t, "t_dev": t - 0.3 - i % 5,
                           "received": t + 0.2, "acked": t + 30 + i % 900, "cleared": t + 7200, "t_last": t + 7200})
        if level in ("orange", "red"):
            oid = len(order_rows) + 1
            order_rows.append({"id": oid, "alarm": f"h{i}", "site": ("s1", "s2")[i % 2], "state": "closed",
                               "team": "pipe 1", "opened": t, "updated": t + 7000, "round": 1})
            steps += [{"order_id": oid, "step": step, "actor": "li.wei", "at": t + after}
                      for step, after in (("opened", 0), ("ack", 40), ("dispatch", 100 + i % 3000), ("report", 5000),
                                          ("close", 6000 + i % 20000))]
    with engine.begin() as conn:
        conn.execute(alarms.insert(), alarm_rows)
        conn.execute(work_orders.insert(), order_rows)
        conn.execute(work_order_steps.insert(), steps)


def scraped(collector: DistrictCollector) -> dict[str, Any]:
    """What a scrape shows: each sample by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples}


def from_scratch(engine: Engine) -> dict[str, Any]:
    """The figures as counted over the whole database, as every scrape counted them before."""
    out: dict[str, Any] = {}
    with store.reader(engine) as conn:
        out[("lifeline_district_messages_total", ())] = conn.execute(
            select(func.count()).select_from(messages)).scalar_one()
        for reason, n in conn.execute(select(refusals.c.reason, func.count()).group_by(refusals.c.reason)):
            out[("lifeline_district_refusals_total", (("reason", reason),))] = n
        for by, groups in queries.response_values(conn).items():
            for key, measures in groups.items():
                for measure, values in measures.items():
                    labels = (("by", by), ("key", key), ("measure", measure))
                    for bound in [*BUCKETS, float("inf")]:
                        le = "+Inf" if bound == float("inf") else str(bound)
                        out[("lifeline_district_response_seconds_bucket", tuple(sorted((*labels, ("le", le)))))] \
                            = sum(v <= bound for v in values)
                    out[("lifeline_district_response_seconds_count", labels)] = len(values)
                    out[("lifeline_district_response_seconds_sum", labels)] = pytest.approx(sum(values))
    return out


def counted(got: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in got.items() if k[0].startswith(("lifeline_district_messages", "lifeline_district_refusals",
                                                             "lifeline_district_response_seconds"))
            and not k[0].endswith("_created")}


BACKLOG = {"ev": "raised", "kind": "level", "dev": "gas2", "cls": "gas", "metric": "ch4", "step": 0}


def test_a_scrape_shows_what_changed_since_the_last_as_a_count_of_everything_would(engine: Engine) -> None:
    """The collector keeps what it counted and reads what changed since: new messages and refusals, a new alarm,
    and changes to alarms and orders of days ago (an ack, an escalation, a late step) show at the next scrape
    as a count over the whole database shows them, on both engines. So does a backlog's alarm, acknowledged
    while historical, that a live resend made live (store.revive_alarm): it gained an alarm -> ack that no row
    the collector read told it of, below orange or with its order open already (a site's 51 counted against 53)."""
    now = time.time()
    history(engine, 60, now)
    with engine.begin() as conn:
        for seq in range(3):
            store.add_message(conn, "s1", "gas1", seq, 1, [{"n": "ch4", "t": now - 2.0, "v": 1.0}], received=now - 1.5)
        store.refuse(conn, "district/v1/s1/up/telemetry", "seal", "bad seal", b"x", received=now - 1000)
        # from a site's backlog of weeks ago (a day no other change touches), acknowledged while historical: a
        # blue, and one whose live escalation to orange opened its order
        ago = now - 20 * DAY
        for i, level in enumerate(("blue", "yellow")):
            store.apply_alarm(conn, "s2", {**BACKLOG, "id": f"back{i}", "level": level, "t_gw": ago - 100},
                              received=ago, hist=True)
            workorders.ack_alarm(conn, f"back{i}", OPERATOR, now=ago + 100)
        store.apply_alarm(conn, "s2", {**BACKLOG, "id": "back1", "ev": "escalated", "level": "orange", "t_gw": ago,
                                       "step": 1}, received=ago + 50)
    collector = DistrictCollector(engine)
    first = counted(scraped(collector))
    assert first == from_scratch(engine)
    with engine.begin() as conn:
        store.add_message(conn, "s1", "gas1", 3, 1, [{"n": "ch4", "t": now - 1.0, "v": 2.0}], received=now)
        store.refuse(conn, "district/v1/s1/up/telemetry", "schema", "bad body", b"y", received=now)
        store.apply_alarm(conn, "s1", {"id": "new", "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas",
                                       "metric": "ch4", "level": "orange", "t_gw": now - 5, "t_dev": now - 5.5},
                          received=now - 4)
        workorders.ack_alarm(conn, "new", OPERATOR, now=now)
        # an alarm of weeks ago goes red (a late transition), one is acked late, an old order gets a step
        store.apply_alarm(conn, "s1", {"id": "h1", "ev": "escalated", "kind": "level", "dev": "gas1", "level": "red",
                                       "t_gw": now - 50 * DAY}, received=now)
        conn.execute(update(alarms).where(alarms.c.id == "h5").values(acked=None))
        workorders.ack_alarm(conn, "h5", OPERATOR, now=now)
        conn.execute(work_order_steps.insert().values(order_id=3, step="ack", actor="li.wei", at=now))
        # their gateway's live resends make them live: their alarm -> ack now counts, from when they came
        for i, (level, t_gw) in enumerate((("blue", ago - 100), ("orange", ago))):
            assert store.revive_alarm(conn, "s2", {**BACKLOG, "id": f"back{i}", "level": level, "resend": 1,
                                                   "t_gw": t_gw, "step": i}, received=now)
    got = counted(scraped(collector))
    assert got == from_scratch(engine) and got != first
    assert got[("lifeline_district_messages_total", ())] == 4
    # a fresh desk reads the same
    assert counted(scraped(DistrictCollector(engine))) == got


def test_a_scrape_after_the_first_reads_what_changed_not_the_history(tmp_path: Path) -> None:
    """Each scrape counted every message, alarm and order: 1.8 s at 50,000 orders (bench/district_reads.py), a
    core busy at a 15 s scrape interval, and more each year. The work of a scrape after the first, counted in
    SQLite's virtual-machine steps, is now about the same for 10 times the history, with the planner's
    statistics too (ANALYZE): with them, finding the alarms that changed read every alarm and work order (3,577
    steps, 32,377 for 10 times the history; now 404 and 404)."""
    def work(orders: int) -> int:
        engine = store.open_engine(str(tmp_path / f"{orders}.sqlite"))
        steps = [0]

        def count(dbapi: Any, record: Any) -> None:
            dbapi.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 1)

        event.listen(engine, "connect", count)
        engine.dispose()  # the connections open_engine made, without it
        now = time.time()
        history(engine, orders, now)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        collector = DistrictCollector(engine)
        scraped(collector)
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", {"id": "new", "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas",
                                           "metric": "ch4", "level": "red", "t_gw": now - 5}, received=now - 4)
        steps[0] = 0
        scraped(collector)
        engine.dispose()
        return steps[0]

    small, large = work(200), work(2000)
    assert large < 2 * small, (small, large)
