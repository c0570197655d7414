"""The ack-after-commit subscriber against a real broker: what the handler did not finish comes again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from gateway.ingest import Incoming, Subscriber
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto, subscribe_only

TOPIC = "lifeline/v1/s1/d1/data"


def broker_config(b: Mosquitto) -> BrokerConfig:
    return BrokerConfig(b.host, b.port, "test-ingest", None, None, None, 30)


async def publish(b: Mosquitto, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(b.host, b.port, identifier="pub") as pub:
        for p in payloads:
            await pub.publish(TOPIC, p, qos=1)


async def test_unacknowledged_batch_is_delivered_again_and_acknowledged_one_is_not() -> None:
    with Mosquitto("max_inflight_messages 1000") as b:
        got: list[bytes] = []
        fail = {"on": True}

        def handle(batch: list[Incoming]) -> None:
            if fail["on"] and any(m.payload == b"5" for m in batch):
                raise RuntimeError("crash before the commit")
            got.extend(m.payload for m in batch)

        sub = Subscriber("site", broker_config(b), [TOPIC], handle, batch_max=1)
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        await publish(b, [str(i).encode() for i in range(10)])
        for _ in range(200):
            if len(got) >= 5:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert got == [str(i).encode() for i in range(5)]  # stuck at the failing message, none skipped
        fail["on"] = False
        for _ in range(500):  # the reconnect (backoff) redelivers from message 5 on
            if len(got) >= 10:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sorted(set(got)) == sorted(str(i).encode() for i in range(10))
        first_five = got[:5]
        assert first_five == [str(i).encode() for i in range(5)]
        assert got.count(b"0") == 1  # acknowledged messages were not delivered again


async def test_messages_published_while_away_wait_in_the_persistent_session() -> None:
    with Mosquitto() as b:
        got: list[bytes] = []
        sub = Subscriber("site", broker_config(b), [TOPIC], lambda batch: got.extend(m.payload for m in batch))
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publish(b, [b"while-away-1", b"while-away-2"])
        task = asyncio.create_task(sub.run())
        for _ in range(250):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert got == [b"while-away-1", b"while-away-2"]


@pytest.mark.parametrize("batch_max", [1, 50])
async def test_batches_never_exceed_the_limit(batch_max: int) -> None:
    with Mosquitto("max_inflight_messages 1000") as b:
        sizes: list[int] = []
        sub = Subscriber("site", broker_config(b), [TOPIC], lambda batch: sizes.append(len(batch)),
                         batch_max=batch_max)
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        await publish(b, [b"x"] * 300)
        for _ in range(500):
            if sum(sizes) >= 300:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sum(sizes) == 300 and max(sizes) <= batch_max


async def test_the_loop_turns_between_batches_of_a_backlog() -> None:
    """A returning session's backlog is parsed into the link's inbox in a few reads; the subscriber still gives
    the event loop a turn after each batch, or its PUBACKs, the broker's window and the uplink sharing the loop
    would wait until the whole backlog was handled (the emulated-link bench fell from 1.2 to 0.8 of a bridge)."""
    with Mosquitto("max_inflight_messages 1000") as b:
        turns = {"n": 0}
        seen: list[int] = []  # the loop's turn count as each batch is handled

        async def spin() -> None:
            while True:
                turns["n"] += 1
                await asyncio.sleep(0)

        sub = Subscriber("site", broker_config(b), [TOPIC], lambda batch: seen.append(turns["n"]), batch_max=20)
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publish(b, [b"x"] * 1000)  # waits in the session
        spinner = asyncio.create_task(spin())
        task = asyncio.create_task(sub.run())
        for _ in range(500):
            if sub.messages >= 1000:
                break
            await asyncio.sleep(0.02)
        for t in (task, spinner):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        assert sub.messages == 1000 and len(seen) >= 50
        assert all(a < b for a, b in itertools.pairwise(seen)), seen


async def test_with_prepare_the_next_batch_is_handed_over_before_this_one_is_handled() -> None:
    """`prepare` (the check processes' hand-over): a backlog's batches go to it one ahead of the handler, so
    both work at once; the handler still gets every message once, in order, each with what prepare made of
    it, and what was handled is acknowledged (a new connection gets nothing again)."""
    with Mosquitto("max_inflight_messages 1000") as b:
        steps: list[tuple[str, bytes]] = []
        handled: list[Incoming] = []

        def prepare(batch: list[Incoming]) -> asyncio.Future[list[Incoming]]:
            steps.append(("prepare", batch[0].payload))
            done: asyncio.Future[list[Incoming]] = asyncio.get_running_loop().create_future()
            done.set_result([m._replace(decoded=(False, "prepared", m.payload.decode())) for m in batch])
            return done

        def handle(batch: list[Incoming]) -> None:
            steps.append(("handle", batch[0].payload))
            handled.extend(batch)

        sub = Subscriber("site", broker_config(b), [TOPIC], handle, batch_max=50, prepare=prepare)
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sent = [str(i).encode() for i in range(600)]
        await publish(b, sent)  # waits in the session, then comes as a backlog
        task = asyncio.create_task(sub.run())
        for _ in range(500):
            if sub.messages >= 600:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [m.payload for m in handled] == sent
        assert all(m.decoded == (False, "prepared", m.payload.decode()) for m in handled)
        ahead = [i for i, (a, b_) in enumerate(itertools.pairwise(steps)) if a[0] == b_[0] == "prepare"]
        assert ahead, steps  # some batch was prepared while the one before waited to be handled
        firsts = [p for what, p in steps if what == "handle"]
        assert firsts == [p for what, p in steps if what == "prepare"]  # handled in the order prepared
        again: list[bytes] = []
        sub = Subscriber("site", broker_config(b), [TOPIC], lambda batch: again.extend(m.payload for m in batch))
        task = asyncio.create_task(sub.run())
        await asyncio.wait_for(sub.connected.wait(), 10)
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert again == []


async def test_a_refused_subscription_keeps_the_subscriber_down_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A site broker whose access rules refuse the gateway's filters: the subscriber is not shown connected (so
    `lifeline_site_connected` stays 0) and logs the refusal (at the first try, then once a minute while it lasts),
    instead of sitting deaf."""
    with Mosquitto(subscribe_only(tmp_path, [])) as b:
        sub = Subscriber("site", broker_config(b), [TOPIC], lambda batch: None)
        task = asyncio.create_task(sub.run())
        await asyncio.sleep(1.0)  # the first attempt and a retry (backoff from 0.2 s)
        assert not sub.connected.is_set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    errors = [getattr(r, "fields", {}).get("error", "") for r in caplog.records if r.getMessage() == "disconnected"]
    assert errors == [f"subscription refused: {TOPIC} (NOT_AUTHORIZED)"]


async def test_a_handler_that_keeps_failing_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A store that stays full fails the batch at each redelivery: every reconnect logged a traceback and two
    lines more (connected, reconnecting), thousands a day in a site box's journal. The first failure is logged
    with its traceback, then one line a minute with the count, and the recovery once with the count."""
    caplog.set_level(logging.INFO)
    with Mosquitto() as b:
        full = {"on": True}
        got: list[bytes] = []
        calls = 0

        def handle(batch: list[Incoming]) -> None:
            nonlocal calls
            calls += 1
            if full["on"]:
                raise sqlite3.OperationalError("database or disk is full")
            got.extend(m.payload for m in batch)

        sub = Subscriber("site", broker_config(b), [TOPIC], handle, backoff_max_s=0.02)
        task = asyncio.create_task(sub.run())
        try:
            await asyncio.wait_for(sub.connected.wait(), 10)
            await publish(b, [b"reading"])
            async with asyncio.timeout(10):
                while calls < 10:
                    await asyncio.sleep(0.01)
            full["on"] = False
            async with asyncio.timeout(10):
                while not got:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    [failed] = [r for r in caplog.records if r.getMessage() == "batch handler failed"]
    assert failed.exc_info is not None and failed.fields["failed"] == 1  # type: ignore[attr-defined]
    assert len([r for r in caplog.records if r.getMessage() == "connected"]) <= 2
    [recovered] = [r.fields for r in caplog.records if r.getMessage() == "batch handler recovered"]  # type: ignore[attr-defined]
    assert recovered["failed"] >= 10 and got == [b"reading"]
