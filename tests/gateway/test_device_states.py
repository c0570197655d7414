"""Per-device state held in memory for the recently used devices only (gateway/device_states.py): the cache on a
real SQLite file, and each module that keeps its state in one giving the same answers whether a device stayed
in memory or fell out between commits."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_alarms import rules

from gateway.alarms import AlarmEngine
from gateway.commit_watermark import Confirmations
from gateway.device_list import DeviceList
from gateway.device_states import DeviceStates
from gateway.registry import Registry
from gateway.sequence import SequenceTracker
from gateway.store import open_store


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = open_store(tmp_path / "gw.sqlite")
    yield c
    c.close()


def counters(conn: sqlite3.Connection, capacity: int) -> DeviceStates[dict[str, int]]:
    return DeviceStates(conn, "counters", "state", json.loads, json.dumps, capacity)


def stored(conn: sqlite3.Connection, capacity: int, **n: int) -> DeviceStates[dict[str, int]]:
    """Counters with these devices written and committed (dev=n each)."""
    states = counters(conn, capacity)
    for dev, value in n.items():
        states.put(dev, {"n": value})
    states.flush()
    conn.commit()
    return states


def change(states: DeviceStates[dict[str, int]], dev: str, n: int) -> None:
    """Change a device's held state in place, as the modules do."""
    state = states.get(dev)
    assert state is not None
    state["n"] = n
    states.changed(dev)


def test_a_device_that_fell_out_is_read_back_as_it_was_written(conn: sqlite3.Connection) -> None:
    states = stored(conn, 2, a=97, b=98, c=99)
    assert states.held() == 2  # "a", used least recently, fell out once written
    assert states.reads == 0
    assert states.get("a") == {"n": 97}
    assert states.reads == 1
    assert states.get("unknown") is None


def test_a_change_in_place_is_written_at_the_flush_and_nothing_unwritten_falls_out(conn: sqlite3.Connection) -> None:
    states = stored(conn, 1, a=1)
    change(states, "a", 2)
    states.put("b", {"n": 1})  # "a" is beyond the capacity now, but not yet written
    states.flush()
    conn.commit()
    assert dict(conn.execute("SELECT dev, state FROM counters")) == {"a": '{"n": 2}', "b": '{"n": 1}'}
    assert states.get("a") == {"n": 2}


def test_forget_drops_what_a_rolled_back_transaction_held(conn: sqlite3.Connection) -> None:
    states = stored(conn, 10, a=1)
    change(states, "a", 5)
    states.put("b", {"n": 1})
    states.flush()
    conn.rollback()
    states.forget()
    assert states.get("a") == {"n": 1}
    assert states.get("b") is None


def test_items_walks_the_store_with_what_is_held_in_its_place(conn: sqlite3.Connection) -> None:
    states = stored(conn, 1, a=1, b=2)
    change(states, "b", 3)
    states.put("c", {"n": 4})  # not written yet
    assert dict(states.items()) == {"a": {"n": 1}, "b": {"n": 3}, "c": {"n": 4}}


def test_prefetch_reads_what_is_not_held_and_leaves_what_is(conn: sqlite3.Connection) -> None:
    states = stored(conn, 1, a=1, b=1, c=1)
    change(states, "c", 9)  # changed, not written yet: a prefetch must not put the stored state in its place
    assert states.held() == 1
    reads = states.reads
    states.prefetch(["a", "b", "c", "unknown"])
    assert states.reads == reads + 2
    assert states.held() == 3
    assert [states.get(dev) for dev in ("a", "b", "c", "unknown")] == [{"n": 1}, {"n": 1}, {"n": 9}, None]
    assert states.reads == reads + 2  # read once, by the prefetch


def test_a_peek_reads_without_holding(conn: sqlite3.Connection) -> None:
    states = stored(conn, 1, a=1, b=2)
    assert states.held() == 1
    assert states.peek("a") == {"n": 1} and states.peek("b") == {"n": 2} and states.peek("unknown") is None
    assert states.held() == 1  # what a reader asks for between two commits does not pile up


def _shape(conn: sqlite3.Connection, table: str) -> str:
    return str(conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])


def test_the_table_is_keyed_by_device_alone(conn: sqlite3.Connection) -> None:
    stored(conn, 4, a=1)
    assert "WITHOUT ROWID" in _shape(conn, "counters")


def test_a_table_from_an_older_store_is_rebuilt_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = open_store(path)
    old.execute("CREATE TABLE counters (dev TEXT PRIMARY KEY, state TEXT NOT NULL)")  # as stores were made before
    old.executemany("INSERT INTO counters VALUES (?, ?)", [("a", '{"n": 1}'), ("b", '{"n": 2}')])
    old.commit()
    old.close()
    conn = open_store(path)
    states = counters(conn, 4)
    assert not conn.in_transaction  # the rebuild is committed, not left open for the first batch
    assert "WITHOUT ROWID" in _shape(conn, "counters")
    assert dict(states.items()) == {"a": {"n": 1}, "b": {"n": 2}}
    assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'counters%'").fetchall() == [("counters",)]
    conn.close()


def test_a_rebuild_inside_an_open_transaction_goes_with_it(tmp_path: Path) -> None:
    """The daemon builds its modules in one transaction: a rollback there leaves the old table and its rows."""
    conn = open_store(tmp_path / "old.sqlite")
    conn.execute("CREATE TABLE counters (dev TEXT PRIMARY KEY, state TEXT NOT NULL)")
    conn.execute("INSERT INTO counters VALUES ('a', '{\"n\": 1}')")
    conn.commit()
    conn.execute("INSERT INTO counters VALUES ('b', '{\"n\": 2}')")  # opens a transaction
    counters(conn, 4)
    assert conn.in_transaction
    conn.rollback()
    assert "WITHOUT ROWID" not in _shape(conn, "counters")
    assert conn.execute("SELECT dev FROM counters").fetchall() == [("a",)]
    conn.close()


def test_capacity_below_one_is_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="capacity"):
        counters(conn, capacity=0)


# Each module on two stores, one holding every device and one holding a single device, fed the same messages
# with a commit after each: the answers must not depend on which devices were held.

DEVICES = ("d0", "d1", "d2")
steps = st.lists(st.tuples(st.sampled_from(DEVICES), st.integers(0, 40), st.integers(0, 2)), min_size=1,
                 max_size=60)


@settings(max_examples=30, deadline=None)
@given(steps)
def test_sequence_verdicts_do_not_depend_on_what_is_held(script: list[tuple[str, int, int]]) -> None:
    got = []
    for capacity in (1000, 1):
        c = open_store(":memory:")
        tracker = SequenceTracker(c, window=16, grace_s=5.0, capacity=capacity)
        out = []
        for i, (dev, seq, boot) in enumerate(script):
            if capacity == 1 and i % 3 == 0:
                tracker.prefetch(DEVICES)  # as the daemon does before each batch
            out.append(tracker.check(dev, seq, float(i), boot).value)
            out += [(g.dev, g.first, g.last, g.kind) for g in tracker.due(float(i))]
            tracker.flush()
            c.commit()
        out += [(dev, tracker.stats(dev), tracker.open_holes(dev)) for dev in DEVICES]
        got.append(out)
        c.close()
    assert got[0] == got[1]


@settings(max_examples=30, deadline=None)
@given(steps)
def test_confirmations_do_not_depend_on_what_is_held(script: list[tuple[str, int, int]]) -> None:
    got = []
    for capacity in (1000, 1):
        c = open_store(":memory:")
        confirmations = Confirmations(c, "s1", capacity=capacity)
        out = []
        for dev, seq, birth in script:
            if capacity == 1 and seq % 3 == 0:
                confirmations.prefetch(DEVICES)
            if birth == 2:
                confirmations.started_over(dev, seq)
            else:
                confirmations.committed(dev, seq)
            confirmations.flush()
            c.commit()
            out.append(confirmations.body(dev))
        out += [confirmations.body(dev) for dev in DEVICES]
        got.append(out)
        c.close()
    assert got[0] == got[1]


def test_health_counts_on_across_a_device_falling_out(conn: sqlite3.Connection) -> None:
    registry = Registry(conn, DeviceList(), capacity=1)
    for i in range(3):
        for dev in DEVICES:
            registry.seen(dev, 100.0 + i)
            registry.flush()
            conn.commit()
    registry.death("d0")
    got = [registry.health(dev) for dev in DEVICES]
    assert [(h.dev, h.messages, h.last_seen, h.deaths) for h in got] == [
        ("d0", 3, 102.0, 1), ("d1", 3, 102.0, 0), ("d2", 3, 102.0, 0)]


readings = st.lists(st.tuples(st.sampled_from(DEVICES), st.sampled_from([("gas", "ch4"), ("water", "pressure")]),
                              st.floats(0, 70)), min_size=1, max_size=60)


@settings(max_examples=30, deadline=None)
@given(readings)
def test_alarm_transitions_do_not_depend_on_what_is_held(script: list[tuple[str, tuple[str, str], float]]) -> None:
    """Pending runs, rate windows and newest judged times of a device let go are taken up where they were."""
    got = []
    for capacity in (1000, 1):
        c = open_store(":memory:")
        engine = AlarmEngine(c, rules(), capacity=capacity)
        out = []
        for i, (dev, (cls, metric), value) in enumerate(script):
            name = f"{cls}-{dev}"
            if capacity == 1 and i % 3 == 0:
                engine.prefetch([f"{c}-{d}" for d in DEVICES for c in ("gas", "water")])
            scale = 5.0 if cls == "water" else 1.0
            out += [(t.device, t.event, t.rule_kind, t.prev, t.level)
                    for t in engine.observe(name, cls, metric, value * scale, 10.0 * i, 1000.0 + i)]
            engine.flush()
            c.commit()
        got.append(out)
        c.close()
    assert got[0] == got[1]
