"""The district's ingest end to end, on SQLite and PostgreSQL: a real gateway forwards a device's sealed
messages through a real district broker to `lifeline district --worker 1`, which verifies the site seal and
every device MAC, stores each message once, follows the alarm, and opens its work order. What a tampering
gateway sends (an invented reading, a wrong seal, a replay) is refused or de-duplicated, with the reason
kept, and never stored as a reading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import cbor2
from sqlalchemy import Engine, func, select

from district.schema import alarms, devices, messages, readings, refusals, sites, work_orders
from gateway import district_wire
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics
from protocol import site_seal


def wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def scalar(engine: Engine, query: object) -> object:
    with engine.connect() as conn:
        return conn.execute(query).scalar()  # type: ignore[call-overload]


def test_a_site_is_verified_stored_once_and_tampering_refused(engine: Engine, tmp_path: Path) -> None:
    s = Site(tmp_path / "site", tls=False)
    s.add("gas1", "gas", position=(31.23, 121.47))
    s.add("rain1", "rain")
    s.start()
    started = time.time()
    gw = GatewayProcess(s).start()
    conf = write_config(s, tmp_path / "district.toml", database=engine.url.render_as_string(hide_password=False))
    worker = DistrictProcess(conf, "--worker", "1").start()
    try:
        asyncio.run(gw.ready())
        worker.wait_subscribed()

        async def publish() -> list[int]:
            seqs = []
            async with s.device_client("gas1") as gas, s.device_client("rain1") as rain:
                await gas.publish(*s.birth("gas1"), qos=1, retain=True)
                for i in range(20):
                    topic, payload, seq = s.data("gas1", [reading("ch4", 2.0 + i * 0.01, "%LEL")])
                    await gas.publish(topic, payload, qos=1)
                    seqs.append(seq)
                topic, payload, _ = s.data("rain1", [{0: "rain", 5: 3.5, 1: "mm"}])  # a sum alone
                await rain.publish(topic, payload, qos=1)
                for _ in range(2):  # red, held for the rule's two samples
                    topic, payload, _ = s.data("gas1", [reading("ch4", 60.0, "%LEL")])
                    await gas.publish(topic, payload, qos=1)
            return seqs

        asyncio.run(publish())
        wait(lambda: scalar(engine, select(func.count()).select_from(messages)) == 23, 30,
             f"23 messages stored; log: {worker.log()[-2000:]}")
        wait(lambda: scalar(engine, select(func.count()).select_from(work_orders)) == 1, 20, "a work order")
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(messages).where(messages.c.verified)).scalar() == 23
            rain = conn.execute(select(readings).where(readings.c.dev == "rain1")).one()
            assert (rain.n, rain.s, rain.v, rain.u) == ("rain", 3.5, None, "mm")  # a sum stays a sum
            alarm = conn.execute(select(alarms)).one()
            assert (alarm.dev, alarm.metric, alarm.level, alarm.state) == ("gas1", "ch4", "red", "open")
            online, session = conn.execute(select(sites.c.online, sites.c.session)).one()
            assert online and session >= int(started * 1000)  # the gateway's first session: the wall clock in ms
        wait(lambda: scalar(engine, select(devices.c.lat).where(devices.c.dev == "gas1")) == 31.23, 10,
             "the device's birth position")

        # A tampering gateway: a reading with no device MAC, a publish sealed with another key, and a replay
        # of a genuine telemetry body (stored once already).
        forged = district_wire.telemetry(s.id, [district_wire.telemetry_entry("gas1", 999, 1, [
            {"n": "gas1:ch4", "t": time.time(), "u": "%LEL", "v": 0.0}])], [])
        entry_of_seq0 = cbor2.dumps(next(e for e in _genuine(s, engine) if e["seq"] == 0))
        replay = district_wire.telemetry(s.id, [entry_of_seq0], [])
        topic = dtopics.up(s.id, dtopics.TELEMETRY)

        async def tamper() -> None:
            async with aiomqtt.Client("127.0.0.1", s.district_broker.port,  # type: ignore[union-attr]
                                      username=s.id, password=s.gateway_password, identifier="tamper") as c:
                await c.publish(topic, site_seal.seal(s.site_key, s.id, dtopics.TELEMETRY, forged), qos=1)
                await c.publish(topic, site_seal.seal(b"\x07" * 32, s.id, dtopics.TELEMETRY, replay), qos=1)
                await c.publish(topic, site_seal.seal(s.site_key, s.id, dtopics.TELEMETRY, replay), qos=1)

        asyncio.run(tamper())
        wait(lambda: scalar(engine, select(func.count()).select_from(refusals)) == 2, 20, "two refusals")
        time.sleep(1.0)  # the replay, after them on the same connection, is in too
        with engine.connect() as conn:
            reasons = sorted(conn.execute(select(refusals.c.reason)).scalars())
            assert reasons == ["no-device-mac", "site-seal"]
            assert conn.execute(select(func.count()).select_from(messages)).scalar() == 23
            assert conn.execute(select(func.count()).select_from(messages)
                                .where(messages.c.seq_key == 999 - (1 << 63))).scalar() == 0
    finally:
        worker.stop()
        gw.kill()
        s.stop()


def _genuine(s: Site, engine: Engine) -> list[dict[str, object]]:
    """Telemetry entries as the gateway sent them, rebuilt from what the district stored (sealed bytes)."""
    with engine.connect() as conn:
        rows = conn.execute(select(messages.c.dev, messages.c.seq_key, messages.c.boot, messages.c.sealed)).all()
    return [{"dev": r.dev, "seq": r.seq_key + (1 << 63), "boot": r.boot, "m": r.sealed} for r in rows]

