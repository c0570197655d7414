"""The district desk: the web page a duty officer uses, and the JSON API behind it (docs/district.md).

Every request is checked on the server, whatever the page showed: a session cookie (HttpOnly,
SameSite=Strict) for every /api call but login, the session's CSRF token in `X-CSRF-Token` for every POST,
and the user's role for every action (district/accounts.py). Bad input is answered 400 with a message and
changes nothing; unknown things 404; a step from the wrong state 409; a database that failed the call (locked,
its connection lost) 503, "the database is busy, try again". The page is static files served from
here (no CDN, no build step), and stays current through server-sent events from the change feed
(district/live.py): a notice says what changed and the page fetches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, select
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from district import accounts, queries, rollout, store, upstream, workorders
from district.accounts import Session
from district.config import ROLLUP_S
from district.downlink import Downlink, DownlinkError, broker_publisher
from district.live import CHANGES_TOPIC, Hub, notice
from district.queries import RiskPoints
from district.refusal import Refusal
from district.rollout import Driver
from district.schema import alarms, work_orders
from district.text import storable
from gateway.logs import event
from gateway.rules import RuleSet, default_ruleset
from gateway.site_config import BrokerConfig
from protocol.district_verify import Verifier

log = logging.getLogger("lifeline.district.desk")

STATIC = Path(__file__).with_name("static")
COOKIE = "lifeline_desk"
MAX_BODY = 128 * 1024  # a rule set is the largest thing anyone posts
LOGIN_FAILURES = 5  # per user name per LOGIN_WINDOW_S, then 429 until the oldest failure ages out
LOGIN_WINDOW_S = 60.0
MAX_TRACKED = 10_000  # user names with recent failures kept before the old ones are forgotten
HASHING = 2  # logins whose password is checked at once: Argon2id takes 64 MiB and a tenth of a second each
MAX_WINDOW_S = 400 * 86400
RECHECK_S = 60.0  # a live feed looks its session up again at the first notice or ping this long after the last look-up
PING_S = 15.0  # a live feed says "ping" this often; the page connects again after three missed
ENDED = {"event": "ended", "data": "{}"}  # the last a live feed says, of a session that expired
PING: dict[str, Any] = {"kind": "ping"}  # in a live feed's queue: time for a ping
BUSY = "the database is busy, try again"  # what a desk action the database failed answers (503)
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
# action -> the body's fields (required, optional) and how workorders.act names them
# (and "round": the round the page showed, so a step from a page behind a send-back is refused)
STEP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dispatch": (("team",), ("round",)),
    "report": (("findings",), ("action", "round")),
    "close": ((), ("round",)),
    "send-back": (("correction",), ("round",)),
}

T = TypeVar("T")


class Refused(Exception):
    """An answer other than 200: the status and the message the client is shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_app(engine: Engine, *, hub: Hub, broker: BrokerConfig | None = None, downlink: Downlink | None = None,
             risk_points: RiskPoints | None = None, rules: RuleSet | None = None, secure_cookie: bool = False,
             clock: Callable[[], float] = time.time, rollouts: bool = True,
             rollup_s: int = ROLLUP_S, verifier: Verifier | None = None, ping_s: float = PING_S) -> Starlette:
    """The desk over one database. `broker`: the district broker, which the desk follows for the change
    feed and, unless `downlink` is given, sends to sites through. `secure_cookie`: behind HTTPS.
    `rollouts`: drive the OTA rollouts in the database (district/rollout.py) from this process. `rollup_s`:
    the retention's bucket width, so that a history has the bucket its window starts in. The risk points are
    the app's `state.risk_points`, and `verifier` (the device keys a stored message is checked again with,
    district/config.verifier; none unless given) its `state.verifier`: a reload replaces both
    (district/service.py). `ping_s`: how long a live feed stays quiet before it says it is there."""
    if downlink is None:
        if broker is None:
            raise ValueError("the desk needs a broker or a downlink to send acks and commands down")
        downlink = Downlink(broker_publisher(broker))
    down = downlink
    ruleset = rules or default_ruleset()
    failures: dict[str, deque[float]] = defaultdict(deque)
    to_broker = broker_publisher(broker) if broker is not None else None
    telling: set[asyncio.Task[None]] = set()
    hashing = asyncio.Semaphore(HASHING)

    def tell(payload: bytes) -> None:
        """A change made here: this desk's pages hear of it at once, every other desk process's through the
        broker's change feed, which each follows (as this one does, so its pages hear of it twice: one more
        fetch). Sent in the background, like a worker's notice: the change is committed, and a broker that is
        slow or away must not hold up the officer's answer."""
        hub.publish(payload)
        if to_broker is None:
            return
        publish = to_broker

        async def send() -> None:
            try:
                await publish(CHANGES_TOPIC, payload)
            except DownlinkError as exc:  # the other desks' pages see it at their next fetch
                event(log, "notice-failed", logging.WARNING, error=str(exc))

        task = asyncio.get_running_loop().create_task(send())
        telling.add(task)
        task.add_done_callback(telling.discard)

    async def db(work: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run database work off the event loop, in one transaction when it writes."""
        def run() -> T:
            with engine.begin() if write else store.reader(engine) as conn:
                return work(conn)
        return await run_in_threadpool(run)

    async def who(request: Request) -> Session:
        token = request.cookies.get(COOKIE)
        found = await db(lambda c: accounts.session(c, token, now=clock())) if token and storable(token) else None
        if found is None:
            raise Refused(401, "log in first")
        if request.method == "POST":
            sent = request.headers.get("x-csrf-token", "")
            if not secrets.compare_digest(sent.encode(), found.csrf.encode()):
                raise Refused(403, "missing or wrong X-CSRF-Token")
        return found

    def allowed(s: Session, action: str) -> None:
        if not s.may(action):
            raise Refused(403, f"a {s.role} may not {action}")

    async def body(request: Request, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON object posted, with exactly the fields the endpoint takes. Read up to MAX_BODY and no
        further, so a client cannot make the desk hold more."""
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise Refused(400, f"body: at most {MAX_BODY} bytes")
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            raise Refused(400, "body: not JSON") from None
        if not storable(data):
            raise Refused(400, "body: text with a NUL or a lone surrogate, which no column keeps")
        if not isinstance(data, dict):
            raise Refused(400, "body: a JSON object")
        unknown = set(data) - set(fields) - set(optional)
        if unknown:
            raise Refused(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        missing = [f for f in fields if f not in data]
        if missing:
            raise Refused(400, f"missing field(s): {', '.join(missing)}")
        return data

    def db_failed(request: Request, e: Exception) -> None:
        event(log, "desk-db-failed", logging.WARNING, path=request.url.path, error=store.failure(e))

    def endpoint(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                if not storable([*request.path_params.values(), *request.query_params.values()]):
                    raise Refused(400, "a NUL or a lone surrogate in the address")
                result = await handler(request)
            except Refused as r:
                return JSONResponse({"error": str(r)}, r.status, headers=HEADERS)
            except Refusal as e:  # a work order's or a rollout's
                return JSONResponse(e.answer(), e.status, headers=HEADERS)
            except DownlinkError as e:
                return JSONResponse({"error": str(e)}, e.status, headers=HEADERS)
            except store.DB_FAILED as e:  # nothing changed, so the officer may simply try again
                db_failed(request, e)
                return JSONResponse({"error": BUSY}, 503, headers=HEADERS)
            return result if isinstance(result, Response) else JSONResponse(result, headers=HEADERS)
        return wrapped

    # --- accounts -------------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        data = await body(request, ("user", "password"))
        name, password = data["user"], data["password"]
        if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
            raise Refused(400, "user and password: text")
        if len(name) > 64 or len(password) > accounts.MAX_PASSWORD:
            raise Refused(401, "wrong user name or password")
        now = clock()
        recent = failures[name]
        while recent and recent[0] < now - LOGIN_WINDOW_S:
            recent.popleft()
        if len(recent) >= LOGIN_FAILURES:
            raise Refused(429, "too many failed logins for this user: wait a minute")
        # The hash outside any transaction, a few at a time: inside the write, each held SQLite's write lock (every
        # ingest worker waited), and as many at once as the thread pool holds took 64 MiB each (2.5 GiB at 40),
        # for logins under made-up names too
        stored = await db(lambda c: accounts.stored_hash(c, name))
        async with hashing:
            ok, rehashed = await run_in_threadpool(accounts.verify, stored, password)
        s = await db(lambda c: accounts.open_session(c, name, rehashed=rehashed, now=now), write=True) if ok else None
        if s is None:
            recent.append(now)
            if len(failures) > MAX_TRACKED:  # names made up by the thousand must not grow memory for ever
                for stale in [n for n, times in failures.items() if not times or times[-1] < now - LOGIN_WINDOW_S]:
                    del failures[stale]
            raise Refused(401, "wrong user name or password")
        failures.pop(name, None)
        response = JSONResponse({"user": s.user, "role": s.role, "csrf": s.csrf}, headers=HEADERS)
        response.set_cookie(COOKIE, s.token, max_age=int(accounts.SESSION_S), httponly=True, samesite="strict",
                            secure=secure_cookie, path="/")
        return response

    async def logout(request: Request) -> Response:
        s = await who(request)
        await db(lambda c: accounts.log_out(c, s.token), write=True)
        tell(notice("session"))  # its live feeds, at any desk process, end
        response = JSONResponse({"ok": True}, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def me(request: Request) -> Any:
        s = await who(request)
        return {"user": s.user, "role": s.role, "csrf": s.csrf, "may": sorted(accounts.ACTIONS[s.role]), "now": clock()}

    # --- reads ----------------------------------------------------------------------------------------

    def read(query: Callable[[Connection, Request], Any]) -> Callable[[Request], Awaitable[Any]]:
        async def handler(request: Request) -> Any:
            await who(request)
            result = await db(lambda c: query(c, request))
            if result is None:
                raise Refused(404, "no such thing")
            return result
        return handler

    def series(request: Request) -> tuple[str, str, str, float, float]:
        """The site, dev, metric, from and to a chart or its messages are asked for."""
        q = request.query_params
        site, dev, metric = q.get("site"), q.get("dev"), q.get("metric")
        if not site or not dev or not metric:
            raise Refused(400, "site, dev and metric are required")
        try:
            t_to = float(q.get("to") or clock())
            t_from = float(q.get("from") or t_to - 6 * 3600)
        except ValueError:
            raise Refused(400, "from and to: epoch seconds") from None
        if not 0 < t_to - t_from <= MAX_WINDOW_S:
            raise Refused(400, f"from must be before to, at most {MAX_WINDOW_S // 86400} days apart")
        return site, dev, metric, t_from, t_to

    def history(conn: Connection, request: Request) -> Any:
        return queries.history(conn, ruleset, *series(request), rollup_s)

    def window_messages(conn: Connection, request: Request) -> Any:
        return queries.device_messages(conn, *series(request))

    def alarm_messages(conn: Connection, request: Request) -> Any:
        alarm_id = request.path_params["id"]
        if not upstream.ALARM_ID.match(alarm_id):
            raise Refused(404, "no such alarm")
        return queries.alarm_messages(conn, alarm_id, clock())

    def check_message(conn: Connection, request: Request) -> Any:
        """Reads alone, so a viewer may: the stored sealed bytes verified again (queries.check_message)."""
        return queries.check_message(conn, path_id(request, "message"), request.app.state.verifier)

    def order_list(conn: Connection, request: Request) -> Any:
        """Every active order, and the newest closed ones: `limit` of them (1 and up, at most CLOSED_MAX),
        or with `before` (an order id) only the closed ones older than it."""
        q = request.query_params
        try:
            limit = int(q.get("limit") or queries.CLOSED_SHOWN)
            before = None if q.get("before") is None else int(q.get("before") or "")
        except ValueError:
            raise Refused(400, "limit and before: whole numbers") from None
        if limit < 1 or (before is not None and not 0 < before < 2**63):
            raise Refused(400, "limit: 1 or more; before: an order id")
        return queries.work_order_list(conn, closed=min(limit, queries.CLOSED_MAX), before=before)

    def path_id(request: Request, what: str) -> int:
        """The row id in the address; one that is not a number a BIGINT column holds names nothing."""
        try:
            value = int(request.path_params["id"])
        except ValueError:
            raise Refused(404, f"no such {what}") from None
        if not 0 < value < 2**63:
            raise Refused(404, f"no such {what}")
        return value

    # --- actions --------------------------------------------------------------------------------------

    async def ack(request: Request) -> Any:
        s = await who(request)
        allowed(s, "ack")
        data = await body(request, (), ("level", "step"))  # the level and step the page showed (none: older page)
        alarm_id = request.path_params["id"]
        def acknowledge(conn: Connection) -> tuple[str, int | None, int | None]:
            site = workorders.ack_alarm(conn, alarm_id, s, seen_level=data.get("level"), seen_step=data.get("step"),
                                        now=clock())
            return (site, conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == alarm_id)).scalar(),
                    conn.execute(select(alarms.c.acked_step).where(alarms.c.id == alarm_id)).scalar())
        site, oid, step = await db(acknowledge, write=True)
        tell(notice("alarm", site=site, id=alarm_id))
        if oid is not None:
            tell(notice("work-order", id=oid))
        try:
            await down.alarm_ack(site, [(alarm_id, step)])  # the step acknowledged: what the gateway checks
        except DownlinkError as e:
            return {"ok": True, "down": f"acknowledged here; not sent to {site}: {e}"}
        return {"ok": True, "down": "sent"}

    async def step(request: Request) -> Any:
        s = await who(request)
        action = request.path_params["action"]
        if action not in STEP_FIELDS:
            raise Refused(404, f"no step {action}: one of {', '.join(STEP_FIELDS)}")
        allowed(s, action)
        oid = path_id(request, "work order")
        data = await body(request, *STEP_FIELDS[action])
        state = await db(lambda c: workorders.act(
            c, oid, action, s, team=data.get("team"), note=data.get("findings", data.get("correction")),
            action_taken=data.get("action"), seen_round=data.get("round"), now=clock()), write=True)
        tell(notice("work-order", id=oid))
        return {"id": oid, "state": state}

    async def command(request: Request) -> Any:
        s = await who(request)
        allowed(s, "command")
        data = await body(request, ("site", "dev", "op"), ("args",))
        cmd_id = await down.command(engine, s.user, data["site"], data["dev"], data["op"], data.get("args", {}))
        tell(notice("command", id=str(cmd_id)))
        return {"id": str(cmd_id), "state": "sent"}

    async def rules_change(request: Request) -> Any:
        s = await who(request)
        allowed(s, "rules")
        data = await body(request, ("site", "ruleset"))
        cmd_id = await down.rules(engine, s.user, data["site"], data["ruleset"])
        tell(notice("command", id=str(cmd_id)))
        return {"id": str(cmd_id), "state": "sent"}

    def ota_site(conn: Connection, request: Request) -> Any:
        site = request.query_params.get("site")
        if not site:
            raise Refused(400, "site is required")
        return rollout.view(conn, site)

    async def rollout_start(request: Request) -> Any:
        s = await who(request)
        allowed(s, "rollout")
        data = await body(request, ("site", "version"),
                          ("canary", "wave", "halt_share", "stage_timeout", "devices", "retry_rolled_back"))
        rid = await db(lambda c: rollout.start(
            c, s, data["site"], data["version"], canary=data.get("canary", "1"), wave=data.get("wave", 0),
            halt_share=data.get("halt_share", 0.25), stage_timeout=data.get("stage_timeout", 900.0),
            only=data.get("devices"), retry_rolled_back=data.get("retry_rolled_back", False), now=clock()),
            write=True)
        tell(notice("ota", site=data["site"]))
        return {"id": rid, "state": "running"}

    async def rollout_halt(request: Request) -> Any:
        s = await who(request)
        allowed(s, "rollout")
        await body(request, ())
        rid = path_id(request, "rollout")
        site = await db(lambda c: rollout.halt(c, s, rid, now=clock()), write=True)
        tell(notice("ota", site=site))
        return {"id": rid, "state": "halted"}

    async def events(request: Request) -> Response:
        s = await who(request)

        async def stream() -> AsyncIterator[dict[str, str]]:
            """Change notices while the session lasts, and a "ping" every ping_s for the page to watch
            (sse-starlette's ping is a comment no page sees: a desk host that died left its pages "live" until TCP
            gave up); sent through the queue and this loop, it also says the feed runs. The session's expiry is
            checked at each notice and ping (at notices alone, a quiet page read "live" past its shift), and "ended"
            said at it, for the page to show the login. A "session" notice (a logout) looks the session up again, as
            does the first notice or ping RECHECK_S after the last look-up (not each: a read a page a notice), and
            the feed just ends, for the browser to connect again under the session it holds now. A look-up the
            database failed ends it too (raised, it cut the stream with a traceback)."""
            checked = time.monotonic()
            async with hub.listen() as q:
                async def beat() -> None:
                    """A timer per feed, not per notice: a wait with a timeout at each notice doubled its cost."""
                    while True:
                        await asyncio.sleep(ping_s)
                        if not q.full():  # a full queue is a reload
                            q.put_nowait(PING)

                beating = asyncio.get_running_loop().create_task(beat())
                try:
                    yield {"event": "hello", "data": json.dumps({"feed": not hub.deaf, "ping": ping_s})}
                    while True:
                        change = await q.get()
                        if clock() >= s.expires:
                            yield ENDED
                            return
                        # a reload may have replaced a "session"
                        if change["kind"] in ("session", "reload") or time.monotonic() - checked >= RECHECK_S:
                            try:
                                await who(request)
                            except Refused:
                                return
                            except store.DB_FAILED as e:
                                db_failed(request, e)
                                return
                            checked = time.monotonic()
                            if change["kind"] == "session":
                                continue
                        yield {"event": "ping", "data": "{}"} if change is PING else {
                            "event": "change", "data": json.dumps(change)}
                finally:
                    beating.cancel()
        return EventSourceResponse(stream(), ping=0, headers={"Cache-Control": "no-store"})  # ping=0: ours, above

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    routes = [
        Route("/", page),
        Route("/api/login", endpoint(login), methods=["POST"]),
        Route("/api/logout", endpoint(logout), methods=["POST"]),
        Route("/api/me", endpoint(me)),
        Route("/api/alarms", endpoint(read(lambda c, r: queries.open_alarms(c, r.app.state.risk_points)))),
        Route("/api/alarms/{id}/ack", endpoint(ack), methods=["POST"]),
        Route("/api/sites", endpoint(read(lambda c, r: queries.site_states(c)))),
        Route("/api/devices", endpoint(read(lambda c, r: queries.device_states(c, r.query_params.get("site"))))),
        Route("/api/map", endpoint(read(lambda c, r: queries.map_view(c, r.app.state.risk_points)))),
        Route("/api/alarms/{id}/messages", endpoint(read(alarm_messages))),
        Route("/api/history", endpoint(read(history))),
        Route("/api/messages", endpoint(read(window_messages))),
        Route("/api/messages/{id}/check", endpoint(read(check_message))),
        Route("/api/work-orders", endpoint(read(order_list))),
        Route("/api/work-orders/{id}", endpoint(read(lambda c, r: queries.work_order(c, path_id(r, "work order"))))),
        Route("/api/work-orders/{id}/{action}", endpoint(step), methods=["POST"]),
        Route("/api/response-times", endpoint(read(
            lambda c, r: queries.response_times(c, since=clock() - queries.RESPONSE_WINDOW_S)))),
        Route("/api/commands", endpoint(command), methods=["POST"]),
        Route("/api/commands/{id}", endpoint(read(lambda c, r: queries.command_state(c, path_id(r, "command"))))),
        Route("/api/rules", endpoint(rules_change), methods=["POST"]),
        Route("/api/ota", endpoint(read(ota_site))),
        Route("/api/ota/rollouts", endpoint(rollout_start), methods=["POST"]),
        Route("/api/ota/rollouts/{id}/halt", endpoint(rollout_halt), methods=["POST"]),
        Route("/api/events", endpoint(events)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(hub.follow(broker))] if broker is not None else []
        if rollouts:
            driver = Driver(engine, down, lambda site: tell(notice("ota", site=site)), clock)
            tasks.append(asyncio.create_task(driver.run()))
        try:
            yield
        finally:
            tasks += telling
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.risk_points = risk_points or {}
    app.state.verifier = verifier or Verifier({}, {}, track=False)
    return app

