"""The upstream contract (issue 18) end to end: a real gateway between a device's sealed messages and the
district broker, the district side read with cbor2 and RFC 8428's labels rather than our own reader."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from sitekit import District, quarantined

from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import district as dtopics
from protocol import message, senml, topics

# RFC 8428 section 6: the integer labels of the value fields, written out here rather than taken from protocol/.
VALUE_LABELS = {2: "v", 3: "vs", 4: "vb", 8: "vd", 5: "s"}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.start()
    yield s
    s.stop()


@pytest.fixture
async def gateway(site: Site) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(site).start()
    try:
        await gw.ready()
        yield gw
    finally:
        gw.kill()


def entries(district: District) -> dict[tuple[str, int], Any]:
    """Every device message in the district's telemetry, by (device, seq)."""
    return {(p["dev"], p["seq"]): p for body in district.of(dtopics.TELEMETRY) for p in body["packs"]}


def values(entry: Any) -> dict[str, dict[str, Any]]:
    """name -> {value label name: value} of an upstream pack, base name applied (RFC 8428 section 4.5)."""
    bn, out = "", {}
    for rec in entry["e"]:
        bn = rec.get(-2, bn)
        out[bn + rec[0]] = {VALUE_LABELS[k]: v for k, v in rec.items() if k in VALUE_LABELS}
    return out


async def test_every_senml_value_kind_arrives_upstream_as_itself(site: Site, gateway: GatewayProcess) -> None:
    now = time.time()
    sent = {
        "gas1:temp": {"v": 21.5},
        "gas1:mode": {"vs": "auto"},
        "gas1:cover": {"vb": True},
        "gas1:raw": {"vd": b"\x01\x02\xff"},
        "gas1:rain": {"s": 3.5},
        "gas1:rain2": {"v": 0.5, "s": 7.0},
    }
    records = [senml.record("temp", 21.5, "Cel", now), senml.record("mode", "auto", None, now),
               senml.record("cover", True, None, now), senml.record("raw", b"\x01\x02\xff", None, now),
               {senml.N: "rain", senml.U: "mm", senml.S: 3.5, senml.T: now},
               {senml.N: "rain2", senml.U: "mm", senml.V: 0.5, senml.S: 7.0, senml.T: now}]
    async with District(site) as district, site.device_client("gas1") as dev:
        topic, payload, seq = site.data("gas1", records)
        await dev.publish(topic, payload, qos=1)
        await district.wait_for(lambda: ("gas1", seq) in entries(district), 20)
    assert values(entries(district)[("gas1", seq)]) == sent


async def test_an_alarm_priority_pack_survives_disk_pressure_and_arrives_with_its_flag(tmp_path: Path) -> None:
    """The district is away while a device's routine packs fill a 1 MB budget; the oldest message, the
    device's alarm-priority pack, must neither be thinned nor evicted, and must say it was one."""
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.start()
    s.config_path.write_text(s.config_path.read_text().replace('path = "gateway.sqlite"\n',
                                                               'path = "gateway.sqlite"\ndisk_budget_mb = 1\n'))
    gw = GatewayProcess(s).start()
    assert s.district_broker is not None
    rec = Recorder("127.0.0.1", s.district_broker.port, s.id, (DISTRICT_USER, s.district_password), raw=True,
                   session="district-pri")
    try:
        await gw.ready()
        assert await rec.until(rec.subscribed.is_set, 10)
        s.district_broker.stop()
        await gw.wait_log('event="uplink disconnected"')
        now = time.time()
        async with s.device_client("gas1") as dev:
            topic, payload, pri_seq = s.data("gas1", [reading("ch4", 30.0, "%LEL", now)], pri=message.PRI_ALARM)
            await dev.publish(topic, payload, qos=1)
            for i in range(2000):  # about 1.5 MB of routine telemetry rows
                pack = [reading(f"m{j}", float(i + j), "Cel", now + i * 0.01) for j in range(30)]
                topic, payload, _ = s.data("gas1", pack)
                await dev.publish(topic, payload, qos=1)
        await gw.wait_log('event=outbox-budget', timeout=30)
        s.district_broker.start()

        def arrived() -> dict[int, Any]:
            return {p["seq"]: p for e in rec.entries(dtopics.TELEMETRY) for p in e.body["packs"]}

        raw = await rec.until(lambda: pri_seq in arrived(), 30)
        thinned = [(t["seq_lo"], t["seq_hi"]) for e in rec.entries(dtopics.TELEMETRY)
                   for t in e.body.get("thinned", ())]
        assert raw, f"seq {pri_seq} did not arrive raw; summaries of seq ranges: {thinned[:3]}"
        entry = arrived()[pri_seq]
        assert entry.get("pri") == message.PRI_ALARM
        assert values(entry) == {"gas1:ch4": {"v": 30.0}}
        routine = [p for p in arrived().values() if p["seq"] != pri_seq]
        assert all("pri" not in p for p in routine)
    finally:
        rec.close()
        gw.kill()
        s.stop()


async def test_a_downlink_with_bytes_after_its_item_is_refused_counted_and_kept(site: Site,
                                                                                 gateway: GatewayProcess) -> None:
    """A command is one CBOR item exactly, as a device's payload is: bytes after it are refused upstream with
    the reason, the raw message is kept in the quarantine (counted), and nothing reaches the device."""
    cmd = {"dev": "gas1", "id": 7, "op": "ping", "args": {}}
    payload = cbor2.dumps(cmd) + b"\x00"
    async with District(site) as district, site.device_client("gas1") as dev:
        await dev.subscribe(topics.device(site.id, "gas1", topics.CMD), qos=1)
        assert district.recorder is not None
        district.recorder._client.publish(dtopics.down(site.id, dtopics.DOWN_CMD), payload, qos=1).wait_for_publish(10)
        await district.wait_for(lambda: bool(district.of(dtopics.UP_ACK)), 20)
        relayed = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for m in dev.messages:
                    relayed.append(m.payload)
    ack = district.of(dtopics.UP_ACK)[0]
    assert (ack["re"], ack["dev"], ack["id"], ack["ok"]) == ("cmd", None, None, False), ack  # unread: null
    assert "1 trailing bytes" in ack["error"]
    assert not relayed
    store = await quarantined(site, 1)
    rows = store.execute("SELECT reason, detail, topic, raw FROM quarantine").fetchall()
    assert rows == [("malformed", "downlink: not CBOR: 1 trailing bytes after the item",
                     dtopics.down(site.id, dtopics.DOWN_CMD), payload)]


async def test_the_downlink_returns_within_seconds_of_the_district(site: Site, gateway: GatewayProcess) -> None:
    """The downlink's reconnect backoff is the uplink's (2 s): after a 20 s district outage the gateway hears
    the district again within a few seconds of its return, and a command then sent is relayed."""
    assert site.district_broker is not None
    site.district_broker.stop()
    await gateway.wait_log("event=disconnected link=downlink")
    await asyncio.sleep(20.0)
    site.district_broker.start()
    back = time.time()
    await gateway.wait_log("event=connected link=downlink", timeout=30, count=2)
    line = [x for x in gateway.lines() if "event=connected link=downlink" in x][-1]
    stamp = datetime.fromisoformat(line.split()[0].removeprefix("ts=").replace("Z", "+00:00")).timestamp()
    assert stamp - back <= 4.0, f"the downlink reconnected {stamp - back:.1f} s after the district came back"
    async with District(site) as district, site.device_client("gas1") as dev:
        await dev.subscribe(topics.device(site.id, "gas1", topics.CMD), qos=1)
        await district.send(dtopics.DOWN_CMD, {"dev": "gas1", "id": 8, "op": "ping", "args": {}})
        async with asyncio.timeout(10):
            m = await anext(aiter(dev.messages))
    assert m.topic.value == topics.device(site.id, "gas1", topics.CMD)
