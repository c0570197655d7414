"""The gateway's birth and death upstream, as Sparkplug B's (issue 18), with real Mosquitto: a retained birth
with a session number that grows with every connect, a will that tells the district within 1.5 keepalives
that the site went dark, and backlog from a district outage marked historical."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import district as dtopics

KEEPALIVE_S = 5


def site_with_keepalive(tmp_path: Path) -> Site:
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.start()
    s.config_path.write_text(s.config_path.read_text().replace(
        "[district_broker]\n", f"[district_broker]\nkeepalive = {KEEPALIVE_S}\n"))
    return s


def states(rec: Recorder) -> list[Any]:
    return [e.body for e in rec.entries(dtopics.GATEWAY)]


def births(rec: Recorder) -> list[int]:
    """The sessions of the births so far, each once (QoS 1 may deliver one twice)."""
    return list(dict.fromkeys(b["session"] for b in states(rec) if b["st"] == "online"))


async def test_birth_per_connect_with_a_growing_session_and_a_will_on_sigkill(tmp_path: Path) -> None:
    s = site_with_keepalive(tmp_path)
    rec = s.recorder(raw=True)
    started = time.time()
    gateways: list[GatewayProcess] = []
    try:
        assert await rec.until(rec.subscribed.is_set, 10)
        for n in (1, 2):
            gw = GatewayProcess(s).start()
            gateways.append(gw)
            await gw.ready()
            assert await rec.until(lambda n=n: len(births(rec)) == n, 10), states(rec)
            if n == 1:  # a clean stop says so at once, as the will would have
                gw.stop()
                assert await rec.until(lambda: {"st": "offline", "session": births(rec)[0]} in states(rec), 10), \
                    states(rec)
        first, second = births(rec)
        assert second > first >= int(started * 1000)  # the wall clock in ms at least: a new store does not start at 1
        assert states(rec)[-1]["st"] == "online"
        killed = time.time()
        gw.kill()
        assert await rec.until(lambda: states(rec)[-1]["st"] == "offline", 3 * KEEPALIVE_S), states(rec)
        dark = rec.entries(dtopics.GATEWAY)[-1].t - killed
        assert states(rec)[-1] == {"st": "offline", "session": second}
        assert dark <= 1.5 * KEEPALIVE_S + 0.5, f"the will arrived {dark:.1f} s after the kill"
        print(f"will after SIGKILL: {dark:.1f} s (keepalive {KEEPALIVE_S} s)")
        assert rec.refused == []
    finally:  # a failed assertion before the kill left the gateway running, for hours after the run
        for g in gateways:
            g.kill()
        rec.close()
        s.stop()


async def test_backlog_from_a_district_outage_arrives_historical(tmp_path: Path) -> None:
    s = site_with_keepalive(tmp_path)
    gw = GatewayProcess(s).start()
    assert s.district_broker is not None
    rec = Recorder("127.0.0.1", s.district_broker.port, s.id, (DISTRICT_USER, s.district_password), raw=True,
                   session="district-hist", verifier=s.verifier())

    def arrived() -> dict[int, Any]:
        return {p["seq"]: e.body for e in rec.entries(dtopics.TELEMETRY) for p in e.body["packs"]}

    try:
        await gw.ready()
        assert await rec.until(rec.subscribed.is_set, 10)
        async with s.device_client("gas1") as dev:
            s.district_broker.stop()
            await gw.wait_log('event="uplink disconnected"')
            topic, payload, old = s.data("gas1", [reading("ch4", 1.0, "%LEL")])
            await dev.publish(topic, payload, qos=1)
            await asyncio.sleep(1.0)
            s.district_broker.start()
            assert await rec.until(lambda: old in arrived(), 30)
            topic, payload, fresh = s.data("gas1", [reading("ch4", 2.0, "%LEL")])
            await dev.publish(topic, payload, qos=1)
            assert await rec.until(lambda: fresh in arrived(), 30)
        assert arrived()[old].get("hist") is True
        assert "hist" not in arrived()[fresh]
        assert rec.refused == []
    finally:
        rec.close()
        gw.kill()
        s.stop()


async def test_a_silent_gateway_with_its_socket_open_is_declared_dead_within_1_5_keepalives(tmp_path: Path) -> None:
    """A hung site box (SIGSTOP: the TCP connection stays open, nothing is sent) is the case the keepalive is
    for: the district broker publishes the will once 1.5 keepalives pass in silence, and the box that wakes up
    finds its session gone and comes back with a new birth."""
    s = site_with_keepalive(tmp_path)
    rec = s.recorder(raw=True)
    gw = GatewayProcess(s).start()
    try:
        assert await rec.until(rec.subscribed.is_set, 10)
        await gw.ready()
        assert await rec.until(lambda: births(rec) != [], 10), states(rec)
        assert gw.proc is not None
        stopped = time.time()
        gw.proc.send_signal(signal.SIGSTOP)
        try:
            assert await rec.until(lambda: states(rec)[-1]["st"] == "offline", 4 * KEEPALIVE_S), states(rec)
            dark = rec.entries(dtopics.GATEWAY)[-1].t - stopped
        finally:
            gw.proc.send_signal(signal.SIGCONT)
        assert states(rec)[-1] == {"st": "offline", "session": births(rec)[0]}
        # 1.5 keepalives after the gateway's last packet (at most the stop), plus Mosquitto 2.0's check period:
        # it looks every 6 s or so, in whole seconds (docs/protocol.md)
        assert dark <= 1.5 * KEEPALIVE_S + 7.0, f"the will arrived {dark:.1f} s after the gateway went silent"
        print(f"will after SIGSTOP: {dark:.1f} s (keepalive {KEEPALIVE_S} s)")
        assert await rec.until(lambda: len(births(rec)) == 2, 6 * KEEPALIVE_S), states(rec)
        assert births(rec)[1] > births(rec)[0]
        assert rec.refused == []
    finally:
        rec.close()
        gw.kill()
        s.stop()
