"""The disk budget against data-quality reports, which sit in the STATE lane the budget never thins or evicts:
a real gateway and store, the reports made by the ingest as in the field, the district away."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.daemon import Gateway
from gateway.district_wire import stored_entries
from gateway.ingest import Incoming
from gateway.outbox import MAX_RUNS, ROW_OVERHEAD, STATE, TELEMETRY, Outbox
from gateway.site_config import load
from gateway.store import open_store
from protocol import district, message, senml, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0
TOPIC = topics.device("s1", "d1", topics.DATA)


def data(seq: int, boot: int = 1, clk: int = message.CLK_BOOT) -> bytes:
    """By default a message on the boot clock (clk 1) of a box that rebooted without a real-time clock: with no
    live birth of that boot the gateway cannot place its times, flags them "unknown" and judges them at arrival."""
    t = 10.0 + seq if clk == message.CLK_BOOT else NOW + seq
    pack = senml.pack([senml.record("ch4", 1.5, "%LEL", t)], bn="d1:")
    encoded: bytes = message.encode(message.data("d1", boot, seq, pack, clk), KEY)
    return encoded


def site_gateway(tmp_path: Path, ingest: str = "") -> Gateway:
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[ingest]\n{ingest}\n[store]\npath = "{tmp_path / "gw.sqlite"}"\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    return Gateway(load(tmp_path / "site.toml"))


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    gw = site_gateway(tmp_path)
    yield gw
    gw.outbox.close()
    gw.conn.close()


def reports(conn: sqlite3.Connection, kind: str) -> list[tuple[int, dict[str, Any]]]:
    return [(rid, body) for rid, body in ((rid, cbor2.loads(b)) for rid, b in conn.execute(
        "SELECT id, body FROM outbox WHERE lane = ? AND kind = ? ORDER BY id", (STATE, district.DQ)))
        if kind in (body.get("kind"), body.get("ev"))]


def charged(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT total(length(body) + {ROW_OVERHEAD}) FROM outbox").fetchone()[0])


def test_clock_reports_of_a_device_are_one_waiting_report_and_the_outbox_keeps_its_budget(gateway: Any) -> None:
    """One clock report a flagged message (166 bytes charged each, more than the message's 109 in its row)
    stayed in the STATE lane for good while the budget evicted the very readings they were about: 3,000 messages
    during an outage left 3,000 reports, the outbox twelve times its budget. A device's waiting clock reports are
    now one, with the count and the first and last message; every reading is still raw, summarised or evicted."""
    gw = gateway
    gw.outbox.budget_bytes = 40_000
    for first in range(1, 3001, 100):  # the district away: nothing leaves; the budget pass runs after each batch
        gw.handle_site([Incoming(TOPIC, data(seq), False, NOW + seq) for seq in range(first, first + 100)])
        gw.outbox.enforce_budget(now=NOW + first + 100)
    [(_, clock)] = reports(gw.conn, "clock")
    assert (clock["seq"], clock["boot"], clock["t"], clock["msgs"]) == (1, 1, NOW + 1, 3000)
    assert clock["last"] == {"seq": 3000, "boot": 1, "clk": message.CLK_BOOT, "t": NOW + 3000}
    assert clock["flagged"] == {"unknown": 3000}
    assert gw.outbox.bytes_used() == charged(gw.conn) <= gw.outbox.budget_bytes
    held = sum(n for (n,) in gw.conn.execute("SELECT entries FROM outbox WHERE lane = ? AND thinned = 0",
                                             (TELEMETRY,)))
    assert held + gw.outbox.thinned_msgs + gw.outbox.evicted_msgs == 3000


def test_a_report_that_left_is_not_added_to(gateway: Any) -> None:
    """Only a report still waiting takes the next: one leased (on its way to the district) or rolled back with its
    batch is left as it is, so no count is sent twice or lost with a PUBACK."""
    gw = gateway
    gw.handle_site([Incoming(TOPIC, data(1), False, NOW + 1), Incoming(TOPIC, data(2), False, NOW + 2)])
    [leased] = gw.outbox.lease(STATE, 10)
    assert cbor2.loads(leased.body)["msgs"] == 2
    gw.handle_site([Incoming(TOPIC, data(3), False, NOW + 3)])
    gw.outbox.put_state(district.DQ, {"dev": "d1", "kind": "clock", "seq": 4, "boot": 1, "clk": 1, "t": NOW + 4,
                                      "readings": [{"n": "d1:ch4", "clock": "unknown", "t_device": 14.0}]})
    gw.outbox.flush()
    assert gw.outbox.lease(STATE, 10) == []  # the committed report, changed in the open batch, waits for it
    gw.conn.rollback()
    gw.outbox.rollback()
    gw.outbox.ack([leased.id])
    [(_, waiting)] = reports(gw.conn, "clock")
    assert waiting["seq"] == 3 and "msgs" not in waiting
    assert gw.outbox.bytes_used() == charged(gw.conn)


def test_the_budgets_own_reports_wait_as_one_that_still_accounts_for_every_message(tmp_path: Path) -> None:
    """Each budget pass put a report of its own in the STATE lane, where the budget never reaches: with the
    district away and a site's devices filling the outbox, a pass every batch or so left one report a pass, each
    a span or two per device, and the lane outgrew the budget it reported on. The waiting report now takes
    each pass's spans, and a run summarised and evicted since is in its evicted span alone; every message is still
    held raw, inside a summary held, or in an evicted span."""
    conn = open_store(tmp_path / "gw.sqlite")
    ob = Outbox(conn, 20_000)
    devs, batches, passes = [f"d{i}" for i in range(40)], 150, 0
    for seq in range(1, batches + 1):
        for dev in devs:
            ob.put_telemetry(dev, seq, 1, [{"n": f"{dev}:ch4", "u": "%LEL", "t": NOW + seq, "v": 1.5}], now=NOW + seq)
        ob.flush()
        conn.commit()
        report = ob.enforce_budget(now=NOW + seq)
        passes += bool(report and (report.thinned or report.evicted))
    [(_, budget)] = reports(conn, "outbox-budget")
    assert passes > 20 and budget["passes"] == passes
    assert ob.bytes_used() == charged(conn) <= ob.budget_bytes
    held: dict[str, set[int]] = {dev: set() for dev in devs}
    for (body,) in conn.execute("SELECT body FROM outbox WHERE lane = ?", (TELEMETRY,)):
        for entry, _ in stored_entries(body):
            held[entry["dev"]].update(range(entry.get("seq_lo", entry.get("seq")),
                                            entry.get("seq_hi", entry.get("seq")) + 1))
    for span in budget["evicted"]:
        if span["msgs"] == span["seq_hi"] - span["seq_lo"] + 1:
            held[span["dev"]].update(range(span["seq_lo"], span["seq_hi"] + 1))
    assert held == {dev: set(range(1, batches + 1)) for dev in devs}


def test_gap_reports_of_a_device_wait_as_one_that_keeps_every_gap_it_can(tmp_path: Path) -> None:
    """A device whose radio loses every other message: one gap report a lost message (123 bytes charged), kept
    in the STATE lane for good, so 4,000 messages left 2,000 reports, six times the budget, with every reading
    evicted. A device's waiting gap reports are now one: the first whole, the reports' count, the numbers
    missing (msgs), and the gaps as spans, joined across the smallest runs received past MAX_RUNS (msgs then says
    how many of the span's numbers are missing)."""
    gw = site_gateway(tmp_path, "gap_grace_s = 0")
    gw.outbox.budget_bytes = 40_000
    try:
        for first in range(1, 4001, 100):  # seq 1, 3, 5, ...: each even number a gap at the next tick
            gw.handle_site([Incoming(TOPIC, data(seq, clk=message.CLK_EPOCH), False, NOW + seq)
                            for seq in range(first, first + 100, 2)])
            gw.tick(NOW + first + 100)
            gw.outbox.enforce_budget(now=NOW + first + 100)
        [(_, gap)] = reports(gw.conn, "gap")
        assert (gap["first"], gap["last"], gap["reports"], gap["msgs"]) == (2, 2, 1999, 1999)
        assert len(gap["spans"]) == MAX_RUNS and sum(s["msgs"] for s in gap["spans"]) == 1999
        assert gap["spans"][0]["first"] == 2 and gap["spans"][-1]["last"] == 3998
        assert gw.outbox.bytes_used() == charged(gw.conn) <= gw.outbox.budget_bytes
    finally:
        gw.outbox.close()
        gw.conn.close()


def test_the_waiting_budget_report_of_a_device_with_holes_stays_bounded(tmp_path: Path) -> None:
    """The waiting budget report kept every span each pass had reported: a device that lost every other message
    gave every pass spans that meet no other pass's, and the one report grew with the messages (1,120 spans, 38 KB,
    after 8,000: past the 20 KB budget it reported on, every reading evicted). Its spans are joined past MAX_RUNS
    as a pass joins its own, and still count every message evicted."""
    conn = open_store(tmp_path / "gw.sqlite")
    ob = Outbox(conn, 20_000)
    for first in range(1, 16_001, 200):
        for seq in range(first, first + 200, 2):
            ob.put_telemetry("d1", seq, 1, [{"n": "d1:ch4", "u": "%LEL", "t": NOW + seq, "v": 1.5}], now=NOW + seq)
        ob.flush()
        conn.commit()
        ob.enforce_budget(now=NOW + first)
    [(_, budget)] = reports(conn, "outbox-budget")
    assert len(budget["evicted"]) <= MAX_RUNS and len(budget["thinned"]) <= MAX_RUNS
    assert sum(s["msgs"] for s in budget["evicted"]) == ob.evicted_msgs > 7000
    assert ob.bytes_used() == charged(conn) <= ob.budget_bytes
