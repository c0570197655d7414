"""A device taken off the site's list (decommissioned, moved to another site) by a reload or across a restart.
Its alarms are cleared with the cause `device-removed`, and its silence raises nothing. Before this, the
engine went on counting the silence of a device it would no longer take a message from: a stale alarm for it
three minutes on, at every start, and its open alarms re-sent until someone acknowledged them.

An in-process gateway over its real store; site.toml is rewritten as an operator would."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.site_config import load
from protocol import district, message, senml_build, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0
GAS_YELLOW_S = 3 * 60  # gateway/rulesets/gas.toml: interval_s 60, yellow at 3 intervals


def write_site(d: Path, devices: list[str]) -> Path:
    listed = "".join(f'[[devices]]\nid = "{dev}"\nclass = "gas"\nkey = "{KEY.hex()}"\n' for dev in devices)
    (d / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{d / "gw.sqlite"}"\n' + listed)
    return d / "site.toml"


def reading(dev: str, seq: int, ch4: float, at: float) -> Incoming:
    body = message.data(dev, 1, seq, senml_build.pack([senml_build.record("ch4", ch4, t=at)]))
    return Incoming(topics.device("s1", dev, topics.DATA), message.encode(body, KEY), False, at)


def alarms(gw: Gateway) -> list[dict[str, Any]]:
    return [cbor2.loads(body) for (body,) in gw.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY id", (district.ALARM,))]


def summary(gw: Gateway) -> list[tuple[str, str, str, str | None]]:
    return [(a["dev"], a["kind"], a["ev"], a.get("cause")) for a in alarms(gw)]


def test_a_device_taken_off_by_a_reload_has_its_alarms_cleared_and_no_stale_alarm(tmp_path: Path) -> None:
    gw = Gateway(load(write_site(tmp_path, ["d1", "d2"])))
    gw.handle_site([reading("d1", 1, 0.1, NOW), reading("d2", 1, 50.0, NOW), reading("d2", 2, 50.0, NOW + 1)])
    assert summary(gw) == [("d2", "level", "raised", None)]
    write_site(tmp_path, ["d1"])
    gw.reload()
    assert summary(gw)[1:] == [("d2", "level", "cleared", "device-removed")]
    assert gw.alarms.active() == []
    gw.tick(NOW + GAS_YELLOW_S + 5)
    assert summary(gw)[2:] == [("d1", "stale", "raised", "silence")]
    gw.conn.close()


def test_a_device_left_out_of_site_toml_across_a_restart_is_forgotten_at_start(tmp_path: Path) -> None:
    gw = Gateway(load(write_site(tmp_path, ["d1", "d2"])))
    gw.handle_site([reading("d1", 1, 0.1, NOW), reading("d2", 1, 50.0, NOW), reading("d2", 2, 50.0, NOW + 1)])
    gw.conn.close()
    gw = Gateway(load(write_site(tmp_path, ["d1"])))
    assert summary(gw)[1:] == [("d2", "level", "cleared", "device-removed")]
    gw.tick(NOW + GAS_YELLOW_S + 5)  # after a restart silence counts from the first tick: nothing yet
    gw.tick(NOW + 2 * GAS_YELLOW_S + 10)
    assert [(dev, ev) for dev, kind, ev, _ in summary(gw)[2:]] == [("d1", "raised")]
    gw.conn.close()


def test_the_journal_says_why_an_alarm_cleared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The alarm's log line had no cause: a device taken off the list (or a rule removed) logged
    `ev=cleared ... value=50.0`, which reads as the value 50 having cleared it, and a stale alarm raised by a
    will looked like one raised by silence. The district got the cause; the site's journal did not."""
    gw = Gateway(load(write_site(tmp_path, ["d1", "d2"])))
    gw.handle_site([reading("d2", 1, 50.0, NOW), reading("d2", 2, 50.0, NOW + 1)])
    write_site(tmp_path, ["d1"])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        gw.reload()
    cleared = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "alarm"]
    assert [(f["ev"], f.get("cause")) for f in cleared] == [("cleared", "device-removed")]
    gw.conn.close()
