"""End to end through real brokers started from deploy/mosquitto (site: passwords, ACL, TLS; district: mutual
TLS) and the daemon run as `lifeline gateway --config site.toml`: packs in; alarm transitions, batched
telemetry, device state, commands and rule changes out at the district."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sitekit import District, cli

from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics
from protocol import message, message_check, senml, topics

ROOT = Path(__file__).resolve().parents[2]
RISK = """
[[risk_points]]
id = "station-7"
class = "gas"
lat = 31.2304
lon = 121.4737
radius_m = 150
"""


@pytest.fixture
async def site(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    """The devices as [[devices]] tables, or in devices.csv when a test parametrizes this fixture with True."""
    s = Site(tmp_path, devices_csv=getattr(request, "param", False))
    s.add("gas1", "gas")
    s.add("gas2", "gas")
    s.add("pod1", "drone")
    s.extra_toml = RISK + "[commands]\ntimeout_s = 1.5\n\n[alarms]\nresend_first_s = 1\nresend_max_s = 2\n"
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


def packs(district: District) -> dict[tuple[str, int], Any]:
    """Every device message the district received as telemetry, by (device, seq)."""
    out: dict[tuple[str, int], Any] = {}
    for body in district.of(dtopics.TELEMETRY):
        for p in body["packs"]:
            out[(p["dev"], p["seq"])] = p
    return out


async def test_packs_in_alarms_and_batched_telemetry_out(site: Site, gateway: GatewayProcess) -> None:
    async with District(site) as district, site.device_client("gas1") as gas1, \
            site.device_client("pod1") as pod1:
        for dev, client in (("gas1", gas1), ("pod1", pod1)):
            topic, payload = site.birth(dev)
            await client.publish(topic, payload, qos=1, retain=True)
        await district.wait_for(lambda: len(district.of(dtopics.UP_STATE)) >= 2)
        births = {b["dev"]: b for b in district.of(dtopics.UP_STATE)}
        assert births["gas1"]["st"] == "online" and births["gas1"]["fw"] == "1.0.0"

        # gas1: methane climbs through every level, then falls back (gas rules: 2 samples pending)
        ch4 = [5, 12, 12, 22, 22, 30, 30, 55, 55, 30, 30, 3, 3]
        t0 = time.time() - len(ch4)
        sent = []
        for i, v in enumerate(ch4):
            topic, payload, seq = site.data("gas1", [reading("ch4", v, "%LEL", t0 + i),
                                                     reading("temp", 21.5, "Cel", t0 + i)])
            await gas1.publish(topic, payload, qos=1)
            sent.append(("gas1", seq))
        # a forged pack (right topic, wrong key) is checked out, not forwarded
        forged = message.encode(message.data("gas1", 1, 999, senml.pack([reading("ch4", 99.0, "%LEL")])),
                                b"\x00" * 32)
        await gas1.publish(topics.device(site.id, "gas1", topics.DATA), forged, qos=1)
        # pod1: a drone pack over the filling station carries its position
        topic, payload, seq = site.data("pod1", [reading("ch4", 60.0, "%LEL"), reading("lat", 31.2305, "lat"),
                                                 reading("lon", 121.4738, "lon"), reading("fix", 1)])
        await pod1.publish(topic, payload, qos=1)
        topic, payload, seq2 = site.data("pod1", [reading("ch4", 61.0, "%LEL"), reading("lat", 31.2305, "lat"),
                                                  reading("lon", 121.4738, "lon"), reading("fix", 1)])
        await pod1.publish(topic, payload, qos=1)
        sent += [("pod1", seq), ("pod1", seq2)]

        await district.wait_for(lambda: set(sent) <= set(packs(district)))
        await district.wait_for(lambda: any(a["ev"] == "cleared" for a in district.of(dtopics.ALARM)
                                            if a["dev"] == "gas1"))

    got = packs(district)
    assert set(got) == set(sent) and ("gas1", 999) not in got
    assert any(len(b["packs"]) > 1 for b in district.of(dtopics.TELEMETRY))  # batched upstream
    first = got[("gas1", sent[0][1])]
    assert [r.get(senml.N) for r in first["e"]] == ["ch4", "temp"] and first["e"][0][senml.BN] == "gas1:"

    gas_alarms = [a for a in district.of(dtopics.ALARM) if a["dev"] == "gas1" and not a.get("resend")]
    assert [(a["ev"], a["level"]) for a in gas_alarms] == [
        ("raised", "blue"), ("escalated", "yellow"), ("escalated", "orange"), ("escalated", "red"),
        ("de-escalated", "orange"), ("cleared", None)]
    assert len({a["id"] for a in gas_alarms}) == 1 and gas_alarms[0]["metric"] == "ch4"
    raised = gas_alarms[0]
    assert raised["metric"] == "ch4" and raised["value"] == 12 and raised["rule"] == "gas.ch4"
    assert raised["rver"] == 1
    assert abs(raised["t_dev"] - (t0 + 2)) < 1e-6 and raised["t_gw"] >= raised["t_dev"]

    drone = [a for a in district.of(dtopics.ALARM) if a["dev"] == "pod1"]
    assert drone and drone[0]["point"] == "station-7" and drone[0]["level"] == "red"
    assert drone[0]["pos"] == pytest.approx([31.2305, 121.4738])

    # the operator's view, read from the store while the daemon runs
    status = cli("status", "--config", str(site.config_path))
    assert status.returncode == 0, status.stderr
    assert "gas1" in status.stdout and "online" in status.stdout and "station-7" in status.stdout
    q = cli("quarantine", "--config", str(site.config_path), "list")
    assert "bad-mac" in q.stdout


async def test_commands_acks_timeouts_rules_and_alarm_acks(site: Site, gateway: GatewayProcess) -> None:
    d = site.devices["gas1"]
    async with District(site) as district, site.device_client("gas1") as gas1:
        await gas1.subscribe(topics.device(site.id, "gas1", topics.CMD), qos=1)
        expiries: list[float] = []

        async def device_answers() -> None:
            async for m in gas1.messages:
                assert isinstance(m.payload, bytes)
                body = message_check.decode(m.payload, lambda kid: d.key if kid == b"gas1" else None, topics.CMD)
                expiries.append(body["exp"] - time.time())
                ack = message.ack("gas1", d.boot, body["id"], True, {"op": body["op"], "n": body["args"]["n"]})
                await gas1.publish(topics.device(site.id, "gas1", topics.ACK), message.encode(ack, d.key), qos=1)

        answer = asyncio.create_task(device_answers())
        await asyncio.sleep(0.3)
        await district.send(dtopics.DOWN_CMD, {"dev": "gas1", "id": 7, "op": "sample-now", "args": {"n": 3}})
        await district.send(dtopics.DOWN_CMD, {"dev": "gas2", "id": 8, "op": "sample-now", "args": {}})  # silent
        await district.send(dtopics.DOWN_CMD, {"dev": "nobody", "id": 9, "op": "x"})
        await district.wait_for(lambda: len(district.of(dtopics.UP_ACK)) >= 3)
        acks = {a["id"]: a for a in district.of(dtopics.UP_ACK)}
        assert acks[7]["ok"] is True and acks[7]["op"] == "sample-now"
        assert acks[7]["res"] == {"op": "sample-now", "n": 3}
        assert acks[8]["ok"] is False and acks[8]["error"] == "timeout"
        assert acks[9]["ok"] is False and "unknown device" in acks[9]["error"]
        assert len(expiries) == 1 and -1 <= expiries[0] <= 1.5, expiries  # the gateway's deadline, to the second
        answer.cancel()

        # two alarms; the district acknowledges one: only the other is sent again
        for dev in ("gas1", "gas2"):
            async with site.device_client(dev, will=False) if dev == "gas2" else _same(gas1) as c:
                for _ in range(2):
                    topic, payload, _ = site.data(dev, [reading("ch4", 30.0, "%LEL")])
                    await c.publish(topic, payload, qos=1)
        await district.wait_for(lambda: len([a for a in district.of(dtopics.ALARM) if a["ev"] == "raised"]) >= 2)
        by_dev = {a["dev"]: a["id"] for a in district.of(dtopics.ALARM) if a["ev"] == "raised"}
        await district.send(dtopics.ALARM_ACK, {"id": by_dev["gas1"]})
        await gateway.wait_log(f"event=alarm-ack id={by_dev['gas1']} known=true")
        n = len(district.items)
        await district.wait_for(lambda: any(a.get("resend") and a["dev"] == "gas2"
                                            for a in district.of(dtopics.ALARM)[n:]), timeout=10)
        await asyncio.sleep(2.5)
        later = [a for k, a in district.items[n:] if k == dtopics.ALARM]
        assert not any(a["dev"] == "gas1" for a in later)
        # gas1 goes red; the officer's ack of the orange (its step 0), arriving after, leaves the red re-sent
        for _ in range(2):
            topic, payload, _ = site.data("gas1", [reading("ch4", 60.0, "%LEL")])
            await gas1.publish(topic, payload, qos=1)
        await district.wait_for(lambda: any(a["ev"] == "escalated" and a["dev"] == "gas1"
                                            for a in district.of(dtopics.ALARM)))
        await district.send(dtopics.ALARM_ACK, {"ids": [by_dev["gas1"]], "steps": [0]})
        await gateway.wait_log(f"event=alarm-ack id={by_dev['gas1']} known=true behind=0")
        n = len(district.items)
        await district.wait_for(lambda: any(k == dtopics.ALARM and a.get("resend") and a["dev"] == "gas1"
                                            and a["level"] == "red" for k, a in district.items[n:]), timeout=10)

        # rule sets from the district: an invalid one is refused, a newer one applies without restart
        await district.send(dtopics.RULES, {"ruleset": {"version": 2, "gas": {"ch4": {"direction": "sideways"}}}})
        ch4 = {"direction": "above", "levels": {"yellow": 40}, "clear": {"yellow": 35}}
        rules = {"version": 2, "gas": {"ch4": ch4}}
        await district.send(dtopics.RULES, {"ruleset": rules})
        await district.wait_for(lambda: len([a for a in district.of(dtopics.UP_ACK) if a.get("re") == "rules"]) >= 2)
        results = [a for a in district.of(dtopics.UP_ACK) if a.get("re") == "rules"]
        assert results[0]["ok"] is False and "direction" in results[0]["error"] and results[0]["active"] == 1
        assert results[1]["ok"] is True and results[1]["version"] == 2
        # 30 %LEL is no alarm under version 2: the active alarms are cleared on their next reading
        topic, payload, _ = site.data("gas2", [reading("ch4", 30.0, "%LEL")])
        async with site.device_client("gas2", will=False) as gas2:
            await gas2.publish(topic, payload, qos=1)
        await district.wait_for(lambda: any(a["ev"] == "cleared" and a["dev"] == "gas2"
                                            for a in district.of(dtopics.ALARM)))


class _same:
    """An async context manager over an already-open client (leaves it open)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client

    async def __aenter__(self) -> aiomqtt.Client:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("site", [False, True], indirect=True, ids=["tables", "devices_file"])
async def test_sighup_reloads_registry_and_sigterm_exits_cleanly(site: Site, gateway: GatewayProcess) -> None:
    site.add("gas3", "gas")  # has a site-broker login (written below) but the gateway does not know it yet
    from lifeline import site_auth

    cfg_text = site.config_path.read_text()
    site.write_config()
    site.passwords = site_auth.generate(site.config_path, site.dir / "auth")
    site.devices["gas3"].password = site.passwords["gas3"]
    assert site.site_broker is not None and site.site_broker.proc is not None
    site.site_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads passwords and ACL
    site.config_path.write_text(cfg_text)
    await asyncio.sleep(0.5)
    async with District(site) as district, site.device_client("gas3") as gas3:
        topic, payload, first = site.data("gas3", [reading("ch4", 1.0, "%LEL")])
        await gas3.publish(topic, payload, qos=1)
        await gateway.wait_log("reason=unknown-device")
        # now with gas3, and a gas rule file whose version is above the shipped sets' 1
        rules = (ROOT / "gateway" / "rulesets" / "gas.toml").read_text().replace("version = 1", "version = 5")
        (site.dir / "gas-v5.toml").write_text(rules)
        site.extra_toml += '\n[rules]\nfiles = ["gas-v5.toml"]\n'
        site.write_config()
        gateway.signal(signal.SIGHUP)
        await gateway.wait_log("event=reloaded devices=4 rules_version=5 rules_applied=true")
        topic, payload, second = site.data("gas3", [reading("ch4", 1.0, "%LEL")])
        await gas3.publish(topic, payload, qos=1)
        await district.wait_for(lambda: ("gas3", second) in packs(district))
        assert ("gas3", first) not in packs(district)
    gateway.signal(signal.SIGTERM)
    assert await gateway.wait() == 0
    assert any("event=stopped" in line for line in gateway.lines())


async def test_a_config_error_names_the_field(site: Site) -> None:
    text = site.config_path.read_text().replace('class = "drone"', 'class = "zeppelin"')
    site.config_path.write_text(text)
    r = cli("gateway", "--config", str(site.config_path))
    assert r.returncode == 2
    assert "devices[2].class: 'zeppelin' is not one of" in r.stderr
