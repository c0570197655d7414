"""The gateway daemon's relay on its own: `lifeline gateway` with site.toml's [ota] releases answers a
device's chunk requests on the site broker (through the shipped ACL, logged in as the device), refuses
malformed, unknown-release and out-of-range requests (counted by reason in its metrics, logged once a
reason), and serves a release added to site.toml on SIGHUP. Upstream, the district is offered each release
(at start and on the reload) and told how far the device's download got."""

from __future__ import annotations

import asyncio
import queue
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from ota_support import Build
from paho.mqtt.enums import CallbackAPIVersion

from lifeline import release
from lifeline.virtual.site import GatewayProcess, Site
from protocol import district as dtopics
from protocol import topics

DEV = "gas-1"


def test_the_gateway_serves_chunks_and_counts_what_it_refuses(tmp_path: Path, make_release: Build) -> None:
    first, second = make_release("0.4.0"), make_release("0.5.0")
    site = Site(tmp_path / "site", tls=False, metrics=True, extra_toml=f'[ota]\nreleases = ["{first.dir}"]\n')
    site.add(DEV, "gas")
    site.start()
    district = site.recorder(raw=True)
    gw = GatewayProcess(site).start()
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{DEV}-ota")
    try:
        asyncio.run(gw.ready())
        client.username_pw_set(DEV, site.passwords[DEV])
        client.on_message = lambda c, u, m: got.put(bytes(m.payload))
        client.connect("127.0.0.1", site.ports["site"])
        client.subscribe(topics.device(site.id, DEV, topics.OTA), qos=0)
        client.loop_start()
        req = topics.device(site.id, DEV, topics.OTA_REQ)

        def ask(text: str) -> bytes | None:
            client.publish(req, text.encode(), qos=0)
            try:
                return got.get(timeout=3)
            except queue.Empty:
                return None

        data = (first.dir / "release.bin").read_bytes()
        assert ask("0.4.0 1000 1024") == (1000).to_bytes(4, "big") + data[1000:2024]
        assert ask(f"0.4.0 {len(data) - 10} 10") == (len(data) - 10).to_bytes(4, "big") + data[-10:]
        for bad in ("0.5.0 0 1024", "0.5.0 0 1024", "garbage", f"0.4.0 {len(data) - 10} 11", "0.4.0 0 4096"):
            assert ask(bad) is None, bad
        want = {"unknown release": 2, "malformed": 1, "out of range": 2}

        def counted() -> dict[str, float]:
            return {r: site.metric("lifeline_ota_refused_total", reason=r) for r in want}

        deadline = time.monotonic() + 10  # the daemon hands its metrics over once a second
        while counted() != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counted() == want
        assert site.metric("lifeline_ota_chunks_served_total") == 2
        refused = [line for line in gw.lines() if "ota-request-refused" in line]
        assert len(refused) == 3 and all(f"dev={DEV}" in line for line in refused), refused  # once a reason
        # a second release, added to site.toml and picked up on SIGHUP
        site.extra_toml = f'[ota]\nreleases = ["{first.dir}", "{second.dir}"]\n'
        site.write_config(site.metrics_port)
        gw.signal(signal.SIGHUP)
        asyncio.run(gw.wait_log("ota_releases=0.4.0,0.5.0"))
        assert ask("0.5.0 0 64") == (0).to_bytes(4, "big") + (second.dir / "release.bin").read_bytes()[:64]

        def reports() -> list[dict[str, Any]]:
            return [e.body for e in district.entries(dtopics.UP_OTA)]

        assert district.wait(lambda: len([r for r in reports() if "releases" in r]) == 2 and any(
            n["v"] == "0.5.0" for r in reports() for n in r["nodes"]), 15), reports()
    finally:
        client.loop_stop()
        client.disconnect()
        gw.stop()
        district.close()
        site.stop()
    offers = [r["releases"] for r in reports() if "releases" in r]
    manifest = (first.dir / "manifest.json").read_bytes()
    assert offers[0] == [{"v": "0.4.0", "profiles": list(release.PROFILES), "n": len(manifest),
                          "sig": (first.dir / "manifest.sig").read_bytes(), "size": len(data)}]
    assert [o["v"] for o in offers[1]] == ["0.4.0", "0.5.0"]
    progress = [n for r in reports() for n in r["nodes"]]
    assert {(n["dev"], n["v"], n["done"], n["total"]) for n in progress} >= {
        (DEV, "0.4.0", len(data), len(data)), (DEV, "0.5.0", 64, (second.dir / "release.bin").stat().st_size)}
    assert all(n["dev"] == DEV for n in progress)
