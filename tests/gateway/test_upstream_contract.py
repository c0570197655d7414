"""The upstream contract (issue 18) end to end: a real gateway between a device's sealed messages and the
district broker, the district side read with cbor2 and RFC 8428's labels rather than our own reader."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import District

from lifeline.virtual.site import GatewayProcess, Site
from protocol import district as dtopics
from protocol import senml

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
