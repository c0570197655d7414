"""What an ingest worker tells the desks after a batch commits: a notice per thing that changed, so that every
desk page refetches what it shows (district/live.py). On both engines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import Engine, select
from test_hostile_upstream import T0, alarm, entry, publish, state, telemetry, worker

from district import queries, workorders
from district.accounts import Session
from district.ingest import Worker
from district.live import CHANGES_TOPIC
from district.schema import audit, work_orders
from gateway.district_wire import alarm_acks
from protocol import district as dtopics

A, B = "a" * 32, "b" * 32


def told_worker(engine: Engine, downs: list[tuple[str, list[tuple[str, int | None]], int]] | None = None
                ) -> tuple[Worker, list[dict[str, Any]]]:
    """A worker, and the change notices it sends the desks, kept (decoded) instead of published; with `downs`,
    the alarm-acks it sends down too (topic, acks, qos)."""
    w = worker(engine)
    told: list[dict[str, Any]] = []

    async def recorded(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if downs is not None and topic != CHANGES_TOPIC:
            downs.append((topic, alarm_acks(payload), qos))
            return
        assert topic == CHANGES_TOPIC
        told.append(json.loads(payload))

    w.subscriber.publish = recorded  # type: ignore[method-assign]
    return w, told


async def test_an_alarm_that_opens_a_work_order_tells_the_desks_of_the_order(engine: Engine) -> None:
    """A live alarm reaching orange or red opens its work order, and the worker sent only an "alarm" notice:
    the pages' work-order lists, which refetch on a "work-order" notice, showed the new order only at the
    next action on some order or a reload."""
    w, told = told_worker(engine)

    async def handled(**body: Any) -> list[dict[str, Any]]:
        told.clear()
        w.handle([publish(dtopics.ALARM, alarm(**body))])
        for _ in range(20):  # the notices go out in a task of their own, after the commit
            await asyncio.sleep(0)
        return told

    assert await handled(id=A, level="yellow") == [{"kind": "alarm", "site": "north", "id": A}]
    got = await handled(id=A, ev="escalated", level="red", prev="yellow", t_gw=T0 + 5)
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == A)).scalar_one()
    assert got == [{"kind": "alarm", "site": "north", "id": A}, {"kind": "work-order", "id": order}]
    hist = publish(dtopics.ALARM, {**alarm(id=B, level="red"), "hist": True})  # backlog: no order opened
    told.clear()
    w.handle([hist])
    for _ in range(20):
        await asyncio.sleep(0)
    assert told == [{"kind": "alarm", "site": "north", "id": B}]


async def test_a_live_alarm_that_went_red_during_an_outage_opens_its_order(engine: Engine) -> None:
    """A site's link drops while one of its live alarms is yellow; the gateway escalates it to red meanwhile and
    sends that up from its backlog (hist) when the link is back. The board showed the alarm live and red, and it
    had no work order: the order was left to live transitions, and the gateway's resends of this one are the
    same transition again, never new. The officer saw a red alarm with "No work order" and nothing to dispatch."""
    w, told = told_worker(engine)
    w.handle([publish(dtopics.ALARM, alarm(id=A, level="yellow"))])
    escalated = {**alarm(id=A, ev="escalated", level="red", prev="yellow", t_gw=T0 + 600), "hist": True}
    w.handle([publish(dtopics.ALARM, escalated)])
    for _ in range(20):
        await asyncio.sleep(0)
    with engine.connect() as conn:
        board = {a["id"]: a for a in queries.open_alarms(conn, {})}
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == A)).scalar()
    assert (board[A]["state"], board[A]["level"]) == ("open", "red")
    assert order is not None and board[A]["work_order"] == {"id": order, "state": "open", "team": None, "round": 1}
    assert {"kind": "work-order", "id": order} in told
    # An alarm raised in the backlog is historical: shown as such, and no order
    w.handle([publish(dtopics.ALARM, {**alarm(id=B, level="red"), "hist": True})])
    with engine.connect() as conn:
        board = {a["id"]: a for a in queries.open_alarms(conn, {})}
        assert conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == B)).scalar() is None
    assert (board[B]["state"], board[B]["work_order"]) == ("historical", None)


async def test_a_backlog_alarm_its_gateway_still_resends_live_is_live(engine: Engine) -> None:
    """An alarm raised red while the site's link was down comes up in the backlog (hist) and is historical: no
    order. Still unacknowledged and red at the site, its gateway re-sends it once the link is back, live; the
    district took the resend for the transition it had, so the alarm read "historical" for good, below the live
    ones and without an order, while the gas was still at red."""
    w, told = told_worker(engine)

    def board() -> dict[str, Any]:
        with engine.connect() as conn:
            return {a["id"]: a for a in queries.open_alarms(conn, {})}[B]

    w.handle([publish(dtopics.ALARM, {**alarm(id=B, level="red"), "hist": True})])
    assert (board()["state"], board()["work_order"]) == ("historical", None)
    told.clear()
    w.handle([publish(dtopics.ALARM, alarm(id=B, level="red", resend=3))])
    for _ in range(20):
        await asyncio.sleep(0)
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == B)).scalar()
    assert order is not None and board()["state"] == "open" and board()["work_order"]["id"] == order
    assert {"kind": "work-order", "id": order} in told
    # a resend of a transition the alarm has moved past says nothing of now, and an alarm cleared stays so
    w.handle([publish(dtopics.ALARM, {**alarm(id=A, level="red"), "hist": True}),
              publish(dtopics.ALARM, {**alarm(id=A, ev="de-escalated", level="yellow", prev="red", t_gw=T0 + 60),
                                      "hist": True}),
              publish(dtopics.ALARM, alarm(id=A, level="red", resend=1))])
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == A)).scalar() is None
        assert {a["id"]: a["state"] for a in queries.open_alarms(conn, {})}[A] == "historical"


async def test_a_backlog_does_not_make_its_devices_seen_now(engine: Engine) -> None:
    """A site's link comes back and its backlog of readings comes up (hist): its devices read "seen 0 s" ago, on
    the device table and, through the reading notice, on every open page, though their newest reading was taken
    before the outage, and one that had died meanwhile read offline and seen just now. A backlog's message makes
    its device seen at its newest reading's time (the desk's time of receipt at most)."""
    w, told = told_worker(engine)
    backlog = publish(dtopics.TELEMETRY, {**telemetry(entry("gas1", 1)), "hist": True})
    w.handle([backlog])
    for _ in range(20):
        await asyncio.sleep(0)
    with engine.connect() as conn:
        seen = {d["dev"]: d["last_seen"] for d in queries.device_states(conn, "north")}
    assert seen["gas1"] == T0 < backlog.received
    assert [n["received"] for n in told if n["kind"] == "reading"] == [T0]
    w.handle([publish(dtopics.UP_STATE, {**state(dev="gas2", t=T0 - 60), "hist": True})])  # a birth, as old
    with engine.connect() as conn:
        assert {d["dev"]: d["last_seen"] for d in queries.device_states(conn, "north")}["gas2"] == T0 - 60
    w.handle([publish(dtopics.TELEMETRY, telemetry(entry("gas1", 2)))])  # a live one is seen as it comes
    with engine.connect() as conn:
        live = {d["dev"]: d["last_seen"] for d in queries.device_states(conn, "north")}["gas1"]
    assert live > T0
    w.handle([publish(dtopics.UP_STATE, {**state(t=T0 + 10), "hist": True})])  # and an older birth keeps it
    with engine.connect() as conn:
        assert {d["dev"]: d["last_seen"] for d in queries.device_states(conn, "north")}["gas1"] == live


async def test_an_alarm_that_rises_again_after_its_order_was_closed_reopens_it(engine: Engine) -> None:
    """An order done and closed while its alarm was still above its clear level (de-escalated to yellow, say),
    and the gas rises to red again: the alarm is one episode, its order unique, so nothing opened. The board
    showed a live red alarm "acknowledged" with its order "closed", and not one button: no one could act on it.
    The escalation reopens the order (a "reopened" step by the system), to be acknowledged and dispatched again."""
    w, told = told_worker(engine)
    w.handle([publish(dtopics.ALARM, alarm(id=A, level="red"))])
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == A)).scalar_one()
    sup = Session("t", "chen", "supervisor", "c")
    with engine.begin() as conn:
        workorders.ack_alarm(conn, A, sup, now=T0 + 10)
        for i, (step, kw) in enumerate((("dispatch", {"team": "pipe 3"}), ("report", {"note": "seal replaced"}),
                                        ("close", {}))):
            workorders.act(conn, order, step, sup, now=T0 + 20 + i, **kw)
    w.handle([publish(dtopics.ALARM, alarm(id=A, ev="de-escalated", level="yellow", prev="red", t_gw=T0 + 30))])
    told.clear()
    w.handle([publish(dtopics.ALARM, alarm(id=A, ev="escalated", level="red", prev="yellow", t_gw=T0 + 90))])
    for _ in range(20):
        await asyncio.sleep(0)
    with engine.connect() as conn:
        got = queries.work_order(conn, order)
    assert got is not None and got["state"] == "open"
    assert [s["step"] for s in got["steps"]] == ["opened", "ack", "dispatch", "report", "close", "reopened"]
    assert {"kind": "work-order", "id": order} in told
    with engine.begin() as conn:
        workorders.ack_alarm(conn, A, sup, now=T0 + 100)
        assert workorders.act(conn, order, "dispatch", sup, team="pipe 8", now=T0 + 110) == "dispatched"
    # going down reopens nothing, nor does an escalation the alarm has moved past (a late resend)
    with engine.begin() as conn:
        workorders.act(conn, order, "report", sup, note="line replaced", now=T0 + 120)
        workorders.act(conn, order, "close", sup, now=T0 + 130)
    w.handle([publish(dtopics.ALARM, alarm(id=A, ev="de-escalated", level="orange", prev="red", t_gw=T0 + 140)),
              publish(dtopics.ALARM, alarm(id=A, ev="escalated", level="orange", prev="yellow", t_gw=T0 + 80))])
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state)).scalar_one() == "closed"


async def test_an_escalation_after_the_officers_ack_wants_the_officers_ack_again(engine: Engine) -> None:
    """An orange alarm acknowledged and its order dispatched, and the gas rises to red. The desk showed it
    "acknowledged" at the orange's time with no Acknowledge button, and the worker itself answered the gateway's
    escalation with an alarm-ack: the site read red acknowledged though no officer had seen red, and no audit
    row said so. The escalation makes the alarm unacknowledged at the desk (its order left dispatched, the
    notices as before) and nothing goes down until an officer acknowledges it, audited like any ack; from then a
    resend (the officer's ack lost on its way) is answered with the officer's ack, at the step acknowledged."""
    downs: list[tuple[str, list[tuple[str, int | None]], int]] = []
    w, told = told_worker(engine, downs)

    async def handled(body: dict[str, Any]) -> None:
        told.clear()
        downs.clear()
        w.handle([publish(dtopics.ALARM, body)._replace(received=T0 + 1.5)])  # half a second after its raise
        for _ in range(20):
            await asyncio.sleep(0)

    def board() -> dict[str, Any]:
        with engine.connect() as conn:
            return {a["id"]: a for a in queries.open_alarms(conn, {})}[A]

    red = alarm(id=A, ev="escalated", level="red", prev="orange", t_gw=T0 + 60, step=1)
    await handled(alarm(id=A, level="orange", step=0))
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == A)).scalar_one()
    op, sup = Session("t", "li.wei", "operator", "c"), Session("t", "chen", "supervisor", "c")
    with engine.begin() as conn:
        workorders.ack_alarm(conn, A, op, now=T0 + 10)
        workorders.act(conn, order, "dispatch", op, team="pipe 3", now=T0 + 20)
    await handled(red)
    assert downs == []
    assert told == [{"kind": "alarm", "site": "north", "id": A}, {"kind": "work-order", "id": order}]
    assert (board()["level"], board()["acked"], board()["work_order"]["state"]) == ("red", None, "dispatched")
    await handled({**red, "resend": 2})
    assert (downs, told) == ([], [])
    with engine.begin() as conn:
        workorders.ack_alarm(conn, A, sup, now=T0 + 70)
        got = queries.work_order(conn, order)
        acks = conn.execute(select(audit.c.actor, audit.c.at).where(audit.c.what == "ack")
                            .order_by(audit.c.id)).all()
        measured = queries.response_values(conn)["colour"]["red"]["alarm_ack"]
    assert got is not None and [s["step"] for s in got["steps"]] == ["opened", "ack", "dispatch"]
    assert [tuple(a) for a in acks] == [("li.wei", T0 + 10), ("chen", T0 + 70)]
    assert (board()["acked"], measured) == (T0 + 70, [8.5])  # alarm -> ack: to the first ack, from its arrival
    await handled({**red, "resend": 3})  # the officer's ack lost on its way: sent again, at its step
    assert (downs, told) == ([("district/v1/north/down/alarm-ack", [(A, 1)], 1)], [])
    await handled(alarm(id=A, ev="de-escalated", level="orange", prev="red", t_gw=T0 + 90, step=2))
    assert downs == [] and board()["acked"] == T0 + 70  # going down keeps the ack
    # red again after going down wants a fresh ack, as at the gateway; an unacknowledged alarm's resend none
    await handled(alarm(id=A, ev="escalated", level="red", prev="orange", t_gw=T0 + 120, step=3, resend=1))
    assert downs == [] and board()["acked"] is None
    await handled(alarm(id=B, level="yellow", step=0))
    await handled(alarm(id=B, ev="escalated", level="red", prev="yellow", t_gw=T0 + 60, step=1, resend=1))
    assert downs == []


async def test_a_resend_is_answered_with_the_officers_ack_not_an_ack_of_what_came_since(engine: Engine) -> None:
    """Orange acknowledged at step 0, its ack lost; at the site red (step 1), then orange (step 2). After an outage
    the backlog is shared among the workers, and one commits the orange and its resend before another has the red:
    the resend was answered at the district's step then, 2, which the gateway takes as past the red's rise, so the
    red read acknowledged at the site though no officer saw it. The answer is the officer's ack, at its step."""
    downs: list[tuple[str, list[tuple[str, int | None]], int]] = []
    w, _ = told_worker(engine, downs)

    async def handled(body: dict[str, Any]) -> None:
        downs.clear()
        w.handle([publish(dtopics.ALARM, body)])
        for _ in range(20):
            await asyncio.sleep(0)

    await handled(alarm(id=A, level="orange", step=0))
    with engine.begin() as conn:
        workorders.ack_alarm(conn, A, Session("t", "li.wei", "operator", "c"), now=T0 + 10)
    down = alarm(id=A, ev="de-escalated", level="orange", prev="red", t_gw=T0 + 90, step=2)
    await handled(down)
    await handled({**down, "resend": 1})
    assert downs == [("district/v1/north/down/alarm-ack", [(A, 0)], 1)]  # the gateway refuses it: red since
    await handled(alarm(id=A, ev="escalated", level="red", prev="orange", t_gw=T0 + 60, step=1))
    await handled({**down, "resend": 2})
    assert downs == []  # the red is the officer's to acknowledge


async def test_a_revived_alarm_is_timed_from_when_it_became_live(engine: Engine) -> None:
    """An alarm raised red an hour into a site's outage comes up in the backlog (historical), and its gateway's
    live resend makes it live; the officer acknowledges it 30 s later. alarm -> ack read an hour and a half, the
    outage counted as the desk's slowness, and sample -> desk the hour its reading waited in the backlog. A
    revived alarm's ack is timed from its revival, and its reading, a backlog's, is not a sample -> desk."""
    w, _ = told_worker(engine)
    up = T0 + 5400  # the link is back an hour and a half after the raise
    w.handle([publish(dtopics.ALARM, {**alarm(id=B, level="red"), "hist": True})._replace(received=up)])
    w.handle([publish(dtopics.ALARM, alarm(id=B, level="red", resend=5))._replace(received=up + 60)])
    with engine.begin() as conn:
        workorders.ack_alarm(conn, B, Session("t", "li.wei", "operator", "c"), now=up + 90)
        red = queries.response_values(conn)["colour"]["red"]
    assert red["alarm_ack"] == [30.0]
    assert "sample_desk" not in red


async def test_an_alarm_acknowledged_while_historical_is_timed_from_its_arrival(engine: Engine) -> None:
    """The officer acknowledges a red of a site's backlog 30 s after it came, before its gateway's live resend
    (the ack on its way) makes it live. revive_alarm stamped `revived` anyway, after the ack: ack minus revived
    came out negative, and the figure silently lost the alarm. The clock of an acknowledged alarm is not started
    again: its alarm -> ack counts from when the desk received it, and its reading is still no sample -> desk."""
    downs: list[tuple[str, list[tuple[str, int | None]], int]] = []
    w, _ = told_worker(engine, downs)
    up = T0 + 5400
    w.handle([publish(dtopics.ALARM, {**alarm(id=B, level="red", step=0), "hist": True})._replace(received=up)])
    with engine.begin() as conn:
        workorders.ack_alarm(conn, B, Session("t", "li.wei", "operator", "c"), now=up + 30)
    w.handle([publish(dtopics.ALARM, alarm(id=B, level="red", resend=5, step=0))._replace(received=up + 60)])
    for _ in range(20):
        await asyncio.sleep(0)
    assert downs == [("district/v1/north/down/alarm-ack", [(B, 0)], 1)]  # its gateway missed the officer's ack
    with engine.connect() as conn:
        red = queries.response_values(conn)["colour"]["red"]
        state = {a["id"]: a for a in queries.open_alarms(conn, {})}[B]["state"]
    assert (state, red["alarm_ack"]) == ("open", [30.0])
    assert "sample_desk" not in red
