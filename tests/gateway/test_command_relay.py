"""Sealing a district command for a device, without brokers: the deadline the gateway waits for its ack is
also the command's `exp`, and a device whose birth says it deep-sleeps is given its wake interval on top."""

from __future__ import annotations

import sqlite3

import cbor2
import pytest

from gateway.command_relay import Commands
from gateway.device_list import DeviceConfig, DeviceList
from gateway.registry import Registry
from protocol import message, message_check, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0
TIMEOUT_S = 30.0


def sealed_exp(commands: Commands, dev: str, cmd_id: int) -> int:
    out, rejection = commands.command(cbor2.dumps({"dev": dev, "id": cmd_id, "op": "birth", "args": {}}), NOW)
    assert rejection is None and out is not None
    body = message_check.decode(out.payload, lambda kid: KEY, topics.CMD)
    exp: int = body["exp"]
    return exp


@pytest.mark.parametrize("sleep,extra", [(None, 0), (300, 300), (True, 0), ("300", 0)])
def test_a_sleeping_device_gets_its_wake_interval_on_top_of_the_ack_timeout(sleep: object, extra: float) -> None:
    conn = sqlite3.connect(":memory:")
    registry = Registry(conn, DeviceList([DeviceConfig("rain1", "rain", KEY, None)]))
    commands = Commands(conn, "s1", registry, timeout_s=TIMEOUT_S)
    assert sealed_exp(commands, "rain1", 1) == int(NOW + TIMEOUT_S), "no birth yet: the plain deadline"
    extras = {} if sleep is None else {"sleep": sleep}
    birth = message.birth("rain1", 1, 0, "0.1.0", "rain", "power-on", NOW, **extras)
    registry.birth("rain1", message_check.check(birth, topics.STATE), NOW, live=True)
    assert sealed_exp(commands, "rain1", 2) == int(NOW + TIMEOUT_S + extra)
    # and the gateway waits that long for the ack before it reports a timeout
    assert [r["id"] for r in commands.expire(NOW + TIMEOUT_S)] == ([1] if extra else [1, 2])
    if extra:
        assert not commands.expire(NOW + TIMEOUT_S + extra - 1)
        assert [r["id"] for r in commands.expire(NOW + TIMEOUT_S + extra)] == [2]
