"""A telemetry body's device messages stored in one pass (district/store.py `add_messages`): what a message at
a time promised still holds for a whole batch, on both engines."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from district import store
from district.schema import devices, messages, readings


def msg(dev: str, seq: int, t: float, v: float) -> store.DeviceMessage:
    return store.DeviceMessage(dev, seq, 1, 0, [{"n": "ch4", "t": t, "u": "%LEL", "v": v}], b"sealed-%d" % seq)


def rows(engine: Engine, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def test_a_batch_stores_each_new_message_once_and_says_which(engine: Engine) -> None:
    with engine.begin() as conn:
        assert store.add_message(conn, "s1", "gas1", 2, 1, [{"n": "ch4", "t": 2.0, "v": 2.0}], received=5.0)
    batch = [msg("gas1", 1, 1.0, 1.0), msg("gas1", 2, 2.0, 99.0), msg("gas2", 2, 2.5, 3.0),
             msg("gas1", 3, 3.0, 4.0), msg("gas1", 3, 3.0, 77.0), msg("gas1", (1 << 64) - 1, 4.0, 5.0)]
    with engine.begin() as conn:
        new = store.add_messages(conn, "s1", batch, received=10.0, verified=True)
    # seq 2 of gas1 was there already; the second copy of seq 3 within the batch is a redelivery
    assert new == [True, False, True, True, False, True]
    got = rows(engine, select(messages.c.dev, messages.c.seq_key, readings.c.v, messages.c.verified, messages.c.sealed)
               .join(readings, readings.c.message == messages.c.id).order_by(messages.c.dev, messages.c.seq_key))
    assert [(d, store.schema.seq_of(k), v) for d, k, v, _, _ in got] == [
        ("gas1", 1, 1.0), ("gas1", 2, 2.0), ("gas1", 3, 4.0), ("gas1", (1 << 64) - 1, 5.0), ("gas2", 2, 3.0)]
    assert {(d, v, s) for d, _, _, v, s in got if d == "gas2"} == {("gas2", True, b"sealed-2")}
    with engine.begin() as conn:
        assert store.add_messages(conn, "s1", batch, received=11.0) == [False] * len(batch)
    assert rows(engine, select(func.count()).select_from(readings)) == [(5,)]


def test_a_batch_moves_each_devices_last_seen_forward_only(engine: Engine) -> None:
    with engine.begin() as conn:
        store.add_messages(conn, "s1", [msg("gas1", 1, 1.0, 1.0), msg("gas2", 1, 1.0, 1.0)], received=20.0)
        store.add_messages(conn, "s1", [msg("gas1", 2, 2.0, 1.0)], received=15.0)  # an older delivery, late
        store.add_messages(conn, "s1", [msg("gas2", 2, 2.0, 1.0)], received=30.0)
    assert rows(engine, select(devices.c.dev, devices.c.last_seen, devices.c.state).order_by(devices.c.dev)) == [
        ("gas1", 20.0, "online"), ("gas2", 30.0, "online")]


def test_an_empty_batch_writes_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        assert store.add_messages(conn, "s1", [], received=1.0) == []
    assert rows(engine, select(func.count()).select_from(messages)) == [(0,)]
