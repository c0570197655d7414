"""The retention deletes the working data a district would otherwise keep for as long as it runs (the sites'
reports, refusals, expired sessions) and keeps its history, in passes bounded by rows and by refused bytes, on
both engines."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, Table, func, select

from district import accounts, retention, service, store
from district.schema import (
    alarm_events,
    alarms,
    audit,
    commands,
    refusals,
    reports,
    sessions,
    work_order_steps,
    work_orders,
)

DAY = 86_400.0
NOW = 200 * DAY


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def report(conn: Any, received: float) -> None:
    store.add_report(conn, "s1", "dq", "gas1", json.dumps({"dq": "gap", "t": received}), received=received)


def refusal(conn: Any, received: float, size: int = 10) -> None:
    store.refuse(conn, "district/v1/s1/up/telemetry", "site-seal", "bad seal", b"x" * size, received=received)


def test_old_reports_refusals_and_expired_sessions_go_and_the_history_stays(engine: Engine) -> None:
    with engine.begin() as conn:
        for received in (NOW - 500 * DAY, NOW - 401 * DAY, NOW - 399 * DAY, NOW - DAY):
            report(conn, received)
        for received in (NOW - 100 * DAY, NOW - 91 * DAY, NOW - 89 * DAY):
            refusal(conn, received)
        accounts.add_user(conn, "li.wei", "operator", "a long enough password", now=NOW - 500 * DAY)
        for opened in (NOW - 3 * DAY, NOW - 30 * 3600, NOW - 3600):  # expired 2.5 days ago, 18 hours ago; live
            accounts.open_session(conn, "li.wei", now=opened)
        old = NOW - 500 * DAY
        for ev, level in (("raised", "red"), ("cleared", None)):
            store.apply_alarm(conn, "s1", {"id": "a1", "ev": ev, "kind": "level", "dev": "gas1", "level": level,
                                           "t_gw": old + (ev == "cleared")}, received=old)
        conn.execute(audit.insert().values(actor="li.wei", at=old, what="ack", target="a1"))
        conn.execute(commands.insert().values(id=1, site="s1", dev="gas1", op="ping", args="{}", actor="li.wei",
                                              sent=old, ok=True, result="{}", answered=old))
    history = {t.name: count(engine, t) for t in (alarms, alarm_events, work_orders, work_order_steps, audit,
                                                  commands)}
    assert min(history.values()) >= 1, history

    with engine.begin() as conn:
        assert retention.sweep(conn, now=NOW, reports_days=400, refusals_days=90) == {
            "reports": 2, "refusals": 2, "sessions": 1}
    with engine.begin() as conn:
        assert retention.sweep(conn, now=NOW, reports_days=400, refusals_days=90) == {
            "reports": 0, "refusals": 0, "sessions": 0}
    with engine.connect() as conn:
        assert conn.execute(select(reports.c.received).order_by(reports.c.id)).scalars().all() == [
            NOW - 399 * DAY, NOW - DAY]
        assert conn.execute(select(refusals.c.received)).scalars().all() == [NOW - 89 * DAY]
        assert sorted(conn.execute(select(sessions.c.created)).scalars().all()) == [NOW - 30 * 3600, NOW - 3600]
    assert {t: count(engine, globals()[t]) for t in history} == history


def test_a_pass_is_bounded_by_rows_and_by_refused_bytes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass looks at SWEEP_ROWS rows by id, and deletes refusals up to SWEEP_BYTES of payload: a district that
    switches the retention on with years of them catches up over short passes, never one long one under the
    write lock. A row not yet old among them (a worker's clock ahead) is stepped over, not waited on."""
    monkeypatch.setattr(retention, "SWEEP_ROWS", 4)
    monkeypatch.setattr(retention, "SWEEP_BYTES", 2_500)
    with engine.begin() as conn:
        for i in range(10):
            report(conn, NOW - 500 * DAY + i)
        refusal(conn, NOW, size=1_000)  # the lowest id, and recent
        for i in range(6):
            refusal(conn, NOW - 100 * DAY + i, size=1_000)

    passes = []
    for _ in range(5):
        with engine.begin() as conn:
            gone = retention.sweep(conn, now=NOW, reports_days=400, refusals_days=90)
        passes.append((gone["reports"], gone["refusals"]))
    assert passes == [(4, 3), (4, 3), (2, 0), (0, 0), (0, 0)]
    assert count(engine, reports) == 0
    with engine.connect() as conn:
        assert conn.execute(select(refusals.c.received)).scalars().all() == [NOW]


async def test_worker_1s_retention_deletes_old_reports_and_refusals(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing deleted them: a site's data-quality reports, events and acks, and every refused publish, stayed
    for as long as the district ran."""
    monkeypatch.setattr(service, "RETENTION_S", 0.2)
    now = time.time()
    with engine.begin() as conn:
        for age in (500, 1):
            report(conn, now - age * DAY)
            refusal(conn, now - age * DAY)
    caplog.set_level(logging.INFO, logger="lifeline.district")
    cfg = SimpleNamespace(raw_days=30, rollup_s=300, messages_days=400, reports_days=400, refusals_days=90)
    task = asyncio.create_task(service._retention(engine, cfg))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while (count(engine, reports), count(engine, refusals)) != (1, 1):
            assert not task.done() and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        while not any(r.getMessage() == "retention" for r in caplog.records):  # logged after the pass commits
            assert not task.done() and time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [line] = [r for r in caplog.records if r.getMessage() == "retention"]
    assert line.fields == {"reports": 1, "refusals": 1}  # type: ignore[attr-defined]
