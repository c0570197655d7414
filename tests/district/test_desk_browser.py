"""The desk page in a real headless Chromium (Debian's, driven by Playwright) over a real uvicorn and
Mosquitto, on SQLite: a live alarm appears without a reload, the whole work-order loop is done with the
page's own buttons and every state shows on it, and what an officer types survives a redraw; a viewer sees
no action buttons and the server refuses a POST made from the viewer's page. Leaves a screenshot of the desk
in out/desk.png. A boolean series (a cover switch) is drawn in steps. An alarm's device messages are checked
again from the page."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from deskkit import PASSWORD, USERS, DeadHost, alarm_body, announce, closed_orders, desk_server, ingest, seed
from playwright.sync_api import Browser, Page, Route, ViewportSize, expect, sync_playwright
from sqlalchemy import Engine, delete, func, select, update

from district import accounts, retention, store, workorders
from district.accounts import Session
from district.desk import COOKIE
from district.live import notice
from district.schema import commands, messages, readings, seq_key, sessions, work_orders
from district.store import open_engine
from lifeline.virtual.broker import Mosquitto

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
OUT = Path(__file__).resolve().parents[2] / "out"
VIEWPORT: ViewportSize = {"width": 1500, "height": 1050}
RED, ORANGE, YELLOW, OLD, QUIET = "e" * 32, "f" * 32, "1" * 32, "2" * 32, "3" * 32

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def now() -> float:
    return time.time()


@pytest.fixture
def engine(tmp_path: Path, now: float) -> Iterator[Engine]:
    """SQLite alone (the page does not depend on the engine, unlike the conftest one of both), seeded at `now`."""
    e = open_engine(str(tmp_path / "district.sqlite"))
    seed(e, now)
    yield e
    e.dispose()


def fill_login(page: Page, role: str) -> None:
    page.fill("#login-user", USERS[role])
    page.fill("#login-pass", PASSWORD)
    page.click("#login-btn")


def log_in(page: Page, url: str, role: str) -> None:
    page.goto(url)
    fill_login(page, role)
    expect(page.locator("#role")).to_have_text(role)
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)


@contextmanager
def desk_page(engine: Engine, browser: Browser, role: str,
              zone: str | None = None) -> Iterator[tuple[Mosquitto, str, Page]]:
    """A district broker, the desk following it, and a page logged in as `role` (on a PC in time zone `zone`)."""
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT, timezone_id=zone)
        log_in(page, url, role)
        yield broker, url, page
        page.close()


def history(engine: Engine, now: float) -> None:
    """An hour of methane at gas1 rising into red, other alarms of every kind the board must tell apart."""
    with engine.begin() as conn:
        for i in range(120):
            v = 2.0 + (i / 119) ** 3 * 58
            store.add_message(conn, "s1", "gas1", i, 1, [{"n": "ch4", "t": now - 3570 + i * 30, "u": "%LEL", "v": v}],
                              received=now - 3570 + i * 30 + 0.3)
        store.apply_alarm(conn, "s1", alarm_body(ORANGE, "raised", "orange", now - 900, dev="gas2", value=27.0),
                          received=now - 899)
        store.apply_alarm(conn, "s1", alarm_body(YELLOW, "raised", "yellow", now - 2400, dev="gas2", value=21.0,
                                                 metric="co", unit="ppm", point=None), received=now - 2399)
        store.apply_alarm(conn, "s1", alarm_body(OLD, "raised", "red", now - 7200, value=55.0), received=now - 30,
                          hist=True)
        store.apply_alarm(conn, "s1", alarm_body(QUIET, "raised", "yellow", now - 3000, dev="gas2", point=None,
                                                 metric="o2", unit="%", value=19.0), received=now - 2999)
        store.apply_alarm(conn, "s1", alarm_body(QUIET, "inhibited", "yellow", now - 1200, dev="gas2", point=None,
                                                 metric="o2", unit="%", value=19.0, cause="silence"),
                          received=now - 1199)


def test_the_desk_in_a_browser(tmp_path: Path, engine: Engine, now: float, browser: Browser) -> None:
    history(engine, now)
    with desk_page(engine, browser, "supervisor") as (broker, url, page):
        expect(page.locator(f".alarm[data-id='{OLD}'] .tag.historical")).to_be_visible()
        expect(page.locator(f".alarm[data-id='{QUIET}'] .tag.inhibited")).to_be_visible()
        expect(page.locator(f".alarm[data-id='{RED}']")).to_have_count(0)

        with engine.begin() as conn:  # the ingest stores a red alarm and tells the desks
            store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 5), received=time.time())
        announce(broker, notice("alarm", site="s1", id=RED))
        card = page.locator(f".alarm[data-id='{RED}']")
        expect(card).to_be_visible(timeout=10_000)  # no reload: the page got the notice
        expect(page.locator(".alarm").first).to_have_attribute("data-id", RED)  # red, live, first
        expect(page.locator(".alarm").nth(1)).to_have_attribute("data-id", ORANGE)
        expect(page.locator(f".alarm[data-id='{OLD}']")).to_have_class(re.compile(r"\bst-historical\b"))

        card.click()
        expect(page.locator("#wo-state")).to_have_text("open")
        expect(page.locator("#chart polyline.series")).to_have_count(1)
        expect(page.locator("#chart line.threshold")).to_have_count(4)
        page.click("#act-ack")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        expect(page.locator("#act-ack")).to_have_count(0)
        page.fill("#team", "pipe team 3")
        page.click("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        page.screenshot(path=str(tmp_path / "dispatched.png"))
        page.fill("#findings", "valve seal leaking")
        page.fill("#action-taken", "seal replaced")
        page.click("#act-report")
        expect(page.locator("#wo-state")).to_have_text("reported")
        page.fill("#correction", "give the reading after the repair")
        # A notice (here another alarm's) redraws the actions while the officer is typing: the text stays, and
        # so does the focus. Seen lost under load in CI, when a notice came between the typing and the click.
        page.evaluate("document.getElementById('act-send-back').dataset.before = '1'")
        announce(broker, notice("alarm", site="s1", id=ORANGE))
        expect(page.locator("#act-send-back[data-before]")).to_have_count(0, timeout=10_000)  # redrawn
        expect(page.locator("#correction")).to_have_value("give the reading after the repair")
        expect(page.locator("#correction")).to_be_focused()
        page.click("#act-send-back")
        expect(page.locator("#wo-state")).to_have_text("returned")
        page.fill("#team", "pipe team 3")
        page.click("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        page.fill("#findings", "0 %LEL after repair")
        page.click("#act-report")
        expect(page.locator("#wo-state")).to_have_text("reported")
        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / "desk.png"), full_page=True)
        page.click("#act-close")
        expect(page.locator("#wo-state")).to_have_text("closed")
        steps = page.locator("#order .steps li b")
        expect(steps).to_have_text(["opened", "acknowledged", "dispatched", "reported", "sent back", "dispatched",
                                    "reported", "closed"])
        expect(page.locator("#orders tr[data-id] .wo-state").first).to_have_text("closed")

        viewer = browser.new_page(viewport=VIEWPORT)
        log_in(viewer, url, "viewer")
        viewer.locator(f".alarm[data-id='{ORANGE}']").click()
        expect(viewer.locator("#wo-state")).to_have_text("open")
        expect(viewer.locator("#actions button")).to_have_count(0)
        expect(viewer.locator("#commands-card")).to_be_hidden()
        status = viewer.evaluate("""async (id) => {
            const me = await (await fetch('/api/me')).json();
            const r = await fetch('/api/alarms/' + id + '/ack', {method: 'POST', headers:
                {'X-CSRF-Token': me.csrf, 'Content-Type': 'application/json'}, body: '{}'});
            return [r.status, (await r.json()).error];
        }""", ORANGE)
        assert status == [403, "a viewer may not ack"]
        viewer.reload()
        viewer.locator(f".alarm[data-id='{ORANGE}']").click()
        expect(viewer.locator("#fact-acknowledged")).to_have_text("no")
        viewer.close()


def test_a_boolean_series_charts_in_steps(engine: Engine, now: float, browser: Browser) -> None:
    """A manhole cover's switch (SenML vb) open, shut and open again: the chart held nothing ("no readings in
    this window"); now each reading is 0 or 1, held until the next, so every segment is level or upright."""
    flips = [False, False, True, True, False, True]
    with engine.begin() as conn:
        for i, open_ in enumerate(flips):
            store.add_message(conn, "s1", "drain1", i, 1, [{"n": "cover", "t": now - 3000 + i * 500, "vb": open_}],
                              received=now - 3000 + i * 500)
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "orange", now - 500, dev="drain1", cls="drainage",
                                                 metric="cover", unit=None, value=1.0, point=None),
                          received=now - 499)
    with desk_page(engine, browser, "viewer") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        series = page.locator("#chart polyline.series")
        expect(series).to_have_count(1)
        expect(page.locator("#chart line.threshold")).to_have_count(1)  # orange at 0.5
        points = [tuple(map(float, p.split(","))) for p in (series.get_attribute("points") or "").split()]
        assert len(points) == 2 * len(flips) - 1, points
        assert all(a[0] == b[0] or a[1] == b[1] for a, b in pairwise(points)), points
        levels = sorted({y for _, y in points})
        assert len(levels) == 2, points  # 1 (open) above 0 (shut): a smaller y
        assert [y == levels[0] for _, y in points[::2]] == flips


def test_an_open_order_whose_alarm_left_the_board_or_was_acknowledged_before_can_be_acknowledged(
        engine: Engine, now: float, browser: Browser) -> None:
    """An order is dispatched only once acknowledged, and the page offered Acknowledge only on an alarm of the
    board not yet acknowledged. A red burst that cleared before anyone acknowledged it, and a yellow alarm
    acknowledged before it went red (which opens its order), left an open order the page could never move:
    no button to acknowledge it, none to dispatch it."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 120), received=now - 119)
        store.apply_alarm(conn, "s1", alarm_body(RED, "cleared", None, now - 90, prev="red", value=3.0),
                          received=now - 89)
        store.apply_alarm(conn, "s1", alarm_body(YELLOW, "raised", "yellow", now - 300, dev="gas2", value=21.0),
                          received=now - 299)
        boss = Session("t", USERS["supervisor"], "supervisor", "c")
        workorders.ack_alarm(conn, YELLOW, boss, now=now - 200)
        store.apply_alarm(conn, "s1", alarm_body(YELLOW, "escalated", "red", now - 60, dev="gas2", prev="yellow",
                                                 value=61.0), received=now - 59)
        orders = dict(conn.execute(select(work_orders.c.alarm, work_orders.c.id)).all())
    with desk_page(engine, browser, "operator") as (_, _, page):
        expect(page.locator(f".alarm[data-id='{RED}']")).to_have_count(0)  # cleared: off the board
        page.locator(f"#orders tr[data-id='{orders[RED]}']").click()
        expect(page.locator("#wo-state")).to_have_text("open")
        page.click("#act-ack")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        page.fill("#team", "pipe team 3")
        page.click("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")

        page.locator(f".alarm[data-id='{YELLOW}']").click()
        expect(page.locator("#wo-state")).to_have_text("open")
        # its red wants a fresh ack: the yellow's covers no more than the yellow
        expect(page.locator(f".alarm[data-id='{YELLOW}'] .tag.acked")).to_have_count(0)
        page.click("#act-ack")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        expect(page.locator(f".alarm[data-id='{YELLOW}'] .tag.acked")).to_be_visible()
        expect(page.locator("#act-ack")).to_have_count(0)
        page.fill("#team", "gas team 1")
        page.click("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        expect(page.locator("#order .steps li b")).to_have_text(["opened", "acknowledged", "dispatched"])


def test_a_years_work_orders_list_every_active_one_and_only_the_newest_closed(engine: Engine, now: float,
                                                                               browser: Browser) -> None:
    """With 5,000 closed orders the page fetched and drew all of them at every work-order notice. It shows
    every active order, the oldest too, and the newest 50 closed ones."""
    with engine.begin() as conn:  # an order opened before the year's closed ones, still dispatched
        store.apply_alarm(conn, "s1", alarm_body(OLD, "raised", "red", now - 7200), received=now - 7199)
        boss = Session("t", USERS["supervisor"], "supervisor", "c")
        workorders.ack_alarm(conn, OLD, boss, now=now - 7000)
        [old] = conn.execute(select(work_orders.c.id)).scalars()
        workorders.act(conn, old, "dispatch", boss, team="pipe team 3", now=now - 6900)
    closed_orders(engine, 5000, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        orders = dict(conn.execute(select(work_orders.c.alarm, work_orders.c.id)
                                   .where(work_orders.c.alarm.in_([OLD, RED]))).all())
    with desk_page(engine, browser, "viewer") as (_, _, page):
        expect(page.locator(f"#orders tr[data-id='{orders[RED]}'] .wo-state")).to_have_text("open")
        expect(page.locator(f"#orders tr[data-id='{orders[OLD]}'] .wo-state")).to_have_text("dispatched")
        expect(page.locator("#orders tr[data-id]")).to_have_count(2 + 50)
        expect(page.locator("#orders tr.st-closed")).to_have_count(50)
        page.locator(f"#orders tr[data-id='{orders[OLD]}']").click()
        expect(page.locator("#wo-state")).to_have_text("dispatched")


def test_a_double_clicked_step_is_done_once_and_shows_no_error(engine: Engine, now: float, browser: Browser) -> None:
    """Dispatch double-clicked sent two requests; the second was a 409 and the page showed an error for a
    dispatch that had gone through. Both are answered 200 and the order has one dispatch step."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        workorders.ack_alarm(conn, RED, Session("t", USERS["operator"], "operator", "c"), now=now - 30)
    with desk_page(engine, browser, "operator") as (_, _, page):
        answers: list[int] = []
        page.on("response", lambda r: answers.append(r.status) if r.url.endswith("/dispatch") else None)
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        page.fill("#team", "pipe team 3")
        page.dblclick("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        deadline = time.monotonic() + 10
        while len(answers) < 2:
            assert time.monotonic() < deadline, answers
            page.wait_for_timeout(50)
        page.wait_for_timeout(300)  # the second answer's handling, and the redraw after it
        assert answers == [200, 200]
        expect(page.locator("#action-error")).to_have_text("")
        expect(page.locator("#order .steps li b")).to_have_text(["opened", "acknowledged", "dispatched"])


def test_a_busy_database_is_told_to_the_officer(tmp_path: Path, browser: Browser,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An ack while another process held SQLite's write lock past the busy timeout was a bare 500, shown as
    "Internal Server Error"; the page now says the database is busy, and the ack goes through when tried
    again."""
    monkeypatch.setattr(store, "SQLITE_BUSY_MS", 200)
    path = tmp_path / "district.sqlite"
    engine = open_engine(str(path))
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT)
        log_in(page, url, "operator")
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("open")
        holder = sqlite3.connect(str(path), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            page.click("#act-ack")
            expect(page.locator("#action-error")).to_have_text("the database is busy, try again")
            expect(page.locator("#wo-state")).to_have_text("open")
        finally:
            holder.close()
        page.click("#act-ack")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        expect(page.locator("#action-error")).to_have_text("")
        page.close()
    engine.dispose()


def test_a_double_clicked_command_is_sent_once(engine: Engine, browser: Browser) -> None:
    """Send command double-clicked sent the command to the device twice (a second reboot, a valve worked twice):
    the form now sends one at a time."""
    with desk_page(engine, browser, "supervisor") as (_, _, page):
        page.fill("#cmd-site", "s1")
        page.fill("#cmd-dev", "gas1")
        page.fill("#cmd-op", "reboot")
        page.dblclick("#command-form button[type=submit]")
        expect(page.locator("#sent tbody tr")).to_have_count(1)
        expect(page.locator("#command-form button[type=submit]")).to_be_enabled()
        page.wait_for_timeout(500)  # a second request, had one gone, is recorded by now
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(commands)).scalar_one() == 1
        expect(page.locator("#sent tbody tr")).to_have_count(1)


def test_a_refresh_the_desk_could_not_answer_is_shown_until_one_is(engine: Engine, now: float,
                                                                   browser: Browser) -> None:
    """A notice's fetch the desk answered 503 (its database busy or its connection lost) was dropped without a
    word: the board stayed as it was, still marked live, with a new alarm missing from it. The page now says
    it is not up to date, and why, until a fetch of that part succeeds."""
    with desk_page(engine, browser, "viewer") as (broker, _, page):
        expect(page.locator("#stale")).to_be_hidden()
        busy = '{"error": "the database is busy, try again"}'
        page.route("**/api/alarms", lambda route: route.fulfill(status=503, body=busy,
                                                                content_type="application/json"))
        with engine.begin() as conn:
            store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 5), received=time.time())
        announce(broker, notice("alarm", site="s1", id=RED))
        expect(page.locator("#stale")).to_have_text("Not up to date: the database is busy, try again",
                                                    timeout=10_000)
        page.unroute("**/api/alarms")
        announce(broker, notice("alarm", site="s1", id=RED))
        expect(page.locator(f".alarm[data-id='{RED}']")).to_be_visible(timeout=10_000)
        expect(page.locator("#stale")).to_be_hidden()


def test_a_live_feed_the_desk_refused_is_opened_again_or_the_login_shown(engine: Engine, browser: Browser) -> None:
    """A browser's EventSource connects again by itself after a stream that ended, but never after an answer
    other than 200: a 503 (the database busy as the page connected) left the page empty and "reconnecting" for
    good, and a 401 (the session ended at another desk, or the shift's 12 h ran out) left it so with the data
    of the shift before. The page now asks who it is and connects again, or shows the login."""
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT)
        busy = '{"error": "the database is busy, try again"}'
        page.route("**/api/events", lambda route: route.fulfill(status=503, body=busy,
                                                                content_type="application/json"), times=1)
        log_in(page, url, "operator")  # live in the end
        with engine.begin() as conn:
            conn.execute(delete(sessions))
        # a logout at another desk tells every feed: this one ends, and connecting again is 401
        announce(broker, notice("session"))
        expect(page.locator("#login-view")).to_be_visible(timeout=15_000)
        expect(page.locator("#desk")).to_be_hidden()
        page.close()


def test_a_reading_moves_its_devices_last_seen_without_fetching_every_device(engine: Engine,
                                                                              browser: Browser) -> None:
    """Every worker batch tells the pages of each device it stored readings of, and every page fetched every
    device of the district (and every site) at each such notice, a few times a second under steady ingest:
    at 5,000 devices, 724 kB and some 70 ms of the desk's time a fetch, for each open page. A reading changes
    nothing of a device the page shows but its last-seen time, which the notice carries: the page now moves
    that alone, and fetches the devices when it names one the page does not show yet."""
    with desk_page(engine, browser, "viewer") as (broker, _, page):  # gas1 and gas2 last seen 500 s ago
        row = page.locator("#devices tbody tr", has_text="gas1")
        expect(row.locator(".age")).to_have_text(re.compile(r"^8 min"))
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url) if "/api/devices" in r.url else None)
        for seq in range(5):
            t = time.time()
            with engine.begin() as conn:
                store.add_message(conn, "s1", "gas1", seq, 1, [{"n": "ch4", "t": t, "v": 2.0}], received=t)
            announce(broker, notice("reading", site="s1", dev="gas1", t=t, received=t))
        expect(row.locator(".age")).to_have_text(re.compile(r"^\d s$"), timeout=10_000)
        page.wait_for_timeout(500)  # a fetch a notice started is under way by now
        assert fetched == []
        t = time.time()
        with engine.begin() as conn:
            store.add_message(conn, "s1", "gas3", 0, 1, [{"n": "ch4", "t": t, "v": 2.0}], received=t)
        announce(broker, notice("reading", site="s1", dev="gas3", t=t, received=t))
        expect(page.locator("#devices tbody tr", has_text="gas3")).to_be_visible(timeout=10_000)
        assert len(fetched) == 1


def test_a_session_that_ended_mid_action_shows_the_login_and_keeps_what_was_typed(engine: Engine, now: float,
                                                                                  browser: Browser) -> None:
    """The shift's session ended (12 h, or a logout at another desk) while the officer was typing a team: Dispatch
    was answered 401 and the page only wrote "log in first" under the buttons, with no login to be had but a
    reload, which lost the team typed. The login is shown, saying why; once logged in again the order is where it
    was, the team still typed, and the dispatch goes through once."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        workorders.ack_alarm(conn, RED, Session("t", USERS["operator"], "operator", "c"), now=now - 30)
    with desk_page(engine, browser, "operator") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        # the panel's last fetch, its chart's, answered: under load it met the ended session before Dispatch did,
        # and the login covered the button the test was to press
        expect(page.locator("#chart-title")).to_contain_text("last ")
        page.fill("#team", "pipe team 3")
        with engine.begin() as conn:
            conn.execute(delete(sessions))
        page.click("#act-dispatch")
        expect(page.locator("#login-view")).to_be_visible(timeout=5_000)
        expect(page.locator("#login-error")).to_contain_text("log in again")
        fill_login(page, "operator")
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        expect(page.locator("#team")).to_have_value("pipe team 3")
        expect(page.locator("#action-error")).to_have_text("")
        page.click("#act-dispatch")
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        expect(page.locator("#order .steps li b")).to_have_text(["opened", "acknowledged", "dispatched"])
        expect(page.locator("#stale")).to_be_hidden()


def test_a_session_that_ended_under_a_command_leaves_no_error_once_logged_in_again(engine: Engine,
                                                                                   browser: Browser) -> None:
    """A command sent, and the firmware panel's site changed, after the session ended: the login showed, and once
    logged in again both panels' error lines still said "log in first", over a desk that was working."""
    with desk_page(engine, browser, "supervisor") as (_, _, page):
        for field, value in (("#cmd-site", "s1"), ("#cmd-dev", "gas1"), ("#cmd-op", "ping")):
            page.fill(field, value)
        with engine.begin() as conn:
            conn.execute(delete(sessions))
        # submitted as its button does, and the panel's site changed, whether or not the page's own fetches, answered
        # 401 meanwhile, have put the login over them
        page.locator("#command-form").evaluate("f => f.requestSubmit()")
        page.dispatch_event("#ota-site", "change")
        expect(page.locator("#login-view")).to_be_visible(timeout=5_000)
        fill_login(page, "supervisor")
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator("#command-error")).to_have_text("")
        expect(page.locator("#ota-error")).to_have_text("")


def test_a_401_to_a_request_sent_under_the_session_before_does_not_show_the_login_again(engine: Engine,
                                                                                        browser: Browser) -> None:
    """A read and a command the page sent under one session, whose 401s (that session had ended) came back only
    once the officer had logged in again, over a slow link say: the page took them for the new session's end and
    showed the login over a desk that was working. A 401 counts only for the session its request was sent under:
    the read is sent again under the new one, and the command is said not done (it is not sent again unasked)."""
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT)
        held: list[Route] = []
        for path in ("/api/response-times", "/api/commands"):
            page.route("**" + path, lambda route: held.append(route), times=1)
        with page.expect_request("**/api/response-times"):  # not "live": that waits for the read kept back
            page.goto(url)
            fill_login(page, "supervisor")
            expect(page.locator("#role")).to_have_text("supervisor")
        for field, value in (("#cmd-site", "s1"), ("#cmd-dev", "gas1"), ("#cmd-op", "ping")):
            page.fill(field, value)
        with page.expect_request("**/api/commands"):
            page.click("#command-form button[type=submit]")
        old = {COOKIE: next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)}
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        fill_login(page, "supervisor")
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        for route in held:  # each answered as the desk answers it now, under the session before
            late = httpx.request(route.request.method, route.request.url, cookies=old,
                                 content=route.request.post_data_buffer)
            assert late.status_code == 401
            route.fulfill(status=late.status_code, body=late.content, content_type="application/json")
        expect(page.locator("#command-error")).to_contain_text("not done: it was sent before you logged in again")
        page.wait_for_timeout(300)  # the read's answer is taken in too
        expect(page.locator("#login-view")).to_be_hidden()
        expect(page.locator("#role")).to_have_text("supervisor")
        expect(page.locator("#stale")).to_be_hidden()
        page.close()


def test_a_login_in_another_tab_gives_this_tab_its_session(engine: Engine, now: float, browser: Browser) -> None:
    """Tabs of the desk in one browser share its cookie. The officer logged out and in again in one (the next shift,
    say): another tab's feed connected again under the new session, but the tab kept the CSRF token and the user
    of the session before, and its next action, Acknowledge on a red gas alarm, was refused 403 "missing or wrong
    X-CSRF-Token". A tab whose feed connects again takes the session the browser holds; one that acts before that
    is told the action was not done and as whom it acts now, and the next press does it."""
    with engine.begin() as conn:
        for alarm, dev in ((RED, "gas1"), (ORANGE, "gas2")):
            store.apply_alarm(conn, "s1", alarm_body(alarm, "raised", "red", now - 60, dev=dev), received=now - 59)
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        context = browser.new_context(viewport=VIEWPORT)
        first, early, late = (context.new_page() for _ in range(3))
        log_in(first, url, "operator")
        for page, alarm in ((early, RED), (late, ORANGE)):
            page.goto(url)  # logged in by the cookie
            expect(page.locator("#live")).to_have_text("live", timeout=10_000)
            page.bring_to_front()  # a page behind draws no frames: a click on it waits for them
            page.locator(f".alarm[data-id='{alarm}']").click()
            expect(page.locator("#act-ack")).to_be_visible()
        first.click("#logout")
        fill_login(first, "supervisor")
        expect(first.locator("#role")).to_have_text("supervisor")
        early.click("#act-ack")  # before its feed connects again: the browser waits 3 s after a stream ends
        expect(early.locator("#action-error")).to_have_text(
            f"not done: this browser was logged in again in another tab, as {USERS['supervisor']}; do it again")
        expect(early.locator("#role")).to_have_text("supervisor")
        early.click("#act-ack")
        expect(early.locator("#wo-state")).to_have_text("acknowledged")
        late.evaluate("() => { desk.events.close(); connect(); }")  # as its browser does 3 s after the stream ended
        expect(late.locator("#role")).to_have_text("supervisor")
        late.click("#act-ack")
        expect(late.locator("#wo-state")).to_have_text("acknowledged")
        expect(late.locator("#action-error")).to_have_text("")
        context.close()


def test_an_ack_the_site_was_not_sent_is_told_to_the_officer(engine: Engine, now: float, browser: Browser) -> None:
    """An ack goes down to the site so its gateway stops re-sending the alarm. With the district broker away the
    desk acknowledged it and answered why it was not sent ("down"), and the page dropped the answer: the officer
    saw the alarm acknowledged and nothing else, and the site went on re-sending it, with no one told."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
    with desk_page(engine, browser, "operator") as (broker, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#act-ack")).to_be_visible()
        broker.stop()
        page.click("#act-ack")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        expect(page.locator("#action-error")).to_contain_text("not sent to s1")


def test_a_conflict_is_shown_for_its_order_alone(engine: Engine, now: float, browser: Browser) -> None:
    """Two officers dispatch one order: the second is refused, told who did it, and the panel shows the order
    dispatched to the first's team. That message stayed under the buttons of every alarm the officer opened next,
    as if the next order had been taken by someone else too. A refusal's times read as every other time on the page
    (the PC's zone, here UTC+8): "it went red at 13:50:00 UTC" stood beside the order's steps at 21:50."""
    sup = Session("t", USERS["supervisor"], "supervisor", "c")
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        store.apply_alarm(conn, "s1", alarm_body(ORANGE, "raised", "orange", now - 50, dev="gas2", step=0),
                          received=now - 49)
        workorders.ack_alarm(conn, RED, sup, now=now - 30)
    with desk_page(engine, browser, "operator", zone="Asia/Shanghai") as (_, _, page):
        def clock(t: float) -> str:
            return str(page.evaluate("(t) => clock(t)", t))

        assert "UTC" not in clock(now) and clock(now) == page.evaluate(
            "(t) => new Date(t * 1000).toLocaleString([], {hour12: false, timeZone: 'Asia/Shanghai'})", now)
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        with engine.begin() as conn:  # the other officer, whose notice has not reached this page yet
            order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == RED)).scalar_one()
            workorders.act(conn, order, "dispatch", sup, team="pipe team 3", now=now - 25)
        page.fill("#team", "pipe team 4")
        page.click("#act-dispatch")
        expect(page.locator("#action-error")).to_have_text(f"work order {order} is already dispatched by "
                                                           f"{USERS['supervisor']} to pipe team 3 at {clock(now - 25)}")
        expect(page.locator("#order .steps li").last).to_contain_text(clock(now - 25))  # as its step reads
        expect(page.locator("#wo-state")).to_have_text("dispatched")
        page.locator(f".alarm[data-id='{ORANGE}']").click()
        expect(page.locator("#act-ack")).to_be_visible()
        expect(page.locator("#action-error")).to_have_text("")
        with engine.begin() as conn:  # red and orange again, no notice here yet: the click acked the red unseen
            store.apply_alarm(conn, "s1", alarm_body(ORANGE, "escalated", "red", now - 20, dev="gas2", prev="orange",
                                                     step=1), received=now - 19)
            store.apply_alarm(conn, "s1", alarm_body(ORANGE, "de-escalated", "orange", now - 10, dev="gas2",
                                                     prev="red", step=2), received=now - 9)
        page.click("#act-ack")
        expect(page.locator("#action-error")).to_have_text(
            f"it went red at {clock(now - 20)} since you looked; look again and acknowledge")
        expect(page.locator(f".alarm[data-id='{ORANGE}']")).to_have_class(re.compile(r"\blv-orange\b"))
        expect(page.locator(f".alarm[data-id='{ORANGE}'] .tag.acked")).to_have_count(0)
        expect(page.locator("#act-ack")).to_have_attribute("data-step", "2")  # redrawn as it is now
        page.click("#act-ack")
        expect(page.locator(f".alarm[data-id='{ORANGE}'] .tag.acked")).to_be_visible()


def test_a_command_answered_while_the_feed_was_down_shows_its_answer_once_it_is_back(engine: Engine,
                                                                                      browser: Browser) -> None:
    """A page's feed drops (the desk restarted, the network blinked) and its browser connects again; the "hello"
    refetched every panel but the commands sent from the page, so one the site answered meanwhile, whose notice
    the page never got, read "sent" for as long as the page stayed open."""
    with desk_page(engine, browser, "supervisor") as (_, _, page):
        page.fill("#cmd-site", "s1")
        page.fill("#cmd-dev", "gas1")
        page.fill("#cmd-op", "reboot")
        page.click("#command-form button[type=submit]")
        expect(page.locator("#sent tbody .pill")).to_have_text("sent")
        page.evaluate("() => desk.events.close()")  # the feed down
        with engine.begin() as conn:  # the site's answer, stored by a worker while the page heard nothing
            conn.execute(commands.update().values(ok=True, result='{"rebooting": true}', answered=time.time()))
        page.evaluate("() => connect()")  # and back, as the browser connects again
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#sent tbody .pill")).to_have_text("done", timeout=5_000)


@pytest.mark.parametrize("window", ["86400", "604800"])
def test_a_chart_of_a_day_or_more_tells_its_days_apart(engine: Engine, now: float, browser: Browser,
                                                       window: str) -> None:
    """The chart's time axis gave hours and minutes alone: over 24 h its first and last ticks read the same
    ("14:05" yesterday and today), and over 7 d five ticks 42 h apart named no day, so the officer could not tell
    when the readings were. Past a day each tick names its date."""
    with engine.begin() as conn:
        store.add_message(conn, "s1", "gas1", 1, 1, [{"n": "ch4", "t": now - 120, "u": "%LEL", "v": 60.0}],
                          received=now - 119)
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
    with desk_page(engine, browser, "viewer") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        ticks = page.locator("#chart text.axis[text-anchor='middle']")
        expect(ticks).to_have_count(5)
        page.select_option("#window", window)
        expect(page.locator("#chart-title")).to_contain_text("last " + {"86400": "24 h", "604800": "7 d"}[window])
        labels = ticks.all_text_contents()
        assert len(set(labels)) == 5, labels


def test_a_pc_whose_clock_is_behind_shows_the_desks_times(engine: Engine, now: float, browser: Browser) -> None:
    """The page took "now" from the officer's PC: with its clock ten minutes behind the desk's, every alarm read
    raised "0 s" ago, and the chart's window ended ten minutes before the desk's now, so the reading that raised
    the alarm was not on it ("no readings in this window"). The page now keeps the desk's clock. A card's age
    counted from `raised`, the site gateway's clock: of three alarms the district heard of 2 min ago, one from a
    site 3 h behind read "3 h 2 min", one from a site an hour ahead "0 s". It counts from when the district heard
    of it, as the board orders; the panel's raised time says it is the site's clock."""
    with engine.begin() as conn:
        store.add_message(conn, "s1", "gas1", 1, 1, [{"n": "ch4", "t": now - 150, "u": "%LEL", "v": 60.0}],
                          received=now - 149)
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 150), received=now - 149)
        store.apply_alarm(conn, "s1", alarm_body(ORANGE, "raised", "orange", now - 150 - 3 * 3600, dev="gas2"),
                          received=now - 149)
        store.apply_alarm(conn, "s1", alarm_body(YELLOW, "raised", "yellow", now - 150 + 3600, dev="gas2"),
                          received=now - 149)
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.clock.set_system_time(now - 600)
        log_in(page, url, "viewer")
        for alarm_id in (RED, ORANGE, YELLOW):
            expect(page.locator(f".alarm[data-id='{alarm_id}'] .age")).to_have_text(re.compile(r"^2 min \d+ s$"))
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#detail-facts div", has=page.locator("#fact-raised")).locator(".k")).to_have_text(
            "raised (site clock)")
        page.select_option("#window", "900")
        expect(page.locator("#chart polyline.series")).to_have_count(1)
        page.close()


def test_a_desk_cut_off_from_the_district_broker_does_not_read_live(engine: Engine, now: float,
                                                                    browser: Browser) -> None:
    """The desk hears of what the workers store through the district broker. With the broker away the page still
    read "live" while no new alarm could reach it, for as long as the broker stayed away; a page opened meanwhile
    too. It reads "not live" until the desk follows the broker again, and then refetches what it missed."""
    with desk_page(engine, browser, "viewer") as (broker, url, page):
        broker.stop()
        expect(page.locator("#live")).to_have_text("not live", timeout=5_000)
        expect(page.locator("#live")).to_have_attribute("title", re.compile("district broker"))
        second = browser.new_page(viewport=VIEWPORT)
        second.goto(url)
        fill_login(second, "operator")
        expect(second.locator("#live")).to_have_text("not live", timeout=5_000)
        with engine.begin() as conn:  # stored by a worker, whose notice no desk heard
            store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now), received=now)
        broker.start()
        for p in (page, second):
            expect(p.locator("#live")).to_have_text("live", timeout=10_000)
            expect(p.locator(f".alarm[data-id='{RED}']")).to_be_visible()
        second.close()


def test_a_page_reads_live_only_once_it_shows_what_is_stored(engine: Engine, browser: Browser) -> None:
    """At each connection the page read "live" from the desk's hello, before the panels it then fetched again had
    come: an officer (CI's conflict test, under load) acted on the panel of before, and the fetch that came after
    redrew it under the officer's hands (the order dispatched by another, its team field gone mid-typing). "live"
    now waits for that fetch; until then the page reads as it did."""
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        page = browser.new_page(viewport=VIEWPORT)
        held: list[Route] = []
        page.route("**/api/response-times", lambda route: held.append(route))  # one panel of the hello's fetch, kept
        page.goto(url)
        fill_login(page, "viewer")
        expect(page.locator("#role")).to_have_text("viewer")
        deadline = time.monotonic() + 10
        while not held:
            assert time.monotonic() < deadline, "the page did not fetch its panels"
            page.wait_for_timeout(20)
        assert page.locator("#live").text_content() != "live"
        held[0].continue_()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        page.close()


def test_a_desk_whose_host_died_without_a_word_does_not_read_live(engine: Engine, now: float,
                                                                   browser: Browser) -> None:
    """A desk host that dies (its power lost) closes none of its connections, and a browser notices a dead one
    only once TCP gives up, minutes later: the page read "live" meanwhile while it heard nothing, as the desk's
    ping was a comment no page sees. The feed now says "ping" every so often, and a page that misses three reads
    "reconnecting" and connects again until a desk answers with a hello; then it is live and refetches what it
    missed."""
    with Mosquitto() as broker, desk_server(engine, broker, ping_s=0.5) as desk, DeadHost(desk) as host:
        page = browser.new_page(viewport=VIEWPORT)
        log_in(page, host.url, "viewer")
        host.die()
        expect(page.locator("#live")).to_have_text("reconnecting", timeout=10_000)
        expect(page.locator("#live")).to_have_attribute("title", re.compile("nothing heard from the desk"))
        with engine.begin() as conn:  # stored by a worker while this page heard nothing
            store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now), received=now)
        host.restart()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator(f".alarm[data-id='{RED}']")).to_be_visible()
        page.close()


def test_a_quiet_page_shows_the_login_when_its_session_ends(engine: Engine, browser: Browser) -> None:
    """A feed noticed its session's expiry only at its next notice: a quiet page read "live" after the shift's 12 h
    had ended, and when an alarm came the officer was shown the login, not the alarm. The feed checks at each ping
    too, and ends: the page, refused at its next connection, shows the login then."""
    shift = [0.0]  # how far the desk's clock has been moved on
    with Mosquitto() as broker, desk_server(engine, broker, ping_s=0.5, clock=lambda: time.time() + shift[0]) as url:
        page = browser.new_page(viewport=VIEWPORT)
        fetching: set[object] = set()  # the page's own fetches, answered 401 once the session ends
        page.on("request", lambda r: fetching.add(r) if "/api/events" not in r.url else None)
        page.on("requestfinished", lambda r: fetching.discard(r))
        page.on("requestfailed", lambda r: fetching.discard(r))
        with page.expect_request(re.compile(r"/api/ota\?")):  # the last of what a page fetches when it connects
            log_in(page, url, "operator")
        deadline = time.monotonic() + 10
        while fetching:
            assert time.monotonic() < deadline, fetching
            page.wait_for_timeout(20)
        shift[0] = accounts.SESSION_S  # the shift is over, and nothing happened in the district
        expect(page.locator("#login-view")).to_be_visible(timeout=10_000)
        expect(page.locator("#login-error")).to_contain_text("log in again")
        page.close()


def test_what_was_typed_for_one_order_is_not_carried_to_another(engine: Engine, now: float, browser: Browser) -> None:
    """What an officer types survives a redraw of the panel; it also went with them to the next order opened: a
    team typed for one order stood in the next one's Dispatch field (a correction in the next one's Send back),
    one click from sending that order to the team meant for the other. Left behind, it vanished: it is kept with
    its own order, shown when the officer opens that one again."""
    op = Session("t", USERS["operator"], "operator", "c")
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        store.apply_alarm(conn, "s1", alarm_body(ORANGE, "raised", "orange", now - 50, dev="gas2"), received=now - 49)
        workorders.ack_alarm(conn, RED, op, now=now - 30)
        workorders.ack_alarm(conn, ORANGE, op, now=now - 30)
    with desk_page(engine, browser, "operator") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#fact-state")).to_have_text("open")
        expect(page.locator("#wo-state")).to_have_text("acknowledged")
        page.fill("#team", "pipe team 3")
        page.locator(f".alarm[data-id='{ORANGE}']").click()
        expect(page.locator("#detail-title")).to_contain_text("gas2")
        expect(page.locator("#team")).to_have_value("")
        expect(page.locator("#kept")).to_be_hidden()
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#detail-title")).to_contain_text("gas1")
        expect(page.locator("#kept .kept-why")).to_have_text("You opened another alarm before sending it. What you "
                                                             "typed was not sent; it is kept here.")
        expect(page.locator("#kept textarea[data-field=team]")).to_have_value("pipe team 3")
        expect(page.locator("#team")).to_have_value("")


def dispatched_red_and_orange(engine: Engine, now: float, sup: Session) -> dict[str, int]:
    """A red alarm at gas1 and an orange at gas2, each acknowledged and its order dispatched to pipe team 3 by
    `sup`: alarm id -> work order id."""
    orders = {}
    with engine.begin() as conn:
        for alarm, dev, level in ((RED, "gas1", "red"), (ORANGE, "gas2", "orange")):
            store.apply_alarm(conn, "s1", alarm_body(alarm, "raised", level, now - 60, dev=dev), received=now - 59)
            workorders.ack_alarm(conn, alarm, sup, now=now - 50)
            orders[alarm] = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == alarm)).scalar_one()
            workorders.act(conn, orders[alarm], "dispatch", sup, team="pipe team 3", now=now - 40)
    return orders


def type_findings(page: Page, alarm: str, order: int) -> None:
    """The officer opens the alarm, sees its order dispatched, and types the team's findings."""
    page.locator(f".alarm[data-id='{alarm}']").click()
    expect(page.locator("#order .order-head")).to_contain_text(f"Work order #{order} · dispatched")
    page.fill("#findings", "no leak at valve 7")


def test_findings_typed_in_one_round_are_not_reported_as_the_next_ones(engine: Engine, now: float,
                                                                       browser: Browser) -> None:
    """An officer types the first team's findings; meanwhile the supervisor sends the order back (the wrong team)
    and dispatches it again. The notice redrew the panel in round 2 with the findings kept, and Report back sent
    them as round 2's: the server's round check (a step of a page behind a send-back is refused) never fired, and
    the second team read as reported before it had been anywhere. The findings keep the round they were typed
    in: the report is refused, saying so, and sent again once the officer has looked, whether the page had heard
    of round 2 before the click or only from the refusal."""
    sup = Session("t", USERS["supervisor"], "supervisor", "c")
    orders = dispatched_red_and_orange(engine, now, sup)
    with desk_page(engine, browser, "operator") as (broker, _, page):
        for alarm, heard in ((RED, True), (ORANGE, False)):
            order = orders[alarm]
            type_findings(page, alarm, order)
            with engine.begin() as conn:
                workorders.act(conn, order, "send-back", sup, note="wrong team: valve 7 is pipe team 8's")
                workorders.act(conn, order, "dispatch", sup, team="pipe team 8")
            if heard:
                announce(broker, notice("work-order", id=order))
                expect(page.locator("#order")).to_contain_text("round 2")
                expect(page.locator("#findings")).to_have_value("no leak at valve 7")
            page.click("#act-report")
            expect(page.locator("#action-error")).to_contain_text("round 2")
            with engine.connect() as conn:
                assert conn.execute(select(work_orders.c.state).where(work_orders.c.id == order)).scalar_one() == \
                    "dispatched"
            expect(page.locator("#order")).to_contain_text("round 2")
            page.click("#act-report")  # looked at again: the officer reports it as round 2's
            expect(page.locator("#wo-state")).to_have_text("reported")
            expect(page.locator("#kept")).to_be_hidden()  # sent, so nothing is kept as unsent


def test_findings_typed_while_another_officer_reports_the_order_are_kept(engine: Engine, now: float,
                                                                        browser: Browser) -> None:
    """An officer types a team's findings; meanwhile another reports the order. The redraw in "reported" has no
    Report back fields, and what the officer had typed vanished with them, unsent and unsaid, whether the page
    heard of the other report from its notice or from the refusal of its own click. It is kept under the
    buttons, saying who reported the order and when, across later redraws, until the officer dismisses it."""
    sup = Session("t", USERS["supervisor"], "supervisor", "c")
    orders = dispatched_red_and_orange(engine, now, sup)
    with desk_page(engine, browser, "operator") as (broker, _, page):
        for alarm, heard in ((RED, True), (ORANGE, False)):
            order = orders[alarm]
            type_findings(page, alarm, order)
            page.fill("#action-taken", "closed valve 7")
            with engine.begin() as conn:
                workorders.act(conn, order, "report", sup, note="gas in chamber 2", now=now - 5)
            if heard:
                announce(broker, notice("work-order", id=order))
            else:
                page.click("#act-report")
                expect(page.locator("#action-error")).to_contain_text(f"already reported by {USERS['supervisor']}")
            expect(page.locator("#wo-state")).to_have_text("reported")
            expect(page.locator("#findings")).to_have_count(0)
            when = page.evaluate("(t) => clock(t)", now - 5)
            expect(page.locator("#kept .kept-why")).to_have_text(
                f"Work order #{order} is reported: reported by {USERS['supervisor']} at {when}. What you typed was "
                "not sent; it is kept here.")
            expect(page.locator("#kept textarea[data-field=findings]")).to_have_value("no leak at valve 7")
            expect(page.locator("#kept textarea[data-field=action-taken]")).to_have_value("closed valve 7")
        page.evaluate("document.querySelector('#kept .kept-group').dataset.before = '1'")
        announce(broker, notice("work-order", id=orders[ORANGE]))  # a later redraw keeps it
        expect(page.locator("#kept .kept-group[data-before]")).to_have_count(0, timeout=10_000)
        expect(page.locator("#kept textarea")).to_have_count(2)
        page.locator(f".alarm[data-id='{RED}']").click()  # each order's own
        expect(page.locator("#detail-title")).to_contain_text("gas1")
        expect(page.locator("#kept textarea[data-field=findings]")).to_have_value("no leak at valve 7")
        page.click("#kept-dismiss")
        expect(page.locator("#kept")).to_be_hidden()


def test_what_was_typed_and_not_sent_is_back_after_a_reload_and_gone_once_sent(engine: Engine, now: float,
                                                                                browser: Browser) -> None:
    """A team's findings typed on a tablet were kept across redraws for the page's lifetime alone: a reload (F5,
    the tab restarted or crashed) lost them. The tab keeps them until they are sent, and forgets them at logout,
    for the next officer at the PC."""
    sup = Session("t", USERS["supervisor"], "supervisor", "c")
    orders = dispatched_red_and_orange(engine, now, sup)
    with desk_page(engine, browser, "operator") as (_, _, page):
        type_findings(page, RED, orders[RED])
        page.fill("#action-taken", "closed valve 7")
        page.reload()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator("#findings")).to_have_value("no leak at valve 7")
        expect(page.locator("#action-taken")).to_have_value("closed valve 7")
        page.click("#act-report")
        expect(page.locator("#wo-state")).to_have_text("reported")
        page.reload()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        assert page.evaluate("Object.keys(sessionStorage)") == []
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("reported")
        expect(page.locator("#kept")).to_be_hidden()  # not kept as text the order moved on from: it was sent
        type_findings(page, ORANGE, orders[ORANGE])
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        assert page.evaluate("Object.keys(sessionStorage)") == []
        fill_login(page, "operator")
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator("#findings")).to_have_value("")


def test_a_long_or_many_lined_report_is_read_whole_inside_its_panel(engine: Engine, now: float,
                                                                    browser: Browser) -> None:
    """A team's report is up to 2,000 characters, newlines allowed: the panel ran its lines together ("closed
    valve 7 vented the chamber") and drew a long unbroken run (a pasted log line, or text made to) in one line
    across the map and off the page, where no one could read it. Each line is its own, and a long run wraps."""
    sup = Session("t", USERS["supervisor"], "supervisor", "c")
    findings = "pressure log:\n" + "0123456789abcdef" * 120
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        workorders.ack_alarm(conn, RED, sup, now=now - 50)
        order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == RED)).scalar_one()
        workorders.act(conn, order, "dispatch", sup, team="pipe team 3", now=now - 40)
        workorders.act(conn, order, "report", sup, note=findings, action_taken="closed valve 7\nvented the chamber",
                       now=now - 30)
    with desk_page(engine, browser, "viewer") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        expect(page.locator("#wo-state")).to_have_text("reported")
        notes = page.locator("#order .step-report .note")
        expect(notes).to_have_count(2)
        assert notes.nth(1).inner_text() == "action: closed valve 7\nvented the chamber"
        assert notes.nth(0).inner_text() == findings
        drawn = "el => [el.scrollWidth, el.clientWidth, document.documentElement.scrollWidth, innerWidth]"
        wide, room, page_wide, window = notes.nth(0).evaluate(drawn)
        assert wide <= room and page_wide <= window, (wide, room, page_wide, window)


def test_the_keyboards_focus_stays_on_its_alarm_or_button_across_a_redraw(engine: Engine, now: float,
                                                                          browser: Browser) -> None:
    """An officer at the keyboard tabs to an alarm on the board, or to Acknowledge; a notice (any alarm's, a reading
    of the device shown) redraws the board or the panel, and the focus fell on the page's body: Enter opened and
    acknowledged nothing, on a busy night every few seconds. The focus goes back to the same alarm or button."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
        store.apply_alarm(conn, "s1", alarm_body(ORANGE, "raised", "orange", now - 50, dev="gas2", step=0),
                          received=now - 49)

    def redrawn(page: Page, broker: Mosquitto, selector: str) -> None:
        """A notice, and the element under `selector` drawn anew."""
        page.locator(selector).evaluate("el => el.classList.add('before')")
        announce(broker, notice("alarm", site="s1", id=RED))
        expect(page.locator(selector + ".before")).to_have_count(0)
        expect(page.locator(selector)).to_have_count(1)

    with desk_page(engine, browser, "operator") as (broker, _, page):
        page.focus(f".alarm[data-id='{ORANGE}']")
        redrawn(page, broker, f".alarm[data-id='{ORANGE}']")
        page.keyboard.press("Enter")
        expect(page.locator("#detail-title")).to_contain_text("gas2")
        page.focus("#act-ack")
        redrawn(page, broker, "#act-ack")
        page.keyboard.press("Enter")
        expect(page.locator(f".alarm[data-id='{ORANGE}'] .tag.acked")).to_be_visible()


def test_an_alarm_of_a_site_gone_offline_says_so(engine: Engine, now: float, browser: Browser) -> None:
    """A site's gateway dies (its will): its alarms stay on the board as they were last heard, and read as current
    as any other's, though nothing the site sends reaches the district, a clear included. Each is tagged "site
    offline" until the gateway is back."""
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 60), received=now - 59)
    with desk_page(engine, browser, "viewer") as (broker, _, page):
        tag = page.locator(f".alarm[data-id='{RED}'] .tag.offline")
        expect(page.locator(f".alarm[data-id='{RED}']")).to_be_visible()
        expect(tag).to_have_count(0)
        with engine.begin() as conn:
            store.gateway_state(conn, "s1", False, 1, received=now)
        announce(broker, notice("site", site="s1"))
        expect(tag).to_have_text("site offline")
        with engine.begin() as conn:
            store.gateway_state(conn, "s1", True, 2, received=now + 1)
        announce(broker, notice("site", site="s1"))
        expect(tag).to_have_count(0)


def test_the_devices_of_a_site_gone_offline_read_unknown(engine: Engine, now: float, browser: Browser) -> None:
    """A site's gateway dies (its will): its devices read "online" in the table, the site's counts and on the map,
    as an officer reads a healthy device, though nothing of theirs reaches the district. They read unknown, with
    what they last said, until the gateway is back. The site's session, a 13-digit count of its box's clock in
    ms, reads as the time it began by that clock; a gateway's older counter as "session 1"."""
    with desk_page(engine, browser, "viewer") as (broker, _, page):
        state = page.locator("#devices tbody tr", has_text="gas1").locator("td").nth(2)
        dot = page.locator("#map g", has=page.get_by_text("gas1", exact=True)).locator("rect")
        began = page.locator("#sites tbody tr td").nth(2)
        counts = page.locator("#sites tbody tr td").nth(5)
        expect(state).to_have_text("online")
        expect(began).to_have_text("session 1")
        for online, k, said in ((False, 1, "unknown (site offline) last said online"), (True, 2, "online")):
            session = int((now - 3 * 3600 + k) * 1000)  # a site box 3 h behind
            with engine.begin() as conn:
                store.gateway_state(conn, "s1", online, session, received=now + k)
            announce(broker, notice("site", site="s1"))
            expect(state).to_have_text(said)
            expect(dot).to_have_class("dev " + ("online" if online else "unknown"))
            expect(counts).to_have_text("2 online" if online else "2 unknown (last said 2 online)")
            expect(began).to_have_text(page.evaluate("t => new Date(t).toLocaleString([], { hour12: false })", session))


def test_an_alarms_device_messages_are_checked_again_by_a_viewer(engine: Engine, now: float, browser: Browser) -> None:
    """The messages behind the alarm, from the one that raised it, each verified at ingest; checked again, the
    genuine one matches and the one whose reading was changed in the database says so, with both values. Their
    boot, past 2^53, reads as the device sent it (a JSON number, it read …992)."""
    boot = 2**53 + 1
    for seq in (1, 2, 3):
        ingest(engine, "gas1", seq, now - 90 + seq * 20, {"ch4": 20.0 * seq}, received=now - 89 + seq * 20,
               boot=boot)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", now - 49, t_dev=now - 90 + 2 * 20),
                          received=now - 48)
        third = select(messages.c.id).where(messages.c.seq_key == seq_key(3)).scalar_subquery()
        conn.execute(update(readings).where(readings.c.message == third).values(v=5.0))
    with desk_page(engine, browser, "viewer") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        page.click("#alarm-messages")
        rows = page.locator("#messages tbody tr")
        expect(rows).to_have_count(2)
        expect(page.locator("#messages-head")).to_contain_text("2 device messages of gas1 with ch4")
        # the pill's whole text: "verified" is also in "not verified"
        expect(rows.locator("td:nth-child(6) .pill")).to_have_text(["verified", "verified"])
        expect(rows.locator(":scope > td:nth-child(2)")).to_have_text([str(boot)] * 2)
        rows.nth(0).locator(".check-again").click()
        expect(rows.nth(0).locator(".verdict")).to_have_text("match")
        rows.nth(1).locator(".check-again").click()
        expect(rows.nth(1).locator(".verdict")).to_have_text("differs")
        expect(rows.nth(1).locator(".check")).to_contain_text("sent: ch4 60 %LEL; stored: ch4 5 %LEL")


def test_a_months_old_alarms_folded_messages_are_shown_and_checked_again(engine: Engine, now: float,
                                                                          browser: Browser) -> None:
    """An alarm raised 90 days ago whose readings the retention folded: its messages are listed with when they were
    read and "folded into rollups", and checked again, one shows what the device sealed (the row had no reading to
    take a time from, and the list was empty)."""
    t = now - 90 * 86400
    for seq in (1, 2):
        ingest(engine, "gas1", seq, t + seq * 30, {"ch4": 10.0 + seq}, received=t + seq * 30 + 1)
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", alarm_body(RED, "raised", "red", t + 31, t_dev=t + 30), received=t + 32)
        while retention.fold(conn, now=now, raw_days=30, rollup_s=300):
            pass
    with desk_page(engine, browser, "viewer") as (_, _, page):
        page.locator(f".alarm[data-id='{RED}']").click()
        page.click("#alarm-messages")
        rows = page.locator("#messages tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator("td").nth(2)).not_to_have_text("—")
        expect(rows.nth(0)).to_contain_text("folded into rollups: Check again shows what it sealed")
        rows.nth(0).locator(".check-again").click()
        expect(rows.nth(0).locator(".verdict")).to_have_text("folded")
        expect(rows.nth(0).locator(".check")).to_contain_text("sent: ch4 11 %LEL")
