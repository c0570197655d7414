"""The daemon's tick (stale alarms, re-sends, command deadlines, gaps, metrics) over a long run and through a
failure, on an in-process gateway over its real store.

An alarm the district never acknowledged was re-sent with a delay of resend_first_s * 2**count: past 1,024
re-sends that product is no float, and the tick raised OverflowError (42 days at the defaults, 17 minutes at
resend_first_s = resend_max_s = 1). A tick that raised, for that or a store error, ended the ticker task for
good: no more stale alarms, re-sends, command timeouts, gap reports or metrics until a restart, and the
daemon's stop then raised the ticker's error."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

import gateway.daemon
from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.site_config import load
from protocol import district, message, senml_build, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[alarms]\nresend_first_s = 1\nresend_max_s = 1\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    yield gateway
    gateway.conn.close()


def reading(seq: int, ch4: float, at: float) -> Incoming:
    pack = senml_build.pack([senml_build.record("ch4", ch4, t=at)])
    body = message.data("d1", 1, seq, pack)
    return Incoming(topics.device("s1", "d1", topics.DATA), message.encode(body, KEY), False, at)


def resends(gateway: Gateway) -> list[int]:
    return [cbor2.loads(body)["resend"] for (body,) in gateway.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY id", (district.ALARM,))]


def test_an_alarm_never_acknowledged_is_resent_past_1024_times(gw: Gateway) -> None:
    gw.handle_site([reading(1, 50.0, NOW), reading(2, 50.0, NOW + 1)])
    assert resends(gw) == [0]
    gw.conn.execute("UPDATE alarm_active SET resends = 1020")  # a month and more of re-sends at the defaults
    gw.conn.commit()
    gw._rollback()  # the engine read again from the store, as after a restart
    for i in range(10):
        gw.tick(NOW + 2 + i)
    assert resends(gw)[1:] == list(range(1021, 1031))


async def test_a_failed_tick_is_logged_and_the_next_one_runs(gw: Gateway, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(gateway.daemon, "TICK_S", 0.01)
    calls = 0
    real = gw.commands.expire

    def expire(now: float) -> Any:
        nonlocal calls
        calls += 1
        if 3 <= calls <= 5:  # a store that cannot write for a moment (an SD card full)
            gw.conn.execute("INSERT INTO command_pending VALUES ('d1', 9, 'birth', 0, 1e12)")  # half written
            raise sqlite3.OperationalError("database or disk is full")
        return real(now)

    monkeypatch.setattr(gw.commands, "expire", expire)
    ticker = asyncio.create_task(gw._ticker())
    try:
        async with asyncio.timeout(5):
            while calls < 10 and not ticker.done():
                await asyncio.sleep(0.01)
        assert not ticker.done(), ticker.exception()
    finally:
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
    # the failed ticks' writes were rolled back, not committed by the next one
    assert gw.conn.execute("SELECT count(*) FROM command_pending").fetchone()[0] == 0
    failed = [r for r in caplog.records if r.getMessage() == "tick-failed"]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR and failed[0].exc_info
    assert [r.getMessage() for r in caplog.records if r.getMessage() == "tick-recovered"] == ["tick-recovered"]
