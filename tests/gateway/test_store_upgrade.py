"""A site box upgraded in place keeps its store: today's gateway started on a store an older release made
(tests/gateway/store_upgrade/, each the `sqlite3 .dump` of a store that release's daemon left with its district
link down: a backlog, an open orange alarm on gas1, a message quarantined) forwards the backlog once, keeps
the alarm, the sequence windows and the quarantine (docs/gateway.md, "A store survives an upgrade in place")."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sitekit import District, cli

from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics

FIXTURES = Path(__file__).parent / "store_upgrade"
STORES = sorted(p.name for p in FIXTURES.glob("*.sql"))
# What every fixture's old gateway was given before it stopped: gas1 seq 0-9 (8 then 9 orange), gas2 seq 0-7,
# and gas2's seq 8 sealed with a wrong key (quarantined, bad-mac).
BACKLOG = {("gas1", s) for s in range(10)} | {("gas2", s) for s in range(8)}


def key(name: str) -> bytes:
    """The fixtures' keys, so that their stored device messages verify at the district."""
    return hashlib.sha256(b"lifeline upgrade fixture " + name.encode()).digest()


def delivered(district: District) -> Counter[tuple[str, int]]:
    """Each (device, seq) the district received: in a pack, or in a summary the site vouches for (a row of a store
    made before packs carried the device's message)."""
    out = district.packs()
    for body in district.of(dtopics.TELEMETRY):
        for s in body.get("thinned", ()):
            out.update((s["dev"], seq) for seq in range(s["seq_lo"], s["seq_hi"] + 1))
    return out


@pytest.fixture(params=STORES)
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    store = sqlite3.connect(tmp_path / "gateway.sqlite")
    store.executescript((FIXTURES / request.param).read_text())
    store.close()
    s = Site(tmp_path, tls=False)
    s.site_key = key("site")
    for dev, seq in (("gas1", 10), ("gas2", 9)):
        d = s.add(dev, "gas", key(dev))
        d.seq = seq
    s.start()
    yield s
    s.stop()


async def test_an_old_store_is_upgraded_and_kept(site: Site) -> None:
    old = sqlite3.connect(site.dir / "gateway.sqlite")
    (alarm_id,) = old.execute("SELECT id FROM alarm_active").fetchone()
    old.close()
    before = cli("status", "--config", str(site.config_path))  # before the upgrade: is the outbox drained?
    assert "telemetry 18" in before.stdout, before.stdout + before.stderr
    gw = GatewayProcess(site)
    try:
        async with District(site) as district, site.device_client("gas1") as gas1:
            gw.start()
            await gw.ready()
            await district.wait_for(lambda: set(delivered(district)) >= BACKLOG)
            assert district.recorder is not None and district.recorder.refused == []

            def ch4() -> list[tuple[str, str, str | None, bool]]:
                return [(a["id"], a["ev"], a["level"], a["resend"] > 0) for a in district.of(dtopics.ALARM)
                        if a["kind"] == "level"]

            await district.wait_for(lambda: (alarm_id, "raised", "orange", False) in ch4())
            topic, payload, _ = site.data("gas1", [reading("ch4", 1.0, "%LEL", time.time() - 1)], seq=5)
            await gas1.publish(topic, payload, qos=1)  # an old number: a duplicate, not new
            for value in (30.0, 1.0):  # orange again: the open alarm, not a new one; then it clears
                topic, payload, _ = site.data("gas1", [reading("ch4", value, "%LEL")])
                await gas1.publish(topic, payload, qos=1)
            await district.wait_for(lambda: (alarm_id, "cleared", None, False) in ch4())
            await district.wait_for(lambda: {("gas1", 10), ("gas1", 11)} <= set(district.packs()))
            assert {a[0] for a in ch4()} == {alarm_id}
            assert [a for a in ch4() if not a[3] and a[1] == "raised"] == [(alarm_id, "raised", "orange", False)]
            assert set(delivered(district)) == BACKLOG | {("gas1", 10), ("gas1", 11)}
            assert set(delivered(district).values()) == {1}
            assert district.recorder.refused == []
            assert [(b["dev"], b["st"], b.get("hist")) for b in district.of(dtopics.UP_STATE)] == [
                ("gas1", "online", True), ("gas2", "online", True)]  # the backlog's births, once each
        status = cli("status", "--config", str(site.config_path))
        assert status.returncode == 0, status.stderr
        row = next(line.split() for line in status.stdout.splitlines() if line.split()[:1] == ["gas1"])
        assert row[-2:] == ["1", "0"], status.stdout  # dups, replays
        listed = cli("quarantine", "--config", str(site.config_path), "list")
        assert listed.returncode == 0 and "bad-mac" in listed.stdout, listed.stdout + listed.stderr
    finally:
        gw.stop()
