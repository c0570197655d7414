"""Requests the desk must answer with a 4xx and nothing changed, on SQLite and on PostgreSQL: ids past a BIGINT,
text JSON can carry and no column keeps (a lone surrogate, a NUL), numbers past a float, a body larger than the
desk reads. Each was a 500 before (the driver or the parser raised). The desk runs in process over a real
database; what it would send down is recorded, and nothing here reaches the downlink."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from deskkit import PASSWORD, RISK_POINTS, USERS, seed
from sqlalchemy import Engine, delete, event, func, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from district import queries, rollout, store
from district.accounts import SESSION_S, Session
from district.config import ROLLUP_S
from district.desk import MAX_BODY, make_app
from district.downlink import Downlink, DownlinkError
from district.live import Hub, notice, read_notice
from district.rollout import RolloutError
from district.schema import ONE_RUNNING_ROLLOUT, commands, messages, ota_rollouts, readings, sessions, work_orders
from gateway.rules import default_ruleset

ALARM = "c" * 32


class Recorded:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))


@pytest.fixture
def desk(engine: Engine) -> Iterator[tuple[Starlette, Hub, Recorded]]:
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", {"id": ALARM, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas",
                                       "metric": "ch4", "level": "red", "t_gw": now - 60, "value": 60.0},
                          received=now - 59)
    hub, sent = Hub(), Recorded()
    yield make_app(engine, hub=hub, downlink=Downlink(sent), risk_points=RISK_POINTS, rollouts=False), hub, sent


def logged_in(app: Starlette, role: str = "supervisor") -> tuple[TestClient, dict[str, str]]:
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/api/login", json={"user": USERS[role], "password": PASSWORD})
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf"]}


@pytest.mark.parametrize("path", ["/api/commands/9223372036854775808", "/api/work-orders/99999999999999999999"])
def test_an_id_past_a_bigint_is_not_found(desk: Any, path: str) -> None:
    client, _ = logged_in(desk[0])
    assert client.get(path).status_code == 404


def test_halting_a_rollout_past_a_bigint_is_not_found(desk: Any) -> None:
    client, csrf = logged_in(desk[0])
    assert client.post("/api/ota/rollouts/99999999999999999999/halt", json={}, headers=csrf).status_code == 404


BAD_TEXT = {"a lone surrogate": "\ud800", "a NUL": "a\x00b"}


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> int:
    """The body as JSON text escapes it (a lone surrogate as \\ud800), as a browser's JSON.stringify does."""
    return client.post(path, content=json.dumps(body), headers={**(headers or {}),
                                                                "content-type": "application/json"}).status_code


@pytest.mark.parametrize("bad", list(BAD_TEXT))
def test_text_no_column_keeps_is_refused_in_a_body(desk: Any, engine: Engine, bad: str) -> None:
    app, _, sent = desk
    anyone = TestClient(app, raise_server_exceptions=False)
    assert post(anyone, "/api/login", {"user": BAD_TEXT[bad], "password": "x"}) == 400
    client, csrf = logged_in(app)
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id)).scalar_one()
    assert post(client, f"/api/work-orders/{order}/dispatch", {"team": BAD_TEXT[bad]}, csrf) == 400
    assert post(client, "/api/commands", {"site": "s1", "dev": "gas1", "op": BAD_TEXT[bad], "args": {}}, csrf) == 400
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state)).scalar_one() == "open"
        assert conn.execute(select(func.count()).select_from(commands)).scalar() == 0
    assert sent.sent == []


@pytest.mark.parametrize("char", ["\x7f", "\x9b", "\u202e", "\u2067"], ids=["DEL", "CSI", "RLO", "RLI"])
def test_work_order_text_that_reads_other_than_written_is_a_400_naming_the_field(desk: Any, engine: Engine,
                                                                                  char: str) -> None:
    """Was stored and shown to the team: a bidi override reorders what the officer typed."""
    client, csrf = logged_in(desk[0])
    with engine.connect() as conn:
        order = conn.execute(select(work_orders.c.id)).scalar_one()
    assert client.post(f"/api/alarms/{ALARM}/ack", json={}, headers=csrf).status_code == 200
    r = client.post(f"/api/work-orders/{order}/dispatch", json={"team": f"pipe {char}3"}, headers=csrf)
    assert r.status_code == 400 and r.json()["error"].startswith("team: "), r.text
    assert client.post(f"/api/work-orders/{order}/dispatch", json={"team": "pipe 3"}, headers=csrf).status_code == 200
    r = client.post(f"/api/work-orders/{order}/report", json={"findings": "leak", "action": f"seal{char} fixed"},
                    headers=csrf)
    assert r.status_code == 400 and r.json()["error"].startswith("action taken: "), r.text
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state, work_orders.c.team)).one() == ("dispatched", "pipe 3")


def test_a_nul_in_the_address_is_refused(desk: Any) -> None:
    """(A lone surrogate cannot be written into an address: percent-encoded, it is not UTF-8, and is read as
    U+FFFD.)"""
    client, csrf = logged_in(desk[0])
    assert client.get("/api/devices", params={"site": "s\x001"}).status_code == 400
    assert client.get("/api/history", params={"site": "s1", "dev": "gas\x001", "metric": "ch4"}).status_code == 400
    assert client.post("/api/alarms/c%00/ack", json={}, headers=csrf).status_code == 400


def test_a_session_cookie_with_a_nul_is_no_session(desk: Any) -> None:
    client = TestClient(desk[0], raise_server_exceptions=False)
    assert client.get("/api/me", headers={"cookie": 'lifeline_desk="ab\\000cd"'}).status_code == 401


def offer_release(engine: Engine, now: float) -> None:
    """Site s1 serving release 0.2.0 to its two gas nodes, so a rollout gets as far as its plan."""
    with engine.begin() as conn:
        for dev in ("gas1", "gas2"):
            store.device_state(conn, "s1", {"dev": dev, "st": "online", "boot": 1, "seq": 0, "t": now, "fw": "0.1.0",
                                            "prof": "gas"}, received=now)
        store.ota_report(conn, "s1", [], [{"v": "0.2.0", "profiles": ["gas"], "n": 300, "sig": bytes(64),
                                           "size": 70_000}], received=now)


def test_numbers_past_a_float_are_refused(desk: Any, engine: Engine) -> None:
    client, csrf = logged_in(desk[0])
    ruleset = {"version": 2, "gas": {"ch4": {"direction": "above", "levels": {"red": 10**400}, "clear": {"red": 1}}}}
    assert client.post("/api/rules", json={"site": "s1", "ruleset": ruleset}, headers=csrf).status_code == 400
    offer_release(engine, time.time())
    r = client.post("/api/ota/rollouts", json={"site": "s1", "version": "0.2.0", "canary": "inf%"}, headers=csrf)
    assert r.status_code == 400, r.text
    assert desk[2].sent == []


async def test_a_body_past_the_limit_is_refused_before_it_is_all_read(desk: Any) -> None:
    """4 MiB offered 64 KiB at a time to the login, which needs no session: the desk stops reading past
    MAX_BODY (it read all of it before), so no client makes it hold more."""
    app = desk[0]
    pulled = 0
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 65536
        return {"type": "http.request", "body": b" " * 65536, "more_body": pulled < 64 * 65536}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/login", "raw_path": b"/api/login", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "state": {}}
    await app(scope, receive, send)
    assert status == [400]
    assert pulled <= MAX_BODY + 65536


def test_notices_that_are_not_a_small_map_of_a_known_kind_are_refused() -> None:
    assert read_notice(b'{"kind": ["alarm"]}') is None
    assert read_notice(b"[" * 1000) is None
    assert read_notice(notice("alarm", site="s1", id=ALARM)) == {"kind": "alarm", "site": "s1", "id": ALARM}


class Feed:
    """A page's /api/events stream, driven through the app's ASGI interface."""

    def __init__(self, app: Starlette, hub: Hub, token: str) -> None:
        self.app, self.hub, self.token = app, hub, token
        self.body: list[bytes] = []
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Feed:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            return {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                self.body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.ended.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/api/events", "raw_path": b"/api/events", "query_string": b"",
                 "root_path": "", "headers": [(b"cookie", f"lifeline_desk={self.token}".encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
        self.task = asyncio.create_task(self.app(scope, receive, send))
        for _ in range(200):
            if self.hub.clients:
                break
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def shows(self, text: bytes) -> bool:
        for _ in range(200):
            if text in b"".join(self.body):
                return True
            await asyncio.sleep(0.02)
        return False


async def test_the_change_feed_ends_at_the_first_notice_after_a_logout(desk: Any) -> None:
    app, hub, _ = desk
    client, csrf = await asyncio.to_thread(logged_in, app, "viewer")
    async with Feed(app, hub, client.cookies["lifeline_desk"]) as feed:
        hub.publish(notice("work-order", id=1))
        assert await feed.shows(b'"id": 1')  # while logged in
        await asyncio.to_thread(lambda: client.post("/api/logout", headers=csrf))
        hub.publish(notice("work-order", id=2))
        await asyncio.wait_for(feed.ended.wait(), 10)
        assert b'"id": 2' not in b"".join(feed.body)


async def test_the_change_feed_looks_its_session_up_at_a_logout_not_at_each_notice(desk: Any, engine: Engine) -> None:
    """The feed looked the session up before each notice it passed on: every open page read the database at
    each of the notices ingest makes, hundreds a second in a storm. It looks it up at a logout's "session"
    notice (and once a minute); a logout at another desk process, which the broker brings as that notice, ends
    the feed there."""
    app, hub, _ = desk
    client, _ = await asyncio.to_thread(logged_in, app, "viewer")
    token = client.cookies["lifeline_desk"]
    looked: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "sessions" in statement:
            looked.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        async with Feed(app, hub, token) as feed:
            looked.clear()
            for i in range(30):
                hub.publish(notice("reading", site="s1", dev="gas1", id=i))
            assert await feed.shows(b'"id": 29')
            assert looked == [], f"{len(looked)} session look-ups for 30 notices"
            with engine.begin() as conn:  # another desk process's logout
                conn.execute(delete(sessions).where(sessions.c.token == token))
            hub.publish(notice("session"))
            await asyncio.wait_for(feed.ended.wait(), 10)
            assert len(looked) == 2  # the logout's, then the look-up at the notice
            assert b"session" not in b"".join(feed.body)
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_the_change_feed_ends_at_the_first_notice_after_its_session_expired(engine: Engine) -> None:
    seed(engine, time.time())
    now = [time.time()]
    hub = Hub()
    app = make_app(engine, hub=hub, downlink=Downlink(Recorded()), risk_points=RISK_POINTS, rollouts=False,
                   clock=lambda: now[0])
    client, _ = await asyncio.to_thread(logged_in, app, "viewer")
    async with Feed(app, hub, client.cookies["lifeline_desk"]) as feed:
        hub.publish(notice("work-order", id=1))
        assert await feed.shows(b'"id": 1')
        now[0] += SESSION_S
        hub.publish(notice("work-order", id=2))
        await asyncio.wait_for(feed.ended.wait(), 10)
        assert b'"id": 2' not in b"".join(feed.body)


def test_two_rollouts_started_at_once_at_one_site_one_is_refused(engine: Engine) -> None:
    """Two desks each read "none running" before either commits (PostgreSQL; SQLite's writers queue): the
    index on the running rollout of a site refuses the second as 409."""
    now = time.time()
    seed(engine, now)
    offer_release(engine, now)
    boss = Session("t", USERS["supervisor"], "supervisor", "c")
    first = engine.connect()
    first.begin()
    rollout.start(first, boss, "s1", "0.2.0", now=now)
    outcome: list[Any] = []

    def second() -> None:
        try:
            with engine.begin() as conn:
                outcome.append(rollout.start(conn, boss, "s1", "0.2.0", now=now))
        except RolloutError as exc:
            outcome.append(exc.status)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)  # on PostgreSQL it waits on the first's uncommitted row; on SQLite, on the write lock
    first.commit()
    first.close()
    thread.join(30)
    assert outcome == [409]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ota_rollouts)
                            .where(ota_rollouts.c.state == "running")).scalar() == 1


@pytest.mark.parametrize("op,args", [("birth", {"x": "\ud800"}), ("bi\ud800rth", {}), ("bi\x00rth", {})],
                         ids=["args", "op", "op with a NUL"])
async def test_a_command_that_cannot_go_on_the_wire_leaves_no_row_sent(engine: Engine, op: str, args: Any) -> None:
    """Checked before its row is recorded: a row recorded first stayed "sent" for a command never sent."""
    seed(engine, time.time())
    sent = Recorded()
    with pytest.raises(DownlinkError) as refused:
        await Downlink(sent).command(engine, "chen", "s1", "gas1", op, args)
    assert refused.value.status == 400 and sent.sent == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(commands)).scalar() == 0


def test_a_long_history_is_thinned_in_the_database(engine: Engine) -> None:
    """Any viewer may ask for 400 days: every raw reading in the window was read into the desk's memory to
    keep one in `stride` of them."""
    n, t0 = 40_000, 1_700_000_000.0
    with engine.begin() as conn:
        mid = conn.execute(messages.insert().values(site="s1", dev="gas1", seq_key=1, boot=1, received=t0)
                           .returning(messages.c.id)).scalar_one()
        conn.execute(readings.insert(), [{"message": mid, "site": "s1", "dev": "gas1", "n": "ch4", "t": t0 + i,
                                          "u": "%LEL", "v": float(i % 50)} for i in range(n)])
    with engine.connect() as conn:
        tracemalloc.start()
        try:
            out = queries.history(conn, default_ruleset(), "s1", "gas1", "ch4", t0, t0 + n, ROLLUP_S)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    stride = -(-n // queries.MAX_POINTS)
    assert out["readings"] == [[t0 + i, float(i % 50)] for i in range(0, n, stride)]
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB for {len(out['readings'])} points"


def test_a_database_with_two_rollouts_running_at_a_site_still_opens(engine: Engine, engine_url: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Made before the index, it may hold what the index forbids; the district starts, and says so."""
    ONE_RUNNING_ROLLOUT.drop(engine)
    with engine.begin() as conn:
        conn.execute(ota_rollouts.insert(), [{"site": "s1", "v": "0.2.0", "actor": "chen", "created": 1.0,
                                              "halt_share": 0.25, "stage_timeout": 900.0, "state": "running",
                                              "stage": 0}] * 2)
    with caplog.at_level(logging.WARNING, logger="lifeline.district.store"):
        store.open_engine(engine_url).dispose()  # left to the collector, its connection was a ResourceWarning
    assert any("two rollouts run at one site" in r.getMessage() for r in caplog.records)
