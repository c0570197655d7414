"""A site box replaced, or whose outbox store was recreated, starts a new store: its births must still be taken
by the district, whose store takes a birth only of a session newer than the site's newest. Real Mosquitto, the
gateway's Uplink and the district's ingest Worker, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy import Engine, select

from district.ingest import Worker
from district.schema import audit, sites
from gateway.message_decode import loads_one
from gateway.outbox import Outbox
from gateway.site_config import BrokerConfig
from gateway.store import open_store
from gateway.uplink import Uplink
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.site import environment, lifeline_cmd
from protocol.district_verify import Verifier

SITE = "north"
KEY = bytes(range(32))


async def until(done: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def connected(port: int, store: Path, clock: Callable[[], float] = time.time) -> AsyncIterator[Uplink]:
    """A site box's uplink on the store at `store`, connected (its birth taken by the broker) until the block
    ends, then stopped cleanly (its death published)."""
    up = Uplink(Outbox(open_store(store), 1 << 20), BrokerConfig("127.0.0.1", port, f"gw-{SITE}-up", None, None,
                                                                 None, 30), SITE, site_key=KEY, clock=clock,
                tick_s=0.1)
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


@contextlib.asynccontextmanager
async def district(engine: Engine, port: int) -> AsyncIterator[Worker]:
    worker = Worker(engine, BrokerConfig("127.0.0.1", port, "district-w1", None, None, None, 30),
                    Verifier({SITE: KEY}, {}, track=False, loads=loads_one), {SITE: set()})
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.subscriber.connected.wait(), 10)
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_site_box_on_a_new_store_reads_online_at_the_district(engine: Engine, tmp_path: Path) -> None:
    with Mosquitto() as broker:
        async with district(engine, broker.port) as worker:
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


async def test_a_new_box_whose_clock_was_behind_reads_online_once_ntp_sets_it(engine: Engine, tmp_path: Path) -> None:
    """A replacement box without a real-time clock boots on its image's time, 90 days behind, and connects
    before NTP sets its clock: its number is below the box before's, and the district ignores its birth. Once
    the clock is set forward, it connects again with a number the district takes, and no will between."""
    behind = [90 * 86400.0]
    with Mosquitto() as broker:
        async with district(engine, broker.port) as worker:
            async with connected(broker.port, tmp_path / "old.db") as up:
                old = up.session
            await until(lambda: worker.stored["gateway"] == 2, f"a birth and death stored: {worker.stored}")
            async with connected(broker.port, tmp_path / "new.db", lambda: time.time() - behind[0]) as up:
                first = up.session
                await until(lambda: worker.stored["gateway"] == 3, f"the new box's birth stored: {worker.stored}")
                assert site_row(engine) == (False, old)  # ignored: what a clock behind still does
                behind[0] = 0.0  # NTP
                await until(lambda: worker.stored["gateway"] == 4, f"its second birth stored: {worker.stored}")
                assert site_row(engine) == (True, up.session)
                assert up.session > old > first and up.connects == 2
            await until(lambda: worker.stored["gateway"] == 5, f"its death stored: {worker.stored}")
            assert worker.refused == {}


async def test_a_box_behind_the_numbers_before_reads_online_once_the_district_forgets_them(
        engine: Engine, engine_url: str, tmp_path: Path) -> None:
    """A replacement box whose clock is never set (no NTP at the site) stays behind the numbers of the box
    before: its births are ignored, the site shown offline while live, and the remedy was SQL at the database.
    `lifeline district --forget-site-session` clears the site's number, says which and the site's state, and is
    audited; the box's next birth is taken. A site the district never heard from is refused."""
    conf = tmp_path / "district.toml"
    conf.write_text(f'[broker]\nhost = "127.0.0.1"\n[database]\nurl = "{engine_url}"\n[[sites]]\nid = "{SITE}"\n'
                    f'seal_key = "{KEY.hex()}"\n')

    def forget(site: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--forget-site-session", site],
                              capture_output=True, text=True, env=environment(), timeout=60)

    def behind() -> float:
        return time.time() - 90 * 86400

    with Mosquitto() as broker:
        async with district(engine, broker.port) as worker:
            async with connected(broker.port, tmp_path / "old.db") as up:
                old = up.session
            async with connected(broker.port, tmp_path / "new.db", behind) as up:
                first = up.session
            await until(lambda: worker.stored["gateway"] == 4, f"two births and deaths handled: {worker.stored}")
            assert site_row(engine) == (False, old)  # the new box's ignored
            done = await asyncio.to_thread(forget, SITE)
            assert done.returncode == 0, done.stderr
            began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(old / 1000))
            assert done.stdout.startswith(f"site {SITE}: session {old} forgotten (begun {began} by the site box's "
                                          "clock); it reads offline, its gateway's last death at "), done.stdout
            async with connected(broker.port, tmp_path / "new.db", behind) as up:
                await until(lambda: worker.stored["gateway"] == 5, f"its next birth handled: {worker.stored}")
                assert site_row(engine) == (True, up.session) and first < up.session < old  # behind still
            unknown = await asyncio.to_thread(forget, "south")
            assert unknown.returncode == 2 and unknown.stderr == (
                f"refused: site 'south' is not in the district's database (its gateway never heard from); sites "
                f"there: {SITE}\n"), unknown.stderr
    with engine.connect() as conn:
        rows = conn.execute(select(audit.c.actor, audit.c.what, audit.c.target, audit.c.detail)).all()
    assert [r[1:] for r in rows] == [("forget-session", SITE, f"session {old}")]
    assert rows[0].actor.startswith("shell:") and len(rows[0].actor) > len("shell:")
