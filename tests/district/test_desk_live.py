"""The change feed: a notice published on the real broker reaches every live client of a desk's hub, and
what is not a notice is refused and counted, not passed to a page."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from district.live import CHANGES_TOPIC, Hub, notice
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto


def test_a_notice_is_small_json_of_a_known_kind() -> None:
    assert json.loads(notice("reading", site="s1", dev="gas1", t=10.5, received=11.0)) == {
        "kind": "reading", "site": "s1", "dev": "gas1", "t": 10.5, "received": 11.0}
    with pytest.raises(ValueError):
        notice("gossip", id=1)


async def test_notices_from_the_broker_reach_every_client_and_junk_is_refused() -> None:
    hub = Hub()
    with Mosquitto() as broker:
        cfg = BrokerConfig("127.0.0.1", broker.port, "test", None, None, None, 30)
        follower = asyncio.create_task(hub.follow(cfg))
        async with hub.listen() as a, hub.listen() as b:
            assert (await asyncio.wait_for(a.get(), 10)) == {"kind": "reload"}  # connected: start afresh
            await b.get()
            async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                junk = (b"\xff not json", b'{"kind": "gossip"}', b"[1]")
                for payload in (*junk, notice("alarm", site="s1", id="a" * 32)):
                    await pub.publish(CHANGES_TOPIC, payload)
            for q in (a, b):
                assert (await asyncio.wait_for(q.get(), 10)) == {"kind": "alarm", "site": "s1", "id": "a" * 32}
            assert hub.refused == 3 and hub.received == 1
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert hub.clients == 0


async def test_a_client_that_falls_behind_is_told_to_reload() -> None:
    hub = Hub()
    async with hub.listen() as q:
        for i in range(1000):
            hub.publish(notice("work-order", id=i))
        assert q.qsize() < 300
        seen = [q.get_nowait() for _ in range(q.qsize())]
        assert {"kind": "reload"} in seen and seen[-1] == {"kind": "work-order", "id": 999}
