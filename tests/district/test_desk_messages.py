"""The device messages behind an alarm at the desk, and "check again", over a real uvicorn on SQLite and
PostgreSQL: the messages are sealed with their device's key and stored as a worker stores them; the check
verifies the stored sealed bytes again with the desk's keys and holds them against the stored readings, so a
reading, a byte or a sequence number changed in the database is told, as is a message past the retention, one
never forwarded sealed and one of a device without a key. A viewer may check; the check changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from deskkit import PASSWORD, USERS, alarm_body, desk_server, ingest, seed
from sqlalchemy import Engine, delete, func, select, update

from district import queries, retention, store
from district.config import MESSAGES_DAYS, ROLLUP_S
from district.schema import messages, readings
from lifeline.virtual.broker import Mosquitto

ALARM, STALE, OLD = "c" * 32, "d" * 32, "f" * 32
RAW_DAYS = 30  # [retention] raw_days unless set


@pytest.fixture
def now() -> float:
    return time.time()


def at(now: float, seq: int) -> float:
    """When gas1's message `seq` was read."""
    return now - 180 + seq * 30


@pytest.fixture
def desk(engine: Engine, now: float) -> Iterator[str]:
    """gas1's methane rising over five messages (seq 1-5, 30 s apart, carbon monoxide beside), the third raising
    a red alarm; a stale alarm of gas2."""
    seed(engine, now)
    for seq in range(1, 6):
        ingest(engine, "gas1", seq, at(now, seq), {"ch4": 10.0 * seq, "co": 3.0}, received=at(now, seq) + 1)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(ALARM, "raised", "red", now - 88, t_dev=at(now, 3)),
                          received=now - 87)
        store.apply_alarm(conn, "s1", alarm_body(STALE, "raised", "yellow", now - 60, dev="gas2", kind="stale",
                                                 metric=None, t_dev=None), received=now - 59)
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        yield url


@pytest.fixture
def viewer(desk: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=desk, timeout=20) as c:
        assert c.post("/api/login", json={"user": USERS["viewer"], "password": PASSWORD}).status_code == 200
        yield c


def stored(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return conn.execute(select(messages).order_by(messages.c.id)).all(), conn.execute(
            select(readings).order_by(readings.c.message, readings.c.n)).all()


def message_id(engine: Engine, seq: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(messages.c.id).where(messages.c.seq_key == seq - (1 << 63))).scalar_one())


def test_an_alarms_messages_and_a_check_of_one_by_a_viewer(viewer: httpx.Client, engine: Engine,
                                                            now: float) -> None:
    got = viewer.get(f"/api/alarms/{ALARM}/messages").json()
    assert (got["site"], got["dev"], got["metric"], got["more"]) == ("s1", "gas1", "ch4", False)
    assert [m["seq"] for m in got["messages"]] == ["3", "4", "5"]  # from the reading that raised it
    first = got["messages"][0]
    assert (first["boot"], first["verified"], first["sealed"]) == ("1", True, True)
    assert first["received"] == at(now, 3) + 1
    assert first["readings"] == [{"n": "ch4", "t": at(now, 3), "u": "%LEL", "v": 30.0},
                                 {"n": "co", "t": at(now, 3), "u": "ppm", "v": 3.0}]
    before = stored(engine)
    check = viewer.get(f"/api/messages/{first['id']}/check").json()
    assert check["verdict"] == "match", check
    assert "MAC holds" in check["says"] and check["sent"] == check["stored"] == first["readings"]
    assert stored(engine) == before  # a read, nothing more

    window = viewer.get("/api/messages", params={"site": "s1", "dev": "gas1", "metric": "ch4",
                                                 "from": now - 200, "to": now}).json()
    assert [m["seq"] for m in window["messages"]] == ["1", "2", "3", "4", "5"]
    stale = viewer.get(f"/api/alarms/{STALE}/messages").json()
    assert stale["messages"] == [] and "silence" in stale["why"]


def test_a_boot_past_2_53_is_sent_as_text(viewer: httpx.Client, engine: Engine, now: float) -> None:
    """A boot count is a 64-bit number, as seq is: sent as a JSON number, the page's JavaScript rounded one past
    2^53 (…993 read …992), so the list and the check showed a boot the device never sent."""
    boot = 2**53 + 1
    ingest(engine, "gas2", 1, now - 20, {"ch4": 1.0}, received=now - 19, boot=boot)
    [got] = viewer.get("/api/messages", params={"site": "s1", "dev": "gas2", "metric": "ch4", "from": now - 60,
                                                "to": now}).json()["messages"]
    assert got["boot"] == str(boot)
    check = viewer.get(f"/api/messages/{got['id']}/check").json()
    assert (check["verdict"], check["boot"]) == ("match", str(boot))


def test_what_was_changed_in_the_database_is_told(viewer: httpx.Client, engine: Engine) -> None:
    reading, byte, seq = message_id(engine, 3), message_id(engine, 4), message_id(engine, 5)
    with engine.begin() as conn:
        conn.execute(update(readings).where(readings.c.message == reading, readings.c.n == "ch4").values(v=3.0))
        sealed = conn.execute(select(messages.c.sealed).where(messages.c.id == byte)).scalar_one()
        conn.execute(update(messages).where(messages.c.id == byte).values(sealed=sealed[:-1] + bytes([sealed[-1] ^ 1])))
        conn.execute(update(messages).where(messages.c.id == seq).values(seq_key=9 - (1 << 63)))
    # the list says what the ingest found, verified; checked again, each says what no longer holds
    assert all(m["verified"] for m in viewer.get(f"/api/alarms/{ALARM}/messages").json()["messages"])
    changed = viewer.get(f"/api/messages/{reading}/check").json()
    assert changed["verdict"] == "differs" and "not the ones gas1 sent" in changed["says"]
    assert {"n": "ch4", "t": changed["sent"][0]["t"], "u": "%LEL", "v": 30.0} in changed["sent"]
    assert {"n": "ch4", "t": changed["sent"][0]["t"], "u": "%LEL", "v": 3.0} in changed["stored"]
    flipped = viewer.get(f"/api/messages/{byte}/check").json()
    assert flipped["verdict"] == "mac-fails" and "not what gas1 sealed" in flipped["says"]
    renumbered = viewer.get(f"/api/messages/{seq}/check").json()
    assert renumbered["verdict"] == "differs" and renumbered["seq"] == "9" and "seq 9" in renumbered["says"]


def test_past_retention_unsealed_and_unkeyed_messages_say_so(viewer: httpx.Client, engine: Engine,
                                                              now: float) -> None:
    ingest(engine, "gas2", 1, now - 3 * 86400, {"ch4": 1.0}, received=now - 3 * 86400 + 1)
    ingest(engine, "gas2", 2, now - 2 * 86400, {"ch4": 2.0}, received=now - 2 * 86400 + 1)
    ingest(engine, "gas2", 3, now - 10, {"ch4": 3.0}, received=now - 9, sealed=False)
    with engine.begin() as conn:
        ids = conn.execute(select(messages.c.id, messages.c.dev, messages.c.seq_key)).all()
    old, folded, unsealed = (next(i for i, d, k in ids if d == "gas2" and k == s - (1 << 63)) for s in (1, 2, 3))
    with engine.begin() as conn:  # the retention: readings past a day folded, messages past 2.5 days deleted
        store.apply_alarm(conn, "s1", alarm_body(STALE, "cleared", None, now - 5, dev="gas2", kind="stale",
                                                 metric=None, t_dev=None), received=now - 4)  # gas2's no longer held
        while retention.fold(conn, now=now, raw_days=1, rollup_s=300):
            pass
        assert retention.prune(conn, now=now, days=2.5, after=old - 1)[0] == 1  # gas1's, newer, come before
    gone = viewer.get(f"/api/messages/{old}/check").json()
    assert gone["verdict"] == "gone" and gone["says"].startswith("not held: the retention")
    rolled = viewer.get(f"/api/messages/{folded}/check").json()
    assert rolled["verdict"] == "folded" and rolled["stored"] == [] and rolled["sent"][0]["v"] == 2.0
    never = viewer.get(f"/api/messages/{unsealed}/check").json()
    assert never["verdict"] == "unsealed" and never["stored"][0]["v"] == 3.0
    with engine.begin() as conn:  # a device the district config no longer lists
        conn.execute(update(messages).where(messages.c.id == folded).values(dev="gas9"))
    assert viewer.get(f"/api/messages/{folded}/check").json()["verdict"] == "no-key"


def test_a_months_old_alarms_messages_are_listed_and_checked_after_the_fold(viewer: httpx.Client,
                                                                          engine: Engine, now: float) -> None:
    """A gas incident of 90 days ago, past raw_days: the retention folded its readings, but its messages and
    their sealed bytes are kept for messages_days, and are what an auditor asks about. They were found by their
    readings, so the list was empty."""
    t = now - 90 * 86400
    for seq in range(101, 105):
        ingest(engine, "gas1", seq, t + (seq - 100) * 30, {"ch4": seq - 90.0, "co": 3.0},
               received=t + (seq - 100) * 30 + 1)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(OLD, "raised", "red", t + 61, t_dev=t + 60), received=t + 62)
        store.apply_alarm(conn, "s1", alarm_body(OLD, "cleared", None, t + 125), received=t + 126)
        while retention.fold(conn, now=now, raw_days=RAW_DAYS, rollup_s=ROLLUP_S):
            pass
        assert retention.prune(conn, now=now, days=MESSAGES_DAYS)[0] == 0
        assert conn.execute(select(func.count()).select_from(readings).where(readings.c.t < now - 86400)).scalar() == 0
    got = viewer.get(f"/api/alarms/{OLD}/messages").json()
    assert [m["seq"] for m in got["messages"]] == ["102", "103", "104"] and got["more"] is False
    assert all(m["folded"] and m["readings"] == [] and m["verified"] and m["sealed"] for m in got["messages"])
    assert got["messages"][0]["span"] == [t + 60, t + 60]
    check = viewer.get(f"/api/messages/{got['messages'][0]['id']}/check").json()
    assert check["verdict"] == "folded" and "MAC holds" in check["says"], check
    assert {"n": "ch4", "t": t + 60, "u": "%LEL", "v": 12.0} in check["sent"]
    window = viewer.get("/api/messages", params={"site": "s1", "dev": "gas1", "metric": "ch4", "from": t,
                                                 "to": t + 3600}).json()
    assert [m["seq"] for m in window["messages"]] == ["101", "102", "103", "104"]
    recent = viewer.get(f"/api/alarms/{ALARM}/messages").json()  # held raw still: as before
    assert [(m["seq"], m["folded"]) for m in recent["messages"]] == [("3", False), ("4", False), ("5", False)]


def test_a_message_whose_older_readings_were_folded_is_not_said_to_differ(viewer: httpx.Client, engine: Engine,
                                                                        now: float) -> None:
    """The retention folds readings by their time, so a message whose readings straddle raw_days holds its newer
    ones until a later pass: checked meanwhile, it was said to differ from what the device sent, a false finding
    of tampering. The same gap made in the database where older readings are still held is told as before."""
    t = now - RAW_DAYS * 86400 - 100
    ingest(engine, "gas2", 7, t, {"ch4": 4.0, "co": 5.0}, received=t + 300, spread=200)  # co 100 s inside raw_days
    with engine.begin() as conn:
        while retention.fold(conn, now=now, raw_days=RAW_DAYS, rollup_s=ROLLUP_S):
            pass
    check = viewer.get(f"/api/messages/{message_id(engine, 7)}/check").json()
    assert check["verdict"] == "folded", check
    assert check["stored"] == [{"n": "co", "t": t + 200, "u": "ppm", "v": 5.0}] and len(check["sent"]) == 2
    assert "1 of its 2 readings" in check["says"]
    third = message_id(engine, 3)
    with engine.begin() as conn:
        conn.execute(delete(readings).where(readings.c.message == third, readings.c.n == "ch4"))
    assert viewer.get(f"/api/messages/{third}/check").json()["verdict"] == "differs"


def test_hostile_ids_and_windows_are_refused_and_a_list_is_bounded(viewer: httpx.Client, desk: str,
                                                                    engine: Engine, now: float) -> None:
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(messages.c.id))).scalar_one()
    for path in ("/api/messages/abc/check", "/api/messages/0/check", "/api/messages/-1/check",
                 f"/api/messages/{2**63}/check", f"/api/messages/{10**30}/check", f"/api/messages/{newest + 1}/check",
                 "/api/alarms/not-an-alarm/messages", f"/api/alarms/{'e' * 32}/messages",
                 f"/api/alarms/{'C' * 32}/messages"):
        r = viewer.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    for params in ({"site": "s1", "dev": "gas1"}, {"site": "s1", "dev": "gas1", "metric": "ch4", "from": "x"},
                   {"site": "s1", "dev": "gas1", "metric": "ch4", "from": now, "to": now - 1},
                   {"site": "s1", "dev": "gas1", "metric": "ch4\x00"}):
        assert viewer.get("/api/messages", params=params).status_code == 400, params
    with httpx.Client(base_url=desk) as anonymous:
        assert anonymous.get(f"/api/alarms/{ALARM}/messages").status_code == 401
        assert anonymous.get(f"/api/messages/{newest}/check").status_code == 401
    for seq in range(10, 10 + queries.MESSAGES_SHOWN + 5):
        ingest(engine, "gas1", seq, now - 50 + seq * 0.1, {"ch4": 1.0}, received=now, sealed=False)
    got = viewer.get(f"/api/alarms/{ALARM}/messages").json()
    assert len(got["messages"]) == queries.MESSAGES_SHOWN and got["more"] is True
