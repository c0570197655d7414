"""Provable origin (issue 18): a real gateway forwards each device's sealed message inside the upstream pack
and seals every publish with its site key; the district's verifier (protocol/district_verify.py) catches a
tampered gateway: a reading changed, one invented, one dropped. The verifier also runs on MicroPython."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from gateway import district_wire
from gateway.outbox import STATE, TELEMETRY, Outbox
from gateway.store import open_store
from lifeline import upy
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import auth, message, site_seal
from protocol import district as dtopics
from protocol.district_verify import Verifier, VerifyError

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_763_900_000.0


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


def test_the_district_sees_the_gap_a_gateway_summarised_around(tmp_path: Path) -> None:
    """gas1's seq 6-8 never reached the gateway, which then thinned 1-5 and 9-15 under its disk budget. The
    summary said seq_lo 1, seq_hi 15, msgs 12, and the district's verifier, taking the range as covered,
    hid 6-8 (only the gateway's own gap report named them). The rows here go up as the uplink sends them."""
    site_key, dev_key = b"\x07" * 32, b"\x09" * 32
    ob = Outbox(open_store(tmp_path / "store.db"), 10**9, thin_interval_s=300.0)
    for seq in [0, *range(1, 6), *range(9, 16), 16]:
        t = T0 + seq if seq < 16 else T0 + 1000  # 16 in a later window, which stays raw
        sealed = message.encode(message.data("gas1", 1, seq, [reading("ch4", float(seq), "%LEL", t)]), dev_key)
        ob.put_telemetry("gas1", seq, 1, [{"n": "gas1:ch4", "u": "%LEL", "t": t, "v": float(seq)}], now=t,
                         sealed=sealed)
        ob.flush()
        ob.conn.commit()
        if seq == 0:
            first = ob.lease(TELEMETRY, 1)  # in flight: a pass leaves it alone
    ob.budget_bytes = ob.bytes_used() - 1
    report = ob.enforce_budget(now=T0 + 1000)
    assert report is not None and report.thinned and not report.evicted
    district = Verifier({"s1": site_key}, {"gas1": dev_key})
    for items in (ob.lease(STATE, 100), first + ob.lease(TELEMETRY, 100)):
        packs, thinned = [i for i in items if not i.thinned], [i for i in items if i.thinned]
        kind = items[0].kind
        body = items[0].body if kind != dtopics.TELEMETRY else district_wire.telemetry(
            "s1", [i.body for i in packs], [i.body for i in thinned],
            (sum(i.entries for i in packs), sum(i.entries for i in thinned)))
        _, _, doc = district.publish(dtopics.up("s1", kind), site_seal.seal(site_key, "s1", kind, body))
        for entry in doc.get("packs", ()):
            district.entry(entry)
    assert district.missing() == {"gas1": [6, 7, 8]}
    assert district.unaccounted() == {}
    # A gateway from before still sends the range with its holes: msgs says it holds fewer than it spans, so
    # no number in it counts as covered, and the district is told how many of them the site does not hold.
    raw = [e for e in doc["packs"] if e["seq"] in (0, 16)]
    old = {"site": "s1", "packs": raw, "thinned": [cbor2.loads(district_wire.thinned_entry(
        "gas1", 1, 15, 12, [1], 300.0, []))]}
    district = Verifier({"s1": site_key}, {"gas1": dev_key})
    for entry in raw:
        district.entry(entry)
    district.publish(dtopics.up("s1", dtopics.TELEMETRY),
                     site_seal.seal(site_key, "s1", dtopics.TELEMETRY, cbor2.dumps(old)))
    assert district.missing() == {"gas1": list(range(1, 16))}
    assert district.unaccounted() == {"gas1": [(1, 15, 3)]}


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
m9 = message.encode(message.data("gas1", 1, 9, [senml.record("ch4", 2.5, "%LEL", 1763900000)]), dkey)
v.entry({"dev": "gas1", "seq": 9, "boot": 1, "m": m9})
gaps = {"site": "s1", "packs": [], "thinned": [{"dev": "gas1", "seq_lo": 5, "seq_hi": 5, "msgs": 1},
                                               {"dev": "gas1", "seq_lo": 6, "seq_hi": 8, "msgs": 2}]}
v.publish("district/v1/s1/up/telemetry", site_seal.seal(key, "s1", "telemetry", cbor.dumps(gaps)))
print("GAPS", v.missing()["gas1"], v.unaccounted()["gas1"])
"""


def test_the_verifier_runs_on_micropython(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(UPY_CHECK)
    result = upy.run(script, cwd=ROOT, heap="4M")  # the district runs it, not a node: compiled from source
    assert result.stdout.split("\n")[:3] == ["OK s1 telemetry ch4 2.5 1763900000", "REFUSED device-mac",
                                             "GAPS [6, 7, 8] [(6, 8, 1)]"], result.stdout + result.stderr
