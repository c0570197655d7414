"""What an ingest worker tells the desks after a batch commits: a notice per thing that changed, so that every
desk page refetches what it shows (district/live.py). On both engines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import Engine, select
from test_hostile_upstream import T0, alarm, publish, worker

from district.live import CHANGES_TOPIC
from district.schema import work_orders
from protocol import district as dtopics

A, B = "a" * 32, "b" * 32


async def test_an_alarm_that_opens_a_work_order_tells_the_desks_of_the_order(engine: Engine) -> None:
    """A live alarm reaching orange or red opens its work order, and the worker sent only an "alarm" notice:
    the pages' work-order lists, which refetch on a "work-order" notice, showed the new order only at the
    next action on some order or a reload."""
    w = worker(engine)
    told: list[dict[str, Any]] = []

    async def recorded(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        assert topic == CHANGES_TOPIC
        told.append(json.loads(payload))

    w.subscriber.publish = recorded  # type: ignore[method-assign]

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
