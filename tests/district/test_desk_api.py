"""The desk's API over a real uvicorn, on SQLite and PostgreSQL, with a real Mosquitto for what goes down:
the server (not the page) enforces login, CSRF and roles; bad input is refused with 400 and changes nothing;
the whole work-order loop runs through the API; an ack, a command and a rule set reach the site's topics in
the bodies the gateway parses."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from deskkit import PASSWORD, USERS, Downlinks, HeldLock, alarm_body, announce, closed_orders, desk_server, seed
from sqlalchemy import Engine, event, func, select, update

from district import accounts, store, workorders
from district.accounts import Session
from district.downlink import Downlink, DownlinkError, broker_publisher
from district.live import notice
from district.schema import alarms, audit, commands, metadata, rollups, work_order_steps, work_orders
from gateway.district_wire import alarm_acks, command_request, downlink, ruleset_data
from gateway.rules import default_ruleset
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.postgres import Postgres

ALARM = "c" * 32


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture
def desk(engine: Engine, broker: Mosquitto) -> Iterator[str]:
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(ALARM, "raised", "red", now - 60), received=now - 59)
    with desk_server(engine, broker) as url:
        yield url


OPENED: list[httpx.Client] = []  # by client(), closed at the end of each test


@pytest.fixture(autouse=True)
def clients_closed() -> Iterator[None]:
    """Left open, each client was an unclosed socket to the collector (a ResourceWarning with -W default)."""
    yield
    while OPENED:
        OPENED.pop().close()


def client(url: str, role: str | None = None) -> tuple[httpx.Client, str]:
    """A client logged in as the user of `role` (none when None), and its CSRF token; closed after the test."""
    c = httpx.Client(base_url=url, timeout=20)
    OPENED.append(c)
    if role is None:
        return c, ""
    r = c.post("/api/login", json={"user": USERS[role], "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == role
    return c, r.json()["csrf"]


def order_of(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == ALARM)).scalar_one())


class AckedOrder:
    """The alarm's work order once the operator has acknowledged the alarm, its steps posted as the operator or the
    supervisor posts them from the page."""

    def __init__(self, desk: str, engine: Engine) -> None:
        self.clients = {role: client(desk, role) for role in ("operator", "supervisor")}
        self.id = order_of(engine)
        op, csrf = self.clients["operator"]
        assert op.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf}).status_code == 200

    def step(self, role: str, action: str, body: dict[str, Any]) -> httpx.Response:
        c, csrf = self.clients[role]
        return c.post(f"/api/work-orders/{self.id}/{action}", json=body, headers={"X-CSRF-Token": csrf})

    def read(self) -> Any:
        """The order as the operator's page reads it."""
        return self.clients["operator"][0].get(f"/api/work-orders/{self.id}").json()


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """Everything an action could change."""
    with engine.connect() as conn:
        return (conn.execute(select(alarms.c.acked)).all(), conn.execute(select(work_orders)).all(),
                conn.execute(select(func.count()).select_from(work_order_steps)).scalar(),
                conn.execute(select(func.count()).select_from(commands)).scalar(),
                conn.execute(select(func.count()).select_from(audit)).scalar())


RULESET = {"version": 7, "gas": {"ch4": {"unit": "%LEL", "direction": "above", "levels": {"red": 40},
                                          "clear": {"red": 30}}}}


def every_post(order: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"/api/alarms/{ALARM}/ack", {}), (f"/api/work-orders/{order}/dispatch", {"team": "pipe 3"}),
            (f"/api/work-orders/{order}/report", {"findings": "leak"}), (f"/api/work-orders/{order}/close", {}),
            (f"/api/work-orders/{order}/send-back", {"correction": "again"}),
            ("/api/commands", {"site": "s1", "dev": "gas1", "op": "ping", "args": {}}),
            ("/api/rules", {"site": "s1", "ruleset": RULESET})]


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(desk: str) -> None:
    c, _ = client(desk)
    assert c.get("/api/me").status_code == 401
    assert c.get("/api/alarms").status_code == 401
    assert c.post("/api/login", json={"user": "chen", "password": "wrong-password"}).status_code == 401
    assert c.post("/api/login", json={"user": "nobody", "password": PASSWORD}).status_code == 401
    r = c.post("/api/login", json={"user": "chen", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    me = c.get("/api/me").json()
    assert me["user"] == "chen" and me["role"] == "supervisor" and me["csrf"] == r.json()["csrf"]
    assert c.post("/api/logout").status_code == 403  # a POST without the CSRF token
    assert c.post("/api/logout", headers={"X-CSRF-Token": me["csrf"]}).status_code == 200
    assert c.get("/api/me").status_code == 401


def test_login_is_rate_limited_per_user_name(desk: str) -> None:
    c, _ = client(desk)
    for _ in range(5):
        assert c.post("/api/login", json={"user": "li.wei", "password": "not-it-at-all"}).status_code == 401
    r = c.post("/api/login", json={"user": "li.wei", "password": PASSWORD})
    assert r.status_code == 429 and "wait" in r.json()["error"]
    assert c.post("/api/login", json={"user": "chen", "password": PASSWORD}).status_code == 200  # others may


def test_a_viewer_can_read_but_every_post_is_refused_and_changes_nothing(desk: str, engine: Engine) -> None:
    c, csrf = client(desk, "viewer")
    for path in ("/api/alarms", "/api/sites", "/api/devices", "/api/map", "/api/work-orders",
                 "/api/response-times"):
        assert c.get(path).status_code == 200, path
    before = snapshot(engine)
    for path, body in every_post(order_of(engine)):
        r = c.post(path, json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403, (path, r.text)
        assert "viewer may not" in r.json()["error"]
    assert snapshot(engine) == before


def test_a_post_without_the_right_csrf_token_is_refused(desk: str, engine: Engine) -> None:
    c, csrf = client(desk, "supervisor")
    before = snapshot(engine)
    wrong = ("y" if csrf[0] == "x" else "x") + csrf[1:]  # "x" + csrf[1:] was the token itself, 1 time in 64
    for path, body in every_post(order_of(engine)):
        for headers in ({}, {"X-CSRF-Token": wrong}, {"X-CSRF-Token": ""}):
            r = c.post(path, json=body, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.json()["error"], (path, headers, r.text)
    anon, _ = client(desk)
    assert anon.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf}).status_code == 401
    assert snapshot(engine) == before


def test_bad_input_to_every_post_is_a_400_with_a_message_and_changes_nothing(desk: str, engine: Engine) -> None:
    c, csrf = client(desk, "supervisor")
    h = {"X-CSRF-Token": csrf}
    order = order_of(engine)
    # a dispatched order, so that report's own checks are reached, not the state's
    assert c.post(f"/api/alarms/{ALARM}/ack", headers=h).status_code == 200
    assert c.post(f"/api/work-orders/{order}/dispatch", json={"team": "pipe 3"}, headers=h).status_code == 200
    before = snapshot(engine)
    bad: list[tuple[str, Any]] = [
        ("/api/login", {"user": "chen"}), ("/api/login", {"user": 1, "password": PASSWORD}),
        (f"/api/alarms/{ALARM}/ack", {"why": "no"}), (f"/api/alarms/{ALARM}/ack", [1]),
        (f"/api/work-orders/{order}/report", {}), (f"/api/work-orders/{order}/report", {"findings": ""}),
        (f"/api/work-orders/{order}/report", {"findings": 3}),
        (f"/api/work-orders/{order}/report", {"findings": "x" * 3000}),
        (f"/api/work-orders/{order}/report", {"findings": "ok", "action": "ok", "extra": 1}),
        (f"/api/work-orders/{order}/report", {"findings": "bell\x07"}),
        (f"/api/work-orders/{order}/dispatch", {"team": ["a"]}), (f"/api/work-orders/{order}/close", {"x": 1}),
        (f"/api/work-orders/{order}/send-back", {"correction": None}),
        ("/api/commands", {"site": "s1", "dev": "gas1"}), ("/api/commands", {"site": "s1", "dev": "gas1", "op": ""}),
        ("/api/commands", {"site": "s1", "dev": "gas1", "op": "ping", "args": [1]}),
        ("/api/commands", {"site": "S 1!", "dev": "gas1", "op": "ping"}),
        ("/api/commands", {"site": "s1", "dev": 5, "op": "ping"}),
        ("/api/commands", {"site": "s1", "dev": "gas1", "op": "ping", "args": {"blob": "x" * 5000}}),
        ("/api/rules", {"site": "s1"}), ("/api/rules", {"site": "s1", "ruleset": "version = 1"}),
        ("/api/rules", {"site": "s1", "ruleset": {"gas": {}}}),
        ("/api/rules", {"site": "s1", "ruleset": {"version": 2, "gas": {"ch4": {"levels": {"purple": 1}}}}}),
    ]
    for path, body in bad:
        r = c.post(path, json=body, headers=h)
        assert r.status_code == 400 and r.json()["error"], (path, body, r.status_code, r.text)
    for path in ("/api/login", f"/api/alarms/{ALARM}/ack", f"/api/work-orders/{order}/report", "/api/commands",
                 "/api/rules"):
        for junk in (b"{not json", b"[" * 100_000, b"\xff\xfe", b'{"site": NaN}'):
            r = c.post(path, content=junk, headers=h)
            assert r.status_code == 400 and r.json()["error"], (path, junk[:10], r.text)
    assert c.get("/api/history", params={"site": "s1", "dev": "gas1"}).status_code == 400
    assert c.get("/api/history", params={"site": "s1", "dev": "gas1", "metric": "ch4", "from": "x"}).status_code == 400
    assert snapshot(engine) == before
    # unknown things are 404, a step from the wrong state 409
    assert c.post(f"/api/alarms/{'d' * 32}/ack", headers=h).status_code == 404
    assert c.post("/api/work-orders/99999/close", json={}, headers=h).status_code == 404
    assert c.post(f"/api/work-orders/{order}/fly", json={}, headers=h).status_code == 404
    assert c.post("/api/commands", json={"site": "s9", "dev": "gas1", "op": "ping"}, headers=h).status_code == 404
    assert c.post("/api/commands", json={"site": "s1", "dev": "gas9", "op": "ping"}, headers=h).status_code == 404
    assert c.get("/api/work-orders/99999").status_code == 404
    assert c.get("/api/commands/12").status_code == 404
    r = c.post(f"/api/work-orders/{order}/close", json={}, headers=h)
    assert r.status_code == 409 and "dispatched" in r.json()["error"]
    assert snapshot(engine) == before


def test_the_whole_work_order_loop_through_the_api_and_the_ack_goes_down(desk: str, engine: Engine,
                                                                          broker: Mosquitto) -> None:
    downs = Downlinks(broker)
    try:
        op, op_csrf = client(desk, "operator")
        sup, sup_csrf = client(desk, "supervisor")
        board = op.get("/api/alarms").json()
        assert [a["id"] for a in board] == [ALARM]
        assert board[0]["state"] == "open" and board[0]["level"] == "red" and board[0]["pos"] == [31.2305, 121.474]
        order = board[0]["work_order"]["id"]
        assert board[0]["work_order"]["state"] == "open"

        def step(c: httpx.Client, csrf: str, action: str, body: dict[str, Any], state: str) -> None:
            r = c.post(f"/api/work-orders/{order}/{action}", json=body, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and r.json()["state"] == state, r.text

        r = op.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": op_csrf})
        assert r.status_code == 200 and r.json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(ALARM, None)]  # its gateway numbers none
        r = op.post(f"/api/work-orders/{order}/close", json={}, headers={"X-CSRF-Token": op_csrf})
        assert r.status_code == 403  # an operator may not close
        step(op, op_csrf, "dispatch", {"team": "pipe team 3"}, "dispatched")
        step(op, op_csrf, "report", {"findings": "valve seal leaking", "action": "seal replaced"}, "reported")
        step(sup, sup_csrf, "send-back", {"correction": "give the reading after the repair"}, "returned")
        step(op, op_csrf, "dispatch", {"team": "pipe team 3"}, "dispatched")
        step(op, op_csrf, "report", {"findings": "0 %LEL after repair"}, "reported")
        step(sup, sup_csrf, "close", {}, "closed")
        wo = sup.get(f"/api/work-orders/{order}").json()
        assert wo["state"] == "closed" and wo["round"] == 2 and wo["team"] == "pipe team 3"
        assert [(s["step"], s["actor"]) for s in wo["steps"]] == [
            ("opened", "system"), ("ack", "li.wei"), ("dispatch", "li.wei"), ("report", "li.wei"),
            ("send-back", "chen"), ("dispatch", "li.wei"), ("report", "li.wei"), ("close", "chen")]
        assert wo["steps"][3]["note"] == "valve seal leaking" and wo["steps"][3]["action"] == "seal replaced"
        times = sup.get("/api/response-times").json()
        for measure in ("alarm_ack", "ack_dispatch", "dispatch_closed"):
            assert times["colour"]["red"][measure]["count"] == 1, measure
            assert times["site"]["s1"][measure]["count"] == 1, measure
    finally:
        downs.close()


def test_an_escalation_after_the_ack_is_acknowledged_again_and_the_ack_names_its_step(desk: str, engine: Engine,
                                                                                      broker: Mosquitto) -> None:
    """The board showed an orange alarm acknowledged and dispatched, gone red since, as "acknowledged" at the
    orange's time, with no Acknowledge button; and the ack that went down named the alarm alone, so the gateway
    took a late one of the orange for the red. The red asks for a fresh ack, audited, and each ack names the
    step it acknowledged."""
    downs = Downlinks(broker)
    gas = "d" * 32
    now = time.time()
    try:
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(gas, "raised", "orange", now - 30, step=0), received=now - 29)
        op, csrf = client(desk, "operator")
        assert op.post(f"/api/alarms/{gas}/ack", headers={"X-CSRF-Token": csrf}).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(gas, 0)]
        downs.got.clear()
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(gas, "escalated", "red", now - 10, prev="orange", step=1),
                              received=now - 9)
        board = {a["id"]: a for a in op.get("/api/alarms").json()}[gas]
        assert (board["level"], board["acked"]) == ("red", None)
        assert op.post(f"/api/alarms/{gas}/ack", headers={"X-CSRF-Token": csrf}).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(gas, 1)]
        assert {a["id"]: a for a in op.get("/api/alarms").json()}[gas]["acked"] is not None
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(audit).where(
                audit.c.what == "ack", audit.c.target == gas)).scalar_one() == 2
    finally:
        downs.close()


def test_an_ack_of_the_level_the_page_showed_is_refused_after_an_escalation_since(desk: str, engine: Engine,
                                                                                    broker: Mosquitto) -> None:
    """The page drew the alarm orange; it went red before the officer's click, which acknowledged the red (and
    sent its step down) though the officer never saw it. The ack names the level the page showed: one the alarm
    has escalated past is refused 409, saying when it went up, and changes nothing; a fall since is acknowledged;
    a level that is not one is 400; none (an older page) acknowledges the alarm as it stands. It names the step
    shown too, so a red that came and went before the click is refused as well."""
    downs = Downlinks(broker)
    gas, yellow = "d" * 32, "e" * 32
    now = time.time()
    went_red = now - 10
    try:
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(gas, "raised", "orange", now - 30, step=0), received=now - 29)
            store.apply_alarm(conn, "s1", alarm_body(gas, "escalated", "red", went_red, prev="orange", step=1),
                              received=now - 9)
        op, csrf = client(desk, "operator")

        def ack(alarm: str, data: dict[str, Any]) -> httpx.Response:
            return op.post(f"/api/alarms/{alarm}/ack", json=data, headers={"X-CSRF-Token": csrf})

        for bad in ("purple", "", 3, ["orange"], {"level": "red"}):
            r = ack(gas, {"level": bad})
            assert r.status_code == 400 and "level" in r.json()["error"], (bad, r.text)
        r = ack(gas, {"level": "orange"})
        hms = time.strftime("%H:%M:%S", time.gmtime(went_red))
        assert r.status_code == 409, r.text
        assert r.json()["error"] == f"it went red at {hms} UTC since you looked; look again and acknowledge"
        assert r.json()["times"] == [{"t": went_red, "text": f"{hms} UTC"}]  # for the page to show in its own zone
        with engine.connect() as conn:
            assert conn.execute(select(alarms.c.acked_last).where(alarms.c.id == gas)).scalar() is None
            assert conn.execute(select(work_orders.c.state).where(work_orders.c.alarm == gas)).scalar() == "open"
            assert conn.execute(select(func.count()).select_from(audit).where(audit.c.target == gas)).scalar() == 0
        assert ack(gas, {"level": "red"}).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(gas, 1)]

        with engine.begin() as conn:  # shown orange, fallen to yellow since: acknowledged, at its raise's step
            store.apply_alarm(conn, "s1", alarm_body(yellow, "raised", "orange", now - 30, step=0), received=now - 29)
            store.apply_alarm(conn, "s1", alarm_body(yellow, "de-escalated", "yellow", now - 5, prev="orange",
                                                     step=1), received=now - 4)
        downs.got.clear()
        assert ack(yellow, {"level": "orange"}).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(yellow, 0)]
        # shown orange at step 0, red and orange again since: the red no one saw is refused by the step shown
        back = "f" * 32
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(back, "raised", "orange", now - 30, step=0), received=now - 29)
            store.apply_alarm(conn, "s1", alarm_body(back, "escalated", "red", went_red, prev="orange", step=1),
                              received=now - 9)
            store.apply_alarm(conn, "s1", alarm_body(back, "de-escalated", "orange", now - 5, prev="red", step=2),
                              received=now - 4)
        for bad in (-1, "0", 1.5, True, 2**63):
            r = ack(back, {"level": "orange", "step": bad})
            assert r.status_code == 400 and "step" in r.json()["error"], (bad, r.text)
        r = ack(back, {"level": "orange", "step": 0})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == f"it went red at {hms} UTC since you looked; look again and acknowledge"
        with engine.connect() as conn:
            assert conn.execute(select(alarms.c.acked_last).where(alarms.c.id == back)).scalar() is None
        downs.got.clear()
        assert ack(back, {"level": "orange", "step": 2}).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(back, 1)]  # the red's rise
        # orange and red escalated in one gateway batch (one t_gw), the red stored first: the latest rise is red
        batch = "9" * 32
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(batch, "raised", "yellow", now - 30, step=0), received=now - 29)
            store.apply_alarm(conn, "s1", alarm_body(batch, "escalated", "red", went_red, prev="orange", step=2),
                              received=now - 9)
            store.apply_alarm(conn, "s1", alarm_body(batch, "escalated", "orange", went_red, prev="yellow", step=1),
                              received=now - 9)
        r = ack(batch, {"step": 0})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == f"it went red at {hms} UTC since you looked; look again and acknowledge"
        downs.got.clear()
        assert ack(ALARM, {"level": None}).json()["down"] == "sent"  # null as absent: as it stands
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(ALARM, None)]
        board = {a["id"]: a["acked"] for a in op.get("/api/alarms").json()}
        assert None not in (board[gas], board[yellow], board[ALARM])
    finally:
        downs.close()


def test_an_ack_covers_no_rise_the_district_has_not_stored_yet(desk: str, engine: Engine, broker: Mosquitto) -> None:
    """Workers share a site's backlog, so a fall (step 3, orange) can be stored before the red (step 2) it
    followed. The ack went down at step 3, which the gateway took as past the red's rise: the site read red
    acknowledged though no officer had seen it, and the red, stored after, left the desk acknowledged too. The
    ack is at the latest rise the district holds; the red arriving after it wants a fresh ack. An alarm whose
    raise has not arrived (no rise held) is refused until it has."""
    downs = Downlinks(broker)
    gas, fell = "d" * 32, "e" * 32
    now = time.time()
    try:
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(gas, "raised", "yellow", now - 40, step=0), received=now - 5)
            store.apply_alarm(conn, "s1", alarm_body(gas, "escalated", "orange", now - 30, prev="yellow", step=1),
                              received=now - 5)
            store.apply_alarm(conn, "s1", alarm_body(gas, "de-escalated", "orange", now - 10, prev="red", step=3),
                              received=now - 5)
        op, csrf = client(desk, "operator")

        def ack(alarm: str) -> httpx.Response:
            shown = {a["id"]: a for a in op.get("/api/alarms").json()}[alarm]
            return op.post(f"/api/alarms/{alarm}/ack", json={"level": shown["level"], "step": shown["step"]},
                           headers={"X-CSRF-Token": csrf})

        assert ack(gas).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(gas, 1)]
        with engine.begin() as conn:  # the red it fell from, stored by another worker after the click
            store.apply_alarm(conn, "s1", alarm_body(gas, "escalated", "red", now - 20, prev="orange", step=2),
                              received=now - 5)
        board = {a["id"]: a for a in op.get("/api/alarms").json()}[gas]
        assert (board["level"], board["step"], board["acked"]) == ("orange", 3, None)
        downs.got.clear()
        assert ack(gas).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(gas, 2)]

        with engine.begin() as conn:  # its fall stored, its raise (red) not yet
            store.apply_alarm(conn, "s1", alarm_body(fell, "de-escalated", "yellow", now - 10, prev="red", step=1),
                              received=now - 5)
        r = ack(fell)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "its raise has not reached the district yet; look again in a moment"
        with engine.connect() as conn:
            assert conn.execute(select(alarms.c.acked_last).where(alarms.c.id == fell)).scalar() is None
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(fell, "raised", "red", now - 20, step=0), received=now - 4)
        downs.got.clear()
        assert ack(fell).json()["down"] == "sent"
        assert alarm_acks(downs.wait("district/v1/s1/down/alarm-ack")) == [(fell, 0)]
    finally:
        downs.close()


def test_a_command_and_a_rule_set_go_down_after_their_rows_exist(desk: str, engine: Engine,
                                                                 broker: Mosquitto) -> None:
    downs = Downlinks(broker)
    try:
        sup, csrf = client(desk, "supervisor")
        r = sup.post("/api/commands", json={"site": "s1", "dev": "gas1", "op": "set_interval", "args": {"s": 30}},
                     headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        cmd_id = int(r.json()["id"])
        sent = command_request(downlink(downs.wait("district/v1/s1/down/cmd")))
        assert (sent.dev, sent.id, sent.op, sent.args) == ("gas1", cmd_id, "set_interval", {"s": 30})
        with engine.connect() as conn:
            row = conn.execute(select(commands).where(commands.c.id == cmd_id)).one()
        assert (row.site, row.dev, row.op, json.loads(row.args), row.actor) == ("s1", "gas1", "set_interval",
                                                                              {"s": 30}, "chen")
        state = sup.get(f"/api/commands/{cmd_id}").json()
        assert state["state"] == "sent" and state["id"] == str(cmd_id)
        with engine.begin() as conn:  # the site's ack, as the ingest stores it
            conn.execute(update(commands).where(commands.c.id == cmd_id)
                         .values(ok=True, result=json.dumps({"interval": 30}), answered=time.time()))
        state = sup.get(f"/api/commands/{cmd_id}").json()
        assert state["state"] == "done" and state["result"] == {"interval": 30}
        r = sup.post("/api/rules", json={"site": "s1", "ruleset": RULESET}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert ruleset_data(downs.wait("district/v1/s1/down/rules")) == RULESET
        assert sup.get(f"/api/commands/{r.json()['id']}").json()["op"] == "rules"
    finally:
        downs.close()


def test_history_gives_readings_thresholds_and_transitions(desk: str, engine: Engine) -> None:
    now = time.time()
    with engine.begin() as conn:
        for i in range(30):
            store.add_message(conn, "s1", "gas1", i, 1, [{"n": "ch4", "t": now - 300 + i * 10, "u": "%LEL",
                                                          "v": float(i)}], received=now - 300 + i * 10 + 0.4)
        conn.execute(rollups.insert().values(site="s1", dev="gas1", n="ch4", t=now - 2000, count=60, min=0.5,
                                             max=2.5, mean=1.0, u="%LEL"))
    c, _ = client(desk, "viewer")
    h = c.get("/api/history", params={"site": "s1", "dev": "gas1", "metric": "ch4", "from": now - 3600,
                                      "to": now}).json()
    assert len(h["readings"]) == 30 and h["readings"][-1][1] == 29.0 and h["unit"] == "%LEL"
    assert [(r["count"], r["max"]) for r in h["rollups"]] == [(60, 2.5)]  # the span older than the raw readings
    rules = default_ruleset().metric_rules("gas", "gas1", "ch4")
    assert rules is not None and rules.level is not None
    assert {t["level"]: t["value"] for t in h["thresholds"]} == {lv.label: v for lv, v in rules.level.levels.items()}
    assert [e["ev"] for e in h["transitions"]] == ["raised"]
    times = c.get("/api/response-times").json()
    assert times["site"]["s1"]["sample_desk"]["count"] == 30
    assert abs(times["site"]["s1"]["sample_desk"]["p50"] - 0.4) < 0.01


def test_the_transitions_of_one_gateway_time_are_in_the_order_they_happened(desk: str, engine: Engine) -> None:
    """A gateway stamps a batch's transitions with the batch's time, and workers sharing a backlog store them in
    any order: the history listed them by gateway time alone, so an escalation to red and its fall to orange
    came in the order stored, and the chart drew the red over the fall it came down from. Within one time they
    come by their alarm (the one raised first) and then by their step; an alarm cleared and the next one raised
    in the same batch are told apart so."""
    now = time.time()
    first, second, batch = "a" * 32, "b" * 32, now - 20
    stored = [(first, "raised", "yellow", now - 60, 0), (first, "de-escalated", "orange", batch, 3),
              (second, "raised", "orange", batch, 0), (first, "escalated", "red", batch, 2),
              (first, "cleared", None, batch, 4), (first, "escalated", "orange", batch, 1)]
    with engine.begin() as conn:
        for alarm_id, ev, level, t_gw, step in stored:
            store.apply_alarm(conn, "s1", alarm_body(alarm_id, ev, level, t_gw, dev="gas2", step=step),
                              received=now - 10)
    c, _ = client(desk, "viewer")
    h = c.get("/api/history", params={"site": "s1", "dev": "gas2", "metric": "ch4", "from": now - 3600,
                                      "to": now}).json()
    assert [(e["alarm"][0], e["ev"], e["level"]) for e in h["transitions"]] == [
        ("a", "raised", "yellow"), ("a", "escalated", "orange"), ("a", "escalated", "red"),
        ("a", "de-escalated", "orange"), ("a", "cleared", None), ("b", "raised", "orange")]


def test_the_work_order_list_is_bounded_and_keeps_every_active_order(desk: str, engine: Engine) -> None:
    """A year of a district's orders, 5,000 closed and four still active: the list was every order ever made,
    fetched again by every open page at each work-order notice. It now holds every order not closed and only
    the newest closed ones (`limit`, 50 unless asked, at most 500); `before` pages back through older ones."""
    now = time.time()
    closed_orders(engine, 5000, now)
    with engine.begin() as conn:  # three more active orders, older than most of the closed ones
        for i, state in enumerate(("acknowledged", "dispatched", "returned")):
            alarm_id = f"a{i:031x}"
            conn.execute(alarms.insert().values(id=alarm_id, site="s1", dev="gas2", kind="level", level="red",
                                                peak="red", peak_rank=4, state="open", received=now - 9000,
                                                t_last=now - 9000))
            conn.execute(work_orders.insert().values(alarm=alarm_id, site="s1", state=state, opened=now - 9000,
                                                     updated=now - 900))
        oldest = conn.execute(select(func.min(work_orders.c.id)).where(work_orders.c.state == "closed")).scalar()
        conn.execute(update(work_orders).where(work_orders.c.id == oldest).values(state="reported"))
        active = set(conn.execute(select(work_orders.c.id).where(work_orders.c.state != "closed")).scalars())
        newest_closed = list(conn.execute(select(work_orders.c.id).where(work_orders.c.state == "closed")
                                          .order_by(work_orders.c.id.desc()).limit(600)).scalars())
    assert len(active) == 5  # the seeded open order, the reported one and the three
    c, _ = client(desk, "viewer")
    r = c.get("/api/work-orders")
    assert r.status_code == 200, r.text
    got = r.json()
    assert {o["id"] for o in got if o["state"] != "closed"} == active
    assert [o["id"] for o in got if o["state"] == "closed"] == newest_closed[:50]
    assert [o["id"] for o in got] == sorted((o["id"] for o in got), reverse=True)  # newest first, as before
    assert len(r.content) < 40_000, len(r.content)
    some = c.get("/api/work-orders", params={"limit": 10}).json()
    assert [o["id"] for o in some if o["state"] == "closed"] == newest_closed[:10]
    assert {o["id"] for o in some if o["state"] != "closed"} == active
    older = c.get("/api/work-orders", params={"limit": 10, "before": newest_closed[9]}).json()
    assert [o["id"] for o in older] == newest_closed[10:20]  # older closed ones only: the active came before
    for huge in (100_000, "9" * 400):
        most = c.get("/api/work-orders", params={"limit": huge}).json()
        assert [o["id"] for o in most if o["state"] == "closed"] == newest_closed[:500]
    for bad in ({"limit": "x"}, {"limit": "0"}, {"limit": "-3"}, {"before": "1e9"}, {"before": "0"},
                {"before": "9" * 30}):
        r = c.get("/api/work-orders", params=bad)
        assert r.status_code == 400 and r.json()["error"], (bad, r.text)


def test_a_repeated_step_is_done_once_and_a_different_one_is_told_who_did_it(desk: str, engine: Engine) -> None:
    """A double-clicked step sent the same request twice and the second was a 409, shown as an error. The same
    step by the same officer with the same text, finding the order already where it leads, is answered 200
    with the order's state and writes no second step or audit row. Another officer's, or other text, is
    still 409, and says who did the step."""
    order = AckedOrder(desk, engine)

    def count(step: str) -> tuple[int, int]:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(work_order_steps).where(
                work_order_steps.c.order_id == order.id, work_order_steps.c.step == step)).scalar_one(),
                conn.execute(select(func.count()).select_from(audit).where(audit.c.what == step)).scalar_one())

    for _ in range(2):
        r = order.step("operator", "dispatch", {"team": "pipe 3"})
        assert r.status_code == 200 and r.json()["state"] == "dispatched", r.text
    assert count("dispatch") == (1, 1)
    for role, body in (("operator", {"team": "pipe 4"}), ("supervisor", {"team": "pipe 3"})):
        r = order.step(role, "dispatch", body)
        assert r.status_code == 409 and "already dispatched by li.wei" in r.json()["error"], r.text
    assert count("dispatch") == (1, 1)
    with ThreadPoolExecutor(2) as pool:  # a double click: both requests in flight at once
        answers = list(pool.map(lambda _: order.step("operator", "report", {"findings": "seal leaking"}), range(2)))
    assert [(a.status_code, a.json()["state"]) for a in answers] == [(200, "reported")] * 2, [a.text for a in answers]
    assert count("report") == (1, 1)
    for _ in range(2):
        assert order.step("supervisor", "close", {}).json() == {"id": order.id, "state": "closed"}
    assert count("close") == (1, 1)
    r = order.step("supervisor", "send-back", {"correction": "again"})
    assert r.status_code == 409 and "closed" in r.json()["error"], r.text


def test_a_database_busy_past_its_timeout_answers_503_with_a_reason(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite locked by another process past the busy timeout (here 200 ms) during a desk action was a bare 500
    with a traceback; it is a 503 with a line the page shows the officer, logged once with its reason, and the
    same action goes through once the lock is gone. Reads go on meanwhile (WAL)."""
    monkeypatch.setattr(store, "SQLITE_BUSY_MS", 200)
    path = tmp_path / "district.sqlite"
    engine = store.open_engine(str(path))
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(ALARM, "raised", "red", now - 60), received=now - 59)
    caplog.set_level(logging.INFO, logger="lifeline.district")
    try:
        with desk_server(engine, broker) as url:
            c, csrf = client(url, "operator")
            holder = sqlite3.connect(str(path), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                r = c.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf})
                assert r.status_code == 503, r.text
                assert r.json() == {"error": "the database is busy, try again"}
                assert c.get("/api/alarms").json()[0]["acked"] is None
            finally:
                holder.close()
            r = c.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200, r.text
    finally:
        engine.dispose()
    [failed] = [r for r in caplog.records if r.getMessage() == "desk-db-failed"]
    reason = failed.fields["error"]  # type: ignore[attr-defined]
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    assert "database is locked" in reason and "\n" not in reason, reason
    assert failed.fields["path"] == f"/api/alarms/{ALARM}/ack"  # type: ignore[attr-defined]


def test_response_times_are_of_the_last_30_days(desk: str, engine: Engine) -> None:
    """Every page fetches the response times at each alarm and work-order notice, and they were worked out from
    every alarm, order and step the district ever stored: about a second of the desk's time a fetch after a
    year of orders. They are now of the alarms and orders of the last 30 days, the ones a duty officer's
    shifts are judged by."""
    now = time.time()
    closed_orders(engine, 5000, now)  # a year of them, the newest half a year old
    c, csrf = client(desk, "operator")
    assert c.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf}).status_code == 200
    times = c.get("/api/response-times").json()
    assert times["colour"]["red"]["alarm_ack"]["count"] == 1, times["colour"]["red"]
    assert times["site"]["s1"]["alarm_ack"]["count"] == 1, times["site"]["s1"]


def test_a_postgresql_connection_ended_under_the_desk_answers_503_and_the_next_call_goes_through(
        postgres: Postgres, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """The server ended the desk's pooled connections (a restart, a failover, an administrator): the next
    action on each was a bare 500 with a traceback. It is a 503 the officer can try again, and is."""
    engine = store.open_engine(postgres.url)
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(ALARM, "raised", "red", now - 60), received=now - 59)
    caplog.set_level(logging.INFO, logger="lifeline.district")
    try:
        with desk_server(engine, broker) as url:
            c, csrf = client(url, "operator")
            assert postgres.end_sessions() > 0  # from a connection of its own, not one of the desk's pool
            answers = [c.post(f"/api/alarms/{ALARM}/ack", headers={"X-CSRF-Token": csrf}) for _ in range(2)]
            assert [a.status_code for a in answers] == [503, 200], [a.text for a in answers]
            assert answers[0].json() == {"error": "the database is busy, try again"}
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    [failed] = [r for r in caplog.records if r.getMessage() == "desk-db-failed"]
    assert "terminat" in failed.fields["error"], failed.fields  # type: ignore[attr-defined]


def test_a_write_lock_held_elsewhere_does_not_stall_the_desks_other_requests(
        tmp_path: Path, broker: Mosquitto) -> None:
    """The rollout driver (in the desk process, with no rollout running) took SQLite's write lock once a second
    and a command recorded its row, both on the desk's event loop: while an ingest worker held the lock, every
    page's every request and change feed waited out the busy timeout with them (10 s by default). Reads go on
    beside a writer (WAL), and now so does the desk: it answers other requests once the command's write waits
    for the lock and the driver has begun a pass, and only then is the lock given back; the command goes out."""
    engine = store.open_engine(str(tmp_path / "district.sqlite"))
    seed(engine, time.time())
    lock, driver_looked = HeldLock(engine), threading.Event()

    def looked(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if lock.waiting.is_set() and "ota_rollouts" in statement:
            driver_looked.set()
    event.listen(engine, "before_cursor_execute", looked)
    try:
        with lock, desk_server(engine, broker) as url:
            c, csrf = client(url, "supervisor")
            with ThreadPoolExecutor(1) as pool:
                lock.take()  # an ingest worker's batch, say
                sent = pool.submit(c.post, "/api/commands", json={"site": "s1", "dev": "gas1", "op": "ping"},
                                   headers={"X-CSRF-Token": csrf})
                assert lock.waiting.wait(20), "the command never began its write"
                assert driver_looked.wait(20), "the rollout driver made no pass"
                while not lock.released:
                    assert c.get("/api/me").status_code == 200
                    lock.beat()
            assert sent.result().status_code == 200, sent.result().text
        assert lock.beats_held == lock.beats, "the desk answered nothing while a write waited for the lock"
    finally:
        engine.dispose()


def test_a_database_that_fails_under_a_live_feed_ends_it_with_one_line(
        postgres: Postgres, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """The change feed looks the session up again at a logout's notice. When the database failed that look-up
    (PostgreSQL's connections ended by a restart or a failover), the stream died with an "Exception in ASGI
    application" traceback and its connection cut mid-chunk. It now ends as a stream ends, with one
    desk-db-failed line, and the page's next connection is served as usual."""
    engine = store.open_engine(postgres.url)
    seed(engine, time.time())
    caplog.set_level(logging.INFO)
    try:
        with desk_server(engine, broker) as url:
            c, _ = client(url, "viewer")
            with c.stream("GET", "/api/events") as events:
                assert events.status_code == 200
                lines = events.iter_lines()
                assert next(lines) == "event: hello"
                postgres.end_sessions()
                announce(broker, notice("session"))  # someone logged out at another desk
                announce(broker, notice("alarm", site="s1", id=ALARM))
                rest = list(lines)  # the stream ends; a cut connection raises here
            assert not any(line.startswith("event: change") for line in rest), rest
            with c.stream("GET", "/api/events") as again:
                assert again.status_code == 200 and next(again.iter_lines()) == "event: hello"
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    [failed] = [r for r in caplog.records if r.getMessage() == "desk-db-failed"]
    assert failed.fields["path"] == "/api/events", failed.fields  # type: ignore[attr-defined]
    assert "terminat" in failed.fields["error"], failed.fields  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_command_the_broker_refused_is_answered_off_the_event_loop(engine: Engine) -> None:
    """A command the district broker did not take is answered failed in its row at once. That write ran on the
    desk's event loop, so while a worker held SQLite's write lock (or the row was locked on PostgreSQL) every
    page's every request waited with it. Here the lock is taken as the publish fails and given back once the loop
    has gone on while the answer waits for it."""
    seed(engine, time.time())
    nowhere = broker_publisher(BrokerConfig("127.0.0.1", free_port(), "district-test", None, None, None, 30))
    with HeldLock(engine) as lock:
        async def publish(topic: str, payload: bytes) -> None:
            lock.take(select(commands).with_for_update())  # on PostgreSQL, the command's row
            await nowhere(topic, payload)

        down = Downlink(publish)
        sending = asyncio.get_running_loop().create_task(down.command(engine, "chen", "s1", "gas1", "ping", {}))
        while not sending.done():
            await asyncio.sleep(0.01)
            lock.beat()
        with pytest.raises(DownlinkError, match="did not take it"):
            await sending
    assert lock.beats_held == lock.beats, "the loop stood still while the answer waited for the lock"
    with engine.connect() as conn:
        assert conn.execute(select(commands.c.ok, commands.c.answered.is_not(None))).one() == (False, True)


def made_up_login(url: str, i: int) -> int:
    with httpx.Client(base_url=url, timeout=20) as c:
        return c.post("/api/login", json={"user": f"made-up-{i}", "password": "not-the-password"}).status_code


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_logins_by_the_dozen_under_made_up_names_do_not_take_a_gigabyte(postgres: Postgres, broker: Mosquitto) -> None:
    """A login hashes the password with Argon2id (64 MiB a hash), for a made-up user name too, so that a wrong
    name takes as long as a wrong password; the failed-login limit is per name. Logins ran as many at once as
    the desk's thread pool holds (40): a client posting logins under made-up names, a dozen at a time, made the
    desk take 64 MiB for each, 2.5 GiB at forty, enough to have it killed for memory. The desk now hashes
    two at a time; the rest wait their turn. (On SQLite the write lock queued them, see the next test.)"""
    engine = store.open_engine(postgres.url)
    seed(engine, time.time())
    try:
        with desk_server(engine, broker) as url:
            c, _ = client(url)
            c.post("/api/login", json={"user": "warm-up", "password": "not-the-password"})  # the pool's threads
            base, peak, done = rss_mb(), 0.0, threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_mb())
                    time.sleep(0.002)

            sampler = threading.Thread(target=sample)
            sampler.start()
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda i: made_up_login(url, i), range(12)))
            done.set()
            sampler.join()
            assert answers == [401] * 12
            assert c.post("/api/login", json={"user": USERS["viewer"], "password": PASSWORD}).status_code == 200
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    assert peak - base < 400, (base, peak)


def test_logins_do_not_hold_sqlites_write_lock_while_they_hash(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login hashed the password inside its write transaction: on SQLite, the whole database's write lock held
    for each hash (some 0.1 s), so a client posting logins under made-up names held every ingest worker's batch
    back, up to the busy timeout, without an account. The hash is now checked before the session's write. Each
    hash (the real one) first takes the write lock from a connection of its own, as an ingest worker would, and
    gives it back: a login that held the lock while hashing would keep it from its own probe (this used to time
    an ingest writer, which a loaded machine made slow too)."""
    path = tmp_path / "district.sqlite"
    engine = store.open_engine(str(path))
    seed(engine, time.time())
    real, held = accounts.verify, []

    def probed(pw_hash: str | None, password: str) -> tuple[bool, str | None]:
        probe = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            held.append(False)
        except sqlite3.OperationalError as exc:  # database is locked: by the login that is hashing
            held.append("locked" in str(exc))
        finally:
            probe.close()
        return real(pw_hash, password)

    monkeypatch.setattr(accounts, "verify", probed)
    try:
        with desk_server(engine, broker) as url, ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: made_up_login(url, i), range(12)))
    finally:
        engine.dispose()
    assert held == [False] * 12
    assert answers == [401] * 12


def test_an_order_dispatched_to_the_wrong_team_is_sent_back_and_dispatched_again(desk: str, engine: Engine) -> None:
    """人工纠错重发: an order dispatched to the wrong team (or with the wrong details) is corrected and sent again. A
    supervisor could send an order back only once it was reported: one dispatched to the wrong team waited for that
    team's report (or a report made up to get there) before anyone could send the right one. Now a supervisor
    sends a dispatched order back with the correction, and it is dispatched again, round 2."""
    order = AckedOrder(desk, engine)
    assert order.step("operator", "dispatch", {"team": "pipe team 3"}).json()["state"] == "dispatched"
    assert order.step("operator", "send-back", {"correction": "x"}).status_code == 403  # a supervisor's step
    r = order.step("supervisor", "send-back", {"correction": "wrong team: the valve is pipe team 8's"})
    assert r.status_code == 200 and r.json()["state"] == "returned", r.text
    r = order.step("operator", "report", {"findings": "nothing found"})  # the wrong team's report comes too late
    assert r.status_code == 409 and "returned" in r.json()["error"], r.text
    assert order.step("operator", "dispatch", {"team": "pipe team 8"}).json()["state"] == "dispatched"
    wo = order.read()
    assert (wo["state"], wo["team"], wo["round"]) == ("dispatched", "pipe team 8", 2)
    assert [(s["step"], s["team"] or s["note"]) for s in wo["steps"]][2:] == [
        ("dispatch", "pipe team 3"), ("send-back", "wrong team: the valve is pipe team 8's"),
        ("dispatch", "pipe team 8")]


def test_a_step_from_a_page_that_saw_an_earlier_round_is_refused(desk: str, engine: Engine) -> None:
    """A page left on round 1 of an order (its feed behind, or the officer slow) reports the first team's findings
    after the order was sent back and dispatched again: the report was taken as round 2's, for a team that had not
    reported. A step names the round the page showed, and another round's is 409; the same request again (a double
    click of the re-dispatch) is still done once."""
    order = AckedOrder(desk, engine)
    assert order.step("operator", "dispatch", {"team": "pipe team 3", "round": 1}).status_code == 200
    assert order.step("supervisor", "send-back", {"correction": "wrong team", "round": 1}).status_code == 200
    for _ in range(2):
        r = order.step("operator", "dispatch", {"team": "pipe team 8", "round": 1})
        assert r.status_code == 200 and r.json()["state"] == "dispatched", r.text
    r = order.step("operator", "report", {"findings": "nothing found", "round": 1})
    assert r.status_code == 409 and "round 2" in r.json()["error"], r.text
    assert order.step("operator", "report", {"findings": "valve resealed", "round": 2}).status_code == 200
    assert order.step("operator", "report", {"findings": "x", "round": True}).status_code == 400
    wo = order.read()
    assert [s["step"] for s in wo["steps"]] == ["opened", "ack", "dispatch", "send-back", "dispatch", "report"]


def test_a_conflict_names_who_took_the_step_in_the_way_and_when(desk: str, engine: Engine) -> None:
    """A Close refused because another officer sent the order back said "work order N is returned: it cannot be
    closed", naming no one: the officer did not know whom to ask, nor whether it was a minute or an hour ago. Every
    refusal of a step for the order's state names the step in the way, who took it and when; one of an earlier
    round names the send-back and the step since. Each time is given as epoch seconds beside its UTC text, which
    the page shows in its own convention, as it shows the order's steps."""
    order = AckedOrder(desk, engine)
    assert order.step("operator", "dispatch", {"team": "pipe 3"}).status_code == 200
    assert order.step("operator", "report", {"findings": "leak at the valve"}).status_code == 200
    wang = Session("t", "wang.fang", "supervisor", "c")
    back, again = time.time() - 7200, time.time() - 3600
    with engine.begin() as conn:
        workorders.act(conn, order.id, "send-back", wang, note="read the gauge again", now=back)
    hms = {t: time.strftime("%H:%M:%S", time.gmtime(t)) + " UTC" for t in (back, again)}
    r = order.step("supervisor", "close", {"round": 1})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == (f"work order {order.id} was sent back by wang.fang at {hms[back]} and is returned: "
                                 "it cannot be closed")
    assert r.json()["times"] == [{"t": back, "text": hms[back]}]
    with engine.begin() as conn:
        workorders.act(conn, order.id, "dispatch", wang, team="pipe 8", now=again)
    r = order.step("operator", "report", {"findings": "leak at the valve", "round": 1})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == (f"work order {order.id} was sent back by wang.fang at {hms[back]}, and is in round 2 "
                                 f"(dispatched by wang.fang to pipe 8 at {hms[again]}): look at it again")
    assert r.json()["times"] == [{"t": back, "text": hms[back]}, {"t": again, "text": hms[again]}]
    r = order.step("operator", "dispatch", {"team": "pipe 9"})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == f"work order {order.id} is already dispatched by wang.fang to pipe 8 at {hms[again]}"
    assert r.json()["times"] == [{"t": again, "text": hms[again]}]
    r = order.step("supervisor", "close", {})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == (f"work order {order.id} was dispatched by wang.fang to pipe 8 at {hms[again]} and "
                                 "is dispatched: it cannot be closed")
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state)).scalar_one() == "dispatched"


def test_the_devices_of_a_site_gone_offline_carry_its_link_state_beside_their_own(desk: str, engine: Engine) -> None:
    """A site's gateway died (its will): its devices read "online" in /api/devices and /api/map, as they last said,
    though nothing of theirs can reach the district. Each carries `site_online` beside its own state, which stays
    what the device last said; the gateway's birth makes it true again."""
    c, _ = client(desk, "viewer")

    def seen() -> list[tuple[str, str, bool]]:
        devs = [(d["dev"], d["state"], d["site_online"]) for d in c.get("/api/devices").json()]
        assert devs == [(d["dev"], d["state"], d["site_online"]) for d in c.get("/api/map").json()["devices"]]
        return devs

    assert seen() == [("gas1", "online", True), ("gas2", "online", True)]
    now = time.time()
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", False, 1, received=now)
    assert seen() == [("gas1", "online", False), ("gas2", "online", False)]
    assert c.get("/api/sites").json()[0]["devices"] == {"online": 2}  # as they last said
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, 2, received=now + 1)
    assert seen() == [("gas1", "online", True), ("gas2", "online", True)]
