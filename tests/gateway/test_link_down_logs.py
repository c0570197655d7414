"""A broker link that stays down (the district unreachable, its certificate or login refused) is retried every
2 s by the uplink and the downlink. Each failed attempt logged a line: 86,400 lines a day of a district
outage, all alike, into a site box's journal. Now the first failure is logged, a changed error at once, and
then one line a minute carrying the count of attempts; the line at the reconnect says how many failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import gateway.uplink
from gateway.ingest import Subscriber
from gateway.mqtt_link import Link
from gateway.outbox import Outbox
from gateway.site_config import BrokerConfig
from gateway.store import open_store
from gateway.uplink import Uplink
from lifeline.virtual.broker import free_port


def unreachable() -> BrokerConfig:
    return BrokerConfig("127.0.0.1", free_port(), "gw-s1-up", None, None, None, 30)  # nothing listens there


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


async def test_an_unreachable_district_is_logged_once_a_minute_not_at_each_attempt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    uplink = Uplink(Outbox(open_store(tmp_path / "gw.sqlite"), 1 << 20), unreachable(), "s1",
                    backoff_initial_s=0.01, backoff_max_s=0.02)
    task = asyncio.create_task(uplink.run())
    await asyncio.sleep(1.0)
    uplink.stop()
    await asyncio.wait_for(task, 10)
    assert uplink.failed >= 10  # attempts every 10-20 ms, each failed
    failed = lines(caplog, "uplink connect failed")
    assert len(failed) == 1 and failed[0]["failed"] == 1


async def test_a_failing_uplink_says_how_many_attempts_failed_at_each_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.uplink, "FAIL_LOG_S", 0.4)
    uplink = Uplink(Outbox(open_store(tmp_path / "gw.sqlite"), 1 << 20), unreachable(), "s1",
                    backoff_initial_s=0.01, backoff_max_s=0.02)
    task = asyncio.create_task(uplink.run())
    await asyncio.sleep(1.0)
    uplink.stop()
    await asyncio.wait_for(task, 10)
    failed = lines(caplog, "uplink connect failed")
    assert 2 <= len(failed) <= 4, len(failed)
    counts = [f["failed"] for f in failed]
    assert 2 <= len(counts) <= 4 and counts[0] == 1 and counts == sorted(counts) and counts[-1] > 5, counts


async def test_an_unreachable_downlink_is_logged_once_a_minute_not_at_each_attempt(
        caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0
    real = Link.__aenter__

    async def counted(link: Link) -> Link:
        nonlocal attempts
        attempts += 1
        return await real(link)

    sub = Subscriber("downlink", unreachable(), ["district/v1/s1/down/#"], lambda batch: None, 50, 0.02)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Link, "__aenter__", counted)
        task = asyncio.create_task(sub.run())
        await asyncio.sleep(1.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert attempts >= 10
    failed = lines(caplog, "disconnected")
    assert len(failed) == 1 and failed[0]["failed"] == 1


async def test_an_outbox_upkeep_that_keeps_failing_is_logged_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk fails the outbox's upkeep (its deletes, the budget pass) at every tick: a line a second."""
    outbox = Outbox(open_store(tmp_path / "gw.sqlite"), 1 << 20)
    passes = 0

    def full_disk(now: float | None = None) -> None:
        nonlocal passes
        passes += 1
        if passes <= 30:
            raise sqlite3.OperationalError("database or disk is full")

    outbox.enforce_budget = full_disk  # type: ignore[method-assign]
    uplink = Uplink(outbox, unreachable(), "s1", backoff_initial_s=1.0, backoff_max_s=1.0, tick_s=0.01)
    task = asyncio.create_task(uplink.run())
    async with asyncio.timeout(5):
        while passes < 35:
            await asyncio.sleep(0.01)
    uplink.stop()
    await asyncio.wait_for(task, 10)
    failed = lines(caplog, "outbox upkeep failed")
    assert len(failed) == 1 and failed[0]["failed"] == 1
    assert [f["failed"] for f in lines(caplog, "outbox upkeep recovered")] == [30]


async def test_an_outbox_upkeep_that_fails_with_a_bug_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An upkeep pass that raised anything but a store error (a bug; one was the budget pass's mean of a value
    past a float's range) ended the upkeep task for good: no budget pass ran again until a restart, and the
    outbox grew past its budget until the disk was full. It is logged with its traceback once and the next
    tick tries again, as the ticker does."""
    outbox = Outbox(open_store(tmp_path / "gw.sqlite"), 1 << 20)
    passes = 0

    def buggy(now: float | None = None) -> None:
        nonlocal passes
        passes += 1
        if passes <= 3:
            raise OverflowError("int too large to convert to float")

    outbox.enforce_budget = buggy  # type: ignore[method-assign]
    uplink = Uplink(outbox, unreachable(), "s1", backoff_initial_s=1.0, backoff_max_s=1.0, tick_s=0.01)
    task = asyncio.create_task(uplink.run())
    try:
        async with asyncio.timeout(5):
            while passes < 10:
                await asyncio.sleep(0.01)
    finally:
        uplink.stop()
        await asyncio.wait_for(task, 10)
    [failed] = [r for r in caplog.records if r.getMessage() == "outbox upkeep failed"]
    assert failed.exc_info is not None and failed.fields["error"] == "int too large to convert to float"  # type: ignore[attr-defined]
    assert [f["failed"] for f in lines(caplog, "outbox upkeep recovered")] == [3]
