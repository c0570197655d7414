"""Retention folds more than one chunk of old readings on both engines: every old reading lands in its bucket
(count, min, max, mean as computed here from the same readings), the recent ones stay as they came."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from deskkit import ingest, verifier
from sqlalchemy import Column, Engine, MetaData, Table, delete, func, inspect, select, text

from district import queries, retention, service, store
from district.schema import devices, messages, readings, rollups

DAY = 86_400.0
NOW = 200 * DAY
ROLLUP_S = 60
SERIES = [("gas1", "ch4"), ("gas1", "h2s"), ("gas2", "ch4")]


def fold_all(engine: Engine, most: int) -> list[int]:
    """Retention passes until one folds nothing: the readings each folded, fewer than `most` passes."""
    passes = []
    while True:
        with engine.begin() as conn:
            folded = retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S)
        if not folded:
            return passes
        passes.append(folded)
        assert len(passes) < most, passes


def test_more_than_a_chunk_of_old_readings_folds_into_exact_rollups(engine: Engine) -> None:
    per_series = retention.CHUNK // len(SERIES) + 1_500  # past one chunk in all
    start = NOW - 40 * DAY
    batch: dict[str, list[store.DeviceMessage]] = defaultdict(list)
    expected: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for k, (dev, n) in enumerate(SERIES):
        for i in range(per_series):
            t = start + i * 25.0 + k  # two or three readings a bucket; thousands of buckets a pass
            v = float((i * 7 + k) % 23) - 5.0
            batch[dev].append(store.DeviceMessage(dev, len(batch[dev]), 1, 0, [{"n": n, "t": t, "u": "ppm", "v": v}],
                                                  None))
            expected[(dev, n, t - t % ROLLUP_S)].append(v)
    recent = [store.DeviceMessage("gas1", 10**6 + i, 1, 0, [{"n": "ch4", "t": NOW - DAY + i, "u": "ppm",
                                                               "v": float(i)}], None) for i in range(5)]
    with engine.begin() as conn:
        for msgs in batch.values():
            store.add_messages(conn, "s1", msgs, received=NOW)
        store.add_messages(conn, "s1", recent, received=NOW)
    old = len(SERIES) * per_series
    assert old > retention.CHUNK

    passes = fold_all(engine, 10)
    assert sum(passes) == old and len(passes) >= 2 and max(passes) <= retention.CHUNK + len(SERIES), passes

    with engine.connect() as conn:
        got = {(r.dev, r.n, r.t): r for r in conn.execute(select(rollups)).mappings()}
        left = conn.execute(select(readings.c.v).order_by(readings.c.t)).scalars().all()
        total = conn.execute(select(func.sum(rollups.c.count))).scalar_one()
    assert left == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert total == old
    assert set(got) == set(expected)
    for key, vs in expected.items():
        r = got[key]
        assert (r["count"], r["min"], r["max"], r["u"]) == (len(vs), min(vs), max(vs), "ppm"), key
        assert r["mean"] == pytest.approx(sum(vs) / len(vs)), key


def test_readings_of_one_time_are_split_across_passes_each_folded_once(engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass took every reading sharing its last one's time, without end: a million of one time (a site's
    clock stuck, or made to) were one pass of 11 s under SQLite's write lock, past the workers' busy timeout.
    Bounded by (time, message), a pass takes at most one message's readings past CHUNK, and the readings of one
    time, split across passes, land in their buckets exactly once."""
    monkeypatch.setattr(retention, "CHUNK", 7)
    t = NOW - 40 * DAY - NOW % ROLLUP_S + 30  # mid-bucket: the one before and the one after have readings too
    times = [t - 45.0] * 5 + [t] * 40 + [t + 0.5] * 3 + [t + 45.0] * 5
    batch = [store.DeviceMessage(f"gas{seq % 3}", seq, 1, 0,
                                 [{"n": "ch4", "t": at, "u": "ppm", "v": float(seq % 11) - 3.0},
                                  {"n": "co", "t": at, "u": "ppm", "v": seq * 0.5}], None)
             for seq, at in enumerate(times)]
    expected: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for m in batch:
        for r in m.records:
            expected[(m.dev, r["n"], r["t"] - r["t"] % ROLLUP_S)].append(r["v"])
    with engine.begin() as conn:
        store.add_messages(conn, "s1", batch[::2], received=NOW)  # ids not in time order
        store.add_messages(conn, "s1", batch[1::2], received=NOW)
    passes = fold_all(engine, 30)
    assert sum(passes) == 2 * len(times) and max(passes) <= retention.CHUNK + 1, passes  # a message: 2 a time
    with engine.connect() as conn:
        got = {(r.dev, r.n, r.t): r for r in conn.execute(select(rollups)).mappings()}
        assert conn.execute(select(func.count()).select_from(readings)).scalar_one() == 0
    assert set(got) == set(expected)
    for key, vs in expected.items():
        r = got[key]
        assert (r["count"], r["numbers"], r["min"], r["max"]) == (len(vs), len(vs), min(vs), max(vs)), key
        assert r["mean"] == pytest.approx(sum(vs) / len(vs)), key


def test_a_message_folded_by_a_pass_bound_within_its_time_is_told_as_folded(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass bound between the messages of one time leaves a message folded below it beside readings of that
    same time: checked then, its MAC holding, it must read folded (one pass more finishes it), not differs, a
    false finding of tampering; a reading taken from a message above the bound still differs."""
    monkeypatch.setattr(retention, "CHUNK", 3)
    t = NOW - 40 * DAY
    for seq in range(1, 7):  # methane at t, carbon monoxide 10 s later, in each
        ingest(engine, "gas1", seq, t, {"ch4": float(seq), "co": 2.0}, received=NOW, spread=10)
    with engine.begin() as conn:
        ids = conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars().all()
        assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == 3  # three messages' methane
    with engine.connect() as conn:
        check = queries.check_message(conn, ids[0], verifier())
        assert check is not None and check["verdict"] == "folded", check
        assert check["stored"] == [{"n": "co", "t": t + 10, "u": "ppm", "v": 2.0}]
        assert "1 of its 2 readings" in check["says"]
        assert queries.check_message(conn, ids[3], verifier())["verdict"] == "match"  # type: ignore[index]
    with engine.begin() as conn:
        conn.execute(delete(readings).where(readings.c.message == ids[-1], readings.c.n == "ch4"))
        assert queries.check_message(conn, ids[-1], verifier())["verdict"] == "differs"  # type: ignore[index]


def test_an_older_databases_index_of_reading_times_is_built_again_by_message_too(
        engine: Engine, engine_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """readings_time was on t alone, which a pass bounded by (time, message) would sort every old reading by:
    the first start rebuilds it, saying so as every upgrade step does, and a second start changes nothing."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX readings_time")
        conn.exec_driver_sql("CREATE INDEX readings_time ON readings (t)")
        store.add_message(conn, "s1", "gas1", 0, 1, [{"n": "ch4", "t": NOW - 40 * DAY, "v": 1.0}], received=NOW)
    caplog.set_level(logging.INFO, logger="lifeline.district.store")
    reopened = store.open_engine(engine_url)
    try:
        steps = [r.fields for r in caplog.records if r.getMessage() == "database-upgrade"]  # type: ignore[attr-defined]
        assert steps == [{"step": "index readings_time of readings", "rows": 1, "allowed_s": 60}], steps
        caplog.clear()
        store.open_engine(engine_url).dispose()
        assert not [r for r in caplog.records if r.getMessage().startswith("database-upgrade")]
        [index] = [i for i in inspect(reopened).get_indexes("readings") if i["name"] == "readings_time"]
        assert index["column_names"] == ["t", "message"]
        with reopened.begin() as conn:
            assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == 1
    finally:
        reopened.dispose()


def test_a_bucket_split_across_passes_keeps_its_count_spread_and_mean(engine: Engine) -> None:
    """A bucket folded in two passes (the second reading arrived late) merges in the database."""
    start = NOW - 40 * DAY
    cases: list[tuple[int, list[dict[str, Any]]]] = [
        (0, [{"n": "ch4", "t": start + 1, "u": "ppm", "v": 2.0}, {"n": "ch4", "t": start + 2, "u": "ppm", "v": 4.0}]),
        (1, [{"n": "ch4", "t": start + 3, "u": "ppm", "v": 9.0}]),
        (2, [{"n": "ch4", "t": start + 4, "u": "ppm", "v": -1.0}])]
    for seq, records in cases:
        with engine.begin() as conn:
            store.add_message(conn, "s1", "gas1", seq, 1, records, received=NOW)
            assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == len(records)
    with engine.connect() as conn:
        row = conn.execute(select(rollups)).mappings().one()
    assert (row["count"], row["min"], row["max"], row["u"]) == (4, -1.0, 9.0, "ppm")
    assert row["mean"] == pytest.approx(14.0 / 4)


def test_a_mixed_bucket_split_across_passes_weighs_its_mean_by_its_numbers(engine: Engine) -> None:
    """A sum and a text reading in a bucket count as readings but are no numbers: merged by all readings, the
    mean of 2, 4 and 6 came out (2 * 3 + 5 * 2) / 5 = 3.2."""
    start = NOW - 40 * DAY
    cases: list[list[dict[str, Any]]] = [
        [{"n": "flow", "t": start + 1, "u": "l", "v": 2.0}, {"n": "flow", "t": start + 2, "u": "l", "s": 90.0},
         {"n": "flow", "t": start + 3, "vs": "meter reset"}],
        [{"n": "flow", "t": start + 4, "u": "l", "v": 4.0}, {"n": "flow", "t": start + 5, "u": "l", "v": 6.0}]]
    for seq, records in enumerate(cases):
        with engine.begin() as conn:
            store.add_message(conn, "s1", "gas1", seq, 1, records, received=NOW)
            assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == len(records)
    with engine.connect() as conn:
        row = conn.execute(select(rollups)).mappings().one()
    assert row["mean"] == pytest.approx(4.0)
    assert (row["count"], row["numbers"], row["min"], row["max"], row["u"]) == (5, 3, 2.0, 6.0, "l")


def test_numbers_near_a_floats_limit_fold_into_a_finite_mean(engine: Engine) -> None:
    """Finite readings (ingest takes any) whose sum is past a float's range: in one pass their mean came out
    inf (a chart of it a 500 at the desk), and a later pass's merge of the bucket (its mean times its numbers)
    failed on PostgreSQL with "value out of range", every pass, so no reading of the district was folded again."""
    big = sys.float_info.max
    start = NOW - 40 * DAY
    for seq, (values, mean) in enumerate([([big, big], big), ([big], big), ([-big, -big], big / 5)]):
        with engine.begin() as conn:
            store.add_message(conn, "s1", "gas1", seq, 1, [{"n": "ch4", "t": start + i, "v": v}
                                                           for i, v in enumerate(values)], received=NOW)
            assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == len(values)
        with engine.connect() as conn:
            row = conn.execute(select(rollups)).mappings().one()
        assert row["mean"] == pytest.approx(mean, rel=1e-12), seq
    assert (row["count"], row["min"], row["max"]) == (5, -big, big)


def test_an_older_database_gets_the_numbers_of_its_rollups(engine: Engine) -> None:
    """Made before `rollups.numbers`: the column is added at start, each bucket with a mean counted as all
    numbers (what its mean was weighed by) and one without as none, and a later pass merges by it."""
    start = NOW - 40 * DAY
    old = MetaData()
    Table("rollups", old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                            for c in rollups.columns if c.name != "numbers"))
    rollups.drop(engine)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["rollups"].insert(), [
            {"site": "s1", "dev": "gas1", "n": "ch4", "t": start, "count": 4, "min": 1.0, "max": 3.0, "mean": 2.0,
             "u": "ppm"},
            {"site": "s1", "dev": "gas1", "n": "mode", "t": start, "count": 2, "min": None, "max": None,
             "mean": None, "u": None}])
    reopened = store.open_engine(engine.url.render_as_string(hide_password=False)
                                 if engine.dialect.name == "postgresql" else str(engine.url.database))
    try:
        with reopened.begin() as conn:
            assert dict(conn.execute(select(rollups.c.n, rollups.c.numbers)).all()) == {"ch4": 4, "mode": 0}
            store.add_message(conn, "s1", "gas1", 0, 1, [{"n": "ch4", "t": start + 5, "u": "ppm", "v": 7.0},
                                                         {"n": "ch4", "t": start + 6, "u": "ppm", "s": 1.0}],
                              received=NOW)
            assert retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S) == 2
        store.open_engine(reopened.url.render_as_string(hide_password=False)).dispose()  # a second start: no change
        with reopened.connect() as conn:
            row = conn.execute(select(rollups).where(rollups.c.n == "ch4")).mappings().one()
        assert (row["count"], row["numbers"], row["max"]) == (6, 5, 7.0)
        assert row["mean"] == pytest.approx(15.0 / 5)
    finally:
        reopened.dispose()


async def test_a_database_error_in_a_retention_pass_is_logged_and_the_pass_tried_again(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Worker 1 runs the retention beside its ingest, in one task group: a pass the database failed (SQLite
    locked past its busy timeout by another process; PostgreSQL's connection ended under it) raised out of the
    group and took the worker down with it, to be restarted by its supervisor. The failure is now logged once,
    with its reason, and the pass tried again at the next interval."""
    monkeypatch.setattr(service, "RETENTION_S", 1.0)  # the lock is released well within it
    if engine.dialect.name == "sqlite":
        monkeypatch.setattr(store, "SQLITE_BUSY_MS", 200)
        engine = store.open_engine(str(engine.url.database))  # its connections wait 200 ms for the lock
    old = time.time() - 40 * DAY
    with engine.begin() as conn:
        store.add_message(conn, "s1", "gas1", 0, 1, [{"n": "ch4", "t": old, "u": "ppm", "v": 2.0}], received=old)

    if engine.dialect.name == "sqlite":
        holder = sqlite3.connect(str(engine.url.database), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        release = holder.close  # (its transaction rolled back)
    else:
        holder_conn = engine.connect()
        holder_conn.begin()
        holder_conn.execute(text("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE"))
        release = holder_conn.close  # (its transaction rolled back)

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "retention-failed"]

    caplog.set_level(logging.INFO, logger="lifeline.district")
    cfg = SimpleNamespace(raw_days=30, rollup_s=ROLLUP_S, messages_days=400, reports_days=400, refusals_days=90)
    task = asyncio.create_task(service._retention(engine, cfg))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 20
        if engine.dialect.name == "postgresql":  # the pass waits on the lock; its connection is ended
            while True:
                assert not task.done(), task
                with engine.connect() as conn:
                    waiting = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                                "AND datname = current_database()")).scalars().all()
                    if waiting:
                        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[0]})
                        break
                assert time.monotonic() < deadline, "the pass never waited on the lock"
                await asyncio.sleep(0.05)
        while not failures():
            assert not task.done(), task
            assert time.monotonic() < deadline, "no retention-failed line"
            await asyncio.sleep(0.02)
        release()
        # the pass's line, not its rows: they are committed in its thread before the task is back to log it
        while not any(r.getMessage() == "retention" for r in caplog.records):
            assert not task.done(), task
            assert time.monotonic() < deadline, "the pass was not tried again"
            await asyncio.sleep(0.05)
        assert not task.done()
        with engine.connect() as conn:
            assert conn.execute(select(func.sum(rollups.c.count))).scalar() == 1
    finally:
        release()  # again, if the test failed before: nothing is left locked for the next
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if engine.dialect.name == "sqlite":
            engine.dispose()
    [failed] = failures()
    reason = failed.fields["error"]  # type: ignore[attr-defined]
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    assert ("database is locked" if engine.dialect.name == "sqlite" else "terminat") in reason, reason
    assert any(r.getMessage() == "retention" and r.fields == {"folded": 1}  # type: ignore[attr-defined]
               for r in caplog.records)


def test_old_messages_are_deleted_and_none_of_them_is_taken_again(engine: Engine) -> None:
    """The messages table kept every device message the district ever took (its key, its sealed bytes), a row
    each, for as long as the district ran. The retention now deletes those received more than messages_days ago,
    but none whose readings are still kept, nor any of a device with an alarm not cleared or a work order not
    closed; a redelivery or replay of a deleted one is still not new."""
    old = NOW - 500 * DAY

    def message(conn: Any, dev: str, seq: int, received: float, t: float | None = None) -> bool:
        return store.add_message(conn, "s1", dev, seq, 1, [{"n": "ch4", "t": received if t is None else t, "v": 1.0}],
                                 received=received)

    with engine.begin() as conn:
        for seq in range(3):
            for dev in ("gas1", "gas2", "gas3"):
                message(conn, dev, seq, old + seq)
        message(conn, "gas4", 0, old, t=NOW)  # a reading still raw (its device's clock ahead): kept, as it is
        message(conn, "gas1", 3, NOW - DAY)  # recent
        store.apply_alarm(conn, "s1", {"id": "a2", "ev": "raised", "kind": "level", "dev": "gas2", "level": "yellow",
                                       "t_gw": NOW - 100}, received=NOW - 100)  # open: gas2's messages kept
        store.apply_alarm(conn, "s1", {"id": "a3", "ev": "raised", "kind": "level", "dev": "gas3", "level": "red",
                                       "t_gw": NOW - 100}, received=NOW - 100)
        store.apply_alarm(conn, "s1", {"id": "a3", "ev": "cleared", "kind": "level", "dev": "gas3", "level": None,
                                       "t_gw": NOW - 50}, received=NOW - 50)  # cleared, its order still open
        while retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S):
            pass
    with engine.begin() as conn:
        assert retention.prune(conn, now=NOW, days=400, after=0) == (3, 10)  # every old one looked at
        assert retention.prune(conn, now=NOW, days=400, after=10) == (0, 10)  # then nothing more
    with engine.begin() as conn:
        left = [tuple(r) for r in conn.execute(select(messages.c.dev, func.count()).group_by(messages.c.dev))]
        assert sorted(left) == [("gas1", 1), ("gas2", 3), ("gas3", 3), ("gas4", 1)]
        # the deleted ones again as they were sent (their readings' times are sealed in), then a new one
        assert [message(conn, "gas1", seq, NOW, t=old + seq) for seq in range(3)] == [False, False, False]
        assert [message(conn, "gas1", seq, NOW) for seq in (3, 4)] == [False, True]
        assert conn.execute(select(func.count()).select_from(messages).where(messages.c.dev == "gas1")).scalar() == 2


def test_an_older_database_gets_the_devices_retention_mark(engine: Engine, engine_url: str) -> None:
    old = MetaData()
    Table("devices", old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                            for c in devices.columns if c.name not in ("pruned", "pruned_boot")))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE devices")
    old.create_all(engine)
    url = engine_url
    reopened = store.open_engine(url)
    try:
        store.open_engine(url).dispose()  # a second start adds nothing
        with reopened.begin() as conn:
            assert store.add_message(conn, "s1", "gas1", 0, 1, [{"n": "ch4", "t": NOW, "v": 1.0}], received=NOW)
            assert conn.execute(select(devices.c.pruned, devices.c.pruned_boot)).one() == (None, None)
    finally:
        reopened.dispose()


async def test_messages_held_back_by_an_alarm_are_deleted_once_it_is_cleared(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1's pass goes on after the last message it looked at, and went on so for as long as the worker
    ran: the old messages of a device with an alarm open when the pass went by were kept after the alarm was
    cleared, until the worker was next restarted, which a district running for months may never be. Once caught
    up, the next pass starts again from the first message."""
    monkeypatch.setattr(service, "RETENTION_S", 0.2)
    old = time.time() - 500 * DAY
    with engine.begin() as conn:
        for seq in range(3):
            for dev in ("gas1", "gas2"):
                store.add_message(conn, "s1", dev, seq, 1, [{"n": "ch4", "t": old + seq, "v": 1.0}],
                                  received=old + seq)
        store.apply_alarm(conn, "s1", {"id": "a2", "ev": "raised", "kind": "level", "dev": "gas2",
                                       "level": "yellow", "t_gw": time.time()}, received=time.time())

    def left() -> list[tuple[str, int]]:
        with engine.connect() as conn:
            counts = conn.execute(select(messages.c.dev, func.count()).group_by(messages.c.dev))
            return sorted((r[0], r[1]) for r in counts)

    cfg = SimpleNamespace(raw_days=30, rollup_s=ROLLUP_S, messages_days=400, reports_days=400, refusals_days=90)
    task = asyncio.create_task(service._retention(engine, cfg))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while left() != [("gas2", 3)]:
            assert not task.done() and time.monotonic() < deadline, left()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a few passes more, caught up
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", {"id": "a2", "ev": "cleared", "kind": "level", "dev": "gas2",
                                           "level": None, "t_gw": time.time()}, received=time.time())
        deadline = time.monotonic() + 5
        while left():
            assert not task.done() and time.monotonic() < deadline, left()
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_newer_boot_below_a_deleted_bogus_number_is_taken(engine: Engine) -> None:
    """A node whose counter was corrupted sends one huge, authentic number; the gateway takes it and, at the
    node's next boot, restarts its window below it (docs/gateway.md, "Sequence"). Once the retention deleted that
    message, its number became the device's mark, and every message of the later boots below it whose readings
    were more than a day old (a backlog after an outage) was taken for one already had, silently, for good. The
    mark is ordered by boot, then number, as the counter grows: a replay of a deleted message is still refused."""
    old, bogus = NOW - 500 * DAY, (1 << 60) + 7

    def message(conn: Any, seq: int, boot: int, received: float, t: float) -> bool:
        return store.add_message(conn, "s1", "gas1", seq, boot, [{"n": "ch4", "t": t, "v": 1.0}], received=received)

    with engine.begin() as conn:
        assert message(conn, 5, 1, old, old) and message(conn, bogus, 1, old + 1, old + 1)
        while retention.fold(conn, now=NOW, raw_days=30, rollup_s=ROLLUP_S):
            pass
        assert retention.prune(conn, now=NOW, days=400) == (2, 2)
    with engine.begin() as conn:
        # the next boot's backlog of a three-day outage, then the replays of the deleted messages
        assert [message(conn, seq, 2, NOW, NOW - 3 * DAY + seq) for seq in (6, 7)] == [True, True]
        assert [message(conn, 5, 1, NOW, old), message(conn, bogus, 1, NOW, old + 1)] == [False, False]
    with engine.begin() as conn:
        while retention.fold(conn, now=NOW + 500 * DAY, raw_days=30, rollup_s=ROLLUP_S):
            pass
        assert retention.prune(conn, now=NOW + 500 * DAY, days=400)[0] == 2
        # the mark is now boot 2's: its deleted messages are refused again, and so is the bogus one still
        assert [message(conn, seq, boot, NOW + 500 * DAY, NOW) for seq, boot in ((6, 2), (bogus, 1))] == [False] * 2
        assert message(conn, 8, 2, NOW + 500 * DAY, NOW)
