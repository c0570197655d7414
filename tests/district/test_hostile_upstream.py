"""A publish a site seals is checked field by field before it is stored; one the checks cannot store is refused
with its reason and kept, and never takes the batch with it. Each case is a batch of a good telemetry publish
and a bad one (or a telemetry body with a good entry beside a bad one), on SQLite and on PostgreSQL, whose
text columns have a width and refuse a NUL. Before these checks, each case raised out of the worker's batch:
the batch was rolled back and delivered again, for good."""

from __future__ import annotations

import json
import time
from typing import Any

import cbor2
import pytest
from sqlalchemy import Engine, event, func, select
from starlette.responses import JSONResponse

from district import queries, store
from district.ingest import Worker
from district.schema import alarms, commands, messages, ota_progress, refusals, reports
from gateway.ingest import Incoming
from gateway.message_decode import loads_one
from gateway.site_config import BrokerConfig
from protocol import auth, message, senml, site_seal
from protocol import district as dtopics
from protocol.district_verify import Verifier

KEYS = {"north": bytes(32), "south": bytes(range(32))}
DEV_KEYS = {"gas1": b"\x01" * 32, "gas2": b"\x02" * 32, "s-gas1": b"\x03" * 32}
REGISTRY = {"north": {"gas1", "gas2"}, "south": {"s-gas1"}}
T0 = 1_763_900_000.0
HUGE = 10**400  # a CBOR bignum past a float's range
DIGITS = 10**5000  # one past the digits Python writes an integer in (4,300): its repr raises ValueError


def worker(engine: Engine) -> Worker:
    return Worker(engine, BrokerConfig("127.0.0.1", 1, "x", None, None, None, 30),
                  Verifier(KEYS, DEV_KEYS, track=False, loads=loads_one), REGISTRY)


def publish(kind: str, body: Any, site: str = "north") -> Incoming:
    return Incoming(dtopics.up(site, kind), site_seal.seal(KEYS[site], site, kind, cbor2.dumps(body)), False,
                    time.time())


def sealed(dev: str, seq: int, value: Any = 1.5, unit: str = "%LEL") -> bytes:
    return message.encode(message.data(dev, 1, seq, senml.pack([senml.record("ch4", value, unit)], bn=dev + ":",
                                                                bt=T0)), DEV_KEYS[dev])


def sealed_raw(dev: str, payload: dict[str, Any]) -> bytes:
    """A device message around any payload (a bignum, a null base name), with the device's genuine MAC."""
    return auth.seal(DEV_KEYS[dev], dev.encode(), cbor2.dumps(payload))


def entry(dev: str, seq: int, m: bytes | None = None, **extra: Any) -> dict[str, Any]:
    return {"dev": dev, "seq": seq, "boot": 1, "m": sealed(dev, seq) if m is None else m, **extra}


def telemetry(*entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"site": "north", "packs": list(entries), **extra}


def alarm(**changes: Any) -> dict[str, Any]:
    return {"id": "a" * 32, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4",
            "level": "red", "prev": None, "value": 60.0, "reading": 60.0, "rule": "gas.ch4", "rver": 1,
            "t_dev": T0, "t_gw": T0 + 1, "resend": 0, **changes}


def state(**changes: Any) -> dict[str, Any]:
    return {"dev": "gas1", "st": "online", "boot": 1, "seq": 0, "t": T0, "retained": False, "fw": "1",
            "prof": "gas", **changes}


def raw_data(dev: str, seq: int, boot: int = 1, record: dict[int, Any] | None = None) -> bytes:
    """A data message of one SenML record, with `record`'s labels in place of the usual ones."""
    rec: dict[int, Any] = {senml.BN: dev + ":", senml.BT: T0, senml.N: "ch4", senml.U: "%LEL", senml.V: 1.5}
    rec.update(record or {})
    return sealed_raw(dev, {"k": "data", "boot": boot, "seq": seq, "e": [rec]})


def rows(engine: Engine, table: Any, *columns: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*columns) if columns else select(func.count())
                                               .select_from(table)).all()]


# A bad pack entry beside a good one in the same body: the good one is stored, the bad one refused alone.
BAD_ENTRIES = {
    "gateway times not an array": (entry("gas2", 1, t=5), "malformed"),
    "a gateway time past a float": (entry("gas2", 1, t=[HUGE]), "senml"),
    "a gateway time that is a boolean": (entry("gas2", 1, t=[True]), "senml"),
    "a boot past 63 bits": ({"dev": "gas2", "seq": 1, "boot": 1 << 63, "m": raw_data("gas2", 1, boot=1 << 63)},
                            "schema"),
    "a value past a float": (entry("gas2", 1, raw_data("gas2", 1, record={senml.V: HUGE})), "senml"),
    "a base time past a float": (entry("gas2", 1, raw_data("gas2", 1, record={senml.BT: HUGE})), "senml"),
    "a null base name": (entry("gas2", 1, raw_data("gas2", 1, record={senml.BN: None})), "malformed"),
    "a unit wider than its column": (entry("gas2", 1, sealed("gas2", 1, unit="u" * 17)), "senml"),
    "a NUL in a text value": (entry("gas2", 1, sealed("gas2", 1, value="a\x00b")), "senml"),
    "a device id of more digits than Python writes": ({**entry("gas2", 1), "dev": DIGITS}, "schema"),
    "a SenML version of more digits than Python writes":
        (entry("gas2", 1, raw_data("gas2", 1, record={senml.BVER: DIGITS})), "malformed"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
async def test_a_bad_pack_entry_is_refused_alone(engine: Engine, case: str) -> None:
    bad, reason = BAD_ENTRIES[case]
    w = worker(engine)
    w.handle([publish(dtopics.TELEMETRY, telemetry(entry("gas1", 1), bad))])
    assert rows(engine, messages, messages.c.dev) == [("gas1",)]
    assert rows(engine, refusals, refusals.c.reason) == [(reason,)]


async def test_a_bad_thinned_summary_is_refused_alone(engine: Engine) -> None:
    """A summary of what the site thinned is the gateway's, not a device's: one it got wrong refused the whole
    body, and the device messages beside it, each with its device's genuine MAC, were lost to the desk."""
    good = {"dev": "gas1", "seq_lo": 1, "seq_hi": 2, "msgs": 2}
    bad = [{"dev": [1], "seq_lo": 3}, {"dev": "gas1", "s": {(1, 2): 1}}, 7]
    w = worker(engine)
    w.handle([publish(dtopics.TELEMETRY, telemetry(entry("gas1", 1), thinned=[bad[0], good, *bad[1:]]))])
    assert rows(engine, messages, messages.c.dev) == [("gas1",)]
    assert [json.loads(body) for body, in rows(engine, reports, reports.c.body)] == [good]
    assert rows(engine, refusals, refusals.c.reason, refusals.c.payload) == [("schema", cbor2.dumps(b)) for b in bad]


# A bad publish beside a good telemetry publish in the same batch: refused whole, the telemetry stored.
BAD_PUBLISHES = {
    "an alarm value past a float": (dtopics.ALARM, alarm(value=HUGE)),
    "an alarm time past a float": (dtopics.ALARM, alarm(t_gw=HUGE)),
    "an alarm reading past a float": (dtopics.ALARM, alarm(reading=HUGE)),
    "an alarm class wider than its column": (dtopics.ALARM, alarm(cls="c" * 17)),
    "an alarm rule wider than its column": (dtopics.ALARM, alarm(rule="r" * 65)),
    "a NUL in an alarm rule": (dtopics.ALARM, alarm(rule="gas\x00ch4")),
    "an alarm step past its column": (dtopics.ALARM, alarm(step=1 << 31)),
    "an alarm step that is a boolean": (dtopics.ALARM, alarm(step=True)),
    "a negative alarm step": (dtopics.ALARM, alarm(step=-1)),
    "a device boot past 63 bits": (dtopics.UP_STATE, state(boot=1 << 63)),
    "a battery level past a float": (dtopics.UP_STATE, state(batt=HUGE)),
    "a profile wider than its column": (dtopics.UP_STATE, state(prof="p" * 17)),
    "a NUL in a firmware version": (dtopics.UP_STATE, state(fw="1\x00")),
    "a report with a map keyed by an array": (dtopics.UP_EVENT, {"dev": "gas1", "ev": "x", "x": {(1, 2): 1}}),
    "a report whose dev is not an id": (dtopics.DQ, {"dev": [1], "ev": "gap"}),
    "an alarm device id of more digits than Python writes": (dtopics.ALARM, alarm(dev=DIGITS)),
    "an alarm id of more digits than Python writes": (dtopics.ALARM, alarm(id=DIGITS)),
    "a report whose dev has more digits than Python writes": (dtopics.DQ, {"dev": DIGITS, "ev": "gap"}),
    "thinned summaries that are not an array": (dtopics.TELEMETRY, telemetry(entry("gas2", 1), thinned=7)),
    "an OTA report naming a release twice": (dtopics.UP_OTA, {"t": T0, "nodes": [], "releases": [
        {"v": "1.2", "profiles": ["gas"], "n": 100, "sig": bytes(64), "size": 1000}] * 2}),
    "an OTA version wider than its column": (dtopics.UP_OTA, {"t": T0, "nodes": [
        {"dev": "gas1", "v": ".".join(["123456"] * 5), "done": 1, "total": 2, "t": T0}]}),
}


@pytest.mark.parametrize("case", list(BAD_PUBLISHES))
async def test_a_bad_publish_is_refused_and_the_batch_stored(engine: Engine, case: str) -> None:
    kind, body = BAD_PUBLISHES[case]
    w = worker(engine)
    bad = publish(kind, body)
    w.handle([publish(dtopics.TELEMETRY, telemetry(entry("gas1", 1))), bad])
    assert rows(engine, messages, messages.c.dev) == [("gas1",)]
    assert rows(engine, refusals, refusals.c.reason, refusals.c.payload) == [("schema", bad.payload)]


async def test_values_json_has_no_form_for_are_kept_by_their_repr(engine: Engine) -> None:
    """A CBOR tag or undefined in a body kept as it came, and an ack naming a command id past any column."""
    w = worker(engine)
    w.handle([publish(dtopics.UP_EVENT, {"dev": "gas1", "ev": "x", "tag": cbor2.CBORTag(1, 5), "u": cbor2.undefined}),
              publish(dtopics.UP_ACK, {"re": "cmd", "dev": "gas1", "id": 1 << 64, "ok": True, "res": None}),
              publish(dtopics.TELEMETRY, telemetry(entry("gas1", 1), thinned=[
                  {"dev": "gas1", "seq_lo": 1, "seq_hi": 2, "s": [{"n": "ch4", "t": cbor2.CBORTag(1, 5)}]}]))])
    kept = dict(rows(engine, reports, reports.c.kind, reports.c.body))
    assert sorted(kept) == ["ack", "event", "thinned"]
    assert "CBORTag(1, 5)" in kept["event"] and "undefined" in kept["event"]
    assert rows(engine, messages, messages.c.dev) == [("gas1",)] and rows(engine, refusals) == [(0,)]


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def test_a_nan_or_an_infinity_in_a_body_kept_is_stored_as_json(engine: Engine) -> None:
    """JSON has no NaN and no infinity: they were written bare (NaN, Infinity), text no strict parser reads, and the
    desk's view of a command answered with one (GET /api/commands/{id}) failed with a 500 whenever it was asked.
    Kept by their repr, as any other value JSON has no form for."""
    with engine.begin() as conn:
        conn.execute(commands.insert().values(id=7, site="north", dev="gas1", op="read", args="{}", actor="op",
                                              sent=T0))
    nan, inf = float("nan"), float("inf")
    w = worker(engine)
    w.handle([publish(dtopics.UP_ACK, {"re": "cmd", "dev": "gas1", "id": 7, "ok": True,
                                       "res": {"ch4": nan, "peak": [inf, -inf, 1.5], inf: 1}}),
              publish(dtopics.DQ, {"dev": "gas1", "ev": "gap", "rate": nan})])
    assert [strict_json(body)["dev"] for body, in rows(engine, reports, reports.c.body)] == ["gas1", "gas1"]
    with engine.connect() as conn:
        answer = queries.command_state(conn, 7)
    assert answer is not None and answer["state"] == "done"
    assert answer["result"] == {"ch4": "nan", "peak": ["inf", "-inf", 1.5], "inf": 1}
    assert JSONResponse(answer).status_code == 200  # the desk's encoder, which refuses a NaN


async def test_a_site_cannot_change_another_sites_alarm(engine: Engine) -> None:
    w = worker(engine)
    w.handle([publish(dtopics.ALARM, alarm())])
    w.handle([publish(dtopics.ALARM, alarm(dev="s-gas1", ev="cleared", level=None, prev="red", t_gw=T0 + 5),
                      site="south")])
    assert rows(engine, alarms, alarms.c.site, alarms.c.dev, alarms.c.state) == [("north", "gas1", "open")]
    assert rows(engine, refusals, refusals.c.reason) == [("foreign-alarm",)]


async def test_a_publish_that_fails_in_a_way_no_check_foresaw_is_refused_alone(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met by one publish (injected here into the device-state write) costs that publish, kept as
    "internal", and not the batch beside it."""
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "device_state", broken)
    w = worker(engine)
    w.handle([publish(dtopics.UP_STATE, state()), publish(dtopics.TELEMETRY, telemetry(entry("gas1", 1)))])
    assert rows(engine, messages, messages.c.dev) == [("gas1",)]
    assert rows(engine, refusals, refusals.c.reason, refusals.c.detail) == [("internal", "RuntimeError: a bug")]


def statements(engine: Engine, w: Worker, incoming: Incoming) -> int:
    """The statements the worker runs to store one publish."""
    ran = []

    def count(*args: Any) -> None:
        ran.append(1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        w.handle([incoming])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(ran)


async def test_a_bodys_thinned_summaries_are_stored_in_statements_not_one_each(engine: Engine) -> None:
    """A publish of up to a MiB may hold 105,000 of the smallest summaries a site can seal ({"dev": "gas1"}): each
    was its own INSERT, 11 s of a worker under SQLite's write lock (every site's ingest waiting) and 29 s on
    PostgreSQL, where a MiB of device messages takes 0.5 s and 1.2 s. They are stored together, in as many
    statements as a body of few."""
    w = worker(engine)
    few, many = ([{"dev": "gas1", "seq_lo": i, "seq_hi": i, "msgs": 1} for i in range(n)] for n in (3, 2000))
    ran = [statements(engine, w, publish(dtopics.TELEMETRY, telemetry(entry("gas1", i), thinned=summaries)))
           for i, summaries in ((1, few), (2, many))]
    assert ran[0] == ran[1]
    assert sorted(json.loads(body)["seq_lo"] for body, in rows(engine, reports, reports.c.body)) == list(
        range(2000))  # few's three are many's first three: the same summaries, stored once


async def test_a_bodys_bad_entries_are_refused_in_statements_and_their_number_bounded(engine: Engine) -> None:
    """Each bad entry of a body is refused alone, its own row: packs of 100,000 zeros (100 KB) were a row and an
    INSERT each, 12 s of a worker under SQLite's write lock (every site's ingest waiting) and 27.5 s on
    PostgreSQL, and a MiB of them ten times that. Now a body's refusals are written together, and a body of more
    entries than any gateway fits in a publish (upstream.MAX_ENTRIES) is refused whole, at once."""
    w = worker(engine)
    ran = [statements(engine, w, publish(dtopics.TELEMETRY, telemetry(entry("gas1", i), *[0] * n)))
           for i, n in ((1, 3), (2, 1000))]
    assert ran[0] == ran[1]
    assert rows(engine, refusals) == [(1003,)] and rows(engine, messages) == [(2,)]
    flood = publish(dtopics.TELEMETRY, telemetry(entry("gas1", 3), *[0] * 25_000))
    w.handle([flood])
    assert rows(engine, messages) == [(2,)]
    with engine.connect() as conn:
        last = conn.execute(select(refusals.c.reason, refusals.c.payload).order_by(refusals.c.id.desc())).first()
    assert rows(engine, refusals) == [(1004,)] and tuple(last) == ("schema", flood.payload)


async def test_an_ota_reports_nodes_are_stored_in_statements_not_one_each(engine: Engine) -> None:
    """A site's OTA report names up to 10,000 nodes (upstream.MAX_OTA_NODES), each upserted on its own: 400 KB
    of them held a worker 2.4 s under SQLite's write lock and 5.2 s on PostgreSQL, about twelve times what as many
    bytes of device messages take. They are written together; a node named twice keeps its newest progress."""
    w = worker(engine)

    def report(n: int, t0: float) -> Incoming:
        return publish(dtopics.UP_OTA, {"t": T0, "nodes": [
            {"dev": "gas1" if i % 2 else "gas2", "v": "1.2", "done": i, "total": 5000, "t": t0 + i} for i in range(n)]})

    assert statements(engine, w, report(3, T0)) == statements(engine, w, report(2000, T0 + 10))
    with engine.connect() as conn:
        newest = conn.execute(select(ota_progress.c.dev, ota_progress.c.done).order_by(ota_progress.c.dev)).all()
    assert [tuple(r) for r in newest] == [("gas1", 1999), ("gas2", 1998)] and rows(engine, refusals) == [(0,)]
