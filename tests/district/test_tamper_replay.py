"""Tamper and replay across sites, at the district, on SQLite and PostgreSQL: two sites, each with its own
gateway and devices, one district broker and one ingest worker. Publishes captured off the district broker
by a plain subscriber are sent again, changed or moved to the other site's topic, with the sites' own broker
logins (what a thief of a site's credentials or of its box could do):

- a telemetry publish replayed verbatim is de-duplicated by the (site, dev, seq) key: nothing stored twice,
  nothing refused (a replay cannot be told from QoS 1 redelivery, and both are harmless);
- one byte of a device reading changed in the publish is refused `site-seal`; changed inside the body and
  sealed again with the site's own key (a compromised gateway) it is refused `device-mac`;
- north's sealed publish on south's topic is refused `site-seal`; a genuine device message of north's,
  relayed inside a body south seals, is refused `foreign-device`.

Everything is kept in `refusals`, and the good data sent before and after is stored once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import cbor2
import paho.mqtt.client as mqtt
from sqlalchemy import Engine, func, select

from district.schema import messages, readings, refusals
from gateway import district_wire
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import cbor, site_seal
from protocol import district as dtopics

MARK = 2.7182818  # a reading value whose CBOR (a float64) occurs once in a publish


def until(done: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


class Capture:
    """Every telemetry publish on the district broker, as it came, from a plain paho subscriber."""

    def __init__(self, s: Site) -> None:
        assert s.district_broker is not None
        self.got: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="capture")
        self.client.username_pw_set(DISTRICT_USER, s.district_password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{dtopics.ROOT}/+/up/{dtopics.TELEMETRY}", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.got.append((msg.topic, msg.payload))
        self.client.connect("127.0.0.1", s.district_broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the capture did not subscribe"

    def find(self, site: str, needle: bytes) -> bytes:
        """The first captured publish of `site` whose bytes hold `needle`."""
        topic = dtopics.up(site, dtopics.TELEMETRY)
        return next(p for t, p in list(self.got) if t == topic and needle in p)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore


def test_replay_tamper_and_cross_site_publishes_are_refused_or_deduplicated(engine: Engine, tmp_path: Path) -> None:
    north = Site(tmp_path / "north", "north", tls=False)
    north.add("gas1", "gas")
    south = Site(tmp_path / "south", "south", tls=False, district=north)
    south.add("gas2", "gas")
    north.start()
    south.start()
    conf = write_config([north, south], tmp_path / "district.toml",
                        database=engine.url.render_as_string(hide_password=False))
    gateways = [GatewayProcess(s).start() for s in (north, south)]
    worker = DistrictProcess(conf, "--worker", "1").start()
    capture = Capture(north)
    try:
        for gw in gateways:
            asyncio.run(gw.ready())
        worker.wait_subscribed()

        async def readings_from(s: Site, dev: str, values: list[float]) -> None:
            async with s.device_client(dev) as c:
                for v in values:
                    topic, payload, _ = s.data(dev, [reading("ch4", v, "%LEL")])
                    await c.publish(topic, payload, qos=1)

        asyncio.run(readings_from(north, "gas1", [1.0, MARK, 1.5]))
        asyncio.run(readings_from(south, "gas2", [2.0, 2.5, 3.0]))
        until(lambda: count(engine, messages) == 6, 30, f"6 messages stored; {worker.log()[-2000:]}")
        mark = cbor.dumps(MARK)
        assert len(mark) == 9
        until(lambda: any(mark in p for _, p in list(capture.got)), 10, "north's publish captured")
        genuine = capture.find("north", mark)

        at = genuine.index(mark) + 1  # the float's sign bit: a reading of 2.72 becomes -2.72
        flipped = genuine[:at] + bytes([genuine[at] ^ 0x80]) + genuine[at + 1:]
        _, body = site_seal.open_sealed(genuine, dtopics.TELEMETRY, {b"north": north.site_key}.get)
        at = body.index(mark) + 1
        resealed = site_seal.seal(north.site_key, "north", dtopics.TELEMETRY,
                                  body[:at] + bytes([body[at] ^ 0x80]) + body[at + 1:])
        entry = next(e for e in cbor2.loads(body)["packs"] if mark in e["m"])
        relayed = site_seal.seal(south.site_key, "south", dtopics.TELEMETRY,
                                 district_wire.telemetry("south", [cbor2.dumps(entry)], []))

        async def attack(s: Site, payloads: list[bytes]) -> None:
            """In order on one connection and one topic, so the broker hands them over in that order."""
            assert s.district_broker is not None
            async with aiomqtt.Client("127.0.0.1", s.district_broker.port, username=s.id,
                                      password=s.gateway_password, identifier=f"attacker-{s.id}") as c:
                for p in payloads:
                    await c.publish(dtopics.up(s.id, dtopics.TELEMETRY), p, qos=1)

        asyncio.run(attack(north, [genuine, resealed, flipped]))
        asyncio.run(attack(south, [relayed, genuine]))
        # the last of each connection refused: the ones before it on its topic were handled
        until(lambda: count(engine, refusals, refusals.c.payload == flipped) == 1, 20, "the flipped byte refused")
        until(lambda: count(engine, refusals, refusals.c.topic == dtopics.up("south", dtopics.TELEMETRY),
                            refusals.c.reason == "site-seal") == 1, 20, "north's publish on south's topic refused")

        asyncio.run(readings_from(north, "gas1", [1.25]))  # good data after the attacks
        asyncio.run(readings_from(south, "gas2", [2.25]))
        until(lambda: count(engine, messages) >= 8, 30, "the good data after the attacks")
        time.sleep(1.0)  # anything stored wrongly beside it would be in by now
        with engine.connect() as conn:
            got = sorted((r.topic.split("/")[2], r.reason) for r in conn.execute(select(refusals)))
            stored = conn.execute(select(messages.c.site, messages.c.dev, func.count()).group_by(
                messages.c.site, messages.c.dev).order_by(messages.c.site)).all()
            values = sorted(conn.execute(select(readings.c.v).where(readings.c.dev == "gas1")).scalars())
        assert got == [("north", "device-mac"), ("north", "site-seal"), ("south", "foreign-device"),
                       ("south", "site-seal")], got
        assert [tuple(r) for r in stored] == [("north", "gas1", 4), ("south", "gas2", 4)]
        assert values == [1.0, 1.25, 1.5, MARK]  # each once, none changed
    finally:
        capture.close()
        worker.stop()
        for gw in gateways:
            gw.kill()
        south.stop()
        north.stop()
