"""A site's report delivered again (MQTT QoS 1 is at-least-once: a gateway re-sends a row whose PUBACK was lost,
at every reconnect, marked "hist" in the later session) is stored once, on SQLite and on PostgreSQL; a report
that differs is stored."""

from __future__ import annotations

import json

from sqlalchemy import Engine
from test_hostile_upstream import T0, entry, publish, rows, telemetry, worker

from district.schema import reports
from protocol import district as dtopics

EVENT = {"dev": "gas1", "ev": "prealarm", "seq": 7, "boot": 1, "pri": 1, "t": T0}
GAP = {"dev": "gas1", "kind": "gap", "first": 3, "last": 5, "since": T0}


async def test_an_event_and_a_gap_report_delivered_again_are_stored_once(engine: Engine) -> None:
    """Each was stored at every delivery: the duty officer saw the event and the gap twice or more."""
    w = worker(engine)
    again = publish(dtopics.UP_EVENT, EVENT)
    w.handle([again])
    w.handle([again])  # the same publish, its PUBACK lost
    w.handle([publish(dtopics.UP_EVENT, {**EVENT, "hist": True}), publish(dtopics.DQ, GAP)])  # the next session
    w.handle([publish(dtopics.DQ, {**GAP, "hist": True}), publish(dtopics.UP_EVENT, {**EVENT, "seq": 8})])
    kept = [(kind, json.loads(body)) for kind, body in rows(engine, reports, reports.c.kind, reports.c.body)]
    assert sorted(kept, key=str) == sorted([("event", EVENT), ("dq", GAP), ("event", {**EVENT, "seq": 8})], key=str)


async def test_a_telemetry_body_delivered_again_stores_its_summaries_once(engine: Engine) -> None:
    """A thinned body's summaries were stored again at each delivery: the desk's counts built on them doubled."""
    w = worker(engine)
    summaries = [{"dev": "gas1", "seq_lo": i, "seq_hi": i + 1, "msgs": 2} for i in (1, 3)]
    body = telemetry(entry("gas1", 9), thinned=summaries)
    w.handle([publish(dtopics.TELEMETRY, body)])
    w.handle([publish(dtopics.TELEMETRY, body), publish(dtopics.TELEMETRY, {**body, "hist": True})])
    assert sorted(json.loads(b)["seq_lo"] for b, in rows(engine, reports, reports.c.body)) == [1, 3]
