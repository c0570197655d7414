"""Provable origin (issue 18): a real gateway forwards each device's sealed message inside the upstream pack
and seals every publish with its site key; the district's verifier (protocol/district_verify.py) catches a
tampered gateway: a reading changed, one invented, one dropped. The verifier also runs on MicroPython."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from lifeline import upy
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import auth, message, site_seal
from protocol import district as dtopics
from protocol.district_verify import Verifier, VerifyError

ROOT = Path(__file__).resolve().parents[2]


def verdicts(verifier: Verifier, body: dict[str, Any]) -> dict[int, str]:
    """seq -> "ok" or the verifier's reason, for every pack entry of a telemetry body."""
    out = {}
    for entry in body["packs"]:
        try:
            verifier.entry(entry)
            out[entry["seq"]] = "ok"
        except VerifyError as exc:
            out[entry["seq"]] = exc.reason
    return out


async def test_a_tampered_gateway_is_caught_at_the_district(tmp_path: Path) -> None:
    s = Site(tmp_path, tls=False)
    s.add("gas1", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    got: list[tuple[str, bytes]] = []
    try:
        await gw.ready()
        async with aiomqtt.Client("127.0.0.1", s.ports["district"], username=DISTRICT_USER,
                                  password=s.district_password) as district, s.device_client("gas1") as dev:
            await district.subscribe(f"{dtopics.ROOT}/{s.id}/up/#", qos=1)
            for i in range(6):
                topic, payload, _ = s.data("gas1", [reading("ch4", float(i), "%LEL")])
                await dev.publish(topic, payload, qos=1)
            async with asyncio.timeout(20):
                async for m in district.messages:
                    got.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
                    if sum(t.endswith("/telemetry") for t, _ in got) and len(_packs(s, got)) == 6:
                        break
    finally:
        gw.kill()
        s.stop()
    # As sent: every publish's site seal and every device message verify, nothing is missing.
    honest = s.verifier()
    for topic, payload in got:
        honest.publish(topic, payload)
    packs = _packs(s, got)
    assert verdicts(honest, {"packs": packs}) == dict.fromkeys(range(6), "ok")
    assert honest.missing() == {}
    # The gateway, which holds the site key but no device key, changes seq 1, drops seq 2, invents seq 6.
    changed = dict(packs[1], m=_retouched(packs[1]["m"]))
    invented = dict(packs[5], seq=6, m=message.encode(message.data("gas1", 1, 6, [reading("ch4", 80.0, "%LEL")]),
                                                      b"\x00" * 32))
    forged = {"site": s.id, "packs": [packs[0], changed, *packs[3:], invented]}
    topic = dtopics.up(s.id, dtopics.TELEMETRY)
    district = s.verifier()
    _, _, body = district.publish(topic, site_seal.seal(s.site_key, s.id, dtopics.TELEMETRY, cbor2.dumps(forged)))
    assert verdicts(district, body) == {0: "ok", 1: "device-mac", 3: "ok", 4: "ok", 5: "ok", 6: "device-mac"}
    assert district.missing() == {"gas1": [1, 2]}  # seq 1 arrived only forged
    # A gateway-made body replayed under another kind, or sealed without the site key, is refused.
    alarm_body = cbor2.dumps({"id": "x"})
    for sealed in (site_seal.seal(s.site_key, s.id, dtopics.ALARM, alarm_body),
                   site_seal.seal(b"\x01" * 32, s.id, dtopics.TELEMETRY, alarm_body)):
        try:
            district.publish(topic, sealed)
        except VerifyError as exc:
            assert exc.reason == "site-seal"
        else:
            raise AssertionError("a wrongly sealed publish verified")


def _packs(s: Site, got: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    out = []
    for topic, payload in got:
        if topic.endswith("/telemetry"):
            out += s.verifier().publish(topic, payload)[2]["packs"]
    return sorted(out, key=lambda p: p["seq"])


def _retouched(m: bytes) -> bytes:
    """The device message with its reading changed and its MAC kept."""
    prot, unprot, payload, tag = cbor2.loads(m).value
    body = cbor2.loads(payload)
    body["e"][0][2] = 99.0  # SenML label 2: v
    return cbor2.dumps(cbor2.CBORTag(auth.COSE_MAC0_TAG, [prot, unprot, cbor2.dumps(body), tag]))


UPY_CHECK = """
from protocol import cbor, district_verify, message, senml, site_seal
key, dkey = b"\\x07" * 32, b"\\x09" * 32
m = message.encode(message.data("gas1", 1, 4, [senml.record("ch4", 2.5, "%LEL", 1763900000)]), dkey)
body = cbor.dumps({"site": "s1", "packs": [{"dev": "gas1", "seq": 4, "boot": 1, "m": m}]})
v = district_verify.Verifier({"s1": key}, {"gas1": dkey})
site, kind, doc = v.publish("district/v1/s1/up/telemetry", site_seal.seal(key, "s1", "telemetry", body))
recs = v.entry(doc["packs"][0])
print("OK", site, kind, recs[0]["n"], recs[0]["v"], recs[0]["t"])
bad = district_verify.Verifier({"s1": key}, {"gas1": b"\\x01" * 32})
try:
    bad.entry(doc["packs"][0])
except district_verify.VerifyError as exc:
    print("REFUSED", exc.reason)
"""


def test_the_verifier_runs_on_micropython(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(UPY_CHECK)
    result = upy.run(script, cwd=ROOT, heap="4M")  # the district runs it, not a node: compiled from source
    assert result.stdout.split("\n")[:2] == ["OK s1 telemetry ch4 2.5 1763900000", "REFUSED device-mac"], (
        result.stdout + result.stderr)
