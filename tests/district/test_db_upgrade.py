"""A district upgraded in place: today's district started on a database an older release made (tests/district/
old_databases/, each file's header says which commit made it and how) upgrades it at start, shows the same
history, and takes its site's resends of what it had as resends."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, func, select

from district import queries, store
from district.config import ROLLUP_S
from district.schema import alarm_events, alarms, audit, messages, reports, seq_of, work_orders
from gateway.rules import default_ruleset
from lifeline.virtual.postgres import Postgres
from protocol.district_verify import Verifier

OLD = Path(__file__).parent / "old_databases"
# The last commit of a day with the district, by schema: 12-04's (no rollout tables, transitions without numbers),
# 12-06's (12-05's schema: rollout tables), 12-07's (numbered transitions; reports without a key).
RELEASES = {"88e0f37": True, "b5b83f9": True, "592c50d": True}  # whether today's district upgrades it
KEYS = {"gas1": bytes([1]) * 32, "gas2": bytes([2]) * 32}  # the virtual site's device keys the dumps were made with
TRAIL = [("opened", "system", "orange ch4"), ("ack", "li.wei", None), ("dispatch", "li.wei", None),
         ("report", "li.wei", "valve seal leaking"), ("send-back", "chen", "give the reading after the repair"),
         ("dispatch", "li.wei", None)]


@pytest.fixture(params=[(r, e) for r in RELEASES for e in ("sqlite", "postgresql")], ids="-".join)
def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The release's database loaded from its dump on its engine, as store.open_engine takes it."""
    release, engine = request.param
    script = (OLD / f"{release}.{engine}.sql").read_text()
    if engine == "sqlite":
        path = tmp_path / "district.sqlite"
        conn = sqlite3.connect(path)
        conn.executescript(script)
        conn.close()
        yield str(path)
        return
    pg: Postgres = request.getfixturevalue("postgres")
    name = f"upgrade_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as loading:
        loading.execute(script.encode())  # bytes: a str read from a file is no literal to the type checker
    yield url
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def upgraded(request: pytest.FixtureRequest, old_url: str, caplog: pytest.LogCaptureFixture) -> Iterator[Engine]:
    """Today's district started on it: it says each step of an upgrade, and a second start finds nothing to do."""
    release = request.node.callspec.params["old_url"][0]
    with caplog.at_level(logging.INFO, logger="lifeline.district.store"):
        engine = store.open_engine(old_url)
        said = [r.getMessage() for r in caplog.records]
        assert ("database-upgrade" in said) == RELEASES[release], said
        assert said.count("database-upgraded") == RELEASES[release], said
        caplog.clear()
        store.open_engine(old_url).dispose()
        assert not [r for r in caplog.records if r.getMessage().startswith("database-upgrade")]
    try:
        yield engine
    finally:
        engine.dispose()


def alarm_of(conn: Connection, dev: str) -> Any:
    return conn.execute(select(alarms).where(alarms.c.dev == dev)).one()


def transitions(conn: Connection, dev: str) -> list[tuple[str, str | None]]:
    """An alarm's transitions as the desk's chart gives them."""
    now = time.time()
    shown = queries.history(conn, default_ruleset(), "s1", dev, "ch4", 1.7e9, now, ROLLUP_S)
    return [(t["ev"], t["level"]) for t in shown["transitions"]]


def test_the_desk_shows_an_older_releases_history(upgraded: Engine) -> None:
    """Alarms with their transitions, the work order's whole trail with its correction, the audit, the readings
    and each message checked again against what its device sealed, the response times."""
    with store.reader(upgraded) as conn:
        assert transitions(conn, "gas1") == [("raised", "orange"), ("escalated", "red"), ("cleared", None)]
        assert transitions(conn, "gas2") == [("raised", "blue")]
        assert [(a["dev"], a["level"], a["acked"]) for a in queries.open_alarms(conn, {})] == [("gas2", "blue", None)]
        order = conn.execute(select(work_orders.c.id)).scalar_one()
        shown = queries.work_order(conn, order)
        assert shown is not None
        assert (shown["alarm"], shown["state"], shown["round"], shown["team"]) == (
            alarm_of(conn, "gas1").id, "dispatched", 2, "pipe team 4")
        assert [(s["step"], s["actor"], s["note"]) for s in shown["steps"]] == TRAIL
        assert shown["steps"][3]["action"] == "seal replaced"
        assert [(r.actor, r.what) for r in conn.execute(select(audit).order_by(audit.c.id))] == [
            (actor, step) for step, actor, _ in TRAIL[1:]]
        now = time.time()
        values = [v for _, v in queries.history(conn, default_ruleset(), "s1", "gas1", "ch4", 1.7e9, now,
                                                ROLLUP_S)["readings"]]
        assert values == [1.0, 2.0, 30.0, 30.0, 60.0, 60.0, 3.0, 3.0]
        verifier = Verifier({}, KEYS, track=False)
        ids = list(conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars())
        assert len(ids) == 11
        assert {i: (queries.check_message(conn, i, verifier) or {}).get("verdict") for i in ids} == {
            i: "match" for i in ids}
        red = queries.response_times(conn)["colour"]["red"]
        assert (red["alarm_ack"]["count"], red["ack_dispatch"]["count"]) == (1, 1)


def test_the_sites_resends_after_an_upgrade_are_not_new(upgraded: Engine) -> None:
    """The gateway re-sends an alarm until it is acknowledged, and a message until the district confirms it:
    gas2's blue, unacknowledged, as the older release's gateway sends it and as today's does after its own upgrade
    (a transition it stored without a number it reads as step 0, gateway/alarms.py), is the transition the
    district has; an old message again is not new; the device's next message is."""
    with upgraded.begin() as conn:
        blue = alarm_of(conn, "gas2")
        stored = conn.execute(select(func.count()).select_from(alarm_events)).scalar_one()
        body = {"id": blue.id, "ev": "raised", "kind": "level", "dev": "gas2", "cls": "gas", "metric": "ch4",
                "level": "blue", "prev": None, "value": blue.value, "t_gw": blue.t_last, "t_dev": blue.t_dev,
                "unit": "%LEL", "rule": "gas.ch4", "point": None}
        numbered = {} if blue.step is None else {"step": blue.step}
        for resend in ({**body, **numbered, "resend": 3}, {**body, "step": blue.step or 0, "resend": 4}):
            assert not store.apply_alarm(conn, "s1", resend, received=time.time())
        assert conn.execute(select(func.count()).select_from(alarm_events)).scalar_one() == stored
        assert transitions(conn, "gas2") == [("raised", "blue")]
        last = conn.execute(select(messages).where(messages.c.dev == "gas2").order_by(messages.c.seq_key.desc())
                            .limit(1)).one()
        reading = [{"n": "ch4", "t": time.time(), "u": "%LEL", "v": 2.0}]
        assert not store.add_message(conn, "s1", "gas2", seq_of(last.seq_key), last.boot, reading,
                                     received=time.time())
        assert store.add_message(conn, "s1", "gas2", seq_of(last.seq_key) + 1, last.boot, reading,
                                 received=time.time())


def test_a_backlogs_alarm_its_upgraded_gateway_re_sends_live_is_live(upgraded: Engine) -> None:
    """gas2's blue as an older release stored an alarm raised in its site's backlog (historical, the alarm and its
    transition): today's gateway, upgraded on its store, re-sends it live (step 0, gateway/alarms.py) while it is
    unacknowledged, which makes it live on the board, as a resend from a gateway without numbers does."""
    with upgraded.begin() as conn:
        blue = alarm_of(conn, "gas2")
        conn.execute(alarms.update().where(alarms.c.id == blue.id).values(hist=True))
        conn.execute(alarm_events.update().where(alarm_events.c.alarm == blue.id).values(hist=True))
        body = {"id": blue.id, "ev": "raised", "kind": "level", "dev": "gas2", "level": "blue", "t_gw": blue.t_last,
                "step": blue.step or 0, "resend": 3}
        new = store.apply_alarm(conn, "s1", body, received=time.time())
        assert not new
        assert store.resent_alarm(conn, "s1", body, new=new, received=time.time(), hist=False).revived
        assert [(a["dev"], a["state"]) for a in queries.open_alarms(conn, {})] == [("gas2", "open")]


def test_a_report_delivered_again_after_an_upgrade_is_stored_once(upgraded: Engine) -> None:
    """Reports had no key: the upgrade adds it, NULL for the rows before (as the one made here), which never
    stand in the way of a report; a report delivered twice since is stored once."""
    gap = '{"dev": "gas1", "kind": "gap", "first": 3, "last": 5, "since": 1763900000.0}'
    with upgraded.begin() as conn:
        conn.execute(reports.insert().values(site="s1", kind="dq", dev="gas1", body=gap, received=time.time()))
        for _ in range(2):
            store.add_report(conn, "s1", "dq", "gas1", gap, received=time.time())
        assert conn.execute(select(reports.c.digest.is_(None)).order_by(reports.c.id)).scalars().all() == [True, False]
