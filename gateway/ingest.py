"""MQTT subscriptions whose messages are acknowledged only after they are committed to the store.

A broker forgets a QoS 1 message once it has the PUBACK, and a client that sends the PUBACK as soon as the
message is handed over would lose it in a crash between that PUBACK and the commit. So each connection is a
`gateway.mqtt_link.Link` (an MQTT client that acknowledges only when told), and every message of a batch is
acknowledged after the batch's handler has committed. The session is persistent (fixed client id,
clean_session False), so what arrives while the gateway is down or restarting waits in the broker, and what
was delivered but not acknowledged is delivered again on the next connection; sequence numbers then tell
the repeats apart.

Every connection gets a fresh Link: message ids are per connection, and a message left in the queue of a
dead connection must never be acknowledged on the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from gateway.logs import event
from gateway.message_decode import Decoded
from gateway.mqtt_link import Link, LinkError, Message
from gateway.site_config import BrokerConfig

log = logging.getLogger("lifeline.gateway.ingest")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 15.0
FAIL_LOG_S = 60.0  # a link that stays down: one `disconnected` line this often, unless its error changes


class Incoming(NamedTuple):
    """One delivery as the handler gets it; a NamedTuple because one is built for every message received."""

    topic: str
    payload: bytes
    retained: bool
    received: float
    decoded: Decoded | None = None  # what a check process made of it (gateway/check_stage.py), if one did


class Subscriber:
    """One persistent-session connection: subscribe, hand messages over in batches, ack after commit.

    `handle(batch)` must commit before it returns; if it raises, nothing of the batch is acknowledged and
    the connection is dropped, so the broker delivers the batch again.

    `prepare(batch)`, when given, returns the batch with work done elsewhere (the check processes): the next
    batch is taken and handed to it before the one before is handled, so both run at once.
    """

    def __init__(self, name: str, broker: BrokerConfig, topics: Sequence[str],
                 handle: Callable[[list[Incoming]], None], batch_max: int = 200,
                 backoff_max_s: float = BACKOFF_MAX_S,
                 prepare: Callable[[list[Incoming]], Awaitable[list[Incoming]]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`clock`: the wall time each batch is stamped with as it arrives."""
        self.name = name
        self.clock = clock
        self.broker = broker
        self.topics = list(topics)
        self.handle = handle
        self.prepare = prepare
        self.batch_max = batch_max
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self._link: Link | None = None
        self.batches = 0
        self.messages = 0
        self.not_utf8: Counter[str] = Counter()  # packets whose text was not UTF-8, by packet, over every connection
        self._stuck = 0  # handler failures since a batch was last handled (reset by _consume)

    async def run(self) -> None:
        """Connect, consume and reconnect with backoff until cancelled (cancellation disconnects cleanly)."""
        backoff = BACKOFF_FIRST_S
        failed = 0  # attempts failed in a row (a connection lost counts as one)
        logged: tuple[str, float] | None = None  # the last failure logged: its error, and when (monotonic)
        self._stuck = 0
        stuck_logged: tuple[str, float] | None = None
        while True:
            try:
                async with Link(self.broker, logging.getLogger(f"lifeline.mqtt.{self.name}"),
                                not_utf8=self.not_utf8) as link:
                    await link.subscribe(self.topics, qos=1)
                    self._link = link
                    self.connected.set()
                    if self._stuck < 2:  # a handler that keeps failing reconnects each time: its own line says so
                        event(log, "connected", link=self.name, host=self.broker.host, port=self.broker.port,
                              client_id=self.broker.client_id, failed=failed)
                    backoff = BACKOFF_FIRST_S
                    failed = 0
                    await self._consume(link)
            except LinkError as exc:
                failed += 1
                now, error = time.monotonic(), str(exc)
                if failed == 1 or logged is None or logged[0] != error or now - logged[1] >= FAIL_LOG_S:
                    event(log, "disconnected", logging.WARNING, link=self.name, error=error,
                          retry_in_s=round(backoff, 2), failed=failed)
                    logged = (error, now)
            except Exception as exc:  # the handler failed: its batch stays unacknowledged and comes again
                # A store that stays full fails every redelivery: the first failure is logged with its traceback,
                # then a changed error, and otherwise one line a minute with the count, as a link that stays down.
                self._stuck += 1
                now, error = time.monotonic(), repr(exc)
                if (self._stuck == 1 or stuck_logged is None or stuck_logged[0] != error
                        or now - stuck_logged[1] >= FAIL_LOG_S):
                    log.error("batch handler failed", exc_info=self._stuck == 1,
                              extra={"fields": {"link": self.name, "error": error, "failed": self._stuck,
                                                "retry_in_s": round(backoff, 2)}})
                    stuck_logged = (error, now)
            finally:
                self._link = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _consume(self, link: Link) -> None:
        queued: deque[tuple[list[Message], Awaitable[list[Incoming]] | list[Incoming]]] = deque()
        try:
            while True:
                if queued:
                    batch = link.ready(self.batch_max)
                else:
                    batch = [await link.message()]
                    batch += link.ready(self.batch_max - 1)
                if batch:
                    now = self.clock()
                    items = [Incoming(m.topic, m.payload, m.retain, now) for m in batch]
                    queued.append((batch, items if self.prepare is None else self.prepare(items)))
                if self.prepare is not None and batch and len(queued) < 2:
                    continue  # one batch ahead: take the next before this one is handled
                batch, handed = queued.popleft()
                self.handle(handed if isinstance(handed, list) else await handed)  # commits
                for m in batch:
                    link.ack(m)
                if self._stuck:
                    event(log, "batch handler recovered", logging.WARNING, link=self.name, failed=self._stuck)
                    self._stuck = 0
                self.batches += 1
                self.messages += len(batch)
                # The link parses a whole read at once, so the inbox can hold thousands: without a turn of the
                # loop here the PUBACKs would wait (and the broker's window with them), and the uplink with its
                # PUBACKs from the district (docs/performance.md, "The receive path").
                await asyncio.sleep(0)
        finally:
            for _, handed in queued:  # never handled nor acknowledged: the broker delivers them again
                if not isinstance(handed, list):
                    asyncio.ensure_future(handed).cancel()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on this connection; raises LinkError when not connected. A publish the broker refuses is
        logged (a device's confirmation or command the site's access rules deny): nothing here can do better."""
        link = self._link
        if link is None:
            raise LinkError(f"{self.name}: not connected")
        refused = await link.publish(topic, payload, qos=qos, retain=retain)
        if refused is not None:
            log.warning("publish to %s refused: %s", topic, refused)

