"""The demo's scripted supervisor (lifeline/demo/operator.py) against a real desk: it acknowledges as today's
page does, at the level and step it read, and keeps every work order moving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deskkit import PASSWORD, USERS, Downlinks, alarm_body, desk_server, seed
from sqlalchemy import Engine

from district import store
from gateway.district_wire import alarm_acks
from lifeline.demo.operator import STEP_GAP_S, Operator
from lifeline.virtual.broker import Mosquitto

ACK = "district/v1/s1/down/alarm-ack"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """The demo's district runs on SQLite."""
    eng = store.open_engine(str(tmp_path / "district.sqlite"))
    yield eng
    eng.dispose()


@pytest.fixture
def op(engine: Engine) -> Iterator[tuple[Operator, Engine, Downlinks]]:
    seed(engine, time.time())
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        downs = Downlinks(broker)
        operator = Operator(url, USERS["supervisor"], PASSWORD)
        operator.login()
        try:
            yield operator, engine, downs
        finally:
            operator.close()
            downs.close()


def apply(engine: Engine, alarm_id: str, ev: str, level: str | None, step: int, **extra: object) -> None:
    now = time.time()
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(alarm_id, ev, level, now, step=step, **extra), received=now)


def test_an_alarm_that_rose_before_the_click_is_read_again_and_an_escalation_acknowledged_afresh(
        op: tuple[Operator, Engine, Downlinks]) -> None:
    operator, engine, downs = op
    gas = "a" * 32
    apply(engine, gas, "raised", "orange", 0)
    assert operator.round(0.0) == []  # read, not yet acknowledged: a person reads the card first
    apply(engine, gas, "escalated", "red", 1, prev="orange")
    operator.round(STEP_GAP_S)  # the orange it read is refused 409; it reads again and acknowledges the red
    [first] = operator.acks
    assert (first["level"], first["step"], first["again"]) == ("red", 1, False) and "409" in first["refused"]
    assert alarm_acks(downs.wait(ACK)) == [(gas, 1)]
    apply(engine, gas, "de-escalated", "orange", 2, prev="red")
    apply(engine, gas, "escalated", "red", 3, prev="orange")  # a new rise: the ack at step 1 no longer covers it
    downs.got.clear()
    operator.round(10.0)
    lines = operator.round(10.0 + STEP_GAP_S)
    assert any("again, after its escalation" in line for line in lines), lines
    assert (operator.acks[-1]["level"], operator.acks[-1]["step"], operator.acks[-1]["again"]) == ("red", 3, True)
    assert alarm_acks(downs.wait(ACK)) == [(gas, 3)]


def test_an_order_whose_alarm_cleared_while_it_was_read_is_still_acknowledged(
        op: tuple[Operator, Engine, Downlinks]) -> None:
    """The alarm read unacknowledged was kept as read after it left the board, and its open order was skipped
    for good: the demo ended with 'work orders still open'."""
    operator, engine, _ = op
    gas = "b" * 32
    apply(engine, gas, "raised", "orange", 0)
    operator.round(0.0)
    apply(engine, gas, "cleared", None, 1, prev="orange")
    operator.round(STEP_GAP_S)
    [order] = operator.get("/api/work-orders")
    assert order["state"] == "acknowledged", order
