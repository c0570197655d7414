"""The outbox on a real SQLite file: lanes, leases, PUBACK deletes, crash atomicity and the disk budget."""

from __future__ import annotations

import math
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.district_wire import senml_pack, stored_entries
from gateway.outbox import ALARM, MAX_RUNS, ROW_BYTES, ROW_OVERHEAD, STATE, TELEMETRY, Item, Outbox
from gateway.store import open_store
from protocol import district, senml_resolve

T0 = 1_763_900_000.0


def reading(dev: str, seq: int, value: float, t: float | None = None) -> list[dict[str, Any]]:
    t = T0 + seq if t is None else t
    return [{"n": f"{dev}:ch4", "u": "%LEL", "t": t, "v": value}, {"n": "temp", "u": "Cel", "t": t, "v": 21.5},
            {"n": "cover", "t": t + 1, "vb": seq % 2 == 0}]


def entries(item: Item) -> list[dict[str, Any]]:
    return [entry for entry, _ in stored_entries(item.body)]


def put_one(ob: Outbox, dev: str, seq: int, value: float) -> None:
    """A batch of one device message: a row of its own."""
    ob.put_telemetry(dev, seq, 1, reading(dev, seq, value))
    ob.flush()


@pytest.fixture
def store(tmp_path: Path) -> sqlite3.Connection:
    return open_store(tmp_path / "gw" / "store.db")


def test_store_pragmas(store: sqlite3.Connection) -> None:
    assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_lanes_lease_by_priority_and_age_and_only_committed_rows(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    ob.put_telemetry("gas-01", 7, 2, reading("gas-01", 7, 12.5), now=T0)
    s1 = ob.put_state(district.UP_STATE, {"dev": "gas-01", "st": "online"}, now=T0 + 1)
    a1 = ob.put_alarm({"id": "a1", "ev": "raised"}, now=T0 + 2)
    ob.put_telemetry("gas-02", 1, 1, reading("gas-02", 1, 3.0), now=T0 + 3)
    a2 = ob.put_alarm({"id": "a2", "ev": "raised"}, now=T0 + 4)
    ob.flush()
    # put_* leave the batch open for the ingest to commit: nothing uncommitted may be sent
    assert store.in_transaction and ob.alarm_event.is_set()
    assert ob.lease(ALARM, 10) == [] and ob.pending(TELEMETRY, 10) == (0, None)
    store.commit()
    assert [i.id for i in ob.lease(ALARM, 10)] == [a1, a2]
    assert [i.id for i in ob.lease(STATE, 10)] == [s1]
    assert ob.pending(TELEMETRY, 10) == (2, T0)
    [tel] = ob.lease(TELEMETRY, 10)  # the batch's device messages are one row, queued when the first was put
    assert tel.entries == 2 and tel.t == T0 and not tel.thinned
    assert ob.lease(TELEMETRY, 10) == []  # leased rows are not handed out twice
    assert ob.depth() == {"alarm": 2, "state": 1, "telemetry": 2}
    assert ob.oldest_age(T0 + 10) == {"alarm": 8.0, "state": 9.0, "telemetry": 10.0}
    # the stored row is exactly the upstream pack entries, names "{dev}:{metric}" without a double prefix
    body, second = entries(tel)
    assert (body["dev"], body["seq"], body["boot"]) == ("gas-01", 7, 2)
    assert (second["dev"], second["seq"], second["boot"]) == ("gas-02", 1, 1)
    assert senml_resolve.resolve(body["e"]) == [
        {"n": "gas-01:ch4", "u": "%LEL", "t": T0 + 7, "v": 12.5},
        {"n": "gas-01:temp", "u": "Cel", "t": T0 + 7, "v": 21.5},
        {"n": "gas-01:cover", "t": T0 + 8, "vb": False}]


def test_a_batch_goes_in_as_rows_of_up_to_row_entries_and_a_lease_holds_up_to_its_limit(
        store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9, row_entries=100)
    for s in range(250):
        ob.put_telemetry(f"d{s % 7}", s, 1, reading(f"d{s % 7}", s, s), now=T0 + s)
    assert not store.in_transaction  # nothing is written before the flush ...
    ob.flush()
    ob.flush()  # ... and once only
    store.commit()
    rows = store.execute("SELECT entries, t, thinned FROM outbox ORDER BY id").fetchall()
    assert rows == [(100, T0, 0), (100, T0, 0), (50, T0, 0)]  # queued when the batch began
    assert ob.depth()["telemetry"] == 250 and ob.pending(TELEMETRY, 1000) == (250, T0)
    assert ob.pending(TELEMETRY, 150) == (200, T0)  # counted until the limit is reached: a bulk is full
    assert ob.pending(TELEMETRY, 100) == (100, T0)
    assert [i.entries for i in ob.lease(TELEMETRY, 150)] == [100]  # a second row would pass the limit
    assert [i.entries for i in ob.lease(TELEMETRY, 1)] == [100]  # the first row always goes, whole
    last = ob.lease(TELEMETRY, 1000)
    assert [i.entries for i in last] == [50]
    assert [doc["seq"] for doc in entries(last[0])] == list(range(200, 250))  # in the order put


def test_a_rolled_back_batch_puts_nothing_and_alarm_priority_packs_have_rows_of_their_own(
        store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    ob.put_telemetry("d1", 1, 1, reading("d1", 1, 1.0))
    ob.put_alarm({"id": "a1"})
    store.rollback()  # the batch failed
    ob.rollback()
    ob.put_telemetry("d1", 2, 1, reading("d1", 2, 2.0))
    ob.put_telemetry("d1", 3, 1, reading("d1", 3, 9.0), pri=1)  # evidence of an alarm: at once, alone
    ob.put_telemetry("d1", 4, 1, reading("d1", 4, 3.0))
    ob.flush()
    store.commit()
    got = [(i.entries, [(doc["seq"], doc.get("pri", 0)) for doc in entries(i)]) for i in ob.lease(TELEMETRY, 100)]
    assert got == [(1, [(3, 1)]), (2, [(2, 0), (4, 0)])]
    assert ob.depth() == {"alarm": 0, "state": 0, "telemetry": 3}


def test_rows_are_deleted_only_when_acked_and_resent_after_release(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    for s in range(5):
        put_one(ob, "d1", s, s)
    store.commit()
    ids = [rid for (rid,) in store.execute("SELECT id FROM outbox ORDER BY id")]
    first = ob.lease(TELEMETRY, 3)
    ob.ack([first[0].id, first[2].id])
    assert ob.depth()["telemetry"] == 3
    ob.release_all()  # connection lost: the unacked one and the never-leased ones go again, oldest first
    assert [i.id for i in ob.lease(TELEMETRY, 10)] == [ids[1], ids[3], ids[4]]


def test_a_row_acked_but_not_yet_deleted_is_not_counted_as_waiting_after_a_release(
        store: sqlite3.Connection) -> None:
    """Its PUBACK came while a batch was open and the connection dropped before the delete: `pending` must count
    only what `lease` hands out, or the uplink asks for a bulk of nothing."""
    ob = Outbox(store, 10**9)
    put_one(ob, "d1", 1, 1.0)
    store.commit()
    [item] = ob.lease(TELEMETRY, 10)
    ob.put_state(district.DQ, {"ev": "gap"})  # the ingest's batch is open ...
    ob.ack([item.id])  # ... so the delete waits
    ob.release_all()
    store.commit()
    assert ob.pending(TELEMETRY, 10) == (0, None)  # asked first, as the uplink does
    assert ob.lease(TELEMETRY, 10) == []


def test_a_backlog_acked_at_once_is_deleted_in_parts_and_only_what_was_acked(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    for s in range(1203):  # past two parts of the delete's IN clause
        put_one(ob, "d1", s, s)
    store.commit()
    items = ob.lease(TELEMETRY, 2000)
    ob.ack(i.id for i in items[:1201])
    assert ob.acked_rows == 1201 and ob.depth()["telemetry"] == 2
    assert [entries(i)[0]["seq"] for i in ob.lease(TELEMETRY, 10)] == []  # the rest is still leased
    ob.release_all()
    assert [entries(i)[0]["seq"] for i in ob.lease(TELEMETRY, 10)] == [1201, 1202]


def test_ack_never_commits_someone_elses_batch(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    rid = ob.put_alarm({"id": "a1"})
    store.commit()
    [item] = ob.lease(ALARM, 1)
    ob.put_state(district.DQ, {"ev": "gap"})  # the ingest's batch is open ...
    ob.ack([item.id])  # ... so the PUBACK's delete waits instead of committing half a batch
    store.rollback()  # the batch fails
    assert ob.depth() == {"alarm": 1, "state": 0, "telemetry": 0}
    assert ob.flush_acks() == 1
    assert store.execute("SELECT count(*) FROM outbox WHERE id = ?", (rid,)).fetchone()[0] == 0


def test_uncommitted_rows_vanish_with_a_crash_and_committed_ones_survive(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = open_store(path)
    ob = Outbox(conn, 10**9)
    ob.put_alarm({"id": "kept"})
    conn.commit()
    ob.put_alarm({"id": "lost"})  # never committed: the site broker was never acked for it either
    conn.close()
    again = Outbox(open_store(path), 10**9)
    assert [cbor2.loads(i.body)["id"] for i in again.lease(ALARM, 10)] == ["kept"]


def test_bad_items_are_refused_with_a_reason(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    with pytest.raises(ValueError, match="kind 'telemetry'"):
        ob.put_state(district.TELEMETRY, {})
    with pytest.raises(ValueError, match="exactly one of"):
        ob.put_telemetry("d1", 1, 1, [{"n": "x", "t": 1.0, "v": 1.0, "vs": "a"}])
    with pytest.raises(ValueError, match="exactly one of"):
        ob.put_telemetry("d1", 1, 1, [{"n": "x", "t": 1.0, "u": "m"}])
    with pytest.raises(ValueError, match="at least one record"):
        senml_pack("d1", [])


def test_every_senml_value_kind_round_trips(store: sqlite3.Connection) -> None:
    records = [{"n": "rain", "u": "mm", "t": T0, "s": 12.5}, {"n": "blob", "t": T0 + 2, "vd": b"\x00\x01"},
               {"n": "mode", "t": T0 + 2, "vs": "auto"}, {"n": "rate", "u": "mm/h", "t": T0 + 3, "v": 2, "s": 1}]
    ob = Outbox(store, 10**9)
    ob.put_telemetry("rain-1", 5, 1, records)
    ob.flush()
    store.commit()
    [item] = ob.lease(TELEMETRY, 1)
    assert senml_resolve.resolve(cbor2.loads(item.body)["e"]) == [dict(r, n="rain-1:" + str(r["n"])) for r in records]
    ob.budget_bytes = 1  # a summary of a sum-only or data record counts it
    ob.release_all()
    assert ob.enforce_budget() is not None


def fill(ob: Outbox, store: sqlite3.Connection, devices: int, per_device: int, step: float,
         alarms_every: int = 50) -> tuple[list[str], dict[str, set[int]]]:
    """Telemetry from `devices` devices every `step` seconds, a batch each step (a row of `devices` entries), with
    an alarm and a state item now and then."""
    alarm_ids: list[str] = []
    seqs: dict[str, set[int]] = {}
    n = 0
    for k in range(per_device):
        for d in range(devices):
            dev = f"dev-{d}"
            t = T0 + k * step
            ob.put_telemetry(dev, 1000 + k, 1, reading(dev, 1000 + k, float(k % 17), t), now=t)
            seqs.setdefault(dev, set()).add(1000 + k)
            n += 1
            if n % alarms_every == 0:
                alarm_ids.append(f"alarm-{n}")
                ob.put_alarm({"id": alarm_ids[-1], "ev": "raised", "pad": "x" * 200}, now=t)
                ob.put_state(district.UP_STATE, {"dev": dev, "n": n}, now=t)
        ob.flush()
    store.commit()
    return alarm_ids, seqs


def accounting(ob: Outbox) -> tuple[dict[str, set[int]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(raw seqs left per device, summaries left, data-quality items) after budget passes."""
    raw: dict[str, set[int]] = {}
    summaries = []
    for thinned, body in ob.conn.execute(
            "SELECT thinned, body FROM outbox WHERE lane = ? ORDER BY id", (TELEMETRY,)):
        for doc, _ in stored_entries(body):
            if thinned:
                summaries.append(doc)
            else:
                raw.setdefault(doc["dev"], set()).add(doc["seq"])
    dq = [cbor2.loads(b) for (b,) in ob.conn.execute("SELECT body FROM outbox WHERE kind = ?", (district.DQ,))]
    return raw, summaries, dq


def test_budget_thins_oldest_telemetry_keeps_every_alarm_and_reports(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    alarm_ids, seqs = fill(ob, store, devices=20, per_device=120, step=10.0)  # 20 min, 30 per interval
    full = ob.bytes_used()
    ob.budget_bytes = full // 2
    report = ob.enforce_budget(now=T0 + 700)
    assert report is not None and report.before == full
    assert ob.bytes_used() <= ob.budget_bytes
    assert sorted(cbor2.loads(b)["id"] for (b,) in store.execute(
        "SELECT body FROM outbox WHERE lane = ?", (ALARM,))) == sorted(alarm_ids)
    assert ob.depth()["state"] == len(alarm_ids) + 1  # every state item, plus the report
    raw, summaries, [dq] = accounting(ob)
    assert dq["ev"] == "outbox-budget" and dq["budget"] == ob.budget_bytes
    assert report.thinned and ob.thinned_msgs == sum(e["msgs"] for e in dq["thinned"])
    assert ob.evicted_msgs == sum(e["msgs"] for e in dq["evicted"]) == 0
    for dev, want in seqs.items():
        covered = [s for s in summaries if s["dev"] == dev]
        thinned = set().union(*(set(range(s["seq_lo"], s["seq_hi"] + 1)) for s in covered))
        # every message is either still raw or inside exactly one summary; the oldest went first
        assert thinned | raw[dev] == want and not thinned & raw[dev]
        assert sum(s["msgs"] for s in covered) == len(thinned)
        assert max(thinned) < min(raw[dev])
        [entry] = [e for e in dq["thinned"] if e["dev"] == dev]
        assert (entry["seq_lo"], entry["seq_hi"], entry["msgs"]) == (min(thinned), max(thinned), len(thinned))
    # summaries keep their place in the lane: draining still sends the oldest telemetry first
    order = [doc for i in ob.lease(TELEMETRY, 10**6) for doc in entries(i)]
    firsts = [d.get("seq_lo", d.get("seq")) for d in order if d["dev"] == "dev-0"]
    assert firsts == sorted(firsts)


def test_a_budget_pass_that_failed_leaves_its_windows_to_the_next(store: sqlite3.Connection) -> None:
    """A pass that raised (its writes refused, as by a full disk; stood in for by an authorizer) was rolled
    back, but the windows it had read stayed behind its in-memory floor: until a restart the next passes
    skipped the oldest telemetry, thinned newer windows first and reached eviction sooner."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    fill(ob, store, devices=20, per_device=120, step=10.0)
    ob.budget_bytes = ob.bytes_used() // 2
    store.set_authorizer(lambda action, *args: sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT
                         else sqlite3.SQLITE_OK)
    with pytest.raises(sqlite3.DatabaseError):
        ob.enforce_budget(now=T0 + 700)
    store.set_authorizer(None)
    report = ob.enforce_budget(now=T0 + 700)
    assert report is not None and report.thinned and not report.evicted
    raw, summaries, _ = accounting(ob)
    for dev in raw:
        thinned = set().union(*(set(range(s["seq_lo"], s["seq_hi"] + 1)) for s in summaries if s["dev"] == dev))
        assert thinned and max(thinned) < min(raw[dev])  # the oldest went first


def test_a_corrupt_row_neither_stops_the_budget_nor_takes_other_messages_with_it(
        store: sqlite3.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """A row a storage fault changed (a flipped byte on a site box's flash card) raised out of every budget
    pass, which rolled back: from then on the outbox outgrew its budget until the disk was full."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    _, seqs = fill(ob, store, devices=20, per_device=120, step=10.0)  # a row of 20 devices every 10 s
    first, second = [rid for (rid,) in store.execute(
        "SELECT id FROM outbox WHERE lane = ? ORDER BY id LIMIT 2", (TELEMETRY,))]
    (body,) = store.execute("SELECT body FROM outbox WHERE id = ?", (first,)).fetchone()
    cut = len(body) // 2
    store.execute("UPDATE outbox SET body = ? WHERE id = ?", (body[:cut] + b"\xff" + body[cut + 1:], first))
    (body,) = store.execute("SELECT body FROM outbox WHERE id = ?", (second,)).fetchone()
    bad = [entry for entry, _ in stored_entries(body)]
    bad[3]["e"] = "not records"  # dev-3's seq 1001: its own CBOR, but no records a summary can read
    # a row of a store made before checksums (none to fail): its entries are read one by one
    store.execute("UPDATE outbox SET body = ?, crc = NULL WHERE id = ?", (b"".join(map(cbor2.dumps, bad)), second))
    store.commit()
    full = ob.bytes_used()
    for budget in (full // 2, full // 8):  # thinning around the two rows, then eviction through them
        ob.budget_bytes = budget
        assert ob.enforce_budget(now=T0 + 1300) is not None
        assert ob.bytes_used() <= budget
    said = [r.fields for r in caplog.records if r.getMessage() == "outbox row undecodable"]  # type: ignore[attr-defined]
    assert {(f["id"], f["action"]) for f in said} >= {(first, "kept raw"), (first, "evicted")}
    assert any(r.getMessage() == "outbox entries undecodable" and r.fields["dev"] == "dev-3"  # type: ignore[attr-defined]
               for r in caplog.records)
    raw, _, dq = accounting(ob)
    for dev, want in seqs.items():  # every message but those of the first row is raw, summarised or evicted
        reported = [(e["seq_lo"], e["seq_hi"]) for doc in dq for key in ("thinned", "evicted") for e in doc[key]
                    if e["dev"] == dev]
        accounted = raw.get(dev, set()).union(*(set(range(lo, hi + 1)) for lo, hi in reported))
        assert want - {1000} <= accounted, dev


def test_a_summary_mean_is_weighed_by_the_numbers_alone(store: sqlite3.Connection) -> None:
    """A metric whose readings were now a value and now a sum alone (RFC 8428 lets a record carry only a sum)
    had its mean divided by every reading: values 2, 4 and 6 beside two sums summarised to a mean of 2.4."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    shapes: list[dict[str, Any]] = [{"v": 2.0}, {"s": 9.0}, {"v": 4.0}, {"s": 9.5}, {"v": 6.0}]
    for k in range(60):
        t = T0 + k
        ob.put_telemetry("dev-0", k + 1, 1, [{"n": "dev-0:rain", "u": "mm", "t": t, **shapes[k % 5]}], now=t)
    ob.flush()
    store.commit()
    ob.budget_bytes = ob.bytes_used() // 2
    assert ob.enforce_budget(now=T0 + 700) is not None
    _, summaries, _ = accounting(ob)
    assert summaries
    for summary in summaries:
        [rain] = summary["s"]
        assert rain["mean"] == 4.0 and (rain["min"], rain["max"]) == (2.0, 6.0) and rain["count"] == 60


def test_budget_evicts_when_summaries_would_not_be_smaller(store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9, thin_interval_s=5.0)
    alarm_ids, seqs = fill(ob, store, devices=10, per_device=40, step=10.0)  # one message per device per window
    ob.budget_bytes = ob.bytes_used() // 2
    report = ob.enforce_budget(now=T0 + 500)
    assert report is not None and not report.thinned and report.evicted
    assert ob.bytes_used() <= ob.budget_bytes
    assert ob.depth()["alarm"] == len(alarm_ids)
    raw, summaries, [dq] = accounting(ob)
    assert not summaries
    for dev, want in seqs.items():
        [entry] = [e for e in dq["evicted"] if e["dev"] == dev]
        gone = want - raw[dev]
        assert (entry["seq_lo"], entry["seq_hi"], entry["msgs"]) == (min(gone), max(gone), len(gone))
        assert max(gone) < min(raw[dev])
    assert ob.evicted_msgs == sum(len(want - raw[dev]) for dev, want in seqs.items())


def spans(doc: dict[str, Any], key: str, dev: str) -> list[tuple[int, int, int]]:
    return [(e["seq_lo"], e["seq_hi"], e["msgs"]) for e in doc[key] if e["dev"] == dev]


def test_no_summary_nor_span_covers_a_number_the_gateway_never_held(tmp_path: Path) -> None:
    """gas1's seq 6-8 never reached the gateway. Its summary of 1-5 and 9-15 said seq_lo 1, seq_hi 15, msgs 12,
    and so did the budget report's spans, thinned and evicted, merged per device: the district, reading the
    range, took 6-8 as held and the gap was hidden from it. Each summary and span is now one run held."""
    held = [*range(1, 6), *range(9, 16)]
    ob = Outbox(open_store(tmp_path / "thin.db"), 10**9, thin_interval_s=300.0)
    for seq in held:
        ob.put_telemetry("gas1", seq, 1, reading("gas1", seq, float(seq)), now=T0 + seq)
        ob.flush()
    ob.conn.commit()
    ob.budget_bytes = ob.bytes_used() // 2
    assert ob.enforce_budget(now=T0 + 700) is not None
    raw, summaries, [dq] = accounting(ob)
    assert not raw and [(s["seq_lo"], s["seq_hi"], s["msgs"]) for s in summaries] == [(1, 5, 5), (9, 15, 7)]
    assert spans(dq, "thinned", "gas1") == [(1, 5, 5), (9, 15, 7)]
    ob.budget_bytes = 1  # now the summaries go too, in the report still waiting: evicted alone
    assert ob.enforce_budget(now=T0 + 700) is not None
    [dq] = accounting(ob)[2]
    assert dq["passes"] == 2 and spans(dq, "thinned", "gas1") == []
    assert spans(dq, "evicted", "gas1") == [(1, 5, 5), (9, 15, 7)]
    # raw messages evicted (one a window: nothing to gain from a summary)
    ob = a_row_each(tmp_path / "evict.db", held)
    ob.budget_bytes = 1
    report = ob.enforce_budget(now=T0 + 700)
    assert report is not None and not report.thinned
    assert spans(accounting(ob)[2][0], "evicted", "gas1") == [(1, 5, 5), (9, 15, 7)]


def a_row_each(path: Path, seqs: list[int]) -> Outbox:
    """An outbox whose gas1 messages `seqs` went in a batch each, committed: a row each, a second apart."""
    ob = Outbox(open_store(path), 10**9, thin_interval_s=1.0)
    for seq in seqs:
        ob.put_telemetry("gas1", seq, 1, reading("gas1", seq, float(seq)), now=T0 + seq)
        ob.flush()
    ob.conn.commit()
    return ob


def test_a_device_with_fewer_runs_than_the_bound_gets_every_run_exact(tmp_path: Path) -> None:
    """Ten runs of a device, under MAX_RUNS: the report joined four of them across three holes all the same
    (the bound's slice went negative, and a negative slice takes from the front) into 1-15 holding 12, and a
    span holding fewer messages than its range covers none of them at the district: twelve numbers the site
    accounted for read as unaccounted there. Up to MAX_RUNS runs, each is its own span."""
    held = [s for s in range(1, 41) if s % 4]  # runs of 3: 10 runs
    ob = a_row_each(tmp_path / "runs.db", held)
    ob.budget_bytes = 1
    assert ob.enforce_budget(now=T0 + 700) is not None
    [dq] = accounting(ob)[2]
    assert spans(dq, "evicted", "gas1") == [(lo, lo + 2, 3) for lo in range(1, 41, 4)]


def test_a_device_with_many_holes_gets_a_bounded_report_that_says_what_it_does_not_hold(tmp_path: Path) -> None:
    """A device that lost every eighth message: a span per run would make the report grow with the holes.
    Past MAX_RUNS a device's spans are joined across the smallest holes, and such a span's msgs is less than
    its range, so the district can tell it from a run; summaries stay exact (runs past the bound stay raw)."""
    ob = Outbox(open_store(tmp_path / "holes.db"), 10**9, thin_interval_s=300.0, row_entries=10)
    held = [s for s in range(1, 800) if s % 8]  # runs of 7: 100 runs
    for seq in held:
        ob.put_telemetry("gas1", seq, 1, reading("gas1", seq, float(seq), T0 + seq / 10), now=T0 + seq / 10)
    ob.flush()
    ob.conn.commit()
    ob.budget_bytes = 1
    report = ob.enforce_budget(now=T0 + 700)
    assert report is not None and report.thinned
    [dq] = accounting(ob)[2]
    thinned = spans(dq, "thinned", "gas1")
    assert 0 < len(thinned) <= MAX_RUNS
    assert all(n == hi - lo + 1 == 7 and hi % 8 == 7 for lo, hi, n in thinned)  # each one summary, exact
    evicted = spans(dq, "evicted", "gas1")
    assert len(evicted) == MAX_RUNS and sum(n for _, _, n in evicted) == len(held)
    for lo, hi, n in evicted:
        got = [s for s in held if lo <= s <= hi]
        assert n == len(got) and lo == got[0] and hi == got[-1]
    assert any(n < hi - lo + 1 for lo, hi, n in evicted)


def test_budget_never_touches_rows_in_flight_nor_alarms_when_only_alarms_remain(
        store: sqlite3.Connection) -> None:
    ob = Outbox(store, 10**9)
    for i in range(200):
        ob.put_alarm({"id": f"a{i}", "pad": "x" * 500})
    for s in range(100):
        put_one(ob, "d1", s, 1.0)
    store.commit()
    leased = ob.lease(TELEMETRY, 10)
    ob.budget_bytes = ob.bytes_used() // 10  # the alarms alone are over it
    report = ob.enforce_budget()
    assert report is not None and report.after > ob.budget_bytes
    assert ob.depth()["alarm"] == 200
    left = {rid for (rid,) in store.execute("SELECT id FROM outbox WHERE lane = ?", (TELEMETRY,))}
    assert left == {i.id for i in leased}
    ob.ack(i.id for i in leased)
    assert ob.depth()["telemetry"] == 0


def test_budget_never_folds_a_pubacked_row_into_a_summary(store: sqlite3.Connection) -> None:
    """Rows PUBACKed while a batch was open wait for their delete; a dropped link then sends the cursor back.
    A budget pass must not thin them: a summary taking the id of one would never be sent, and would be
    deleted with it."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    _, seqs = fill(ob, store, devices=5, per_device=120, step=10.0)
    sent = ob.lease(TELEMETRY, 3)
    ob.put_state(district.DQ, {"ev": "gap"})  # a batch is open ...
    ob.ack(i.id for i in sent)  # ... so the deletes wait
    ob.release_all()  # the link drops
    store.commit()  # the batch commits
    ob.budget_bytes = ob.bytes_used() // 2
    assert ob.enforce_budget(now=T0 + 2000) is not None
    delivered = {(doc["dev"], doc["seq"]) for i in sent for doc in entries(i)}
    for item in ob.lease(TELEMETRY, 10**6):
        for doc in entries(item):
            if item.thinned:
                delivered |= {(doc["dev"], q) for q in range(doc["seq_lo"], doc["seq_hi"] + 1)}
            else:
                delivered.add((doc["dev"], doc["seq"]))
    assert delivered == {(dev, seq) for dev, want in seqs.items() for seq in want}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-1e3, 1e3, allow_nan=False), st.booleans(),
                          st.floats(0, 3600), st.booleans()), min_size=1, max_size=120),
       st.integers(1, 8), st.floats(0, 1800))
def test_every_message_is_raw_summarised_or_evicted_and_summaries_are_exact(
        tmp_path_factory: pytest.TempPathFactory, samples: list[tuple[int, float, bool, float, bool]],
        row_entries: int, spread: float) -> None:
    """Batches end where a sample says so, rows hold up to `row_entries` of a batch's messages, and the rows are
    queued over `spread` seconds, so a thinning window takes one row or many, of one device or several."""
    conn = open_store(tmp_path_factory.mktemp("thin") / "s.db")
    interval = 600.0
    ob = Outbox(conn, 10**9, thin_interval_s=interval, row_entries=row_entries)
    sent: dict[int, tuple[str, float, float, bool]] = {}
    for seq, (d, value, flag, dt, end) in enumerate(samples):
        dev, t = f"d{d}", T0 + dt
        ob.put_telemetry(dev, seq, 1, [{"n": "level", "u": "m", "t": t, "v": value},
                                       {"n": "cover", "t": t, "vb": flag}, {"n": "mode", "t": t, "vs": "auto"}],
                         now=T0 + spread * seq / len(samples))
        sent[seq] = (dev, t, value, flag)
        if end:
            ob.flush()
    ob.flush()
    conn.commit()
    ob.budget_bytes = ob.bytes_used() * 3 // 4
    report = ob.enforce_budget(now=T0)
    assert report is not None
    raw, summaries, [dq] = accounting(ob)
    # the pass frees the excess; its own report is one state row on top (it matters only for tiny budgets)
    assert ob.bytes_used() - len(cbor2.dumps(dq)) - ROW_OVERHEAD <= ob.budget_bytes
    accounted = {(dev, seq) for dev, seqs in raw.items() for seq in seqs}
    for s in summaries:
        covered = [seq for seq in range(s["seq_lo"], s["seq_hi"] + 1) if sent[seq][0] == s["dev"]]
        assert s["msgs"] == len(covered) == s["seq_hi"] - s["seq_lo"] + 1  # a run: every number in it held
        assert not accounted & {(s["dev"], q) for q in covered}
        accounted |= {(s["dev"], q) for q in covered}
        want: dict[tuple[str, float], list[float]] = {}
        for seq in covered:
            _, t, value, flag = sent[seq]
            start = math.floor(t / interval) * interval
            want.setdefault(("level", start), []).append(value)
            want.setdefault(("cover", start), []).append(float(flag))
            want.setdefault(("mode", start), []).append(0.0)
        got = {(e["n"], e["t"]): e for e in s["s"]}
        assert set(got) == set(want)
        for (name, start), values in want.items():
            entry = got[(name, start)]
            assert entry["count"] == len(values)
            if name == "mode":
                assert entry["last"] == "auto"
            else:
                assert (entry["min"], entry["max"]) == (min(values), max(values))
                assert entry["mean"] == pytest.approx(sum(values) / len(values), abs=1e-9)
    evicted = sum(e["msgs"] for e in dq["evicted"])
    assert len(accounted) + evicted == len(samples)
    # "thinned" counts what was summarised; a summary evicted later in the same pass is in "evicted" too
    assert sum(e["msgs"] for e in dq["thinned"]) >= sum(s["msgs"] for s in summaries)
    assert (ob.thinned_msgs, ob.evicted_msgs) == (sum(e["msgs"] for e in dq["thinned"]), evicted)


def actual_totals(conn: sqlite3.Connection) -> tuple[dict[str, int], int]:
    """Entries per lane and bytes charged, recounted from the rows themselves."""
    counts = {name: 0 for name in ("alarm", "state", "telemetry")}
    size = 0
    for lane, n, held, total in conn.execute(
            "SELECT lane, count(*), total(entries), total(length(body)) FROM outbox GROUP BY lane"):
        counts[("alarm", "state", "telemetry")[lane]] = int(held)
        size += int(total) + n * ROW_OVERHEAD
    return counts, size


OPS = st.sampled_from(["alarm", "state", "telemetry", "telemetry", "telemetry", "commit", "rollback", "send",
                       "ack", "count", "budget", "reopen"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, min_size=30, max_size=120))
def test_lane_totals_always_match_the_rows(tmp_path_factory: pytest.TempPathFactory, ops: list[str]) -> None:
    """The totals are kept without a trigger on INSERT (rows are counted when the totals are read): whatever
    the order of puts, commits, rollbacks, sends and PUBACKs, budget passes and restarts, they are the rows'."""
    conn = open_store(tmp_path_factory.mktemp("totals") / "s.db")
    ob = Outbox(conn, 10**9, thin_interval_s=60.0, row_entries=3)
    in_flight: list[int] = []
    for seq, op in enumerate(ops, 1):
        if op == "alarm":
            ob.put_alarm({"id": f"a{seq}", "ev": "raised"}, now=T0 + seq)
        elif op == "state":
            ob.put_state(district.UP_STATE, {"dev": "d", "n": seq}, now=T0 + seq)
        elif op == "telemetry":
            ob.put_telemetry(f"d{seq % 3}", seq, 1, reading(f"d{seq % 3}", seq, seq % 7), now=T0 + seq)
        elif op == "commit":
            ob.flush()
            conn.commit()
        elif op == "rollback":
            conn.rollback()
            ob.rollback()
        elif op == "send":
            in_flight += [i.id for lane in (ALARM, STATE, TELEMETRY) for i in ob.lease(lane, 2)]
        elif op == "ack":
            ob.ack(in_flight)
            in_flight = []
        elif op == "count":
            assert (ob.depth(), ob.bytes_used()) == actual_totals(conn)
        elif op == "budget" and ob.idle:
            ob.budget_bytes = max(1, ob.bytes_used() // 2)
            ob.enforce_budget(now=T0 + seq)
            ob.budget_bytes = 10**9
        elif op == "reopen" and ob.idle:  # a restart: leases are gone, the store stays
            ob.close()
            ob = Outbox(conn, 10**9, thin_interval_s=60.0, row_entries=3)
            in_flight = []
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn)
    conn.rollback()
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn)
    ob.close()
    conn.close()


# The outbox of a store made before telemetry rows held a batch (December 2026).
ONE_A_ROW = """CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL, kind TEXT NOT NULL,
            t REAL NOT NULL, dev TEXT, seq INTEGER, seq_hi INTEGER, boot INTEGER, msgs INTEGER NOT NULL DEFAULT 1,
            thinned INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL, pri INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE outbox_lanes (lane INTEGER PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL);"""


def test_a_store_of_one_message_a_row_keeps_its_totals_and_its_rows_go_as_before(tmp_path: Path) -> None:
    """Stores made before telemetry rows held a batch have no entries column and a trigger that subtracts one a
    row: opened now, the column comes with one entry a row, and the trigger that subtracts a row's entries
    replaces the old one in the same commit."""
    path = tmp_path / "old.db"
    conn = open_store(path)
    conn.executescript(f"""
        {ONE_A_ROW}
        CREATE INDEX outbox_by_lane ON outbox (lane);
        CREATE TABLE outbox_counted (one INTEGER PRIMARY KEY CHECK (one = 0), id INTEGER NOT NULL);
        INSERT INTO outbox_lanes VALUES (0, 0, 0), (1, 0, 0), (2, 3, {3 * (ROW_OVERHEAD + 1)});
        INSERT INTO outbox_counted VALUES (0, 3);
        CREATE TRIGGER outbox_del_counted AFTER DELETE ON outbox WHEN OLD.id <= (SELECT id FROM outbox_counted)
            BEGIN UPDATE outbox_lanes SET rows = rows - 1, bytes = bytes - length(OLD.body) - {ROW_OVERHEAD}
            WHERE lane = OLD.lane; END;
        INSERT INTO outbox (lane, kind, t, dev, seq, body) VALUES
            (2, 'telemetry', 1, 'd1', 1, x'01'), (2, 'telemetry', 2, 'd1', 2, x'02'),
            (2, 'telemetry', 3, 'd1', 3, x'03');
    """)
    conn.close()
    conn = open_store(path)
    ob = Outbox(conn, 10**9)
    triggers = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"outbox_del_entries"} and not conn.in_transaction
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn) == (
        {"alarm": 0, "state": 0, "telemetry": 3}, 3 * (ROW_OVERHEAD + 1))
    old = ob.lease(TELEMETRY, 2)
    assert [(i.body, i.entries) for i in old] == [(b"\x01", 1), (b"\x02", 1)]
    ob.put_telemetry("d1", 4, 1, reading("d1", 4, 1.0))
    ob.put_telemetry("d1", 5, 1, reading("d1", 5, 1.0))
    ob.flush()
    conn.commit()
    ob.ack(i.id for i in old)
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn)
    assert ob.depth()["telemetry"] == 3
    ob.close()
    conn.close()


def test_a_store_counted_by_the_old_triggers_keeps_its_totals(tmp_path: Path) -> None:
    """Stores made before counted each row with a trigger on INSERT: opened now, the triggers are replaced in
    the same commit as the counted id is set to the highest row, so nothing is counted twice or missed."""
    path = tmp_path / "old.db"
    conn = open_store(path)
    conn.executescript(f"""
        {ONE_A_ROW}
        INSERT INTO outbox_lanes VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0);
        CREATE TRIGGER outbox_ins AFTER INSERT ON outbox BEGIN
            UPDATE outbox_lanes SET rows = rows + 1, bytes = bytes + length(NEW.body) + {ROW_OVERHEAD}
            WHERE lane = NEW.lane; END;
        CREATE TRIGGER outbox_del AFTER DELETE ON outbox BEGIN
            UPDATE outbox_lanes SET rows = rows - 1, bytes = bytes - length(OLD.body) - {ROW_OVERHEAD}
            WHERE lane = OLD.lane; END;
        INSERT INTO outbox (lane, kind, t, body) VALUES (0, 'alarm', 1, x'a0'), (2, 'telemetry', 2, x'a2a3');
    """)
    conn.close()
    conn = open_store(path)
    ob = Outbox(conn, 10**9)
    assert not conn.in_transaction
    triggers = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"outbox_del_entries"}
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn) == (
        {"alarm": 1, "state": 0, "telemetry": 1}, 3 + 2 * ROW_OVERHEAD)
    ob.put_alarm({"id": "new"}, now=T0)
    conn.commit()
    # the checksum column comes too: none for the old rows, which go unchecked; the new row's is checked
    assert [crc for (crc,) in conn.execute("SELECT crc FROM outbox ORDER BY id")] == [
        None, None, zlib.crc32(cbor2.dumps({"id": "new"}))]
    [first, _new] = ob.lease(ALARM, 10)
    ob.ack([first.id])
    assert (ob.depth(), ob.bytes_used()) == actual_totals(conn)
    ob.close()
    conn.close()


def test_rows_a_budget_pass_rewrites_hold_no_more_bytes_than_a_publish(store: sqlite3.Connection) -> None:
    """A batch's rows are cut by bytes as well as by count, so a publish the district's worker takes holds one
    whole. The budget pass regrouped the messages it keeps raw by count alone: 300 of 4 KB were put back into
    one row of 1.2 MB, which no publish could carry to the district."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0, row_entries=1000)
    for k in range(100):
        t = T0 + k
        for j in range(20):  # summarised, freeing enough that the pass evicts nothing
            seq = 1000 + 20 * k + j
            ob.put_telemetry("dev-0", seq, 1, reading("dev-0", seq, float(j % 7), t + j / 100), now=t)
        for i in range(3):  # kept raw: a sealed message that holds no records a summary can read
            ob.put_telemetry(f"big-{3 * k + i}", 1, 1, [], now=t, sealed=bytes(4000))
        ob.flush()
    store.commit()
    assert max(len(b) for (b,) in store.execute("SELECT body FROM outbox")) <= ROW_BYTES
    ob.budget_bytes = ob.bytes_used() - 1000
    assert ob.enforce_budget(now=T0 + 700) is not None
    raw, summaries, _ = accounting(ob)
    assert summaries and len(raw) == 300  # the pass rewrote the rows, and kept every big one raw
    assert max(len(b) for (b,) in store.execute("SELECT body FROM outbox")) <= ROW_BYTES


def test_a_row_changed_since_it_was_written_is_never_sent_summarised_nor_added_to(
        store: sqlite3.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """A row whose bytes a storage fault changed may still decode: summarised by the budget pass, or a report
    added to it, it would be written again under a good checksum and sent as sound. Set aside at lease instead."""
    ob = Outbox(store, 10**9, thin_interval_s=300.0)
    gap = {"kind": "gap", "dev": "d1", "first": 2, "last": 3, "since": T0}
    ob.put_state(district.DQ, gap, now=T0)
    for seq in range(1, 21):
        put_one(ob, "dev-1", seq, 1.0)
    store.commit()
    (report,) = store.execute("SELECT id FROM outbox WHERE merge = 'gap/d1'").fetchone()
    (bad,) = store.execute("SELECT id FROM outbox WHERE lane = ? ORDER BY id LIMIT 1 OFFSET 9", (TELEMETRY,)).fetchone()
    (body,) = store.execute("SELECT body FROM outbox WHERE id = ?", (bad,)).fetchone()
    [entry] = entries(Item(bad, TELEMETRY, district.TELEMETRY, False, body))
    entry["e"][0]["v"] = 71.0  # a reading that still decodes, with another value
    with sqlite3.connect(store.execute("PRAGMA database_list").fetchone()[2]) as other:
        other.execute("UPDATE outbox SET body = ? WHERE id = ?", (cbor2.dumps(entry), bad))
        other.execute("UPDATE outbox SET body = ? WHERE id = ?", (cbor2.dumps({**gap, "first": 1}), report))
    ob.put_state(district.DQ, {**gap, "first": 5, "last": 5}, now=T0 + 1)
    ob.flush()
    store.commit()
    assert store.execute("SELECT count(*) FROM outbox WHERE merge = 'gap/d1'").fetchone()[0] == 2
    ob.budget_bytes = ob.bytes_used() * 3 // 4
    done = ob.enforce_budget(now=T0 + 600)
    assert done is not None and done.thinned["dev-1"].spans() == [(1, 9, 9), (11, 20, 10)] and not done.evicted
    assert store.execute("SELECT body FROM outbox WHERE id = ?", (bad,)).fetchone()[0] == cbor2.dumps(entry)
    state = ob.lease(STATE, 10)
    telemetry = ob.lease(TELEMETRY, 100)
    assert report not in {i.id for i in state} and bad not in {i.id for i in telemetry}
    assert 10 not in {e["seq"] for i in telemetry if not i.thinned for e in entries(i)}
    ob.ack(i.id for i in state + telemetry)
    assert sorted(store.execute("SELECT id, reason FROM outbox_corrupt")) == [(report, "checksum"), (bad, "checksum")]
    assert ob.corrupt_rows == 2 and sum(ob.depth().values()) == 0
    said = [r.fields for r in caplog.records if r.getMessage() == "outbox row set aside"]  # type: ignore[attr-defined]
    assert sorted(f["id"] for f in said) == [report, bad]


OLD_STORE = Path(__file__).parent / "store_upgrade" / "2026-11-24-50e4256.sql"  # readings alone ("e"), no crc


def test_a_budget_pass_keeps_no_reading_of_a_store_made_before_sealed_messages_raw(tmp_path: Path) -> None:
    """Such a store's rows go up as the site's summaries when leased, as rows without a checksum. A budget pass
    rewrote the readings it kept raw (gas2's runs of one, which a summary does not make smaller) into a row with
    a checksum, leased as packs of the readings alone: the district refused them as made up at the site."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_STORE.read_text())
    old.execute("DELETE FROM outbox WHERE dev = 'gas2' AND seq % 2 = 1")
    old.commit()
    old.close()
    ob = Outbox(open_store(path), 10**9, thin_interval_s=300.0)
    ob.budget_bytes = ob.bytes_used() - 1
    report = ob.enforce_budget()
    assert report is not None and {dev: runs.spans() for dev, runs in report.thinned.items()} == {
        "gas1": [(0, 9, 10)]} and not report.evicted
    sent = [e for item in ob.lease(TELEMETRY, 100) for e in entries(item)]
    assert [sorted(e) for e in sent if "seq_lo" not in e] == []
    assert sorted((e["dev"], e["seq_lo"], e["seq_hi"]) for e in sent) == [
        ("gas1", 0, 9), ("gas2", 0, 0), ("gas2", 2, 2), ("gas2", 4, 4), ("gas2", 6, 6)]
    ob.close()


def test_a_row_of_a_store_made_before_sealed_messages_whose_readings_do_not_read_is_set_aside(
        tmp_path: Path) -> None:
    """Such a row has no checksum to fail, and its body may still decode after a storage fault changed it: the
    lease, making the site's summaries of it, raised out of the uplink at every try, and nothing more was sent."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_STORE.read_text())
    (body,) = old.execute("SELECT body FROM outbox WHERE id = 5").fetchone()  # gas1's seq 1
    old.execute("UPDATE outbox SET body = ? WHERE id = 5", (cbor2.dumps({**cbor2.loads(body), "e": "not records"}),))
    old.commit()
    old.close()
    conn = open_store(path)
    ob = Outbox(conn, 10**9)
    items = ob.lease(TELEMETRY, 100)
    assert 5 not in {i.id for i in items} and all(i.thinned for i in items)
    assert sorted((e["dev"], e["seq_lo"]) for i in items for e in entries(i)) == sorted(
        [*(("gas1", s) for s in range(10) if s != 1), *(("gas2", s) for s in range(8))])
    ob.ack(i.id for i in items)
    assert list(conn.execute("SELECT id, reason FROM outbox_corrupt")) == [(5, "undecodable")]
    assert ob.depth()["telemetry"] == 0
    ob.close()


def test_a_lease_of_a_store_made_before_sealed_messages_holds_no_more_bytes_than_a_publish(tmp_path: Path) -> None:
    """Such a row goes up as the site's summary of each of its readings' metrics and intervals, which may take
    more bytes than the readings: a node's own backlog of 300 readings in one message, 2.3 times. The lease
    limited its bytes by the rows as stored, and a publish of them outgrew what the district takes."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_STORE.read_text())
    for seq in range(10, 70):
        records = [{"n": "gas1:ch4", "u": "%LEL", "t": T0 + 300 * i, "v": 1.0 + i / 7} for i in range(300)]
        old.execute("INSERT INTO outbox (lane, kind, t, dev, seq, seq_hi, boot, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (TELEMETRY, district.TELEMETRY, T0, "gas1", seq, seq, 1,
                     cbor2.dumps({"dev": "gas1", "seq": seq, "boot": 1, "e": senml_pack("gas1", records)})))
    old.commit()
    old.close()
    ob = Outbox(open_store(path), 10**9)
    sent: list[int] = []
    while items := ob.lease(TELEMETRY, 100, ROW_BYTES):
        assert sum(len(i.body) for i in items) <= ROW_BYTES
        sent += [e["seq_lo"] for i in items for e in entries(i) if e["dev"] == "gas1"]
    assert sorted(sent) == list(range(70))
    ob.close()


def test_a_budget_pass_does_not_grow_a_store_made_before_sealed_messages(tmp_path: Path) -> None:
    """A window of such rows where no run gains from a summary is left as it is (its rows go up as summaries when
    leased): rewritten as a summary a message, it grew, and the pass then evicted every reading of the store."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_STORE.read_text())
    old.execute("DELETE FROM outbox WHERE seq % 2 = 1")  # runs of one: none a summary makes smaller
    old.commit()
    old.close()
    ob = Outbox(open_store(path), 10**9, thin_interval_s=300.0)
    ob.budget_bytes = ob.bytes_used() - 1
    report = ob.enforce_budget()
    assert report is not None and not report.thinned and sum(r.msgs for r in report.evicted.values()) == 2
    assert ob.conn.execute("SELECT count(*), count(crc) FROM outbox WHERE lane = ?", (TELEMETRY,)).fetchone() == (7, 0)
    ob.close()


def test_a_budget_pass_rewrites_a_window_of_a_store_made_before_sealed_messages_only_to_free_bytes(
        tmp_path: Path) -> None:
    """gas1's run of ten gains from a summary, gas3's 30 isolated readings would each take twice their bytes as a
    summary of one: the window rewritten grew, where leaving it frees nothing but loses nothing either."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_STORE.read_text())
    old.execute("DELETE FROM outbox WHERE dev = 'gas2'")
    (body,) = old.execute("SELECT body FROM outbox WHERE dev = 'gas1' AND seq = 0").fetchone()
    for seq in range(0, 60, 2):
        old.execute("INSERT INTO outbox (lane, kind, t, dev, seq, seq_hi, boot, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (TELEMETRY, district.TELEMETRY, 1796694537.06, "gas3", seq, seq, 1,
                     cbor2.dumps({**cbor2.loads(body), "dev": "gas3", "seq": seq})))
    old.commit()
    old.close()
    ob = Outbox(open_store(path), 10**9, thin_interval_s=300.0)
    stored = ob.conn.execute("SELECT total(length(body)) FROM outbox WHERE lane = ?", (TELEMETRY,)).fetchone()[0]
    ob.budget_bytes = ob.bytes_used() - 1
    assert ob.enforce_budget() is not None
    left = ob.conn.execute("SELECT total(length(body)) FROM outbox WHERE lane = ?", (TELEMETRY,)).fetchone()[0]
    assert left < stored
    ob.close()
