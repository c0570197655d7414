"""A rollout from the district desk, end to end: the real district service (ingest worker and desk) and a real
gateway daemon serving the release, virtual boards running the real firmware in 64wK. The desk sees what the
site serves, a supervisor starts the rollout over its API, the driver sends the `ota` command down through
the gateway's command relay, the nodes update, and the desk shows each node's download (the gateway's
progress reports) and its birth on the new version."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import Build, OtaSite

from lifeline.virtual.broker import free_port
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.site import ROOT, Site, environment, lifeline_cmd

OLD, NEW = "0.1.0", "0.2.0"
PASSWORD = "duty-password-1"


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.3)


def test_a_rollout_from_the_desk_lands_and_the_desk_shows_each_download(tmp_path: Path, mpy: Path,
                                                                         make_release: Build,
                                                                         key: Ed25519PrivateKey) -> None:
    rel = make_release(NEW, profiles=("gas", "water", "rain"))
    devices = {"gas-1": "gas", "water-1": "water", "rain-1": "rain", "bridge-1": "bridge"}
    desk_port = free_port()
    district: list[DistrictProcess] = []

    def start_district(site: Site) -> None:
        conf = write_config(site, tmp_path / "district.toml", database=str(tmp_path / "district.sqlite"),
                            desk_port=desk_port)
        added = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "chen", "--role",
                                "supervisor"], input=PASSWORD + "\n", capture_output=True, text=True,
                               env=environment(), cwd=ROOT)
        assert added.returncode == 0, added.stderr
        district.append(DistrictProcess(conf).start())
        district[0].wait_subscribed()

    try:
        with OtaSite(tmp_path, mpy, key, [rel.dir], devices, before_gateway=start_district) as site, \
                httpx.Client(base_url=f"http://127.0.0.1:{desk_port}", timeout=20) as web:
            until(lambda: web.post("/api/login", json={"user": "chen", "password": PASSWORD}).is_success, 30,
                  "the desk answers")
            csrf = web.get("/api/me").json()["csrf"]
            sid = site.site.id

            def ota() -> dict[str, Any]:
                got: dict[str, Any] = web.get("/api/ota", params={"site": sid}).json()
                return got

            until(lambda: ota().get("releases") and {n["dev"]: n["running"] for n in ota()["nodes"]} == {
                d: OLD for d in devices}, 90, "the site's release and every node's birth at the desk")
            offered = ota()["releases"]
            assert [(r["v"], r["profiles"], r["size"]) for r in offered] == [
                (NEW, ["gas", "water", "rain"], (rel.dir / "release.bin").stat().st_size)]

            started = web.post("/api/ota/rollouts", headers={"X-CSRF-Token": csrf}, json={
                "site": sid, "version": NEW, "canary": "1", "halt_share": 0.25, "stage_timeout": 240})
            assert started.status_code == 200, started.text
            rid = started.json()["id"]
            done = until(lambda: (r := ota()["rollouts"][0])["state"] != "running" and r, 400,
                         "the rollout ends: " + str(ota()))
            # Progress travels in the gateway's OTA report (every 2 s), a node's version in its birth: the
            # desk may see the birth first (and the rollout end) before any progress of a node that downloaded
            # between two reports, and shows the whole download by the next report. The node's sealed "ota"
            # event goes up in the telemetry lane, which may trail its birth in the state lane too.
            def whole() -> dict[str, Any] | None:
                v = ota()
                shown = {n["dev"]: n for n in v["nodes"]}
                return v if all(shown[d]["target"] == NEW and shown[d]["done"] == shown[d]["total"]
                                and shown[d]["outcome"] is not None
                                for d in ("gas-1", "water-1", "rain-1")) else None

            view = until(whole, 30, "every download and outcome shown: " + str(ota()))
            consoles = site.consoles()
    finally:
        for d in district:
            d.stop()
    assert done["id"] == rid and done["state"] == "done", (done, district[0].log()[-3000:], consoles)
    members = {n["dev"]: (n["stage"], n["state"]) for n in done["nodes"]}
    assert members == {"gas-1": ("canary", "landed"), "rain-1": ("wave 1", "landed"),
                       "water-1": ("wave 1", "landed")}, done  # bridge: not a profile of the release
    nodes = {n["dev"]: n for n in view["nodes"]}
    size = (rel.dir / "release.bin").stat().st_size
    for dev in ("gas-1", "water-1", "rain-1"):
        n = nodes[dev]
        assert n["running"] == NEW and (n["target"], n["done"], n["total"]) == (NEW, size, size), n
        assert n["outcome"]["v"] == NEW and n["outcome"]["ok"] is True, n
    assert nodes["bridge-1"]["running"] == OLD and nodes["bridge-1"]["target"] is None
    assert "MemoryError" not in consoles, consoles
