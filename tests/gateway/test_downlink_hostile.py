"""The district's downlink, a device's birth and ack, and a node's OTA request, each hostile until checked,
on an in-process gateway over its real store. What cannot be relayed or applied is refused upstream with its
reason, and the good message beside it still goes; nothing raises out of a batch. Before these checks every
downlink case raised: its batch, unacknowledged, came again and failed again for good."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cbor2
import pytest
from sitekit import break_births

from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.registry import MAX_WAKE_S
from gateway.site_config import load
from protocol import district, message, message_check, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    yield gateway
    gateway.conn.close()


def down(kind: str, body: Any) -> Incoming:
    return Incoming(district.down("s1", kind), cbor2.dumps(body), False, NOW)


def cmd(cmd_id: int, **args: Any) -> Incoming:
    return down(district.DOWN_CMD, {"dev": "d1", "id": cmd_id, "op": "birth", "args": args})


def birth(**extra: Any) -> Incoming:
    body = message.birth("d1", 1, 0, "0.1.0", "gas", "power-on", NOW, **extra)
    return Incoming(topics.device("s1", "d1", topics.STATE), message.encode(body, KEY), False, NOW)


def relayed(gateway: Gateway) -> list[dict[str, Any]]:
    out = []
    while not gateway.to_devices.empty():
        out.append(message_check.decode(gateway.to_devices.get_nowait().payload, lambda kid: KEY, topics.CMD))
    return out


def acks(gateway: Gateway) -> list[dict[str, Any]]:
    return [cbor2.loads(body) for (body,) in gateway.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY id", (district.UP_ACK,))]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("args", [{"x": nested(20)}, {"x": cbor2.CBORTag(1234, 5)}, {"x": cbor2.undefined},
                                  {"x": "a" * 5000}],
                         ids=["nested past the encoder", "a tag", "undefined", "oversize"])
def test_a_command_that_cannot_go_to_a_device_is_refused_and_the_next_relayed(gw: Gateway, args: Any) -> None:
    gw.handle_down([cmd(1, **args), cmd(2)])
    assert [c["id"] for c in relayed(gw)] == [2]
    assert [(a["id"], a["ok"]) for a in acks(gw)] == [(1, False)]
    assert gw.conn.execute("SELECT id FROM command_pending").fetchall() == [(2,)]


CH4 = {"direction": "above", "levels": {"red": 5}, "clear": {"red": 1}}
BAD_RULESETS = {
    "JSON nested past the parser": "[" * 100_000 + "]" * 100_000,
    "a level past a float": {"version": 2, "gas": {"ch4": {**CH4, "levels": {"red": 10**400}}}},
    "a lone surrogate unit (JSON text)": json.dumps({"version": 2, "gas": {"ch4": {**CH4, "unit": "\ud800"}}}),
    "a lone surrogate class (JSON text)": json.dumps({"version": 2, "\ud800": {}}),
    "a class of no device and no risk point": {"version": 2, "gsa": {"ch4": CH4}},
}


@pytest.mark.parametrize("case", list(BAD_RULESETS))
def test_a_rule_set_that_cannot_be_read_is_refused_and_the_command_beside_it_relayed(gw: Gateway, case: str) -> None:
    gw.handle_down([down(district.RULES, {"ruleset": BAD_RULESETS[case]}), cmd(2)])
    assert [c["id"] for c in relayed(gw)] == [2]
    [refusal] = [a for a in acks(gw) if a.get("re") == "rules"]
    assert refusal["ok"] is False and gw.alarms.ruleset.version == 1


@pytest.mark.parametrize("sleep", [float("inf"), float("nan"), 1e300, -5.0])
def test_a_sleep_out_of_range_in_a_birth_gives_a_command_a_deadline_that_ends(gw: Gateway, sleep: float) -> None:
    gw.handle_site([birth(sleep=sleep)])
    gw.handle_down([cmd(1)])
    [sent] = relayed(gw)
    assert NOW < sent["exp"] <= NOW + gw.commands.timeout_s + MAX_WAKE_S
    gw.tick(NOW + gw.commands.timeout_s + MAX_WAKE_S + 1)
    assert [(a["id"], a["ok"], a.get("error")) for a in acks(gw)] == [(1, False, "timeout")]


def test_a_birth_with_numbers_past_a_float_is_taken_without_them(gw: Gateway) -> None:
    gw.handle_site([birth(rssi=2**1100, batt=-(2**1100))])
    assert gw.quarantine.counts == {}
    health = gw.registry.health("d1")
    assert health.online and health.rssi is None and health.batt is None


def test_an_ack_id_past_63_bits_is_unmatched(gw: Gateway) -> None:
    ack = message.encode(message.ack("d1", 1, 2**63, True, "done"), KEY)
    gw.handle_site([Incoming(topics.device("s1", "d1", topics.ACK), ack, False, NOW)])
    assert gw.quarantine.counts == {} and acks(gw) == []


def test_a_downlink_message_that_meets_a_bug_is_kept_and_the_rest_of_its_batch_goes(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a site message is: its batch is redone one message at a time, and it is quarantined as internal."""
    real = gw.commands.command

    def broken(payload: bytes, now: float, retained: bool) -> Any:
        if cbor2.loads(payload)["id"] == 1:
            raise RuntimeError("a bug")
        return real(payload, now, retained)

    monkeypatch.setattr(gw.commands, "command", broken)
    gw.handle_down([cmd(1), cmd(2)])
    assert [c["id"] for c in relayed(gw)] == [2]
    assert gw.quarantine.counts == {"internal": 1}


def test_a_chunk_request_from_a_device_the_registry_does_not_list_is_refused(gw: Gateway, tmp_path: Path) -> None:
    release = tmp_path / "0.2.0"
    release.mkdir()
    manifest = json.dumps({"version": "0.2.0", "profiles": ["gas"]}).encode()
    (release / "manifest.json").write_bytes(manifest)
    (release / "manifest.sig").write_bytes(bytes(64))
    (release / "release.bin").write_bytes(manifest + b"x" * 4000)
    gw.releases.add_dir(release)
    request = b"0.2.0 0 1024"
    gw.handle_ota([Incoming(topics.device("s1", "ghost", topics.OTA_REQ), request, False, NOW)])
    assert gw.chunks.empty() and gw.releases.refused == {"unknown device": 1} and "ghost" not in gw.ota.nodes
    gw.handle_ota([Incoming(topics.device("s1", "d1", topics.OTA_REQ), request, False, NOW)])
    assert gw.chunks.qsize() == 1


def test_a_retained_command_is_refused_and_the_next_relayed(gw: Gateway) -> None:
    """The broker delivers a retained command again at every subscribe, so at each reconnect of the gateway's
    downlink: relayed as a fresh command each time, a retained "reboot" rebooted the device every time. The
    node refuses retained commands for the same reason; the gateway relays what it gets unretained."""
    again = cmd(1)
    gw.handle_down([Incoming(again.topic, again.payload, True, NOW), cmd(2)])
    assert [c["id"] for c in relayed(gw)] == [2]
    [refusal] = acks(gw)
    assert (refusal["id"], refusal["ok"]) == (1, False) and refusal["error"].startswith("retained")


def test_messages_that_meet_a_bug_log_its_traceback_once_per_interval(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """docs/gateway.md: an `internal` reject is logged like every reason, once per interval, that line with the
    traceback. Each such message logged two tracebacks of its own (its batch's and its own), and the interval
    line had none: a device that kept sending one flooded the journal."""
    break_births(monkeypatch, gw.registry)
    for boot in range(1, 21):
        body = message.birth("d1", boot, 0, "0.1.0", "gas", "power-on", NOW, ip="poison")
        state = topics.device("s1", "d1", topics.STATE)
        gw.handle_site([Incoming(state, message.encode(body, KEY), False, NOW + boot)])
    assert gw.quarantine.counts == {"internal": 20}
    traces = [r for r in caplog.records if r.exc_info or "Traceback" in str(getattr(r, "fields", {}).get("exc", ""))]
    assert len(traces) == 1 and traces[0].getMessage() == "quarantined", [r.getMessage() for r in traces]
    assert len(caplog.records) <= 3, [r.getMessage() for r in caplog.records]


def test_district_rules_that_leave_a_listed_class_without_rules_are_warned_of(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """A set from the district replaces the whole set: one of water rules alone, sent for a gas site, left every
    gas device unable to raise an alarm, said only as rules-applied; start and SIGHUP name such classes."""
    water = {"pressure": {"direction": "below", "levels": {"red": 50}, "clear": {"red": 60}}}
    with caplog.at_level(logging.INFO):
        gw.handle_down([down(district.RULES, {"ruleset": {"version": 2, "water": water}})])
    assert gw.alarms.ruleset.version == 2
    warned = [r for r in caplog.records if r.getMessage() == "devices-without-rules"]
    assert len(warned) == 1 and getattr(warned[0], "fields", {})["classes"] == "gas:1"


def test_an_alarm_ack_behind_the_alarm_logs_the_step_the_engine_took(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """An ack naming an id twice is taken at its higher step, but the log said the last one listed: an ack of
    steps 2 and 1 of a red at step 3 read behind=1, sending whoever traced it to the district's older ack."""
    for i, value in enumerate([30, 30, 60, 60, 18, 18, 60, 60]):  # orange 0, red 1, yellow 2, red 3
        rose = gw.alarms.observe("d1", "gas", "ch4", float(value), NOW + i, NOW + i)
    [(alarm_id, step)] = [(t.alarm_id, t.step) for t in rose]
    assert step == 3
    with caplog.at_level(logging.INFO):
        gw.handle_down([down(district.ALARM_ACK, {"ids": [alarm_id, alarm_id], "steps": [2, 1]})])
    [logged] = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "alarm-ack"]
    assert logged == {"id": alarm_id, "known": True, "behind": 2}
