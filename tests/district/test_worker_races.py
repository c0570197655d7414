"""Several ingest workers on one PostgreSQL, sharing one subscription: consecutive publishes of one site land
on different workers and are stored concurrently, in any order. Each case drives a real worker in a thread
against a second transaction on the same rows (the other worker), and checks what the database ends with."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, select, text, update
from test_hostile_upstream import KEYS, T0, alarm, publish, worker

from district import store
from district.ingest import Worker
from district.schema import alarms, commands, metadata, ota_progress, ota_releases, refusals
from gateway.ingest import Incoming
from lifeline.virtual.postgres import Postgres
from protocol import district as dtopics

A, B = "a" * 32, "b" * 32
assert "north" in KEYS


@pytest.fixture
def pg(postgres: Postgres) -> Iterator[Engine]:
    eng = store.open_engine(postgres.url)
    yield eng
    metadata.drop_all(eng)
    eng.dispose()


def in_thread(w: Worker, batch: list[Incoming]) -> tuple[threading.Thread, list[BaseException]]:
    """`w.handle(batch)` in a thread of its own (with the event loop a worker runs in), as another process."""
    errors: list[BaseException] = []

    async def handle() -> None:
        w.handle(batch)

    def run() -> None:
        try:
            asyncio.run(handle())
        except BaseException as exc:  # the test reads it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def until_waiting(engine: Engine, backends: int) -> None:
    """Until `backends` sessions wait on a lock another holds (the worker blocked on the other's rows)."""
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as conn:
            waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))
            if waiting.scalar_one() >= backends:
                return
        assert time.monotonic() < deadline, "the worker never waited on the other's rows"
        time.sleep(0.05)


def interleave(engine: Engine, w: Worker, batch: list[Incoming], first: Callable[[Connection], Any],
               then: Callable[[Connection], Any]) -> list[BaseException]:
    """The other worker's transaction runs `first`, the worker's batch blocks on its rows, then the other runs
    `then` (which may block on the worker's rows) and commits."""
    other = engine.connect()
    other.begin()
    first(other)
    thread, errors = in_thread(w, batch)
    until_waiting(engine, 1)
    then(other)
    other.commit()
    other.close()
    thread.join(60)
    assert not thread.is_alive()
    return errors


def state_of(engine: Engine, alarm_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(alarms.c.state).where(alarms.c.id == alarm_id)).scalar_one())


def test_a_deadlock_with_another_worker_retries_the_batch_and_loses_no_transition(pg: Engine) -> None:
    """Worker 1 stores A raised then B cleared; worker 2, at once, B raised then A cleared. Each waits on the
    other's alarm row: PostgreSQL aborts one statement (deadlock detected). That publish was refused
    "internal" and its batch acknowledged, so A's clear was lost for good and A stayed open.

    The session that looks for the deadlock first is the one aborted, and each looks once, deadlock_timeout
    after it began to wait. The worker waits first, but with the default second a loaded machine closed the
    cycle after the worker's look, and the other transaction (the test's) was aborted instead. So the worker
    looks after 5 s, the other after a minute."""
    event.listen(pg, "checkout", lambda dbapi, record, proxy: dbapi.execute("SET deadlock_timeout = '5s'"))
    w = worker(pg)

    def then(conn: Connection) -> None:
        conn.execute(text("SET deadlock_timeout = '60s'"))
        store.apply_alarm(conn, "north", alarm(id=B, ev="cleared", level=None, prev="yellow", t_gw=T0 + 2),
                          received=T0)

    errors = interleave(
        pg, w, [publish(dtopics.ALARM, alarm(id=B, level="yellow", t_gw=T0 + 1)),
                publish(dtopics.ALARM, alarm(id=A, ev="cleared", level=None, prev="yellow", t_gw=T0 + 2))],
        lambda conn: store.apply_alarm(conn, "north", alarm(id=A, level="yellow", t_gw=T0 + 1), received=T0),
        then)
    assert errors == []
    with pg.connect() as conn:
        assert conn.execute(select(refusals.c.reason, refusals.c.detail)).all() == []
        assert conn.execute(select(func.count()).select_from(alarms)).scalar_one() == 2
    assert (state_of(pg, A), state_of(pg, B)) == ("cleared", "cleared")
    assert not w.refused
    assert w.stored == {"alarm": 2, "transition": 2}  # each publish and its new transition, counted once: not
    # again per attempt


def test_two_acks_of_one_rule_set_sent_twice_answer_both_rows(pg: Engine) -> None:
    """The same rule set sent twice is answered once per ack, oldest row first. Two workers taking the two
    acks at once both picked the oldest unanswered row; the second's UPDATE, waiting on the first's, then
    found it answered and changed nothing, and the newer row stayed "sent" for good."""
    ruleset = '{"version":7}'
    with pg.begin() as conn:
        for cmd_id, sent in ((11, T0), (12, T0 + 1)):
            conn.execute(commands.insert().values(id=cmd_id, site="north", dev=None, op="rules", args=ruleset,
                                                  actor="chen", sent=sent))
    ack = {"re": "rules", "ok": True, "version": 7}
    errors = interleave(
        pg, worker(pg), [publish(dtopics.UP_ACK, ack)],
        lambda conn: conn.execute(update(commands).where(commands.c.id == 11)  # the other worker's answer
                                  .values(ok=True, result='{"version":7}', answered=T0 + 2)),
        lambda conn: None)
    assert errors == []
    with pg.connect() as conn:
        answered = conn.execute(select(commands.c.id, commands.c.ok).order_by(commands.c.id)).all()
    assert answered == [(11, True), (12, True)]


def test_two_ota_reports_of_one_site_at_once_are_both_stored(pg: Engine) -> None:
    """A site's OTA report replaces the releases it serves. Two reports stored at once both deleted what the
    other had not committed yet, then inserted the same release: the second's unique violation refused its
    report "internal", and the node's download progress in it was lost."""
    release = {"v": "1.2", "profiles": ["gas"], "n": 100, "sig": bytes(64), "size": 1000}
    report = {"t": T0 + 5, "nodes": [{"dev": "gas1", "v": "1.2", "done": 500, "total": 1000, "t": T0 + 5}],
              "releases": [release]}
    w = worker(pg)
    errors = interleave(
        pg, w, [publish(dtopics.UP_OTA, report)],
        lambda conn: store.ota_report(conn, "north", [], [release], received=T0),
        lambda conn: None)
    assert errors == []
    with pg.connect() as conn:
        assert conn.execute(select(refusals.c.reason, refusals.c.detail)).all() == []
        assert conn.execute(select(ota_releases.c.site, ota_releases.c.v)).all() == [("north", "1.2")]
        assert conn.execute(select(ota_progress.c.dev, ota_progress.c.done)).all() == [("gas1", 500)]
