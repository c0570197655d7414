"""A site box's wall clock is set while the gateway runs: NTP steps a box without a real-time clock forward by
its whole power cut once the link is back, and an operator may set it back by hand. The gateway's silences,
re-sends and command deadlines are spans of time, so a step must move none of them. Before this, a step
forward raised a stale alarm for every device at once and timed out every pending command, and a step back
hid a dead device for as long as the step.

An in-process gateway over its real store; the two clocks are handed to `tick` as the ticker reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.clock_step import STEP_S, ClockWatch
from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.site_config import load
from protocol import district, message, senml_build, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0
MONO = 5_000.0
GAS_YELLOW_S = 3 * 60  # gateway/rulesets/gas.toml: interval_s 60, yellow at 3 intervals


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[alarms]\nresend_first_s = 10\n'
        f'[commands]\ntimeout_s = 30\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n'
        f'[[devices]]\nid = "d2"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    yield gateway
    gateway.conn.close()


def reading(dev: str, seq: int, ch4: float, at: float) -> Incoming:
    pack = senml_build.pack([senml_build.record("ch4", ch4, t=at)])
    body = message.data(dev, 1, seq, pack)
    return Incoming(topics.device("s1", dev, topics.DATA), message.encode(body, KEY), False, at)


def alarms(gateway: Gateway) -> list[dict[str, Any]]:
    return [cbor2.loads(body) for (body,) in gateway.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY id", (district.ALARM,))]


def stale(gateway: Gateway) -> list[tuple[str, str]]:
    return [(a["dev"], a["ev"]) for a in alarms(gateway) if a.get("kind") == "stale"]


def test_a_step_forward_raises_no_stale_alarm_and_silence_still_counts(gw: Gateway) -> None:
    gw.handle_site([reading("d1", 1, 0.1, NOW), reading("d2", 1, 0.1, NOW)])
    gw.tick(NOW + 1, MONO + 1)
    gw.tick(NOW + 7200 + 2, MONO + 2)  # NTP sets the clock two hours on
    assert stale(gw) == [] and gw.snapshot().clock_steps == 1
    gw.tick(NOW + 7200 + GAS_YELLOW_S - 5, MONO + GAS_YELLOW_S - 5)
    assert stale(gw) == []
    gw.tick(NOW + 7200 + GAS_YELLOW_S + 1, MONO + GAS_YELLOW_S + 1)
    assert sorted(stale(gw)) == [("d1", "raised"), ("d2", "raised")]


def test_a_step_back_still_finds_a_silent_device(gw: Gateway) -> None:
    gw.handle_site([reading("d1", 1, 0.1, NOW)])
    gw.tick(NOW + 1, MONO + 1)
    gw.tick(NOW - 3600 + 2, MONO + 2)  # set back an hour
    gw.tick(NOW - 3600 + GAS_YELLOW_S + 1, MONO + GAS_YELLOW_S + 1)
    assert stale(gw) == [("d1", "raised")]


def test_a_step_moves_no_resend_and_no_command_deadline(gw: Gateway) -> None:
    gw.handle_site([reading("d1", 1, 50.0, NOW), reading("d1", 2, 50.0, NOW + 1)])
    raised = alarms(gw)
    assert [a["ev"] for a in raised] == ["raised"]
    gw.handle_down([Incoming(district.down("s1", district.DOWN_CMD),
                             cbor2.dumps({"dev": "d1", "id": 7, "op": "birth", "args": {}}), False, NOW + 1)])
    gw.tick(NOW + 2, MONO + 2)
    gw.tick(NOW + 86400 + 3, MONO + 3)  # a day on: nothing is due yet, on the clock that was not set
    assert len(alarms(gw)) == 1
    assert gw.conn.execute("SELECT body FROM outbox WHERE kind = ?", (district.UP_ACK,)).fetchall() == []
    gw.tick(NOW + 86400 - 3600 + 4, MONO + 4)  # and an hour back
    gw.tick(NOW + 86400 - 3600 + 12, MONO + 12)  # the re-send falls due 10 s after the raise
    assert [a["resend"] for a in alarms(gw)] == [0, 1]
    gw.tick(NOW + 86400 - 3600 + 32, MONO + 32)  # and the command's 30 s run out
    acks = [cbor2.loads(b) for (b,) in gw.conn.execute("SELECT body FROM outbox WHERE kind = ?",
                                                         (district.UP_ACK,))]
    assert [(a["id"], a["ok"]) for a in acks] == [(7, False)]


def test_a_gap_waits_its_grace_across_a_step(gw: Gateway) -> None:
    """A hole in a device's numbers is reported once it has stayed open for gap_grace_s (300 s by default),
    not at the first tick after the clock was set forward."""
    gw.handle_site([reading("d1", 1, 0.1, NOW), reading("d1", 3, 0.1, NOW)])
    gw.tick(NOW + 1, MONO + 1)
    gw.tick(NOW + 7200 + 2, MONO + 2)

    def gaps() -> list[tuple[int, float]]:
        return [(r["first"], r["since"]) for r in (cbor2.loads(b) for (b,) in gw.conn.execute(
            "SELECT body FROM outbox WHERE kind = ?", (district.DQ,))) if r.get("kind") == "gap"]

    assert gaps() == []
    gw.tick(NOW + 7200 + 301, MONO + 301)
    assert gaps() == [(2, NOW + 7200)]  # seen when it was, on the clock as now set


def test_the_watch_names_a_step_and_ignores_drift() -> None:
    watch = ClockWatch()
    looks = [(0.0, 0.0), (1.0005, 1.0), (3602.0005, 2.0), (3603.0005 - STEP_S - 1, 3.0),
             (3604.0005 - STEP_S - 1 + STEP_S / 2, 4.0)]
    steps = [watch.step(NOW + wall, MONO + mono) for wall, mono in looks]
    # the first look has nothing to compare with; NTP's slewing (half a millisecond a second at most) is no step
    assert steps == [0.0, 0.0, pytest.approx(3600), pytest.approx(-STEP_S - 1), 0.0]
    assert watch.steps == 2


def test_what_arrives_between_a_step_and_the_next_tick_keeps_its_time(gw: Gateway) -> None:
    """The ingest stamps each batch as it arrives; the tick alone looked for a step, up to a second later, and
    then moved what had arrived meanwhile, stamped on the clock as set, with the spans of before: set back an
    hour, a device heard half a second before the tick looked silent for an hour, a stale alarm at once. A
    batch's stamp now looks for the step first; the daemon's links stamp their batches with it."""
    assert gw.site.clock == gw.down.clock == gw.ota_link.clock == gw.stamp
    gw.handle_site([reading("d1", 1, 0.1, NOW)])
    gw.tick(NOW + 1, MONO + 1)
    at = gw.stamp(NOW - 3600 + 1.5, MONO + 1.5)  # set back an hour, and a reading arrives before the next tick
    gw.handle_site([reading("d1", 2, 0.1, at)])
    gw.tick(NOW - 3600 + 2, MONO + 2)
    assert stale(gw) == [] and gw.snapshot().clock_steps == 1
    gw.tick(at + GAS_YELLOW_S - 5, MONO + 1.5 + GAS_YELLOW_S - 5)
    assert stale(gw) == []
    gw.tick(at + GAS_YELLOW_S + 1, MONO + 1.5 + GAS_YELLOW_S + 1)
    assert stale(gw) == [("d1", "raised")]
