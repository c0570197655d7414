"""The district's writes are idempotent and order-proof, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, Engine, MetaData, Table, UniqueConstraint, func, select

from district import store
from district.schema import (
    alarm_events,
    alarms,
    devices,
    messages,
    ota_progress,
    readings,
    sites,
    work_order_steps,
    work_orders,
)
from gateway.alarms import AlarmEngine
from gateway.rules import default_ruleset

RECORDS = [{"n": "ch4", "t": 1_800_000_000.125, "u": "%LEL", "v": 12.5},
           {"n": "rain", "t": 1_800_000_000.5, "u": "mm", "s": 3.5},
           {"n": "cover", "t": 1_800_000_000.5, "vb": True},
           {"n": "note", "t": 1_800_000_000.5, "vs": "ok"},
           {"n": "raw", "t": 1_800_000_000.5, "vd": b"\x00\x01"}]


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_message_is_stored_once_with_every_value_kind(engine: Engine) -> None:
    for _ in range(2):
        with engine.begin() as conn:
            new = store.add_message(conn, "s1", "gas1", 7, 1, RECORDS, received=1.0)
        assert new is (_ == 0)
    assert count(engine, messages) == 1
    with engine.connect() as conn:
        got = [dict(r._mapping) for r in conn.execute(select(readings).order_by(readings.c.n))]
    assert [(r["n"], r["t"], r["u"], r["v"], r["s"], r["vb"], r["vs"], r["vd"]) for r in got] == [
        ("ch4", 1_800_000_000.125, "%LEL", 12.5, None, None, None, None),
        ("cover", 1_800_000_000.5, None, None, None, True, None, None),
        ("note", 1_800_000_000.5, None, None, None, None, "ok", None),
        ("rain", 1_800_000_000.5, "mm", None, 3.5, None, None, None),
        ("raw", 1_800_000_000.5, None, None, None, None, None, b"\x00\x01")]


def test_sequence_numbers_span_64_bits_in_order(engine: Engine) -> None:
    seqs = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    with engine.begin() as conn:
        for seq in reversed(seqs):
            assert store.add_message(conn, "s1", "gas1", seq, 1, RECORDS[:1], received=1.0)
        assert not store.add_message(conn, "s1", "gas1", (1 << 64) - 1, 1, RECORDS[:1], received=2.0)
    with engine.connect() as conn:
        keys = conn.execute(select(messages.c.seq_key).order_by(messages.c.seq_key)).scalars().all()
    assert [store.schema.seq_of(k) for k in keys] == seqs


def transition(ev: str, level: str | None, t_gw: float, **extra: Any) -> dict[str, Any]:
    return {"id": "a" * 32, "ev": ev, "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4", "level": level,
            "prev": None, "value": 30.0, "reading": 30.0, "rule": "gas.ch4", "rver": 1, "t_dev": t_gw - 0.5,
            "t_gw": t_gw, "resend": 0, **extra}


def test_an_alarm_follows_its_latest_transition_whatever_the_arrival_order(engine: Engine) -> None:
    steps = [transition("raised", "yellow", 10.0), transition("escalated", "red", 11.0),
             transition("de-escalated", "orange", 12.0), transition("cleared", None, 13.0)]
    for order in (steps, list(reversed(steps))):
        with engine.begin() as conn:
            conn.execute(work_order_steps.delete())
            conn.execute(work_orders.delete())
            conn.execute(alarm_events.delete())
            conn.execute(alarms.delete())
        for body in order:
            with engine.begin() as conn:
                assert store.apply_alarm(conn, "s1", body, received=20.0)
        with engine.begin() as conn:
            assert not store.apply_alarm(conn, "s1", {**steps[1], "resend": 1}, received=21.0)  # a resend
            row = conn.execute(select(alarms)).one()
            orders = conn.execute(select(work_orders)).all()
        assert (row.state, row.level, row.peak, row.raised, row.cleared) == ("cleared", None, "red", 10.0, 13.0)
        assert len(orders) == 1 and orders[0].alarm == "a" * 32  # red opened one, once
    assert count(engine, alarm_events) == 4


def one_batchs_transitions() -> list[dict[str, Any]]:
    """What the gateway sends for a device's backlog judged in one batch: every transition is stamped with
    the batch's arrival time, so the episode's raise, escalation and clear share one t_gw."""
    gw = AlarmEngine(sqlite3.connect(":memory:"), default_ruleset())
    now = 1_800_000_100.0
    out = [t for i, v in enumerate([30.0, 30.0, 60.0, 60.0, 5.0])
           for t in gw.observe("gas1", "gas", "ch4", v, 1_800_000_000.0 + i, now)]
    bodies = [dict(t.body()) for t in out]
    assert [(b["ev"], b["t_gw"]) for b in bodies] == [("raised", now), ("escalated", now), ("cleared", now)]
    return bodies


def stored_in_every_order(engine: Engine, bodies: list[dict[str, Any]]) -> Iterator[tuple[Any, Any]]:
    """Each order the transitions could be stored in by workers, from empty tables, with the alarm's row after."""
    for order in itertools.permutations(bodies):
        with engine.begin() as conn:
            for table in (work_order_steps, work_orders, alarm_events, alarms):
                conn.execute(table.delete())
        for body in order:
            with engine.begin() as conn:
                assert store.apply_alarm(conn, "s1", body, received=20.0)
        with engine.connect() as conn:
            yield order, conn.execute(select(alarms)).one()


def test_transitions_of_one_gateway_time_leave_the_alarm_as_the_site_does_in_any_order(engine: Engine) -> None:
    """A raise and its clear at one gateway time: the clear was taken only if it came first, so a worker that
    stored them in the gateway's own order left the alarm open (and orange) for good."""
    bodies = one_batchs_transitions()
    for order, row in stored_in_every_order(engine, bodies):
        assert (row.state, row.level, row.peak, row.cleared) == ("cleared", None, "red", bodies[0]["t_gw"]), \
            [b["ev"] for b in order]


def test_an_escalation_at_the_raises_gateway_time_sets_the_level(engine: Engine) -> None:
    raised, escalated, _ = one_batchs_transitions()
    for order in ((raised, escalated), (escalated, raised)):
        with engine.begin() as conn:
            for table in (work_order_steps, work_orders, alarm_events, alarms):
                conn.execute(table.delete())
            for body in order:
                store.apply_alarm(conn, "s1", body, received=20.0)
            row = conn.execute(select(alarms)).one()
        assert (row.state, row.level, row.peak) == ("open", "red", "red"), [b["ev"] for b in order]


def test_a_historical_alarm_opens_no_work_order(engine: Engine) -> None:
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", transition("raised", "red", 10.0), received=20.0, hist=True)
        row = conn.execute(select(alarms)).one()
    assert row.hist and row.state == "open"
    assert count(engine, work_orders) == 0


def test_a_late_death_of_an_old_gateway_session_changes_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, 2, received=10.0)
        store.gateway_state(conn, "s1", False, 1, received=11.0)  # the will of session 1, delivered late
        assert conn.execute(select(sites.c.online, sites.c.session)).one() == (True, 2)
        store.gateway_state(conn, "s1", False, 2, received=12.0)
        assert conn.execute(select(sites.c.online, sites.c.session)).one() == (False, 2)
        store.gateway_state(conn, "s1", True, 3, received=13.0)
        assert conn.execute(select(sites.c.online, sites.c.session)).one() == (True, 3)


def test_a_gateway_session_a_clock_fault_ahead_does_not_hide_the_next_box(engine: Engine) -> None:
    """A site box whose clock ran a year ahead numbers its session a year ahead (at least its clock in ms): its
    replacement, its clock right, was ignored for a year, the site shown offline while live. A birth within
    STATE_AHEAD_S of its arrival is taken over a stored session past that; the faulty box's own sessions, and a
    session only a little ahead, keep their order."""
    now, year_ms = 1_800_000_000.0, 365 * 86400 * 1000

    def row() -> tuple[bool, int]:
        with engine.connect() as conn:
            got = conn.execute(select(sites.c.online, sites.c.session)).one()
        return bool(got.online), int(got.session)

    fault = int(now * 1000) + year_ms
    for online, session, at in ((True, fault, now), (True, fault + 1, now + 1),
                                (False, fault, now + 2),  # its first session's will, late: stale
                                (True, fault, now + 3),  # its first birth, redelivered: stale
                                (False, fault + 1, now + 4)):
        with engine.begin() as conn:
            store.gateway_state(conn, "s1", online, session, received=at)
    assert row() == (False, fault + 1)
    with engine.begin() as conn:  # the replacement, its clock right
        store.gateway_state(conn, "s1", True, int((now + 60) * 1000), received=now + 60)
    assert row() == (True, int((now + 60) * 1000))
    # a session 4 minutes ahead is no fault: a birth at the district's clock, behind it, is stale
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, int((now + 300) * 1000), received=now + 61)
        store.gateway_state(conn, "s1", True, int((now + 62) * 1000), received=now + 62)
    assert row() == (True, int((now + 300) * 1000))


def test_device_state_follows_the_newest_gateway_time(engine: Engine) -> None:
    birth = {"dev": "gas1", "st": "online", "boot": 4, "seq": 0, "t": 100.0, "retained": False, "fw": "1.2",
             "prof": "gas", "batt": 87.0, "pos": [31.2, 121.4]}
    death = {"dev": "gas1", "st": "offline", "boot": 3, "seq": 9, "t": 90.0, "retained": False}
    with engine.begin() as conn:
        store.device_state(conn, "s1", birth, received=101.0)
        store.device_state(conn, "s1", death, received=102.0)  # older news
        row = conn.execute(select(devices)).one()
    assert (row.state, row.boot, row.fw, row.lat, row.lon) == ("online", 4, "1.2", 31.2, 121.4)


def test_a_birth_stamped_by_a_clock_far_ahead_does_not_hide_the_deaths_after_it(engine: Engine) -> None:
    """A site box whose clock ran a year ahead (an RTC read wrong, before NTP) stamps a device's birth then; once
    its clock is right, the device's death is older news by gateway time, and so was every state after it: the
    desk showed the dead device online for a year. A gateway time ahead of the state's arrival counts as at most
    STATE_AHEAD_S past it, so a clock set right is believed again within that (one a little ahead as before)."""
    now = 1_763_900_000.0
    birth = {"dev": "gas1", "st": "online", "boot": 4, "seq": 0, "t": now + 365 * 86_400.0, "fw": "1.2"}
    death = {"dev": "gas1", "st": "offline", "boot": 4, "seq": 9, "t": now + 600.0}  # ten minutes on
    with engine.begin() as conn:
        store.device_state(conn, "s1", birth, received=now)
        store.device_state(conn, "s1", death, received=now + 600.0)
        assert conn.execute(select(devices.c.state, devices.c.boot)).one() == ("offline", 4)
        store.device_state(conn, "s1", {**birth, "boot": 5, "t": now + 660.0}, received=now + 661.0)
        assert conn.execute(select(devices.c.state, devices.c.boot)).one() == ("online", 5)


def test_a_download_progress_stamped_by_a_clock_far_ahead_does_not_freeze_the_nodes_progress(engine: Engine) -> None:
    """A node's progress is its newest by gateway time: one stamped by a site clock a year ahead made every later
    report older news, so the desk's update panel and the rollout driver, which judges a node by progress received
    since its stage was sent, saw the download stand still for a year. Its time counts as at most STATE_AHEAD_S
    past its arrival, as a device state's does."""
    now = 1_763_900_000.0
    with engine.begin() as conn:
        store.ota_report(conn, "s1", [{"dev": "gas1", "v": "0.2.0", "done": 100, "total": 70_000,
                                       "t": now + 365 * 86_400.0}], None, received=now)
        store.ota_report(conn, "s1", [{"dev": "gas1", "v": "0.2.0", "done": 35_000, "total": 70_000,
                                       "t": now + 600.0}], None, received=now + 601.0)
        assert tuple(conn.execute(select(ota_progress.c.done, ota_progress.c.received)).one()) == (35_000, now + 601.0)


def test_a_death_and_the_next_birth_at_one_gateway_time_leave_the_device_online(engine: Engine) -> None:
    """A gateway stamps a batch's states with the batch's time, so a device that rebooted while its gateway was
    catching up sends its will and its next boot's birth at one t: the birth was dropped when the will came
    first (the gateway's own order), and the device shown offline while it reported."""
    death = {"dev": "gas1", "st": "offline", "boot": 3, "seq": 9, "t": 100.0, "retained": False}
    birth = {"dev": "gas1", "st": "online", "boot": 4, "seq": 0, "t": 100.0, "retained": False, "fw": "1.2"}
    own_death = {**death, "boot": 4, "seq": 5}
    for order, expected in [((death, birth), ("online", 4)), ((birth, death), ("online", 4)),
                            ((birth, own_death), ("offline", 4)), ((own_death, birth), ("offline", 4))]:
        with engine.begin() as conn:
            conn.execute(devices.delete())
            for body in order:
                store.device_state(conn, "s1", body, received=101.0)
            row = conn.execute(select(devices)).one()
        assert (row.state, row.boot) == expected, [(b["st"], b["boot"]) for b in order]


def test_old_readings_fold_into_buckets_and_new_ones_stay(engine: Engine) -> None:
    from district import retention
    from district.schema import rollups

    day = 86_400.0
    now = 100 * day
    with engine.begin() as conn:
        for i, (dt, v) in enumerate([(0, 1.0), (100, 3.0), (300, 5.0), (400, 7.0)]):  # 2 buckets, 40 days old
            store.add_message(conn, "s1", "gas1", i, 1, [{"n": "ch4", "t": now - 40 * day + dt, "u": "%LEL",
                                                          "v": v}], received=now)
        store.add_message(conn, "s1", "gas1", 9, 1, [{"n": "ch4", "t": now - day, "u": "%LEL", "v": 9.0}],
                          received=now)
        assert retention.fold(conn, now=now, raw_days=30, rollup_s=300) == 4
        assert retention.fold(conn, now=now, raw_days=30, rollup_s=300) == 0
        got = [(r.count, r.min, r.max, r.mean, r.u) for r in conn.execute(select(rollups).order_by(rollups.c.t))]
        left = conn.execute(select(readings.c.v)).scalars().all()
    start = now - 40 * day
    assert start % 300 == 0
    assert got == [(2, 1.0, 3.0, 2.0, "%LEL"), (2, 5.0, 7.0, 6.0, "%LEL")]
    assert left == [9.0]
    with engine.begin() as conn:  # a late old reading merges into its bucket
        store.add_message(conn, "s1", "gas1", 10, 1, [{"n": "ch4", "t": start + 10, "u": "%LEL", "v": 4.0}],
                          received=now)
        retention.fold(conn, now=now, raw_days=30, rollup_s=300)
        first = conn.execute(select(rollups).order_by(rollups.c.t)).first()
    assert first is not None and (first.count, first.min, first.max, first.mean) == (3, 1.0, 4.0, 8.0 / 3)


def test_an_alarm_follows_its_transition_number_when_the_gateway_clock_went_back(engine: Engine) -> None:
    """A gateway numbers an alarm's transitions ("step"); its clock may be set back between two of them (an
    operator, or NTP correcting a clock that ran ahead). The number, not the earlier gateway time, says which
    is the later: the clear closes the alarm, whichever order they come in."""
    steps = [transition("raised", "yellow", 5000.0, step=0), transition("escalated", "red", 5001.0, step=1),
             transition("cleared", None, 1500.0, step=2)]
    for order, row in stored_in_every_order(engine, steps):
        assert (row.state, row.level, row.peak) == ("cleared", None, "red"), [b["ev"] for b in order]


def test_two_middle_transitions_of_one_gateway_time_follow_their_numbers(engine: Engine) -> None:
    """An escalation and a de-escalation judged in one gateway batch share its t_gw: their numbers order them."""
    steps = [transition("raised", "yellow", 10.0, step=0), transition("escalated", "red", 11.0, step=1),
             transition("de-escalated", "orange", 11.0, step=2)]
    for order, row in stored_in_every_order(engine, steps):
        assert (row.state, row.level) == ("open", "orange"), [b["ev"] for b in order]


def test_an_older_database_gets_the_transition_numbers_and_orders_its_rows_by_time(engine: Engine,
                                                                                     engine_url: str) -> None:
    """Made before `alarms.step` (and `revived`, `acked_step`, `acked_last`, `rose_step`): the columns are added at
    start, the rows it held stay without a number, and the next transition of such a row is ordered by gateway
    time, as before. An ack it held still covers its alarm, at the desk and for a resend."""
    old = MetaData()
    Table("alarms", old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                           for c in alarms.columns
                           if c.name not in ("step", "revived", "acked_step", "acked_last", "rose_step")))
    alarms.drop(engine)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["alarms"].insert().values(
            id="a" * 32, site="s1", dev="gas1", kind="level", level="red", peak="red", peak_rank=4, state="open",
            hist=False, received=1.0, raised=10.0, t_last=10.0, acked=15.0))
    url = engine_url
    reopened = store.open_engine(url)
    try:
        store.open_engine(url).dispose()  # a second start adds nothing
        with reopened.begin() as conn:
            assert conn.execute(select(alarms.c.step, alarms.c.revived, alarms.c.rose_step)).one() == (None,) * 3
            assert conn.execute(select(alarms.c.acked_last, alarms.c.acked_step)).one() == (15.0, None)
            store.apply_alarm(conn, "s1", transition("de-escalated", "orange", 9.0, step=3), received=20.0)
            assert conn.execute(select(alarms.c.level, alarms.c.step)).one() == ("red", None)  # older by time
            store.apply_alarm(conn, "s1", transition("cleared", None, 11.0, step=4), received=20.0)
            assert conn.execute(select(alarms.c.state, alarms.c.step)).one() == ("cleared", 4)
    finally:
        reopened.dispose()


def test_a_gateway_numbers_each_alarms_transitions() -> None:
    bodies = one_batchs_transitions()
    assert [b["step"] for b in bodies] == [0, 1, 2]


def one_batchs_escalations() -> list[dict[str, Any]]:
    """A gas backlog judged in one gateway batch: raised blue, escalated orange, escalated red, at one t_gw."""
    gw = AlarmEngine(sqlite3.connect(":memory:"), default_ruleset())
    out = [t for i, v in enumerate([5.0, 5.0, 12.0, 12.0, 30.0, 30.0, 60.0, 60.0])
           for t in gw.observe("gas1", "gas", "ch4", v, 1_800_000_000.0 + i, 1_800_000_100.0)]
    bodies = [dict(t.body()) for t in out]
    assert [(b["ev"], b["level"], b["step"]) for b in bodies] == [
        ("raised", "blue", 0), ("escalated", "orange", 1), ("escalated", "red", 2)]
    assert len({b["t_gw"] for b in bodies}) == 1
    return bodies


def takes_every_escalation_of_one_batch(engine: Engine) -> None:
    bodies = one_batchs_escalations()
    with engine.begin() as conn:
        assert [store.apply_alarm(conn, "s1", b, received=20.0) for b in bodies] == [True] * 3
        assert [store.apply_alarm(conn, "s1", {**b, "resend": 1}, received=21.0) for b in bodies] == [False] * 3
        row = conn.execute(select(alarms).where(alarms.c.id == bodies[0]["id"])).one()
        stored = conn.execute(select(alarm_events.c.ev, alarm_events.c.level).where(
            alarm_events.c.alarm == bodies[0]["id"]).order_by(alarm_events.c.id)).all()
    assert (row.level, row.peak, row.rose_step) == ("red", "red", 2)
    assert [tuple(r) for r in stored] == [("raised", "blue"), ("escalated", "orange"), ("escalated", "red")]


def test_each_escalation_of_one_batch_is_stored_once(engine: Engine) -> None:
    """A gateway stamps a batch's transitions with one t_gw: two escalations of one alarm in it are told apart by
    their steps. The red was taken for a resend of the orange, and never reached the desk."""
    takes_every_escalation_of_one_batch(engine)


def test_a_transition_without_a_number_and_its_step_0_resend_are_one_whichever_comes_first(engine: Engine) -> None:
    """A gateway upgraded during its site's outage sends its backlog's transition as it stored it (no number) and
    re-sends the alarm live as step 0 (gateway/alarms.py); workers sharing the subscription may store the resend
    first. Either way round it is one transition, and a new step of the alarm is still new."""
    raised = transition("raised", "orange", 10.0)
    for first, then in (({**raised, "step": 0, "resend": 2}, raised), (raised, {**raised, "step": 0, "resend": 2})):
        with engine.begin() as conn:
            conn.execute(work_order_steps.delete())
            conn.execute(work_orders.delete())
            conn.execute(alarm_events.delete())
            conn.execute(alarms.delete())
            assert store.apply_alarm(conn, "s1", first, received=20.0)
            assert not store.apply_alarm(conn, "s1", then, received=21.0)
            assert store.apply_alarm(conn, "s1", transition("escalated", "red", 30.0, step=1), received=31.0)
            stored = conn.execute(select(alarm_events.c.ev, alarm_events.c.level)
                                  .order_by(alarm_events.c.id)).all()
        assert [tuple(r) for r in stored] == [("raised", "orange"), ("escalated", "red")]


def test_an_older_database_gets_the_transitions_step_and_keeps_its_rows(engine: Engine, engine_url: str) -> None:
    """Made when a transition was once per (alarm, ev, t_gw): upgraded at start, its rows kept; the row of an
    alarm's latest transition gets the alarm's step, so its gateway's resends of it are not stored again."""
    old = MetaData()
    Table("alarm_events", old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                 for c in alarm_events.columns if c.name != "step"),
          UniqueConstraint("alarm", "ev", "t_gw", name="alarm_events_once"))
    alarm_events.drop(engine)
    old.create_all(engine)
    raised = transition("raised", "orange", 10.0, step=0)
    with engine.begin() as conn:
        conn.execute(alarms.insert().values(
            id="a" * 32, site="s1", dev="gas1", kind="level", level="orange", peak="orange", peak_rank=3,
            state="open", hist=False, received=20.0, raised=10.0, t_last=10.0, step=0, rose_step=0))
        conn.execute(old.tables["alarm_events"].insert(), [
            {"alarm": "a" * 32, "ev": "raised", "level": "orange", "t_gw": 10.0, "received": 20.0, "resend": 0,
             "hist": False},
            {"alarm": "b" * 32, "ev": "raised", "level": "yellow", "t_gw": 5.0, "received": 6.0, "resend": 0,
             "hist": False}])
    reopened = store.open_engine(engine_url)
    try:
        store.open_engine(engine_url).dispose()  # a second start changes nothing
        with reopened.begin() as conn:
            assert [tuple(r) for r in conn.execute(select(
                alarm_events.c.alarm, alarm_events.c.ev, alarm_events.c.t_gw, alarm_events.c.step)
                .order_by(alarm_events.c.id))] == [("a" * 32, "raised", 10.0, 0), ("b" * 32, "raised", 5.0, None)]
            assert not store.apply_alarm(conn, "s1", {**raised, "resend": 1}, received=21.0)
        takes_every_escalation_of_one_batch(reopened)
    finally:
        reopened.dispose()
