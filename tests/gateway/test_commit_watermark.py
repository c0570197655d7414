"""Commit confirmations: the ranges of committed sequence numbers a device is told about, kept per device as
one flat list (memory at 50,000 devices) and stored as JSON [first, last] pairs."""

from __future__ import annotations

import bisect
import json
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commit_watermark import Confirmations, done_body
from protocol import topics


def reference(ranges: list[list[int]], seq: int) -> None:
    """The list-of-pairs form the flat list replaced, as it was: the behaviour to keep."""
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
        ranges.insert(i, [seq, seq])
    if i + 1 < len(ranges) and ranges[i + 1][0] == ranges[i][1] + 1:
        ranges[i][1] = ranges.pop(i + 1)[1]
    del ranges[:-topics.MAX_DONE_RANGES]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 120), min_size=1, max_size=150), st.integers(1, 149))
def test_ranges_are_those_of_the_pairs_form_in_any_order(seqs: list[int], cut: int) -> None:
    conn = sqlite3.connect(":memory:")
    c = Confirmations(conn, "s1")
    model: list[list[int]] = []
    for k, seq in enumerate(seqs):
        c.committed("d1", seq)
        reference(model, seq)
        if k == cut:  # a commit halfway, and the state read back as after a restart
            c.flush()
            conn.commit()
            c = Confirmations(conn, "s1")
    c.flush()
    (text,) = conn.execute("SELECT ranges FROM done_ranges WHERE dev = 'd1'").fetchone()
    assert json.loads(text) == model
    c.heard("d1")  # confirmed again, as after a duplicate (needed when the last number was read back)
    c.committed_now()
    assert c._due["d1"] == done_body([(a, b) for a, b in model])


def test_a_birth_below_the_committed_numbers_starts_the_ranges_over() -> None:
    c = Confirmations(sqlite3.connect(":memory:"), "s1")
    for seq in (5, 6, 9):
        c.committed("d1", seq)
    c.born("d1", 7)
    c.committed("d1", 7)
    c.committed_now()
    assert c._due["d1"] == done_body([(7, 7)])
