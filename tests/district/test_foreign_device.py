"""A site speaks only for its own devices: an alarm or a device state that a site seals naming another site's
device is refused `foreign-device` and kept, as telemetry already is (test_tamper_replay.py)."""

from __future__ import annotations

import time

import cbor2
from sqlalchemy import Engine, func, select

from district.ingest import Worker
from district.schema import alarms, devices, refusals
from gateway import district_wire
from gateway.ingest import Incoming
from gateway.site_config import BrokerConfig
from protocol import district as dtopics
from protocol import site_seal
from protocol.district_verify import Verifier

KEYS = {"north": bytes(32), "south": bytes(range(32))}
REGISTRY = {"north": {"n-gas1"}, "south": {"s-gas1"}}


def publish(site: str, kind: str, body: bytes) -> Incoming:
    return Incoming(dtopics.up(site, kind), site_seal.seal(KEYS[site], site, kind, body), False, time.time())


def alarm(dev: str) -> bytes:
    return district_wire.encode(district_wire.alarm_transition(
        id=("a" if dev.startswith("n") else "b") * 32, ev="raised", kind="level", dev=dev, cls="gas", metric="ch4",
        level="red", prev=None, value=60.0, reading=60.0, rule="gas.ch4", rver=1, t_dev=time.time(),
        t_gw=time.time(), resend=0, step=0))


def state(dev: str) -> bytes:
    return cbor2.dumps({"dev": dev, "st": "online", "boot": 1, "seq": 0, "t": time.time(), "retained": False,
                        "fw": "1", "prof": "gas"})


async def test_a_site_cannot_raise_alarms_or_births_for_another_sites_device(engine: Engine) -> None:
    worker = Worker(engine, BrokerConfig("127.0.0.1", 1, "x", None, None, None, 30), Verifier(KEYS, {}, track=False),
                    REGISTRY)
    worker.handle([publish("south", dtopics.ALARM, alarm(dev)) for dev in ("n-gas1", "s-gas1")]
                  + [publish("south", dtopics.UP_STATE, state(dev)) for dev in ("n-gas1", "s-gas1")])
    with engine.connect() as conn:
        assert conn.execute(select(alarms.c.site, alarms.c.dev)).all() == [("south", "s-gas1")]
        assert conn.execute(select(devices.c.site, devices.c.dev)).all() == [("south", "s-gas1")]
        assert conn.execute(select(refusals.c.reason, func.count()).group_by(refusals.c.reason)).all() == [
            ("foreign-device", 2)]
