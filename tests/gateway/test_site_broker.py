"""The shipped site broker config (deploy/mosquitto/site.conf + the ACL and password file that
`lifeline site-auth` writes) confines each device to its own topics, over TLS, and lets nobody else in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from lifeline.virtual.site import Site
from protocol import topics


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(tmp_path)
    s.add("d1", "gas")
    s.add("d2", "water")
    s.start()
    yield s
    s.stop()


async def collect(client: aiomqtt.Client, into: list[tuple[str, bytes]]) -> None:
    async for m in client.messages:
        assert isinstance(m.payload, bytes)
        into.append((m.topic.value, m.payload))


async def until(pred: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_each_device_only_reaches_its_own_topics(site: Site) -> None:
    gw_seen: list[tuple[str, bytes]] = []
    d1_seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", site.ports["site"], identifier="gw", username="gateway",
                              password=site.passwords["gateway"]) as gw, \
            site.device_client("d1", tls=True) as d1:
        for kind in (topics.DATA, topics.EVENT, topics.STATE, topics.ACK):
            await gw.subscribe(topics.device_filter(site.id, kind), qos=1)
        await d1.subscribe(topics.device(site.id, "d1", topics.CMD), qos=1)
        await d1.subscribe(topics.device(site.id, "d2", topics.CMD), qos=1)  # not its own: nothing arrives
        await d1.subscribe(topics.device_filter(site.id, topics.DATA), qos=1)  # others' data: denied
        tasks = [asyncio.create_task(collect(gw, gw_seen)), asyncio.create_task(collect(d1, d1_seen))]

        await d1.publish(topics.device(site.id, "d2", topics.DATA), b"forged", qos=1)  # as another device
        await d1.publish(topics.device("other", "d1", topics.DATA), b"other-site", qos=1)  # another site
        await d1.publish(topics.device(site.id, "d1", topics.CMD), b"self-command", qos=1)  # a command
        for kind in (topics.DATA, topics.EVENT, topics.STATE, topics.ACK):
            await d1.publish(topics.device(site.id, "d1", kind), b"own-" + kind.encode(), qos=1)
        await until(lambda: len(gw_seen) >= 4)

        await gw.publish(topics.device(site.id, "d2", topics.CMD), b"for-d2", qos=1)
        await gw.publish(topics.device(site.id, "d1", topics.CMD), b"for-d1", qos=1)
        await until(lambda: any(p == b"for-d1" for _, p in d1_seen))
        await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()

    assert sorted(gw_seen) == sorted((topics.device(site.id, "d1", k), b"own-" + k.encode())
                                     for k in (topics.DATA, topics.EVENT, topics.STATE, topics.ACK))
    # d1 read only its own command: not d2's, not its own data it published, not the forged command
    assert d1_seen == [(topics.device(site.id, "d1", topics.CMD), b"for-d1")]


@pytest.mark.parametrize("who", ["wrong-password", "anonymous", "unknown-user"])
async def test_strangers_are_refused(site: Site, who: str) -> None:
    user, password = {"wrong-password": ("d1", "nope"), "anonymous": (None, None),
                      "unknown-user": ("d9", "whatever")}[who]
    client = aiomqtt.Client("127.0.0.1", site.ports["site"], identifier=f"x-{who}", username=user,
                            password=password)
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


async def test_plain_connection_to_the_tls_listener_fails(site: Site) -> None:
    d = site.devices["d1"]
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", site.ports["site_tls"], identifier="plain", username="d1",
                                  password=d.password, timeout=3):
            pass


async def test_payload_size_limit(site: Site) -> None:
    """Up to message_size_limit the broker passes a payload on, so the gateway can quarantine an oversize
    message with its reason; beyond it the broker drops it."""
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", site.ports["site"], identifier="gw", username="gateway",
                              password=site.passwords["gateway"]) as gw, site.device_client("d1") as d1:
        await gw.subscribe(topics.device_filter(site.id, topics.DATA), qos=1)
        task = asyncio.create_task(collect(gw, seen))
        own = topics.device(site.id, "d1", topics.DATA)
        await d1.publish(own, b"x" * 70_000, qos=1)
        await d1.publish(own, b"y" * 5000, qos=1)
        await until(lambda: len(seen) >= 1)
        await asyncio.sleep(0.2)
        task.cancel()
    assert [len(p) for _, p in seen] == [5000]
