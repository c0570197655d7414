"""Bad input of every kind, mixed with good traffic, into the running daemon: every good reading reaches the
district, every bad message is quarantined with its reason, duplicates are dropped and counted, doubtful
clocks are flagged, gaps are reported, and the daemon keeps running."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
from sitekit import District, cli, quarantined

from lifeline.virtual.broker import free_port
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import auth, cbor, message, senml, topics
from protocol import district as dtopics


def sealed(body: dict[str, Any], key: bytes) -> bytes:
    data: bytes = message.encode(body, key)
    return data


async def test_bad_input_is_quarantined_and_good_input_beside_it_arrives(tmp_path: Path) -> None:
    s = Site(tmp_path)
    for dev in ("d1", "d2", "d9"):
        s.add(dev, "gas")
    # One device held and one message a batch: d1 and d2 in turn fall out at every commit, so duplicates and replays
    # are told from state read back (a batch holding both, as the default of 500 may, would read nothing back).
    s.extra_toml = "[ingest]\nbatch = 1\nseq_window = 16\ngap_grace_s = 1\n"
    s.store_toml = "devices_in_memory = 1\n"
    s.start()
    d9 = s.devices.pop("d9")  # d9 has a site-broker login, but the gateway's registry does not list it
    metrics_port = free_port()
    s.write_config(metrics_port=metrics_port)
    gw = GatewayProcess(s).start()
    d1, d2 = s.devices["d1"], s.devices["d2"]
    data1 = topics.device(s.id, "d1", topics.DATA)
    good: set[tuple[str, int]] = set()
    bad: list[tuple[str, bytes]] = []  # (expected reason, payload) on d1's own data topic
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("d1") as c1, s.device_client("d2") as c2, \
                aiomqtt.Client("127.0.0.1", s.ports["site"], identifier="dev-d9", username="d9",
                               password=s.passwords["d9"]) as c9:
            history: dict[int, bytes] = {}
            now = time.time()
            pack = [reading("ch4", 1.0, "%LEL")]
            body = message.data("d1", 1, 504, pack)
            del body["dev"]
            payload_504 = cbor.dumps(body)
            old_alg = b"\xa1\x01\x05"  # HMAC 256/256 with a right full tag: refused, no downgrade either way
            full_tag = auth.hmac_sha256(d1.key, auth._to_be_maced(old_alg, payload_504))
            bad += [
                ("malformed", b"\xff\x00 not cbor at all"),
                ("malformed", cbor.dumps(cbor.Tag(17, [old_alg, {4: b"d1"}, payload_504, full_tag]))),
                ("malformed", cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x04", {4: b"d1"}, b"\xff"]))),  # 3 parts
                ("schema", sealed({k: v for k, v in message.data("d1", 1, 500, pack).items() if k != "seq"},
                                  d1.key)),
                ("schema", sealed(message.death("d1", 1, 3), d1.key)),  # a state body on the data topic
                ("bad-mac", sealed(message.data("d1", 1, 501, pack), d2.key)),
                ("device-mismatch", sealed(message.data("d2", 1, 502, pack), d2.key)),
                ("oversize", sealed(message.data("d1", 1, 503, [senml.record("note", "x" * 5000)]), d1.key)),
                # integers of more digits than Python writes (4,300) where a refusal names the value: a bug before
                ("schema", sealed(message.data("d1", 1, 505, [{senml.BVER: 10**5000, **pack[0]}]), d1.key)),
                ("schema", sealed({**message.data("d1", 1, 506, pack), "k": 10**5000}, d1.key)),
            ]
            for i in range(40):
                topic, payload, seq = s.data("d1", [reading("ch4", float(i % 7), "%LEL")])
                history[seq] = payload
                await c1.publish(topic, payload, qos=1)
                good.add(("d1", seq))
                if i == 20:
                    skipped = d2.seq
                    d2.seq += 1  # d2 never sends this one: a gap
                topic, payload, seq = s.data("d2", [reading("ch4", 2.0, "%LEL")])
                await c2.publish(topic, payload, qos=1)
                good.add(("d2", seq))
                if i < len(bad):
                    await c1.publish(data1, bad[i][1], qos=1)
            # replays: an old message again, beyond the window; an old boot's birth
            await c1.publish(data1, history[2], qos=1)
            bad.append(("replay", history[2]))
            await c1.publish(*s.birth("d1"), qos=1)
            d1.boot = 0
            await c1.publish(*s.birth("d1"), qos=1)
            bad.append(("replay", b""))
            d1.boot = 1
            # a duplicate (the last message again): dropped silently, counted, not quarantined
            await c1.publish(data1, history[max(history)], qos=1)
            # a device the registry does not know
            d9_body = message.data("d9", 1, 0, pack)
            await c9.publish(topics.device(s.id, "d9", topics.DATA), sealed(d9_body, d9.key), qos=1)
            bad.append(("unknown-device", b""))
            # clocks: an hour ahead is flagged; a boot clock is converted once a live birth dates the boot
            topic, payload, seq_future = s.data("d2", [reading("ch4", 2.0, "%LEL", now + 3600)])
            await c2.publish(topic, payload, qos=1)
            good.add(("d2", seq_future))
            await c2.publish(*s.birth("d2", t=100.0, clk=message.CLK_BOOT), qos=1)
            topic, payload, seq_boot = s.data("d2", [reading("ch4", 2.0, "%LEL", 160.0)], clk=message.CLK_BOOT)
            await c2.publish(topic, payload, qos=1)
            good.add(("d2", seq_boot))

            def telemetry() -> dict[tuple[str, int], Any]:
                return {(p["dev"], p["seq"]): p for b in district.of(dtopics.TELEMETRY) for p in b["packs"]}

            await district.wait_for(lambda: good <= set(telemetry()))
            await district.wait_for(lambda: any(d.get("kind") == "gap" for d in district.of(dtopics.DQ)))
            await asyncio.sleep(0.5)

        assert set(telemetry()) == good  # every good message, nothing bad
        gaps = [d for d in district.of(dtopics.DQ) if d.get("kind") == "gap"]
        assert [(g["dev"], g["first"], g["last"]) for g in gaps] == [("d2", skipped, skipped)]
        clock = [d for d in district.of(dtopics.DQ) if d.get("kind") == "clock"]
        assert [(c["seq"], c["readings"][0]["clock"]) for c in clock] == [(seq_future, "future")]
        assert clock[0]["readings"][0]["t_device"] == now + 3600
        t_future = telemetry()[("d2", seq_future)]["e"][0][senml.BT]
        assert abs(t_future - now) < 60  # judged and forwarded with the arrival time, not the device's
        birth_t = next(b["t"] for b in district.of(dtopics.UP_STATE) if b["dev"] == "d2" and b["boot"] == 1)
        assert abs(telemetry()[("d2", seq_boot)]["e"][0][senml.BT] - (birth_t + 60)) < 2

        store = sqlite3.connect(f"file:{s.dir / 'gateway.sqlite'}?mode=ro", uri=True)
        rows = store.execute("SELECT id, reason, raw FROM quarantine ORDER BY id").fetchall()
        assert Counter(r[1] for r in rows) == Counter(reason for reason, _ in bad)
        kept = {bytes(raw) for _, reason, raw in rows if reason != "oversize"}
        assert all(payload in kept for reason, payload in bad if payload and reason != "oversize")
        store.close()

        listing = cli("quarantine", "--config", str(s.config_path), "list", "--reason", "bad-mac")
        table, totals = listing.stdout.split("kept:")
        assert listing.returncode == 0 and "bad-mac" in table and "device-mismatch" not in table
        assert "malformed 3" in totals and "replay 2" in totals
        bad_mac_id = next(r[0] for r in rows if r[1] == "bad-mac")
        shown = cli("quarantine", "--config", str(s.config_path), "show", str(bad_mac_id))
        assert shown.returncode == 0 and "MAC does not verify" in shown.stdout and "{4: b'd1'}" in shown.stdout
        assert "'seq': 501" in shown.stdout  # the body, whose device is the envelope's key id (4)

        await asyncio.sleep(1.2)  # one metrics snapshot
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'lifeline_ingest_rejects_total{reason="bad-mac"} 1.0' in scrape
        assert 'lifeline_ingest_rejects_total{reason="replay"} 2.0' in scrape
        assert 'lifeline_ingest_dropped_total{why="duplicate"} 1.0' in scrape
        assert "lifeline_uplink_connected 1.0" in scrape
        sent = re.search(r"^lifeline_confirmations_sent_total (\S+)$", scrape, re.M)
        assert sent and float(sent[1]) >= 1  # the good messages' devices were told they are committed
        assert "lifeline_devices_in_memory 1.0" in scrape
        read = re.search(r"^lifeline_device_states_read_total (\S+)$", scrape, re.M)
        assert read and float(read[1]) >= 1
        commits = re.search(r"^lifeline_store_commit_seconds_count (\S+)$", scrape, re.M)
        assert commits and float(commits[1]) >= 1  # every batch's commit is timed
        assert gw.proc is not None and gw.proc.poll() is None  # still running
    finally:
        gw.kill()
        s.stop()


async def test_tagged_headers_are_refused_quietly_and_good_input_beside_them_arrives(tmp_path: Path) -> None:
    """A CBOR tag where the envelope expects a plain header (tag 36 made cbor2 build a MIME message, whose
    own .get() then raised) is an ordinary `malformed` refusal: one log line per interval, no traceback."""
    s = Site(tmp_path)
    s.add("d1", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    data1 = topics.device(s.id, "d1", topics.DATA)
    d1 = s.devices["d1"]
    body = message.data("d1", 1, 900, [reading("ch4", 1.0, "%LEL")])
    del body["dev"]
    payload = cbor.dumps(body)
    tag = auth.hmac_sha256(d1.key, auth._to_be_maced(b"\xa1\x01\x04", payload))[:auth.TAG_BYTES]
    headers = [cbor.Tag(36, "text/plain"), cbor.Tag(36, {4: b"d1"}), {4: cbor.Tag(36, "d1")},
               cbor.Tag(1, 0), cbor.Tag(4, [-1, 15])]
    bad = [cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x04", h, payload, tag])) for h in headers] * 20
    good: set[int] = set()
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("d1") as c1:
            for i, raw in enumerate(bad):
                await c1.publish(data1, raw, qos=1)
                if i % 10 == 0:
                    topic, good_payload, seq = s.data("d1", [reading("ch4", 2.0, "%LEL")])
                    await c1.publish(topic, good_payload, qos=1)
                    good.add(seq)

            def arrived() -> set[int]:
                return {p["seq"] for b in district.of(dtopics.TELEMETRY) for p in b["packs"]}

            await district.wait_for(lambda: good <= arrived())
            store = await quarantined(s, len(bad))
            assert store.execute("SELECT count(*) FROM quarantine").fetchone()[0] >= len(bad), \
                "not every tagged message was quarantined"
        assert arrived() == good
        rows = store.execute("SELECT reason, detail, raw FROM quarantine").fetchall()
        store.close()
        assert Counter(r[0] for r in rows) == Counter({"malformed": len(bad)})
        assert Counter(bytes(r[2]) for r in rows) == Counter(bad)
        assert not any("Error" in r[1] for r in rows), {r[1] for r in rows}  # a reason, not an exception
        lines = gw.lines()
        assert not any("Traceback" in line or "exc=" in line for line in lines)
        assert len([line for line in lines if "malformed" in line]) <= 2  # once per interval, not per message
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        gw.kill()
        s.stop()
