"""The alarm engine inside the real daemon (`lifeline gateway`), between real brokers: what the district
hears when the gateway restarts in the middle of a device's backlog, and when a device goes silent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import District

from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.start()
    yield s
    s.stop()


def seqs(district: District) -> set[int]:
    return {p["seq"] for body in district.of(dtopics.TELEMETRY) for p in body["packs"]}


def alarms(district: District) -> list[Any]:
    return list(district.of(dtopics.ALARM))


async def test_a_backlog_split_by_a_gateway_restart_is_judged_as_without_it(site: Site) -> None:
    """The gateway judges no reading older than the newest it judged, and a restart between them changes
    nothing: gas 3 %LEL at t and t+100, restart, then 60 %LEL stamped t+50 and t+60 raise nothing."""
    t = time.time() - 300
    gw = GatewayProcess(site).start()
    try:
        await gw.ready()
        async with District(site) as district, site.device_client("gas1") as gas1:
            sent = []
            for dt in (0, 100):
                topic, payload, seq = site.data("gas1", [reading("ch4", 3.0, "%LEL", t + dt)])
                await gas1.publish(topic, payload, qos=1)
                sent.append(seq)
            await district.wait_for(lambda: set(sent) <= seqs(district))
            gw.stop()
            gw = GatewayProcess(site).start()
            await gw.ready()
            for dt in (50, 60):
                topic, payload, seq = site.data("gas1", [reading("ch4", 60.0, "%LEL", t + dt)])
                await gas1.publish(topic, payload, qos=1)
                sent.append(seq)
            await district.wait_for(lambda: set(sent) <= seqs(district))
            assert alarms(district) == []
            fresh = time.time()
            for dt in (0, 1):  # newer readings are judged as ever
                topic, payload, seq = site.data("gas1", [reading("ch4", 60.0, "%LEL", fresh + dt)])
                await gas1.publish(topic, payload, qos=1)
            await district.wait_for(lambda: bool(alarms(district)))
        assert [(a["ev"], a["level"], a["t_dev"]) for a in alarms(district)] == [("raised", "red", fresh + 1)]
    finally:
        gw.kill()


async def test_a_silent_device_inhibits_its_alarm_and_a_normal_reading_clears_it(tmp_path: Path) -> None:
    """A device goes silent with an open level alarm: the district hears once that the alarm is inhibited
    (its level unknown) and gets no re-send of it as if live; the device's next reading, a normal one,
    clears it."""
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.extra_toml = ("[rules.overrides.gas.stale]\ninterval_s = 1\n\n"  # stale after 3 s of silence
                    "[alarms]\nresend_first_s = 1\nresend_max_s = 1\n")
    s.start()
    gw = GatewayProcess(s).start()
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("gas1") as gas1:
            now = time.time()
            for dt in (0, 0.5):
                topic, payload, _ = s.data("gas1", [reading("ch4", 30.0, "%LEL", now + dt)])
                await gas1.publish(topic, payload, qos=1)

            def ch4() -> list[Any]:
                return [a for a in alarms(district) if a["kind"] == "level"]

            await district.wait_for(lambda: any(a["resend"] for a in ch4()))  # live: re-sent unacknowledged
            await district.wait_for(lambda: any(a["ev"] == "inhibited" for a in ch4()))
            # the stale alarm is live and re-sent meanwhile; the inhibited one is not
            await district.wait_for(lambda: sum(a["kind"] == "stale" and a["resend"] for a in alarms(district)) >= 3)
            topic, payload, _ = s.data("gas1", [reading("ch4", 1.0, "%LEL")])
            await gas1.publish(topic, payload, qos=1)
            await district.wait_for(lambda: any(a["ev"] == "cleared" for a in ch4()))
        events = [(a["ev"], a["level"], a["resend"] > 0) for a in ch4()]
        first = events.index(("inhibited", "orange", False))
        assert events[0] == ("raised", "orange", False) and set(events[1:first]) == {("raised", "orange", True)}
        assert events[first:] == [("inhibited", "orange", False), ("cleared", None, False)]
        inhibited = ch4()[first]
        assert inhibited["cause"] == "silence" and inhibited["prev"] == "orange"
        assert len({a["id"] for a in ch4()}) == 1
        stale = [(a["ev"], a["cause"]) for a in alarms(district) if a["kind"] == "stale" and not a["resend"]]
        assert stale[0] == ("raised", "silence") and stale[-1] == ("cleared", "reading")
    finally:
        gw.kill()
        s.stop()
