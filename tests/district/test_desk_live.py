"""The change feed: a notice published on the real broker reaches every live client of a desk's hub, and
what is not a notice is refused and counted, not passed to a page. What an officer does at one desk process
reaches the pages of another."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import aiomqtt
import httpx
import pytest
from deskkit import PASSWORD, USERS, alarm_body, desk_server, seed

from district import store
from district.live import CHANGES_TOPIC, Hub, notice
from district.store import open_engine
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


def test_an_action_at_one_desk_process_reaches_the_pages_of_another(tmp_path: Path) -> None:
    """A scaled-out district runs several desk processes, each following the broker's change feed. A desk put
    its own actions into its own hub only: an officer at another desk saw an alarm acknowledged and an order
    dispatched by a colleague only at their next reload, and was offered the buttons for steps already taken."""
    engine = open_engine(str(tmp_path / "district.sqlite"))
    now = time.time()
    seed(engine, now)
    alarm = "c" * 32
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(alarm, "raised", "red", now - 60), received=now - 59)
    with Mosquitto() as broker, desk_server(engine, broker) as one, desk_server(engine, broker) as other:
        seen: list[dict[str, object]] = []
        listening = threading.Event()
        watcher = httpx.Client(base_url=other, timeout=httpx.Timeout(5, read=None))
        assert watcher.post("/api/login", json={"user": USERS["viewer"], "password": PASSWORD}).status_code == 200

        def watch() -> None:
            try:
                with watcher.stream("GET", "/api/events") as events:
                    for line in events.iter_lines():
                        if line.startswith("event: hello"):
                            listening.set()
                        elif line.startswith("data: ") and line != "data: {}":
                            seen.append(json.loads(line.removeprefix("data: ")))
            except httpx.HTTPError:  # closed by the test
                pass

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        assert listening.wait(10), "the other desk's change feed did not start"
        time.sleep(0.5)  # the other desk follows the broker (its pages are told to reload when it connects)
        officer = httpx.Client(base_url=one, timeout=20)
        r = officer.post("/api/login", json={"user": USERS["operator"], "password": PASSWORD})
        csrf = {"X-CSRF-Token": r.json()["csrf"]}
        assert officer.post(f"/api/alarms/{alarm}/ack", json={}, headers=csrf).status_code == 200
        order = officer.get("/api/work-orders").json()[0]["id"]
        r = officer.post(f"/api/work-orders/{order}/dispatch", json={"team": "pipe team 3"}, headers=csrf)
        assert r.status_code == 200, r.text
        wanted = [{"kind": "alarm", "site": "s1", "id": alarm}, {"kind": "work-order", "id": order}]
        deadline = time.monotonic() + 10
        while not all(w in seen for w in wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
        watcher.close()
        officer.close()
        thread.join(10)
        assert all(w in seen for w in wanted), seen
        assert seen.count({"kind": "work-order", "id": order}) == 2  # the ack's and the dispatch's
    engine.dispose()


async def test_a_broker_away_is_logged_once_not_at_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    """A desk follows the change feed and tries the broker again every 2 s at most while it is away: each try
    logged a warning, 43,200 a day of a broker outage. The first is logged, then one a minute with the count,
    and the connection that comes back says how many failed."""
    caplog.set_level(logging.INFO, logger="lifeline.district")
    hub = Hub()
    with Mosquitto() as broker:
        cfg = BrokerConfig("127.0.0.1", broker.port, "test", None, None, None, 30)
        follower = asyncio.create_task(hub.follow(cfg))
        async with hub.listen() as q:
            assert (await asyncio.wait_for(q.get(), 10)) == {"kind": "reload"}
            broker.stop()
            await asyncio.sleep(5)  # tries 0.1, 0.2, 0.4, 0.8, 1.6 and 2 s apart
            assert q.get_nowait() == {"kind": "feed", "up": False} and q.empty()  # told once, not at each try
            assert hub.deaf
            broker.start()
            assert (await asyncio.wait_for(q.get(), 10)) == {"kind": "reload"}
            assert not hub.deaf
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    said = [(r.getMessage(), r.fields.get("failed")) for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage().startswith("change feed")]
    assert [m for m, _ in said] == ["change feed disconnected", "change feed reconnected"], said
    assert said[1][1] >= 4, said


async def test_a_desk_not_yet_following_its_broker_does_not_tell_its_pages_they_are_live() -> None:
    """A desk starts following the district broker as it starts serving pages. A page that connected before the
    subscription was made was told "live" though the workers' notices did not reach it yet; the reload at the
    subscription then redrew it at an arbitrary moment (the officer's panel changed under a click). Until it
    follows the broker the hub is deaf, and its pages are told so."""
    hub = Hub()
    with Mosquitto() as broker:
        cfg = BrokerConfig("127.0.0.1", broker.port, "test", None, None, None, 30)
        async with hub.listen() as q:
            follower = asyncio.create_task(hub.follow(cfg))
            await asyncio.sleep(0)  # the follower has started and not yet subscribed
            assert hub.deaf
            assert (await asyncio.wait_for(q.get(), 10)) == {"kind": "reload"}
            assert not hub.deaf and q.empty()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
