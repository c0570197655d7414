"""An ingest worker: takes every site's upstream from the district broker, checks it, stores it, and only
then acknowledges it.

N identical workers share one subscription (`$share/{group}/district/v1/+/up/#`, MQTT shared subscriptions),
so the broker spreads the sites' messages over them; each worker keeps a persistent session under its own
client id, so what was delivered to a worker that died is delivered to it again when it comes back (Mosquitto
keeps it for that session; a broker cluster may hand it to a sibling). Either way the database's unique keys
make every write idempotent (district/store.py), so redelivery and several workers never count twice, and
alarm state follows the gateway's order of transitions, not the arrival order.

The connection, batching and ack-after-commit are the gateway's own (`gateway.ingest.Subscriber`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import cbor2
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import DBAPIError

from district import store, upstream
from district.downlink import Downlink
from district.live import CHANGES_TOPIC, notice
from district.schema import commands, work_orders
from district.upstream import Refused
from gateway.district_wire import MAX_ACK_IDS
from gateway.ingest import Incoming, Subscriber
from gateway.logs import event
from gateway.site_config import BrokerConfig
from protocol import district as dtopics
from protocol.district_verify import Verifier, VerifyError

log = logging.getLogger("lifeline.district.ingest")

UP_ALL = f"{dtopics.ROOT}/+/up/#"
T = TypeVar("T")
ATTEMPTS = 5  # a batch's transaction, when the database rolls it back for another's sake (deadlock, serialization)


class Worker:
    """One ingest worker over one database engine; `run()` until cancelled."""

    def __init__(self, engine: Engine, broker: BrokerConfig, verifier: Verifier, devices: Mapping[str, Collection[str]],
                 *, group: str = "lifeline", batch_max: int = 500) -> None:
        """`devices`: each site's registered device ids. The verifier holds every device's key, so a site
        could otherwise relay another site's genuine device messages as its own."""
        self.engine = engine
        self.verifier = verifier
        self.devices = devices
        self.refused: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self.subscriber = Subscriber("district", broker, [f"$share/{group}/{UP_ALL}"], self.handle,
                                     batch_max=batch_max, backoff_max_s=2.0)
        self._notices: list[bytes] = []
        self._acks: dict[str, dict[str, int | None]] = {}  # site -> officers' acks sent again: id -> step

    async def run(self) -> None:
        await self.subscriber.run()

    def handle(self, batch: list[Incoming]) -> None:
        """Store a batch in one transaction; the Subscriber acknowledges it after this returns. Workers storing
        the same rows in other orders deadlock, and PostgreSQL aborts one of them: that batch is run again
        whole (its counts and notices with it), and raised past the last attempt, so that it is not
        acknowledged and comes again."""
        for attempt in range(1, ATTEMPTS + 1):
            stored, refused, self._notices, self._acks = self.stored.copy(), self.refused.copy(), [], {}
            try:
                with self.engine.begin() as conn:
                    for item in batch:
                        self._one(conn, item)
                break
            except DBAPIError as exc:
                if attempt == ATTEMPTS or not _lost_to_another(exc):
                    raise
                self.stored, self.refused = stored, refused
                event(log, "batch-retried", logging.WARNING, attempt=attempt, error=str(exc.orig).splitlines()[0])
        notices, self._notices, acks, self._acks = self._notices, [], self._acks, {}
        if notices or acks:
            asyncio.get_running_loop().create_task(self._announce(notices, acks))

    async def _announce(self, notices: list[bytes], acks: dict[str, dict[str, int | None]]) -> None:
        """Send the officers' acks again that the gateways' resends show they missed (QoS 1: one lost is sent
        at the next resend), and tell the desks what changed (QoS 0: a desk that misses one catches up at its
        next fetch)."""
        down = Downlink(self.subscriber.publish)
        try:
            for site, by_id in acks.items():
                items = list(by_id.items())
                for i in range(0, len(items), MAX_ACK_IDS):
                    await down.alarm_ack(site, items[i:i + MAX_ACK_IDS])
        except Exception as exc:  # the gateway re-sends the alarm, and its resend is answered
            event(log, "alarm-ack-failed", logging.WARNING, error=str(exc))
        try:
            for payload in notices:
                await self.subscriber.publish(CHANGES_TOPIC, payload, qos=0)
        except Exception as exc:  # the data is committed; only the desks' prompt is lost
            event(log, "notice-failed", logging.WARNING, error=str(exc))

    def _refuse(self, conn: Connection, item: Incoming, reason: str, detail: str, exc: Exception | None = None) -> None:
        """Count, keep (the whole publish), and log (`_count`)."""
        self._count(item, reason, detail, exc)
        store.refuse(conn, item.topic, reason, detail, item.payload, received=item.received)

    def _count(self, item: Incoming, reason: str, detail: str, exc: Exception | None = None) -> None:
        """Count a refusal, and log the first of each reason and every thousandth after; `exc`, a failure no check
        foresaw (reason "internal"), is logged with its traceback on those lines only."""
        self.refused[reason] += 1
        if self.refused[reason] == 1 or self.refused[reason] % 1000 == 0:
            event(log, "refused", logging.WARNING, reason=reason, detail=detail, topic=item.topic,
                  total=self.refused[reason])
            if exc is not None:
                log.error("the refusal's traceback", exc_info=exc)

    def _one(self, conn: Connection, item: Incoming) -> None:
        try:
            site, kind, body = self.verifier.publish(item.topic, item.payload)
        except VerifyError as exc:
            return self._refuse(conn, item, exc.reason, str(exc))
        except Exception as exc:  # a check that failed on input it did not foresee: this publish, not the batch
            return self._refuse(conn, item, "internal", f"{type(exc).__name__}: {exc}", exc)
        try:
            with conn.begin_nested():  # a body refused half-way leaves nothing behind
                self._body(conn, item, site, kind, body, hist=body.get("hist") is True)
        except Refused as r:
            self._refuse(conn, item, r.reason, r.detail)
        except Exception as exc:  # as above; raised again, it would fail every publish of the batch, for good
            if isinstance(exc, DBAPIError) and _lost_to_another(exc):
                raise  # not this publish's fault: the batch is run again (handle)
            self._refuse(conn, item, "internal", f"{type(exc).__name__}: {exc}", exc)

    def _own(self, site: str, dev: str, where: str) -> None:
        """A site speaks only for the devices registered at it, in telemetry, alarms and device states alike."""
        if dev not in self.devices.get(site, ()):
            raise Refused("foreign-device", f"{where}: device {dev} is not registered at site {site}")

    def _body(self, conn: Connection, item: Incoming, site: str, kind: str, body: Any, hist: bool) -> None:
        received = item.received
        if kind == dtopics.TELEMETRY:
            self._telemetry(conn, item, site, upstream.mapping(body, "telemetry"), hist)
        elif kind == dtopics.ALARM:
            body = upstream.alarm(body)
            self._own(site, body["dev"], "alarm")
            owner = store.alarm_site(conn, body["id"])
            if owner is not None and owner != site:
                raise Refused("foreign-alarm", f"alarm {body['id']} belongs to site {owner}")
            new = store.apply_alarm(conn, site, body, received=received, hist=hist)
            if new:
                self.stored["transition"] += 1  # a new one; the publish is counted under its kind below
            resent = store.resent_alarm(conn, site, body, new=new, received=received, hist=hist)
            if resent.ack:
                self._acks.setdefault(site, {})[body["id"]] = resent.step
            if new or resent.revived:
                self._notices.append(notice("alarm", site=site, id=body["id"]))
                if body.get("level") in store.WORK_ORDER_LEVELS:  # it may have opened its order
                    order = conn.execute(select(work_orders.c.id).where(work_orders.c.alarm == body["id"])).scalar()
                    if order is not None:
                        self._notices.append(notice("work-order", id=order))
        elif kind == dtopics.GATEWAY:
            online, session = upstream.gateway_state(body)
            store.gateway_state(conn, site, online, session, received=received)
            self._notices.append(notice("site", site=site))
        elif kind == dtopics.UP_STATE:
            body = upstream.device_state(body)
            self._own(site, body["dev"], "state")
            store.device_state(conn, site, body, received=received, hist=hist)
            self._notices.append(notice("device", site=site, dev=body["dev"]))
        elif kind == dtopics.UP_ACK:
            body = upstream.mapping(body, "ack")
            store.add_report(conn, site, kind, *upstream.report(body, "ack"), received=received)
            ok = body.get("ok") is True
            cmd_id = body.get("id")
            if body.get("re") == "cmd" and type(cmd_id) is int and 0 <= cmd_id < upstream.I64:  # a command's id
                result = body.get("res") if ok else body.get("error", body.get("res"))
                self._command_answer(conn, site, cmd_id, ok, result, received)
            elif body.get("re") == "rules":
                result = {"version": body.get("version")} if ok else {"error": body.get("error"),
                                                                      "active": body.get("active")}
                for cmd_id in _rules_commands(conn, site, body.get("version")):
                    if self._command_answer(conn, site, cmd_id, ok, result, received):
                        break
        elif kind == dtopics.UP_OTA:
            progress, offers = upstream.ota_report(body)
            for p in progress:
                self._own(site, p["dev"], "ota")
            store.ota_report(conn, site, progress, offers, received=received)
            self._notices.append(notice("ota", site=site))
        else:  # dq, event: kept as they came, for the desk and for audit
            store.add_report(conn, site, kind, *upstream.report(body, kind), received=received)
        self.stored[kind] += 1

    def _telemetry(self, conn: Connection, item: Incoming, site: str, body: Mapping[str, Any], hist: bool) -> None:
        packs = body.get("packs")
        if not isinstance(packs, list):
            raise Refused("schema", "telemetry: packs must be an array")
        thinned = body.get("thinned", [])
        if not isinstance(thinned, list):
            raise Refused("schema", "telemetry: thinned must be an array")
        if len(packs) + len(thinned) > upstream.MAX_ENTRIES:
            raise Refused("schema", f"telemetry: {len(packs) + len(thinned)} entries, at most {upstream.MAX_ENTRIES}")

        def message(entry: Any, where: str) -> store.DeviceMessage:
            m = store.DeviceMessage(*upstream.pack_entry(entry, where, self.verifier))
            self._own(site, m.dev, where)
            return m

        checked = self._entries(conn, item, packs, "packs", message)
        summaries = self._entries(conn, item, thinned, "thinned", upstream.report)
        newest: dict[str, float] = {}
        seen: dict[str, float] = {}
        for m, new in zip(checked, store.add_messages(conn, site, checked, received=item.received, hist=hist,
                                                      verified=True, seen=seen), strict=True):
            if new:
                self.stored["message"] += 1
                newest[m.dev] = max([newest.get(m.dev, 0.0), *(r["t"] for r in m.records)])
        store.add_reports(conn, site, "thinned", summaries, received=item.received)
        for dev, t in newest.items():  # received: when the page shows the device was seen
            self._notices.append(notice("reading", site=site, dev=dev, t=t, received=seen[dev]))

    def _entries(self, conn: Connection, item: Incoming, entries: list[Any], key: str,
                 check: Callable[[Any, str], T]) -> list[T]:
        """Each entry of a telemetry body's `key` (packs, thinned) as `check` makes it: one bad entry is refused
        alone, with its own bytes, and the good ones beside it are kept (a device's genuine messages beside a
        summary the gateway got wrong, too). Their refusals are written together: an INSERT each held SQLite's
        write lock 12 s for 100 KB of bad entries."""
        out = []
        refused: list[tuple[str, str, bytes]] = []
        for i, entry in enumerate(entries):
            where = f"telemetry {key}[{i}]"
            try:
                out.append(check(entry, where))
            except Refused as r:
                self._count(item, r.reason, r.detail)
                refused.append((r.reason, r.detail, cbor2.dumps(entry)))
            except Exception as exc:  # as one the checks did not foresee
                detail = f"{where}: {type(exc).__name__}: {exc}"
                self._count(item, "internal", detail, exc)
                refused.append(("internal", detail, cbor2.dumps(entry)))
        store.refuse_all(conn, item.topic, refused, received=item.received)
        return out

    def _command_answer(self, conn: Connection, site: str, cmd_id: int, ok: bool, result: Any,
                        received: float) -> bool:
        """Answer a command's row, if no ack did before (this one's UPDATE waits for a concurrent one's, then
        finds the row answered); whether it did."""
        done = conn.execute(update(commands).where(commands.c.id == cmd_id, commands.c.site == site,
                                                   commands.c.answered.is_(None))
                            .values(ok=ok, result=upstream.json_text(result), answered=received)
                            .returning(commands.c.id)).first() is not None
        if done:
            self._notices.append(notice("command", site=site, id=cmd_id))
        return done


def _lost_to_another(exc: DBAPIError) -> bool:
    """The database rolled the statement back for a concurrent transaction's sake (SQLSTATE class 40: a
    deadlock, a serialization failure), which the same work run again gets past."""
    return str(getattr(exc.orig, "sqlstate", None) or "").startswith("40")


def _rules_commands(conn: Connection, site: str, version: Any) -> list[int]:
    """The `commands` rows a rules ack may answer, in the order it tries them. The gateway's ack names no command
    id, only the version of the set it read (docs/protocol.md, "ack"), so it answers the oldest unanswered rule
    set sent to that site with that version: a site takes its downlink in order, so a set sent twice is
    answered once per ack. The rest follow in order, for a worker storing the other ack at once answers the
    oldest first (`_command_answer` then finds it answered). None at all for an ack without a version (a set the
    gateway could not read; the district checks every set before it goes)."""
    if isinstance(version, bool) or not isinstance(version, int):
        return []
    pending = conn.execute(select(commands.c.id, commands.c.args).where(
        commands.c.site == site, commands.c.op == "rules", commands.c.dev.is_(None), commands.c.answered.is_(None))
        .order_by(commands.c.sent, commands.c.id)).all()
    return [row.id for row in pending if json.loads(row.args).get("version") == version]
