"""The checks on one message, without brokers: topics, clocks, quarantine bounds and log folding."""

from __future__ import annotations

import logging
import math
import sqlite3
from pathlib import Path

import cbor2
import pytest

from gateway import district_wire
from gateway.admission import Checker
from gateway.daemon import Gateway
from gateway.device_list import DeviceConfig, DeviceList
from gateway.ingest import Incoming
from gateway.quarantine import Quarantine
from gateway.registry import Registry
from gateway.sequence import SequenceTracker
from gateway.site_config import load
from protocol import district, message, senml, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def checker(conn: sqlite3.Connection | None = None) -> Checker:
    conn = conn or sqlite3.connect(":memory:")
    registry = Registry(conn, DeviceList([DeviceConfig("d1", "gas", KEY, None)]))
    return Checker("s1", registry, SequenceTracker(conn), Quarantine(conn), clock_future_s=60, clock_past_s=3600)


def data(seq: int, t: float, clk: int = message.CLK_EPOCH, boot: int = 1) -> bytes:
    pack = senml.pack([senml.record("ch4", 1.5, "%LEL", t)], bn="d1:")
    encoded: bytes = message.encode(message.data("d1", boot, seq, pack, clk), KEY)
    return encoded


TOPIC = topics.device("s1", "d1", topics.DATA)


@pytest.mark.parametrize("t,clock,expected", [
    (NOW - 10, "ok", NOW - 10),
    (-30, "ok", NOW - 30),  # SenML: below 2**28 is relative to now
    (NOW + 3600, "future", NOW),
    (NOW - 7200, "past", NOW),
])
def test_epoch_clock(t: float, clock: str, expected: float) -> None:
    c = checker()
    checked = c.check(TOPIC, data(1, t), False, NOW)
    assert checked is not None
    (r,) = checked.readings
    assert (r.metric, r.name, r.clock, r.t, r.t_device) == ("ch4", "d1:ch4", clock, expected, t)


def test_boot_clock_needs_a_live_birth_of_the_same_boot() -> None:
    c = checker()
    checked = c.check(TOPIC, data(1, 50.0, message.CLK_BOOT), False, NOW)
    assert checked is not None and checked.readings[0].clock == "unknown" and checked.readings[0].t == NOW
    state = topics.device("s1", "d1", topics.STATE)
    retained = message.encode(message.birth("d1", 1, 2, "1", "gas", "po", 40.0, message.CLK_BOOT), KEY)
    assert c.check(state, retained, True, NOW) is not None
    c.registry.birth("d1", message.birth("d1", 1, 2, "1", "gas", "po", 40.0, message.CLK_BOOT), NOW, live=False)
    checked = c.check(TOPIC, data(2, 50.0, message.CLK_BOOT), False, NOW)
    assert checked is not None and checked.readings[0].clock == "unknown"  # a retained birth dates nothing
    c.registry.birth("d1", message.birth("d1", 1, 2, "1", "gas", "po", 40.0, message.CLK_BOOT), NOW, live=True)
    checked = c.check(TOPIC, data(3, 50.0, message.CLK_BOOT), False, NOW + 10)
    assert checked is not None and checked.readings[0].clock == "boot" and checked.readings[0].t == NOW + 10
    checked = c.check(TOPIC, data(4, 50.0, message.CLK_BOOT, boot=0), False, NOW + 10)  # older boot: unknown
    assert checked is not None and checked.readings[0].clock == "unknown"


@pytest.mark.parametrize("topic,reason", [
    ("lifeline/v1/s2/d1/data", "topic"),  # another site
    ("lifeline/v1/s1/d1/cmd", "topic"),  # not an uplink kind
    ("lifeline/v1/s1/D1/data", "topic"),  # not an id
    ("something/else", "topic"),
    ("lifeline/v1/s1/d7/data", "unknown-device"),
])
def test_topic_problems_are_quarantined(topic: str, reason: str) -> None:
    conn = sqlite3.connect(":memory:")
    c = checker(conn)
    assert c.check(topic, data(1, NOW), False, NOW) is None
    assert conn.execute("SELECT reason, topic FROM quarantine").fetchall() == [(reason, topic)]


def test_quarantine_is_bounded_and_logs_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    conn = sqlite3.connect(":memory:")
    q = Quarantine(conn, max_rows=100, log_interval_s=60)
    with caplog.at_level(logging.WARNING, "lifeline.gateway.quarantine"):
        for i in range(1000):
            q.put("bad-mac" if i % 2 else "malformed", "x", "t", b"\x00" * 10, now=1000.0 + i * 0.01)
        q.tick(1000.0 + 61)
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] < 100 + 64
    assert conn.execute("SELECT min(id) FROM quarantine").fetchone()[0] > 1000 - 100 - 64
    assert q.counts == {"bad-mac": 500, "malformed": 500}
    assert len(caplog.records) == 4  # first of each reason, then one folded line each after the interval
    folded = [r for r in caplog.records if getattr(r, "fields", {}).get("suppressed") == 499]
    assert len(folded) == 2


def test_a_payload_is_exactly_one_cbor_item() -> None:
    """Bytes after the body inside the MAC-protected payload (only a key holder can put them there) are refused
    like bytes after the envelope: one CBOR item exactly, or the message is malformed."""
    from protocol import auth, cbor

    conn = sqlite3.connect(":memory:")
    c = checker(conn)
    body = message.data("d1", 1, 1, senml.pack([senml.record("ch4", 1.5, "%LEL", NOW)], bn="d1:"))
    del body["dev"]
    assert c.check(TOPIC, auth.seal(KEY, b"d1", cbor.dumps(body) + b"\x00"), False, NOW) is None
    assert conn.execute("SELECT reason FROM quarantine").fetchall() == [("malformed",)]
    assert c.check(TOPIC, auth.seal(KEY, b"d1", cbor.dumps(body)), False, NOW) is not None


def test_a_reading_time_that_is_no_number_is_not_trusted(tmp_path: Path) -> None:
    """A time of NaN (CBOR carries one, and a pack's bt + t makes one of inf and -inf) failed both the future
    and the past check, so it was trusted as it was: the alarm engine refused it, which failed the message's
    whole batch (every message of it retried one at a time) and kept the message as an internal error, logged
    as a bug; its reading was lost. It is flagged "unknown" and judged at the arrival time, as an unknown boot
    clock is, and the outbox's budget pass (which puts each reading in the interval of its time) thins it."""
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gw = Gateway(load(tmp_path / "site.toml"))
    try:
        batch = [Incoming(TOPIC, data(seq, NOW + seq), False, NOW + seq) for seq in range(1, 40)]
        batch.append(Incoming(TOPIC, data(40, math.nan), False, NOW + 40))
        gw.handle_site(batch)
        [report] = [r for r in (cbor2.loads(b) for (b,) in gw.conn.execute(
            "SELECT body FROM outbox WHERE kind = ?", (district.DQ,))) if r.get("kind") == "clock"]
        assert report["seq"] == 40 and report["t"] == NOW + 40
        [flagged] = report["readings"]
        assert flagged["clock"] == "unknown" and math.isnan(flagged["t_device"])
        gw.outbox.budget_bytes = gw.outbox.bytes_used() // 2
        budget = gw.outbox.enforce_budget(now=NOW + 60)
        assert budget is not None and budget.thinned["d1"].msgs == 40
        assert gw.outbox.bytes_used() <= gw.outbox.budget_bytes
    finally:
        gw.outbox.close()
        gw.conn.close()


def test_a_reading_value_past_a_float_or_no_number_is_forwarded_and_judged_by_no_rule(tmp_path: Path) -> None:
    """CBOR carries integers of any size: a value or a position past a float's range (and a position of NaN)
    raised out of the ingest (`math.isfinite`, `float`, the alarm engine's check of a position), which failed
    the message's whole batch, every message of it redone alone, and kept the message as an internal error,
    logged as a bug; a time past a float's range did the same. Such a value is no number a rule can judge, as NaN
    is not, and such a time is as far off as an infinity, flagged and taken at arrival: the message goes upstream as
    sent, and the outbox's budget pass summarises it with the others (its mean raised on one, which ended the
    uplink's upkeep task for good: no budget pass ran again until a restart)."""
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gw = Gateway(load(tmp_path / "site.toml"))

    def sent(seq: int, *records: tuple[str, object]) -> Incoming:
        pack = senml.pack([senml.record(n, v, None, NOW + seq) for n, v in records], bn="d1:")
        return Incoming(TOPIC, message.encode(message.data("d1", 1, seq, pack), KEY), False, NOW + seq)

    try:
        batch = [sent(seq, ("ch4", 1.0)) for seq in range(1, 40)]
        batch += [sent(40, ("ch4", 10 ** 400)), sent(41, ("lat", math.nan), ("lon", 45.0), ("ch4", 1.0)),
                  sent(42, ("lat", 45.0), ("lon", -(2 ** 1100)), ("ch4", math.nan))]
        # a time past a float's range: as far off as an infinity, flagged and taken at arrival; a boot clock's
        # birth at such a time dates no boot
        batch += [Incoming(TOPIC, message.encode(message.data("d1", 1, seq, [{senml.N: "ch4", senml.V: 1.0, **t}]),
                                                 KEY), False, NOW + seq)
                  for seq, t in ((43, {senml.T: 10 ** 400}), (44, {senml.BT: -(10 ** 5000)}))]
        birth = message.birth("d1", 1, 0, "1.0", "gas", "power-on", 10 ** 400, clk=message.CLK_BOOT)
        batch.insert(0, Incoming(topics.device("s1", "d1", topics.STATE), message.encode(birth, KEY), False, NOW))
        gw.handle_site(batch)
        assert gw.batches_redone == 0 and gw.quarantine.counts == {}
        assert gw.checker.flagged == {"future": 1, "past": 1}
        assert gw.outbox.depth()["telemetry"] == 44
        gw.outbox.budget_bytes = gw.outbox.bytes_used() // 2
        budget = gw.outbox.enforce_budget(now=NOW + 60)
        assert budget is not None and budget.thinned["d1"].msgs == 44
        (body,) = [b for (b,) in gw.conn.execute("SELECT body FROM outbox WHERE thinned = 1")]
        [summary] = [doc for doc, _ in district_wire.stored_entries(body)]
        [ch4] = [s for s in summary["s"] if s["n"] == "ch4"]
        assert (ch4["count"], ch4["min"], ch4["max"], ch4["mean"]) == (44, 1.0, 1.0, 1.0)  # the numbers alone
    finally:
        gw.outbox.close()
        gw.conn.close()
