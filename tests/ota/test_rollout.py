"""A staged rollout at a site, end to end: `lifeline ota rollout` sends the sealed ota command over the site
broker, each node's updater pulls the release from the real gateway daemon (site.toml [ota]), and the
rollout follows the nodes through the gateway's store: their births (the version they run), their download
and their sealed "ota" events. Virtual boards run the real firmware on the unix port in 64wK."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import Build, OtaSite

from lifeline.virtual.profiles import STIMULUS
from protocol import district as dtopics

OLD, NEW = "0.1.0", "0.2.0"


def test_a_rollout_to_every_profile_lands_on_every_node(tmp_path: Path, mpy: Path, make_release: Build,
                                                         key: Ed25519PrivateKey) -> None:
    """Two canaries, then the other four of the six profiles (drainage, rain and drone sleep between wakes and
    take the command when they wake); each node births on the new version and reports it running."""
    rel = make_release(NEW)
    devices = {f"{p}-1": p for p in STIMULUS}
    summary = tmp_path / "summary.json"
    with OtaSite(tmp_path, mpy, key, [rel.dir], devices) as site:
        assert site.wait(lambda n: all(n.get(d) and n[d].running == OLD for d in devices), 60), site.consoles()
        out = site.lifeline("ota", "rollout", "--release", str(rel.dir), "--canary", "2", "--halt-share", "0.25",
                            "--stage-timeout", "240", "--poll", "0.5", "--summary", str(summary))
        assert out.returncode == 0, out.stdout + out.stderr + site.consoles()
        assert site.wait(lambda n: all(n[d].outcome_v == NEW for d in devices), 60), site.consoles()
        nodes = site.nodes()
        status = site.lifeline("ota", "status")
        consoles = site.consoles()
        # upstream: each node's ota event and its birth on the new version reach the district
        assert site.district is not None and site.district.wait(lambda: {
            b["dev"] for b in site.upstream(dtopics.UP_EVENT) if b["ev"] == "ota"} == set(devices), 30), \
            site.upstream(dtopics.UP_EVENT)
        states = site.upstream(dtopics.UP_STATE)
    assert {b["dev"] for b in states if b.get("fw") == NEW and b["st"] == "online"} == set(devices), states
    print(out.stdout, status.stdout)
    done = json.loads(summary.read_text())
    assert done["landed"] == sorted(devices) and not done["failed"] and not done["halted"], done
    assert [len(s["devices"]) for s in done["stages"]] == [2, 4]
    assert "canary: sending 0.2.0 to 2 node(s)" in out.stdout, out.stdout
    assert all(f"{dev:<16} running 0.2.0" in out.stdout for dev in devices), out.stdout
    for dev in devices:
        n = nodes[dev]
        assert (n.running, n.outcome_v, n.ok, n.res) == (NEW, NEW, True, "running"), n
        assert n.target == NEW and n.done == n.total > 0, n
    assert "MemoryError" not in consoles, consoles
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if any(d in line for d in devices)]
    assert len(rows) == 6 and all(NEW in r and "running" in r and "100%" in r for r in rows), status.stdout


def test_a_release_that_crashes_on_boot_halts_at_the_canaries(tmp_path: Path, mpy: Path, make_release: Build,
                                                              key: Ed25519PrivateKey) -> None:
    """The canaries take the release, crash on it at import, roll back by themselves (2 trial boots) and report
    it; more than the halt share failed, so the rollout stops and the other nodes are never sent it."""
    rel = make_release("0.3.0", patch={"app/runtime.py": ("import asyncio\n", "raise RuntimeError('broken')\n")})
    devices = {"gas-1": "gas", "water-1": "water", "bridge-1": "bridge", "gas-2": "gas"}
    summary = tmp_path / "summary.json"
    with OtaSite(tmp_path, mpy, key, [rel.dir], devices) as site:
        assert site.wait(lambda n: all(n.get(d) and n[d].running == OLD for d in devices), 60), site.consoles()
        out = site.lifeline("ota", "rollout", "--release", str(rel.dir), "--canary", "50%", "--halt-share", "0.25",
                            "--stage-timeout", "240", "--poll", "0.5", "--summary", str(summary))
        nodes = site.nodes()
        consoles = site.consoles()
    print(out.stdout)
    assert out.returncode == 1, out.stdout + out.stderr + consoles
    done = json.loads(summary.read_text())
    canaries, rest = done["stages"][0]["devices"], done["stages"][1]["devices"]
    assert canaries == ["bridge-1", "gas-1"] and rest == ["gas-2", "water-1"], done
    assert done["landed"] == [] and sorted(done["failed"]) == canaries and done["untouched"] == rest, done
    assert "HALTED: 2 of 2 nodes sent 0.3.0 failed, above the halt share 0.25" in out.stdout, out.stdout
    for dev in canaries:
        n = nodes[dev]
        assert done["failed"][dev] == "rolled back: 2 boots without a confirmed connection", done
        assert (n.running, n.outcome_v, n.ok) == (OLD, "0.3.0", False), n
    for dev in rest:
        n = nodes[dev]
        assert (n.running, n.target, n.outcome_v) == (OLD, "", ""), f"{dev} was touched: {n}"
