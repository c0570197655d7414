"""The quarantine's bounds: by bytes as well as by rows, so a flood of large rejects stays inside the site's
disk; the oldest rows go first, and every eviction is counted."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from sitekit import break_births

from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.quarantine import MAX_RAW, Quarantine
from gateway.site_config import load
from protocol import message, senml, topics


def kept_bytes(conn: sqlite3.Connection) -> int:
    total: int = conn.execute("SELECT coalesce(sum(length(raw)), 0) FROM quarantine").fetchone()[0]
    return total


def test_large_rejects_are_bounded_by_bytes_oldest_first() -> None:
    conn = sqlite3.connect(":memory:")
    q = Quarantine(conn, max_rows=10_000, max_bytes=1_000_000, log_interval_s=60)
    for i in range(100):  # 100 payloads of 64 KiB: 6.5 MB offered, at most 1 MB kept
        q.put("oversize", "x", "t", bytes([i]) * MAX_RAW, now=1000.0 + i)
        assert kept_bytes(conn) <= 1_000_000
    ids = [r[0] for r in conn.execute("SELECT id FROM quarantine ORDER BY id")]
    assert ids == list(range(101 - len(ids), 101))  # the newest, contiguous: the oldest went first
    assert len(ids) >= 1_000_000 * 0.8 // MAX_RAW  # not emptied either
    assert q.evicted["bytes"] == 100 - len(ids)
    assert q.counts["oversize"] == 100  # counted as rejects whether or not the row is still kept


def test_byte_bound_holds_across_a_restart() -> None:
    """The kept bytes are read back from the table, so a restarted daemon does not start from zero."""
    conn = sqlite3.connect(":memory:")
    q = Quarantine(conn, max_bytes=500_000)
    for i in range(6):
        q.put("malformed", "x", "t", b"\x01" * 60_000, now=1000.0 + i)
    q = Quarantine(conn, max_bytes=500_000)
    for i in range(6):
        q.put("malformed", "x", "t", b"\x02" * 60_000, now=2000.0 + i)
    assert kept_bytes(conn) <= 500_000
    assert q.evicted["bytes"] == 12 - conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]


def test_row_bound_still_holds_and_its_evictions_are_counted() -> None:
    conn = sqlite3.connect(":memory:")
    q = Quarantine(conn, max_rows=100, max_bytes=10_000_000)
    for i in range(1000):
        q.put("bad-mac", "x", "t", b"\x00" * 10, now=1000.0 + i)
    left = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert left < 100 + 64
    assert q.evicted["rows"] == 1000 - left and q.evicted["bytes"] == 0
    assert kept_bytes(conn) == 10 * left


def test_unexpected_exception_logs_its_traceback_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    conn = sqlite3.connect(":memory:")
    q = Quarantine(conn, log_interval_s=60)
    with caplog.at_level(logging.WARNING, "lifeline.gateway.quarantine"):
        for i in range(50):
            try:
                raise KeyError("boom")
            except KeyError as exc:
                q.put("internal", f"KeyError: {exc}", "t", b"\x00", now=1000.0 + i, exc=exc)
    traces = [r for r in caplog.records if "Traceback" in getattr(r, "fields", {}).get("exc", "")]
    assert len(caplog.records) == 1 and len(traces) == 1


def test_folded_rejects_are_logged_an_interval_on_after_the_clock_is_set_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """The interval is a span: with the clock set back an hour, the folded line comes an interval after the
    first, not an hour and an interval."""
    q = Quarantine(sqlite3.connect(":memory:"), log_interval_s=60)
    with caplog.at_level(logging.WARNING, "lifeline.gateway.quarantine"):
        q.put("malformed", "x", "t", b"\x00", now=1000.0)
        q.put("malformed", "x", "t", b"\x00", now=1001.0)
        q.clock_stepped(-3600.0)
        q.tick(1000.0 - 3600 + 61)
    assert [getattr(r, "fields", {}).get("suppressed") for r in caplog.records] == [0, 1]


async def test_the_gateway_keeps_its_quarantine_within_site_tomls_max_mb(tmp_path: Path) -> None:
    """[quarantine] max_mb reaches the daemon's quarantine, not only the parsed config."""
    text = (f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
            f'port = 1884\n[store]\npath = "{tmp_path / "gw.sqlite"}"\n[quarantine]\nmax_mb = 2\n')
    (tmp_path / "site.toml").write_text(text)
    gateway = Gateway(load(tmp_path / "site.toml"))
    try:
        assert gateway.quarantine.max_bytes == 2 * 1024 * 1024
    finally:
        gateway.conn.close()


def test_a_full_store_quarantines_no_message_and_its_batch_comes_again(tmp_path: Path) -> None:
    """A batch that failed was redone a message at a time and each message that failed alone was kept as
    "internal": on a full disk (stood in for by SQLite's max_page_count, which refuses a write as a full disk
    does, SQLITE_FULL) every message of it failed, and those whose small quarantine row still fitted in a free
    page were kept there and acknowledged with the batch: good readings never judged nor forwarded. A store
    that refuses writes is no message's fault: the batch goes unacknowledged, and the broker delivers it again."""
    key = bytes(range(32))
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{key.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))

    def data(seq: int) -> Incoming:
        pack = senml.pack([senml.record("ch4", 1.0, "%LEL", 1_800_000_000.0 + seq)], bn="d1:")
        return Incoming(topics.device("s1", "d1", topics.DATA), message.encode(message.data("d1", 1, seq, pack), key),
                        False, 1_800_000_000.0 + seq)

    try:
        gateway.handle_site([data(1)])
        full = gateway.conn.execute("PRAGMA page_count").fetchone()[0]
        gateway.conn.execute(f"PRAGMA max_page_count = {full}")
        batch = [data(seq) for seq in range(2, 45)]
        with pytest.raises(sqlite3.OperationalError, match="full"):
            gateway.handle_site(batch)
        assert gateway.quarantine.counts == {}
        gateway.conn.execute("PRAGMA max_page_count = 1000000")  # room again: the broker delivers the batch anew
        gateway.handle_site(batch)
        assert gateway.outbox.depth()["telemetry"] == 44
        assert gateway.conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    finally:
        gateway.outbox.close()
        gateway.conn.close()


def test_a_batch_redone_or_delivered_again_is_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counters behind the metrics and the quarantine's byte total moved with each message as it was
    handled, and a batch rolled back kept them: one redone a message at a time (a message meeting a bug), or
    one the broker delivers again (a full disk), counted its messages twice, rejects included, and the bytes
    the quarantine believed it held grew past what its table held, so it evicted rows it need not have."""
    key = bytes(range(32))
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{key.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    data_topic = topics.device("s1", "d1", topics.DATA)

    def data(seq: int, t: float = 1_800_000_000.0) -> Incoming:
        pack = senml.pack([senml.record("ch4", 1.0, "%LEL", t + seq)], bn="d1:")
        return Incoming(data_topic, message.encode(message.data("d1", 1, seq, pack), key), False, 1_800_000_000.0)

    def poison(boot: int) -> Incoming:
        body = message.birth("d1", boot, 0, "0.1.0", "gas", "power-on", 1_800_000_000.0, ip="poison")
        return Incoming(topics.device("s1", "d1", topics.STATE), message.encode(body, key), False, 1_800_000_000.0)

    break_births(monkeypatch, gateway.registry)
    garbage = Incoming(data_topic, b"\xff" * 1000, False, 1_800_000_000.0)
    try:
        gateway.handle_site([garbage, data(1), data(1), data(2, t=1_700_000_000.0), poison(2), data(3)])
        assert gateway.batches_redone == 1
        assert gateway.accepted == {"data": 3}
        assert gateway.checker.dropped == {"duplicate": 1} and gateway.checker.flagged == {"past": 1}
        assert gateway.quarantine.counts == {"malformed": 1, "internal": 1}
        assert gateway.quarantine.held_bytes == kept_bytes(gateway.conn)
        full = gateway.conn.execute("PRAGMA page_count").fetchone()[0]
        gateway.conn.execute(f"PRAGMA max_page_count = {full}")
        batch = [garbage] + [data(seq) for seq in range(4, 45)]
        with pytest.raises(sqlite3.OperationalError, match="full"):
            gateway.handle_site(batch)
        gateway.conn.execute("PRAGMA max_page_count = 1000000")  # room again: the broker delivers the batch anew
        gateway.handle_site(batch)
        assert gateway.accepted == {"data": 44} and gateway.quarantine.counts == {"malformed": 2, "internal": 1}
        assert gateway.quarantine.held_bytes == kept_bytes(gateway.conn)
        assert gateway.snapshot().accepted == {"data": 44}
    finally:
        gateway.outbox.close()
        gateway.conn.close()
