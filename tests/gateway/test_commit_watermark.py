"""Commit confirmations: the ranges of committed sequence numbers a device is told about, kept per device as
one flat list (memory at 50,000 devices) and stored as JSON [first, last] pairs."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import admission
from gateway.commit_watermark import Confirmations, done_body
from gateway.daemon import Gateway
from gateway.ingest import Incoming
from gateway.mqtt_link import LinkError
from gateway.site_config import load
from protocol import message, senml, topics


def reference(ranges: list[list[int]], seq: int, untold: set[int]) -> None:
    """The list-of-pairs form the flat list replaced: the behaviour to keep. `untold`: the numbers committed out
    of order since the last confirmation built, and the highest range's last when one opened above it."""
    if ranges and ranges[-1][1] == seq - 1:
        ranges[-1][1] = seq
        return
    i = bisect.bisect_right(ranges, seq, key=lambda r: r[0])
    if i and ranges[i - 1][1] >= seq:
        return
    if i and ranges[i - 1][1] == seq - 1:
        ranges[i - 1][1] = seq
        i -= 1
    else:
        if ranges and i == len(ranges):
            untold.add(ranges[-1][1])
        ranges.insert(i, [seq, seq])
    if i + 1 < len(ranges) and ranges[i + 1][0] == ranges[i][1] + 1:
        ranges[i][1] = ranges.pop(i + 1)[1]
    untold.add(seq)
    if len(ranges) > topics.MAX_DONE_RANGES:  # the lowest told of but the new one and the highest, else the lowest
        told = [k for k, (a, b) in enumerate(ranges[:-1]) if k != i and not any(a <= n <= b for n in untold)]
        del ranges[told[0] if told else (1 if i == 0 else 0)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 120), min_size=1, max_size=150), st.integers(1, 149), st.sets(st.integers(0, 149)))
def test_ranges_are_those_of_the_pairs_form_in_any_order(seqs: list[int], cut: int, built: set[int]) -> None:
    conn = sqlite3.connect(":memory:")
    c = Confirmations(conn, "s1")
    model: list[list[int]] = []
    untold: set[int] = set()
    for k, seq in enumerate(seqs):
        c.committed("d1", seq)
        reference(model, seq, untold)
        if k in built:  # a confirmation built: the device is told of every range
            assert c.body("d1") == done_body([(a, b) for a, b in model])
            untold.clear()
        if k == cut:  # a commit halfway, and the state read back as after a restart (which takes all as told)
            c.flush()
            conn.commit()
            c = Confirmations(conn, "s1")
            untold.clear()
    c.flush()
    (text,) = conn.execute("SELECT ranges FROM done_ranges WHERE dev = 'd1'").fetchone()
    assert json.loads(text) == model
    c.heard("d1")  # confirmed again, as after a duplicate (needed when the last number was read back)
    c.committed_now()
    assert c.due() == ["d1"] and c.body("d1") == done_body([(a, b) for a, b in model])


def test_a_birth_below_the_committed_numbers_starts_the_ranges_over() -> None:
    c = Confirmations(sqlite3.connect(":memory:"), "s1")
    for seq in (5, 6, 9):
        c.committed("d1", seq)
    c.started_over("d1", 7)
    c.committed("d1", 7)
    c.committed_now()
    assert c.due() == ["d1"] and c.body("d1") == done_body([(7, 7)])


KEY = bytes(range(32))


def site_gateway(tmp_path: Path, ingest: str = "") -> Gateway:
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[ingest]\n{ingest}\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    return Gateway(load(tmp_path / "site.toml"))


def data(seq: int, boot: int, records: int = 1, key: bytes = KEY) -> Incoming:
    pack = senml.pack([senml.record("ch4", 1.5, "%LEL", 1_800_000_000.0)] * records, bn="d1:")
    return Incoming(topics.device("s1", "d1", topics.DATA), message.encode(message.data("d1", boot, seq, pack), key),
                    False, 1_800_000_000.0)


def confirmed(gw: Gateway) -> list[tuple[int, int]]:
    return topics.done_ranges(gw.confirmations.body("d1"))


def test_a_count_started_over_without_its_birth_is_confirmed_from_its_own_numbers(tmp_path: Path) -> None:
    """A device whose flash was wiped counts from 0 again in its next boot, and its birth was lost: its first
    message restarts the sequence window, and the confirmation must name only what the new count committed.
    It named 0-9 of the old count, so the device would have deleted its new 1-9 unsent."""
    gw = site_gateway(tmp_path)
    try:
        gw.handle_site([data(seq, boot=1) for seq in range(10)])
        assert confirmed(gw) == [(0, 9)]
        gw.handle_site([data(0, boot=2)])
        assert confirmed(gw) == [(0, 0)]
        gw.handle_site([data(1, boot=2)])
        assert confirmed(gw) == [(0, 1)]
    finally:
        gw.conn.close()


def test_a_message_the_gateway_failed_on_is_confirmed_once_it_is_kept(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A message that passed every check and then met a bug of the gateway is kept as `internal`, in the
    quarantine, by a commit of its own: its number is the device's (MAC, key id, a new number), so it is confirmed,
    or the node would send it again at every connect and resend and pin its queue behind it. One whose decoding
    itself failed has no number the gateway can trust: not confirmed."""
    gw = site_gateway(tmp_path)
    poison = data(5, boot=1)
    put = gw.outbox.put_telemetry

    def broken(dev: str, seq: int, *args: Any) -> None:
        if seq == 5:
            raise RuntimeError("a bug")
        put(dev, seq, *args)

    monkeypatch.setattr(gw.outbox, "put_telemetry", broken)
    undecodable = data(12, boot=1)
    decode = admission.decode

    def failing(kind: str, raw: bytes, key_for: Any) -> Any:
        if raw == undecodable.payload:
            raise RuntimeError("a bug in the decoding")
        return decode(kind, raw, key_for)

    monkeypatch.setattr(admission, "decode", failing)
    try:
        gw.handle_site([data(seq, boot=1) for seq in range(5)] + [poison] + [data(seq, boot=1) for seq in (6, 7)])
        assert gw.quarantine.counts == {"internal": 1} and gw.batches_redone == 1
        assert confirmed(gw) == [(0, 7)]
        gw.handle_site([undecodable, data(13, boot=1)])
        assert gw.quarantine.counts == {"internal": 2}
        assert confirmed(gw) == [(0, 7), (13, 13)]
        gw.handle_site([poison])  # the node sent it again (the confirmation lost): kept and confirmed again
        assert gw.quarantine.counts == {"internal": 3} and confirmed(gw) == [(0, 7), (13, 13)]
    finally:
        gw.conn.close()


def test_a_replay_a_full_disk_kept_out_of_the_quarantine_is_not_confirmed_by_the_next_refusal(tmp_path: Path) -> None:
    """When replays were confirmed (eb1ceb1), the Checker noted the number before the quarantine row went in. The
    disk filled at the row: the batch rolled back and stayed with the broker, but the number stayed noted, and the
    next message refused for anything (here a forgery, its MAC bad) confirmed it: the node forgot a record the
    gateway neither had nor kept. A replay is now never confirmed (test_refused_confirmed), and a rollback drops
    whatever the failed batch noted. The full disk is SQLite's own: the store may not grow past the pages it has."""
    gw = site_gateway(tmp_path, "seq_window = 16")
    try:
        gw.handle_site([data(seq, boot=1) for seq in range(30) if seq != 2])  # 2 stays on the node
        assert confirmed(gw) == [(0, 1), (3, 29)]
        gw.conn.execute(f"PRAGMA max_page_count = {gw.conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sqlite3.OperationalError, match="full"):  # 2 is below the floor: a replay, 4,069 bytes
            gw.handle_site([data(2, boot=1, records=149)])
        gw.conn.execute("PRAGMA max_page_count = 1000000")
        gw.handle_site([data(40, boot=1, key=bytes(32))])
        assert gw.quarantine.counts == {"bad-mac": 1}
        assert confirmed(gw) == [(0, 1), (3, 29)]
    finally:
        gw.conn.close()


class Node:
    """What a node keeps in flash (sent, not yet confirmed) against an in-process gateway: each batch it sends is
    handled and, if the node is listening, its confirmation read as the node reads it."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.held: set[int] = set()

    def send(self, seqs: list[int], listening: bool = True) -> None:
        self.held.update(seqs)
        self.gw.handle_site([data(seq, boot=1) for seq in seqs])
        body = self.gw.confirmations.body("d1")  # built, as the daemon builds it to publish after the commit
        if listening:
            ranges = topics.done_ranges(body)
            self.held = {n for n in self.held if not any(a <= n <= b for a, b in ranges)}


def test_a_backlog_drained_behind_many_alarm_packs_is_confirmed_as_it_goes(tmp_path: Path) -> None:
    """A node drains its flash backlog oldest first while each new alarm pack jumps it, a range of its own.
    Past 16 ranges the lowest was given up, which was the backlog's own: each backlog number went into it
    and out again at once, and none was ever confirmed. The node kept them all in flash, every confirmed
    record behind them piled up in its queue's index, until the queue was full."""
    gw = site_gateway(tmp_path)
    node = Node(gw)
    try:
        node.send(list(range(1, 6)))
        alarm = 1000
        for backlog in range(6, 60, 2):  # a batch: two of the backlog, then the newest alarm pack
            alarm += 2  # a routine reading between two alarm packs took the number between them
            node.send([backlog, backlog + 1, alarm])
            assert node.held == set()
        assert len(confirmed(gw)) == topics.MAX_DONE_RANGES
    finally:
        gw.conn.close()


def test_a_number_sent_again_is_confirmed_though_its_range_was_given_up(tmp_path: Path) -> None:
    """A node that missed the confirmations naming a range (its link dropping, say) hears later only the newest,
    and a range given up is in none: a number it sent again was a duplicate and its confirmation the same as
    before, so the node sent it at every connect and never forgot it. A duplicate is put back in the ranges."""
    gw = site_gateway(tmp_path)
    node = Node(gw)
    try:
        node.send([1, 2, 3], listening=False)
        for alarm in range(100, 100 + 2 * topics.MAX_DONE_RANGES, 2):
            node.send([alarm], listening=False)
        node.send([200])
        assert node.held == {1, 2, 3, 100}
        node.send(sorted(node.held))  # it connects again and re-sends what it holds
        assert node.held == set()
        assert gw.checker.dropped["duplicate"] == 4  # still duplicates: nothing goes upstream twice
    finally:
        gw.conn.close()


async def test_confirmations_go_out_a_window_at_a_time_each_with_the_newest_ranges() -> None:
    """Many devices due at once (a busy site) are confirmed several at a time, not each after the last PUBACK;
    a device committed again while waiting gets one confirmation, with what is committed when it goes."""
    c = Confirmations(sqlite3.connect(":memory:"), "s1")
    devs = [f"d{i:03}" for i in range(100)]
    for dev in devs:
        c.committed(dev, 1)
    c.committed_now()
    c.committed("d099", 2)  # a later batch, before d099's turn
    c.committed_now()
    out: dict[str, list[bytes]] = {}
    flying: list[int] = [0, 0]  # now, most
    pubacks = asyncio.Event()

    async def publish(topic: str, body: bytes, **kw: Any) -> None:
        assert kw == {"qos": 1, "retain": True}
        out.setdefault(topics.parse_device(topic)[1], []).append(body)
        flying[0] += 1
        flying[1] = max(flying)
        await pubacks.wait()
        flying[0] -= 1

    task = asyncio.create_task(c.run(publish, window=8))
    await asyncio.sleep(0.1)
    assert flying == [8, 8] and len(out) == 8  # eight out, the rest wait for a PUBACK
    pubacks.set()
    async with asyncio.timeout(5):
        while len(out) < 100:
            await asyncio.sleep(0.01)
    task.cancel()
    assert flying[1] == 8 and c.due() == [] and c.published == 100
    assert out["d099"] == [done_body([(1, 2)])] and out["d000"] == [done_body([(1, 1)])]


async def test_confirmations_that_cannot_go_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The site link down: every due device fails at once; one log line, not one per device."""
    c = Confirmations(sqlite3.connect(":memory:"), "s1")
    for i in range(100):
        c.committed(f"d{i:03}", 1)
    c.committed_now()

    async def publish(topic: str, body: bytes, **kw: Any) -> None:
        raise LinkError("site: not connected")

    with caplog.at_level(logging.WARNING, logger="lifeline.gateway.commit_watermark"):
        task = asyncio.create_task(c.run(publish))
        async with asyncio.timeout(5):
            while c.not_sent < 100:
                await asyncio.sleep(0.01)
        task.cancel()
    lines = [r for r in caplog.records if r.getMessage() == "confirmation-not-sent"]
    assert len(lines) == 1 and c.published == 0 and c.due() == []


def test_due_devices_go_in_the_order_their_batches_committed_each_once() -> None:
    conn = sqlite3.connect(":memory:")
    c = Confirmations(conn, "s1")
    for batch in (["d1"], ["d2", "d1"], ["d3"], ["d2"]):
        for dev in batch:
            c.committed(dev, 1)
        c.committed_now()
    assert c.due() == ["d1", "d2", "d3"] and c.due_count() == 3
