"""The district publisher: drains the outbox over one MQTT connection, QoS 1, deleting rows on PUBACK.

The connection is the gateway's own MQTT 5 link (gateway/mqtt_link.py), whose `publish(qos=1)` returns only
at the broker's PUBACK; so a row is acked to the outbox after it returns and never before. Throughput comes
from keeping several publishes in flight (one task each, bounded by a semaphore); the link writes them in call
order, so the district sees the order in which they were leased.

Alarms have their own path: `Outbox.put_alarm` sets `alarm_event`, which this task waits on, and alarm
publishes skip both the bulk in-flight bound and the drain pacing, so a live alarm does not queue behind a
backlog. State and telemetry share the bulk path: state rows one per message, telemetry batched into packs
of up to `max_items` device messages or `max_delay_s` of waiting, whichever comes first. After an outage
(a backlog larger than one batch at connect time) bulk publishes are paced to `drain_rate` messages per
second until the backlog is gone, with progress logged once a second.

On each connect the gateway publishes its birth with a session number and leaves a death with the same
number as its MQTT will, both retained on `up/gateway`; whatever was queued before the session began goes up
marked historical (district_wire.historical). The number is a persisted counter, +1 a connect and at least the
wall clock in milliseconds: the district takes only a birth newer than the site's newest, so a replaced box, or
one whose store was recreated, must start above every number the site's earlier box used, not at 1. A box
that connected on a clock behind (no real-time clock, before NTP) connects again once the clock is set forward
past its number, for a birth the district takes.

Every publish is sealed with the site key for its kind (protocol/site_seal.py) as it leaves: the outbox
keeps bodies unsealed, so a key change applies to the backlog too.

MQTT 5's PUBACK can refuse a publish (Mosquitto: its access rules deny the topic) where 3.1.1's acknowledged
it and the broker dropped it: a refused publish's rows stay, and the session ends. aiomqtt, which this module
used before, takes every PUBACK for a success (aiomqtt 2.5.1's Client._on_publish drops the reason code), and
has no public way to see one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import mqtt5

from gateway import district_wire
from gateway.clock_step import STEP_S
from gateway.logs import event
from gateway.mqtt_link import Link, LinkError
from gateway.outbox import ALARM, ROW_BYTES, STATE, TELEMETRY, Item, Outbox
from gateway.site_config import BrokerConfig
from protocol import district, site_seal, topics

log = logging.getLogger("lifeline.gateway.uplink")


# The reconnect backoff's cap is how late a site may be forwarding again after the district returns (2.4 s
# at most with the jitter; 30 s made it 9-13 s after a 20 s outage). A failed attempt costs one refused TCP
# connect or TLS handshake, so even hundreds of sites retrying every 2 s are a light load on a district broker.
BACKOFF_MAX_S = 2.0
# A link that stays down fails an attempt every 2 s: its line is logged at the first failure, when the error
# changes, and then once this often with the count of attempts (43,200 identical lines a day otherwise).
FAIL_LOG_S = 60.0
# The clock's part of a session number is held at or below this (a clock set to a year past 146 million), so
# the counter stays within the signed 64 bits of SQLite's and PostgreSQL's integers and the district's bound.
SESSION_CLOCK_MAX_MS = 1 << 62


class _Stopped(Exception):
    """Raised inside a session once a requested stop has let the in-flight publishes finish."""


class _Renumber(Exception):
    """Raised inside a session whose number the wall clock, set forward since, has passed."""


class Refused(Exception):
    """The district broker's PUBACK refused a publish: it did not take the message."""


class Uplink:
    """One district connection at a time; `run()` reconnects with exponential backoff until `stop()`."""

    def __init__(self, outbox: Outbox, broker: BrokerConfig, site: str, *, max_items: int = 100,
                 max_delay_s: float = 0.2, drain_rate: float = 500.0, max_inflight: int = 32,
                 alarm_inflight: int = 64, backoff_initial_s: float = 0.5, backoff_max_s: float = BACKOFF_MAX_S,
                 publish_timeout_s: float = 30.0, connect_timeout_s: float = 10.0, tick_s: float = 1.0,
                 site_key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        """`site_key`: seals every publish; None sends bodies bare, for tests of the uplink alone. `clock`: the
        wall clock the session numbers and births are taken from."""
        if max_items < 1 or max_inflight < 1 or alarm_inflight < 1 or drain_rate <= 0:
            raise ValueError("max_items, max_inflight, alarm_inflight and drain_rate must be positive")
        self.outbox = outbox
        outbox.row_entries = max_items  # a telemetry row is sent whole: one must fit in a publish
        self.broker = broker
        self.site = topics.check_id(site, "site")
        self.max_items = max_items
        self.max_delay_s = max_delay_s
        self.drain_rate = drain_rate
        self.max_inflight = max_inflight
        self.alarm_inflight = alarm_inflight
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.publish_timeout_s = publish_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.tick_s = tick_s
        self.site_key = site_key
        self.clock = clock
        # Metrics, read by the daemon's Prometheus collector.
        self.connected = False
        self.draining = False
        self.sent_msgs = 0  # upstream publishes PUBACKed
        self.sent_items = 0  # outbox entries PUBACKed (alarms, state items, device messages or summaries)
        self.connects = 0
        self.last_error: str | None = None
        self.failed = 0  # attempts failed in a row (a session lost counts as one), 0 once connected
        self._logged: tuple[str, float] | None = None  # the last failure logged: its error, and when (monotonic)
        # Set when a session ended in a refused publish, cleared when one is taken: until then a session that
        # connects has not recovered (the same refusal ends each), so it is not said and resets nothing.
        self._refused: str | None = None
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._alarms_in_flight = 0
        self._alarm_cap = alarm_inflight  # alarms unacknowledged at once, as the district broker allows (_session)
        self._next_send = 0.0
        self._drain_total = 0
        self._drain_sent = 0
        self._drain_started = 0.0
        self.session = 0  # the current district session's number, once connected
        self._session_first = 0  # the newest outbox row at connect: rows up to it were queued before the session
        self._numbered = 0.0  # when (monotonic) the session's number was taken
        outbox.conn.execute("CREATE TABLE IF NOT EXISTS uplink_session (one INTEGER PRIMARY KEY CHECK (one = 0), "
                            "n INTEGER NOT NULL)")

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect; returns after `stop()`. Budget upkeep runs while disconnected too."""
        upkeep = asyncio.create_task(self._upkeep())
        backoff = self.backoff_initial_s
        renumbered = False
        try:
            while not self._stop.is_set():
                keep_first, renumbered = renumbered, False
                try:
                    await self._session(keep_first)
                except* _Renumber:
                    event(log, "uplink renumbered", session=self.session)
                    renumbered = True
                except* Refused as group:  # its rows stay; each session would end the same way until it is fixed
                    self._refused = str(group.exceptions[0])
                    self._lost(group.exceptions[0], logging.ERROR, "uplink publish refused")
                except* LinkError as group:
                    self._lost(group.exceptions[0])
                except* sqlite3.Error as group:  # disk full, I/O error: keep the daemon up and retry
                    self._lost(group.exceptions[0], logging.ERROR)
                if self.connected and self._refused is None:
                    backoff = self.backoff_initial_s
                self.connected = False
                try:
                    self.outbox.release_all()
                except sqlite3.Error as exc:  # its PUBACKed rows' delete failed again: they wait for the next
                    self._lost(exc, logging.ERROR)
                if self._stop.is_set():
                    break
                if renumbered:
                    continue
                delay = backoff * random.uniform(0.8, 1.2)  # spread the reconnects of many sites
                backoff = min(backoff * 2, self.backoff_max_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            self.connected = False
            self.outbox.flush_acks()

    def stop(self) -> None:
        """Ask `run()` to finish: no new leases; publishes already in flight get `publish_timeout_s`."""
        self._stop.set()
        self.outbox.alarm_event.set()
        self.outbox.ready_event.set()

    def _lost(self, exc: BaseException, level: int = logging.WARNING, what: str | None = None) -> None:
        self.last_error = error = str(exc) or type(exc).__name__
        self.failed += 1
        now = time.monotonic()
        if self.failed == 1 or self._logged is None or self._logged[0] != error or now - self._logged[1] >= FAIL_LOG_S:
            event(log, what or ("uplink disconnected" if self.connected else "uplink connect failed"), level,
                  host=self.broker.host, port=self.broker.port, error=error, failed=self.failed)
            self._logged = (error, now)

    def _next_session(self) -> int:
        """The session counter +1, or the wall clock in ms if that is more (a new store starts there, not at 1),
        committed before the connect that uses it (the store is idle here: every batch commits before the loop
        runs us), so a restart never repeats a session number, nor a clock set back."""
        conn = self.outbox.conn
        opened = conn.in_transaction
        row = conn.execute("SELECT n FROM uplink_session").fetchone()
        n = max((row[0] if row else 0) + 1, min(int(self.clock() * 1000), SESSION_CLOCK_MAX_MS))
        conn.execute("INSERT OR REPLACE INTO uplink_session (one, n) VALUES (0, ?)", (n,))
        if not opened:
            conn.commit()
        return n

    def _sealed(self, kind: str, body: bytes) -> bytes:
        return body if self.site_key is None else site_seal.seal(self.site_key, self.site, kind, body)

    def _link(self) -> Link:
        # A clean session (nothing is subscribed here: the downlink has a connection of its own, gateway/daemon.py)
        # with the death as its will; asyncio's TCP transports disable Nagle, which held a small alarm back.
        will = mqtt5.Will(district.up(self.site, district.GATEWAY), qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True,
                          payload=self._sealed(district.GATEWAY, district_wire.gateway_death(self.session)))
        return Link(self.broker, log, timeout_s=self.connect_timeout_s, ack_timeout_s=self.publish_timeout_s,
                    clean=True, will=will)

    async def _publish_taken(self, link: Link, topic: str, payload: bytes, retain: bool = False) -> None:
        """A QoS 1 publish that returns once the district broker took it; Refused if its PUBACK refused it."""
        refused = await link.publish(topic, payload, qos=1, retain=retain)
        if refused is not None:
            raise Refused(f"{topic}: {refused}")

    async def _session(self, keep_first: bool) -> None:
        """`keep_first`: the session before ended for a new number, so what was queued since it began is not
        backlog."""
        self.session = self._next_session()
        self._numbered = time.monotonic()
        async with self._link() as link:
            if not keep_first:
                self._session_first = self.outbox.last_id()
            await self._publish_taken(link, district.up(self.site, district.GATEWAY), self._sealed(
                district.GATEWAY, district_wire.gateway_birth(self.session, self.clock())), retain=True)
            self.connected = True
            self.connects += 1
            self.outbox.release_all()
            # The broker's Receive Maximum bounds all we have unacknowledged: bulk takes at most half of it, so
            # an alarm never waits behind bulk for a PUBACK (Mosquitto's default is 20; deploy's district 1,000).
            bulk = min(self.max_inflight, max(1, link.send_quota // 2))
            self._alarm_cap = min(self.alarm_inflight, max(1, link.send_quota - bulk))
            self._slots = asyncio.Semaphore(bulk)
            self._alarms_in_flight = 0
            backlog = self._backlog()
            if self._refused is None:  # else it is said once a publish is taken (_publish)
                self._say_connected(backlog)
            if backlog > self.max_items:
                self.draining = True
                self._drain_total, self._drain_sent = backlog, 0
                self._drain_started = time.monotonic()
                self._next_send = 0.0
            try:
                async with asyncio.TaskGroup() as tg:
                    # Alarm publishes are created first, so the alarm backlog is written before any bulk.
                    self._spawn_alarms(link, tg)
                    tg.create_task(self._alarm_loop(link, tg))
                    tg.create_task(self._bulk_loop(link, tg))
                    tg.create_task(self._watch(link))
                    tg.create_task(self._until_stopped(link))
                    tg.create_task(self._renumber())
            except* _Stopped:
                pass
            finally:
                self.draining = False

    def _say_connected(self, backlog: int) -> None:
        event(log, "uplink connected", host=self.broker.host, port=self.broker.port, backlog=backlog,
              failed=self.failed)
        self.failed = 0

    def _backlog(self) -> int:
        depth = self.outbox.depth()
        return depth["state"] + depth["telemetry"]

    async def _until_stopped(self, link: Link) -> None:
        """On stop: the publishes in flight finish, then the death is published, as the will would be."""
        await self._stop.wait()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.publish_timeout_s)
        with contextlib.suppress(LinkError):
            await link.publish(district.up(self.site, district.GATEWAY), self._sealed(
                district.GATEWAY, district_wire.gateway_death(self.session)), qos=1, retain=True)
        raise _Stopped

    async def _renumber(self) -> None:
        """Ends the session once the wall clock was set forward past its number (a step of STEP_S or more since
        it was taken): the site's box before may have used greater numbers, and the district ignores a birth no
        newer than its newest (docs/gateway.md, "The session number and the clock"). A clean DISCONNECT: no will."""
        while True:
            await asyncio.sleep(self.tick_s)
            numbered = self.clock() - (time.monotonic() - self._numbered)  # then, by the clock as it reads now
            if min(int((numbered - STEP_S) * 1000), SESSION_CLOCK_MAX_MS) > self.session:
                raise _Renumber

    async def _watch(self, link: Link) -> None:
        """Ends the session with LinkError when the connection drops."""
        await link.message()  # nothing is subscribed: it only returns by raising once the link is gone

    # --- sending -------------------------------------------------------------------------------------------

    def _spawn(self, tg: asyncio.TaskGroup, link: Link, kind: str, body: bytes,
               items: list[Item]) -> None:
        if items[0].id <= self._session_first:  # by queue order, not the wall clock, which NTP may step
            body = district_wire.historical(body)
        payload = self._sealed(kind, body)
        task = tg.create_task(self._publish(link, district.up(self.site, kind), payload, items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_alarms(self, link: Link, tg: asyncio.TaskGroup) -> None:
        items = self.outbox.lease(ALARM, self._alarm_cap - self._alarms_in_flight)
        for item in items:
            self._alarms_in_flight += 1
            self._spawn(tg, link, district.ALARM, item.body, [item])

    async def _alarm_loop(self, link: Link, tg: asyncio.TaskGroup) -> None:
        ob = self.outbox
        while not self._stop.is_set():
            ob.alarm_event.clear()
            self._spawn_alarms(link, tg)
            if ob.awaiting_commit(ALARM):  # an alarm may be in the ingest's open batch: look again right after
                await asyncio.sleep(0.001)
            else:
                await ob.alarm_event.wait()

    async def _bulk_loop(self, link: Link, tg: asyncio.TaskGroup) -> None:
        while not self._stop.is_set():
            await self._slots.acquire()
            try:
                kind, payload, items = await self._next_bulk()
                if self.draining:
                    await self._pace()
            except BaseException:
                self._slots.release()
                raise
            self._spawn(tg, link, kind, payload, items)

    async def _next_bulk(self) -> tuple[str, bytes, list[Item]]:
        """(kind, body, items): the next state item, else the next telemetry batch once full or old enough."""
        ob = self.outbox
        while True:
            ob.ready_event.clear()
            timeout: float | None = None
            if self._stop.is_set():
                await asyncio.Future()  # the session is ending; _until_stopped raises
            if ob.pending(ALARM, 1)[0]:  # alarms beyond alarm_inflight wait for PUBACKs; nothing overtakes them
                await asyncio.sleep(0.002)
                continue
            state = ob.lease(STATE, 1)
            if state:
                return state[0].kind, state[0].body, state
            n, oldest = ob.pending(TELEMETRY, self.max_items)
            if self.draining and n < self.max_items:
                self._end_drain()  # caught up: what is left is live traffic, batched by max_delay again
            if n and oldest is not None:
                # A row queued "in the future" was queued before the wall clock stepped back: it is due now.
                age = time.time() - oldest
                wait = 0.0 if n >= self.max_items or self.draining or age < 0 else self.max_delay_s - age
                if wait <= 0:
                    items = ob.lease(TELEMETRY, self.max_items, ROW_BYTES)
                    packs = [i for i in items if not i.thinned]
                    thinned = [i for i in items if i.thinned]
                    payload = district_wire.telemetry(
                        self.site, [i.body for i in packs], [i.body for i in thinned],
                        (sum(i.entries for i in packs), sum(i.entries for i in thinned)))
                    return district.TELEMETRY, payload, items
                timeout = wait
            if ob.awaiting_commit(STATE, TELEMETRY):  # more may be in the ingest's open batch: look again soon
                timeout = min(timeout or 0.002, 0.002)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as it times out
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await ob.ready_event.wait()

    async def _pace(self) -> None:
        now = time.monotonic()
        self._next_send = max(self._next_send, now)
        if self._next_send > now:
            await asyncio.sleep(self._next_send - now)
        self._next_send += 1.0 / self.drain_rate

    async def _publish(self, link: Link, topic: str, payload: bytes, items: list[Item]) -> None:
        alarm = items[0].lane == ALARM
        try:
            await self._publish_taken(link, topic, payload)
        finally:
            if alarm:
                self._alarms_in_flight -= 1
                self.outbox.alarm_event.set()
            else:
                self._slots.release()
        self.outbox.ack(i.id for i in items)
        if self._refused is not None:  # taken again: the link is back
            self._refused = None
            self._say_connected(self._backlog())
        entries = sum(i.entries for i in items)
        self.sent_msgs += 1
        self.sent_items += entries
        if self.draining and not alarm:
            self._drain_sent += entries

    # --- drain progress and upkeep -------------------------------------------------------------------------

    def _end_drain(self) -> None:
        elapsed = time.monotonic() - self._drain_started
        event(log, "drain done", sent=self._drain_sent, backlog=self._drain_total, seconds=round(elapsed, 1),
              rate=round(self._drain_sent / elapsed) if elapsed > 0 else None)
        self.draining = False

    def drain_progress(self) -> tuple[int, int] | None:
        """(rows sent, backlog at connect) while a drain runs, else None."""
        return (self._drain_sent, self._drain_total) if self.draining else None

    async def _upkeep(self) -> None:
        failed = 0  # passes failed in a row (a full disk fails every one, once a tick)
        logged: tuple[str, float] | None = None  # the last failure logged: its error, and when (monotonic)
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.outbox.flush_acks()
                self.outbox.enforce_budget()
            except Exception as exc:  # a full disk, or a bug: the next tick tries again, as the ticker's does
                failed += 1
                now, error = time.monotonic(), str(exc) or type(exc).__name__
                if failed == 1 or logged is None or logged[0] != error or now - logged[1] >= FAIL_LOG_S:
                    # a bug's traceback, once: a store that refuses a write says all in its error
                    log.error("outbox upkeep failed", exc_info=failed == 1 and not isinstance(exc, sqlite3.Error),
                              extra={"fields": {"error": error, "failed": failed}})
                    logged = (error, now)
            else:
                if failed:
                    event(log, "outbox upkeep recovered", logging.WARNING, failed=failed)
                failed = 0
            if self.draining:
                elapsed = max(time.monotonic() - self._drain_started, 1e-9)
                event(log, "drain", sent=self._drain_sent, backlog=self._drain_total,
                      rate=round(self._drain_sent / elapsed), depth=self.outbox.depth())


def site_key(path: Path) -> bytes:
    """The site key from its file, made there first if missing (the district must then be given it)."""
    if not path.exists():
        site_seal.make_key(path)
        event(log, "site key created", logging.WARNING, path=str(path), note="give it to the district")
    key: bytes = site_seal.read_key(path)
    return key
