"""A site box replaced, or whose outbox store was recreated, starts a new store: its births must still be taken
by the district, whose store takes a birth only of a session newer than the site's newest. Real Mosquitto, the
gateway's Uplink and the district's ingest Worker, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy import Engine, select

from district.ingest import Worker
from district.schema import sites
from gateway.message_decode import loads_one
from gateway.outbox import Outbox
from gateway.site_config import BrokerConfig
from gateway.store import open_store
from gateway.uplink import Uplink
from lifeline.virtual.broker import Mosquitto
from protocol.district_verify import Verifier

SITE = "north"
KEY = bytes(range(32))


async def until(done: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.02)
    assert done(), what


@contextlib.asynccontextmanager
async def connected(port: int, store: Path) -> AsyncIterator[Uplink]:
    """A site box's uplink on the store at `store`, connected (its birth taken by the broker) until the block
    ends, then stopped cleanly (its death published)."""
    up = Uplink(Outbox(open_store(store), 1 << 20), BrokerConfig("127.0.0.1", port, f"gw-{SITE}-up", None, None,
                                                                 None, 30), SITE, site_key=KEY)
    task = asyncio.create_task(up.run())
    try:
        await until(lambda: up.connected, "the uplink connected")
        yield up
    finally:
        up.stop()
        await asyncio.wait_for(task, 30)
        up.outbox.conn.close()


def site_row(engine: Engine) -> tuple[bool, int]:
    with engine.connect() as conn:
        row = conn.execute(select(sites.c.online, sites.c.session).where(sites.c.site == SITE)).one()
    return bool(row.online), int(row.session)


async def test_a_site_box_on_a_new_store_reads_online_at_the_district(engine: Engine, tmp_path: Path) -> None:
    with Mosquitto() as broker:
        worker = Worker(engine, BrokerConfig("127.0.0.1", broker.port, "district-w1", None, None, None, 30),
                        Verifier({SITE: KEY}, {}, track=False, loads=loads_one), {SITE: set()})
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.subscriber.connected.wait(), 10)
            sessions = []
            for _ in range(3):  # the old box connects three times
                async with connected(broker.port, tmp_path / "old.db") as up:
                    sessions.append(up.session)
            assert sessions == sorted(set(sessions)), sessions  # each connect a newer session
            await until(lambda: worker.stored["gateway"] == 6, f"3 births and deaths stored: {worker.stored}")
            assert site_row(engine) == (False, sessions[-1])

            # The box replaced (or its store deleted): a new store, and the site live again.
            async with connected(broker.port, tmp_path / "new.db") as up:
                await until(lambda: worker.stored["gateway"] == 7, f"the new box's birth stored: {worker.stored}")
                assert site_row(engine) == (True, up.session), f"ignored: {sessions} before, {up.session} now"
                assert up.session > sessions[-1]
            await until(lambda: worker.stored["gateway"] == 8, f"its death stored: {worker.stored}")
            assert site_row(engine) == (False, up.session)
            assert worker.refused == {}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
