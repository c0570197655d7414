"""Sequence accounting: out-of-order arrival, duplicates, replays, gaps after grace, persistence."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sequence import MAX_HOLES, SequenceTracker, Verdict


def tracker(window: int = 1000, grace: float = 10.0) -> SequenceTracker:
    return SequenceTracker(sqlite3.connect(":memory:"), window, grace)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200))
def test_each_number_is_new_exactly_once_in_any_order(seqs: list[int]) -> None:
    t = tracker()
    new = [s for s in seqs if t.check("d1", s, 0.0) is Verdict.NEW]
    assert sorted(new) == sorted(set(seqs))
    dups = len(seqs) - len(set(seqs))
    assert t.stats("d1")[0] == dups
    # every number between the lowest and highest seen that never came is exactly one reported gap number
    missing = set(range(min(seqs), max(seqs) + 1)) - set(seqs)
    reported = {n for g in t.due(100.0) if g.kind == "gap" for n in range(g.first, g.last + 1)}
    assert reported == missing


def test_gap_waits_for_grace_then_reports_and_late_arrival_is_recovered() -> None:
    t = tracker(grace=10.0)
    for s in (1, 2, 5):  # 3 and 4 missing, as when an alarm pack jumps the backlog
        assert t.check("d1", s, 0.0) is Verdict.NEW
    assert t.due(5.0) == []
    assert t.check("d1", 3, 6.0) is Verdict.NEW  # the backlog fills part of the hole within grace
    gaps = t.due(10.0)
    assert [(g.first, g.last, g.kind) for g in gaps] == [(4, 4, "gap")]
    assert t.due(20.0) == []  # reported once
    assert t.check("d1", 4, 30.0) is Verdict.NEW  # late after all: accepted, and reported as recovered
    assert [(g.first, g.last, g.kind) for g in t.due(31.0)] == [(4, 4, "recovered")]
    assert t.check("d1", 4, 32.0) is Verdict.DUPLICATE


def test_below_window_floor_is_replay() -> None:
    t = tracker(window=100)
    assert t.check("d1", 1000, 0.0) is Verdict.NEW
    assert t.check("d1", 950, 0.0) is Verdict.NEW  # backlog inside the window
    assert t.check("d1", 900, 0.0) is Verdict.REPLAY
    assert t.check("d1", 2 ** 64 - 1, 0.0) is Verdict.NEW  # 64-bit numbers stay exact
    assert t.check("d1", 1001, 0.0) is Verdict.REPLAY
    # the holes pushed below the floor are written off as gaps at once
    kinds = [(g.first, g.last) for g in t.due(0.0)]
    assert (951, 999) in kinds and (1001, 2 ** 64 - 101) in kinds


def test_holes_are_bounded() -> None:
    t = tracker(window=1 << 20)
    for s in range(0, 2 * (MAX_HOLES + 10), 2):
        t.check("d1", s, 0.0)
    assert t.open_holes("d1") <= MAX_HOLES
    assert t.check("d1", 1, 0.0) is Verdict.REPLAY  # the oldest hole was written off


def test_state_births_and_wills() -> None:
    t = tracker()
    assert t.check_state("d1", 3, 10, True) is Verdict.NEW
    assert t.check_state("d1", 3, 10, True) is Verdict.DUPLICATE  # retained birth delivered again
    assert t.check_state("d1", 2, 50, True) is Verdict.REPLAY  # a birth of an older boot
    assert t.check_state("d1", 2, 50, False) is Verdict.STALE  # the old boot's will, late
    assert t.check_state("d1", 3, 10, False) is Verdict.NEW  # this boot's will
    assert t.check_state("d1", 4, 12, True) is Verdict.NEW


def test_state_survives_flush_and_reload() -> None:
    conn = sqlite3.connect(":memory:")
    t = SequenceTracker(conn, 1000, 10.0)
    for s in (1, 2, 4):
        t.check("d1", s, 0.0)
    t.check_state("d1", 1, 5, True)
    t.flush()
    conn.commit()
    t.check("d1", 9, 0.0)  # not flushed: lost with the batch
    t.rollback()
    again = SequenceTracker(conn, 1000, 10.0)
    assert again.check("d1", 2, 1.0) is Verdict.DUPLICATE
    assert again.check("d1", 3, 1.0) is Verdict.NEW
    assert again.check("d1", 9, 1.0) is Verdict.NEW
    assert again.check_state("d1", 1, 5, True) is Verdict.DUPLICATE


def locked_out(window: int = 4) -> SequenceTracker:
    """Device d1 of boot 1 at numbers 100..104, then one authentic but bogus number (a corrupted counter)."""
    t = tracker(window=window)
    t.check_state("d1", 1, 100, True)
    for s in range(100, 105):
        assert t.check("d1", s, 0.0, 1) is Verdict.NEW
    assert t.check("d1", 2 ** 64 - 1, 0.0, 1) is Verdict.NEW  # believed: it carries the device's own MAC
    assert t.check("d1", 105, 0.0, 1) is Verdict.REPLAY  # the device's next number is locked out
    return t


def test_a_newer_boot_birth_resets_a_window_locked_by_a_bogus_number() -> None:
    t = locked_out()
    assert t.check_state("d1", 1, 100, True) is Verdict.DUPLICATE  # the old birth changes nothing
    assert t.check("d1", 106, 0.0, 1) is Verdict.REPLAY  # nor does more of the same boot
    assert t.check_state("d1", 2, 107, True) is Verdict.NEW  # reboot: the counter says 107, not 2^64
    assert t.check("d1", 107, 1.0, 2) is Verdict.NEW
    assert t.check("d1", 106, 1.0, 1) is Verdict.NEW  # the old boot's backlog, inside the new window
    assert t.check("d1", 102, 1.0, 1) is Verdict.REPLAY  # below the new window: still a replay
    assert t.check("d1", 107, 1.0, 2) is Verdict.DUPLICATE
    assert t.check("d1", 2 ** 64 - 1, 1.0, 1) is Verdict.REPLAY  # the bogus message again: boot 1 stood below 107
    assert t.check("d1", 108, 1.0, 2) is Verdict.NEW
    assert t.check_state("d1", 3, 109, True) is Verdict.NEW
    assert t.check("d1", 109, 2.0, 3) is Verdict.NEW


def test_a_newer_boot_data_message_resets_a_locked_window_when_its_birth_is_lost() -> None:
    t = locked_out()
    assert t.check("d1", 107, 1.0, 2) is Verdict.NEW
    assert t.check("d1", 108, 1.0, 2) is Verdict.NEW
    assert t.check("d1", 100, 1.0, 1) is Verdict.REPLAY


def test_a_new_boot_keeps_a_sane_window() -> None:
    t = tracker(window=1000)
    for s in (1, 2, 4):
        assert t.check("d1", s, 0.0, 1) is Verdict.NEW
    assert t.check_state("d1", 2, 5, True) is Verdict.NEW
    assert t.check("d1", 6, 0.0, 2) is Verdict.NEW
    assert t.check("d1", 2, 0.0, 1) is Verdict.DUPLICATE  # nothing was forgotten
    assert t.check("d1", 3, 0.0, 1) is Verdict.NEW  # and the hole is still known


def test_numbers_past_2_63_survive_the_store() -> None:
    conn = sqlite3.connect(":memory:")
    t = SequenceTracker(conn, 1000, 10.0)
    top = 2 ** 64 - 1
    for s in (top - 3, top - 1, top):
        assert t.check("d1", s, 0.0, 1) is Verdict.NEW
    t.flush()
    conn.commit()
    again = SequenceTracker(conn, 1000, 10.0)
    assert again.check("d1", top, 1.0, 1) is Verdict.DUPLICATE
    assert again.check("d1", top - 2, 1.0, 1) is Verdict.NEW
    assert again.check("d1", top - 1000, 1.0, 1) is Verdict.REPLAY


def test_state_stored_before_boots_were_tracked_loads_and_keeps_its_floor() -> None:
    conn = sqlite3.connect(":memory:")
    SequenceTracker(conn)
    old = "[90, 91, 100, [], [3, 101, true], 3, 0, 0, 0]"  # the nine fields of the earlier format
    conn.execute("INSERT INTO seq_state (dev, state) VALUES ('d1', ?)", (old,))
    conn.execute("INSERT INTO seq_state (dev, state) VALUES ('d2', ?)", (old[:-1] + ", 3]",))  # before restarts
    t = SequenceTracker(conn, 10, 10.0)
    for dev in ("d1", "d2"):
        assert t.check(dev, 90, 0.0, 3) is Verdict.REPLAY
        assert t.check(dev, 95, 0.0, 3) is Verdict.DUPLICATE
        assert t.check(dev, 101, 0.0, 3) is Verdict.NEW


def test_due_finds_a_new_hole_of_a_settled_device_and_holes_loaded_from_the_store() -> None:
    """due() looks only at devices that may hold an unreported hole (not at every device each second): a
    device whose holes were all reported is looked at again once a new one opens, and after a restart the
    open holes read from the store are looked at too, as are rolled-back ones."""
    conn = sqlite3.connect(":memory:")
    t = SequenceTracker(conn, 1000, 10.0)
    for s in (1, 3):
        t.check("d1", s, 0.0)
    assert [(g.first, g.kind) for g in t.due(10.0)] == [(2, "gap")]
    assert t.due(50.0) == []
    t.check("d1", 6, 60.0)  # a new hole, 4-5
    t.check("d2", 1, 60.0)
    t.check("d2", 0, 60.0)
    t.check("d2", 4, 61.0)  # 2-3
    t.flush()
    conn.commit()
    again = SequenceTracker(conn, 1000, 10.0)
    assert again.due(65.0) == []
    assert sorted((g.dev, g.first, g.last) for g in again.due(71.0)) == [("d1", 4, 5), ("d2", 2, 3)]
    again.flush()
    conn.commit()
    again.check("d3", 1, 80.0)
    again.check("d3", 5, 80.0)
    again.rollback()  # d3 was never flushed: it is gone, and d1's and d2's holes stay reported
    assert again.due(200.0) == []


def test_devices_without_holes_share_nothing_with_those_that_have_some() -> None:
    """A device with no hole keeps the one shared empty list (memory at 50,000 devices); the first hole above
    or below its window, and a restart of the window, give it a list of its own."""
    t = tracker()
    for dev in ("d1", "d2", "d3"):
        t.check(dev, 10, 0.0)
    t.check("d1", 14, 0.0)  # 11-13 above
    t.check("d2", 9, 0.0)  # next below: no hole
    t.check("d3", 7, 0.0)  # 8-9 below
    assert [t.open_holes(d) for d in ("d1", "d2", "d3")] == [3, 0, 2]
    t.check("d2", 12, 0.0)
    assert [t.open_holes(d) for d in ("d1", "d2", "d3")] == [3, 1, 2]
    assert t.check_state("d1", 2, 5, True) is Verdict.NEW  # a newer boot below the highest: the window restarts
    assert [t.open_holes(d) for d in ("d1", "d2", "d3")] == [0, 1, 2]
    t.check("d1", 3, 0.0, 2)
    t.check("d1", 6, 0.0, 2)
    assert [t.open_holes(d) for d in ("d1", "d2", "d3")] == [2, 1, 2]


def test_a_rolled_back_batch_takes_only_its_own_gap_reports() -> None:
    """Reports wait for the tick's `due()`; a batch that fails after others were committed must not take their
    reports with it: the holes they report are gone from the store, so nothing would report them again."""
    conn = sqlite3.connect(":memory:")
    t = SequenceTracker(conn, window=10, grace_s=10.0)
    for s in (1, 3):
        t.check("d1", s, 0.0)
    t.flush()
    conn.commit()
    assert [(g.first, g.kind) for g in t.due(11.0)] == [(2, "gap")]
    t.check("d1", 2, 12.0)  # found after all: a recovery
    for s in (20, 25):  # the floor passes 11..19 and writes off its hole at once, as a gap
        t.check("d2", s, 12.0)
    t.check("d2", 40, 12.0)
    t.flush()
    conn.commit()
    t.check("d3", 1, 13.0)
    t.check("d3", 5, 13.0)
    t.check("d3", 30, 13.0)  # this batch's own write-off (2..4, 6..19): it fails
    t.rollback()
    conn.rollback()
    assert sorted((g.dev, g.first, g.last, g.kind) for g in t.due(14.0)) == [
        ("d1", 2, 2, "recovered"), ("d2", 21, 24, "gap"), ("d2", 26, 30, "gap")]


def wiped(window: int = 1000) -> SequenceTracker:
    """Device d1 of boot 1 at numbers 0..9, then wiped and reflashed: boot 2 counts from 0 again."""
    t = tracker(window=window)
    t.check_state("d1", 1, 0, True)
    for s in range(10):
        assert t.check("d1", s, 0.0, 1) is Verdict.NEW
    return t


def test_after_a_restart_an_older_boots_number_at_or_above_the_new_start_is_a_replay() -> None:
    """A recording of the old count (published again, or delivered late) must not take the new count's numbers:
    admitted, its readings were stored as new and the node's own message of that number became a duplicate,
    confirmed to the node, which forgot a reading the gateway never stored."""
    t = wiped()
    assert t.check_state("d1", 2, 0, True) is Verdict.NEW  # the wiped node's birth: its counter says 0
    assert t.check("d1", 3, 1.0, 1) is Verdict.REPLAY  # boot 1's 3, recorded
    assert t.check("d1", 3, 1.0, 2) is Verdict.NEW  # the node's own 3
    assert t.check("d1", 9, 1.0, 1) is Verdict.REPLAY
    assert t.stats("d1")[:2] == (0, 2)


def test_a_data_restart_refuses_the_older_boots_recordings_and_births_too() -> None:
    t = wiped()
    assert t.check("d1", 0, 1.0, 2) is Verdict.NEW  # the birth was lost: boot 2's first message restarts
    assert t.check("d1", 5, 1.0, 1) is Verdict.REPLAY
    assert t.check("d1", 5, 1.0, 2) is Verdict.NEW
    assert t.check_state("d1", 1, 10, True) is Verdict.REPLAY  # boot 1's birth at a reconnect, recorded
    assert t.check_state("d1", 1, 10, False) is Verdict.STALE  # its will: the device is not dead
    assert t.check_state("d1", 2, 6, True) is Verdict.NEW  # boot 2's own birth, late


def test_restarts_keep_each_older_boots_limit() -> None:
    """A wiped node (boot 2 from 0) whose counter later sent a bogus number (boot 3 restarts at 10): boot 2's
    backlog below 10 is its own, but boot 1's numbers are all recordings, as the first restart said."""
    t = wiped(window=100)
    assert t.check_state("d1", 2, 0, True) is Verdict.NEW
    for s in range(8):
        assert t.check("d1", s, 1.0, 2) is Verdict.NEW
    assert t.check("d1", 2 ** 64 - 1, 1.0, 2) is Verdict.NEW
    assert t.check("d1", 8, 1.0, 2) is Verdict.REPLAY  # locked out: held on the node
    assert t.check_state("d1", 3, 10, True) is Verdict.NEW
    assert t.check("d1", 8, 2.0, 2) is Verdict.NEW  # boot 2's backlog
    assert t.check("d1", 9, 2.0, 1) is Verdict.REPLAY  # boot 1's, recorded
    assert t.check("d1", 2 ** 64 - 1, 2.0, 2) is Verdict.REPLAY  # the bogus number again
    assert t.check("d1", 10, 2.0, 3) is Verdict.NEW


def test_the_restarts_survive_flush_and_reload() -> None:
    conn = sqlite3.connect(":memory:")
    t = SequenceTracker(conn, 1000, 10.0)
    for s in range(10):
        t.check("d1", s, 0.0, 1)
    t.check_state("d1", 2, 0, True)
    t.flush()
    conn.commit()
    again = SequenceTracker(conn, 1000, 10.0)
    assert again.check("d1", 4, 1.0, 1) is Verdict.REPLAY
    assert again.check("d1", 4, 1.0, 2) is Verdict.NEW
