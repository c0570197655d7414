"""The change feed: what changed in the district's database, told to every desk page as it happens.

Ingest workers run in other processes, maybe on other machines, so they tell the desks over MQTT: a small
JSON notice on `CHANGES_TOPIC` (QoS 0: a lost notice costs one page a refresh, never data, which is in the
database). A desk process subscribes once and its `Hub` fans each notice out to its server-sent-event
clients; the desk's own actions go into the hub directly, and onto the topic for the other desk processes
(district/desk.py). A notice names what changed, not its new state, so a page fetches what it shows and a
notice can never show something the database does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from gateway.logs import event
from gateway.site_config import BrokerConfig

log = logging.getLogger("lifeline.district.live")

CHANGES_TOPIC = "lifeline-district/v1/changes"
# "session": a desk session ended (a logout), which no page is sent: each feed looks its own up again
KINDS = frozenset({"alarm", "reading", "device", "site", "work-order", "command", "ota", "session"})
CLIENT_QUEUE = 256  # notices a slow page may fall behind by before it is told to reload everything
MAX_NOTICE = 1024
BACKOFF_MAX_S = 2.0
FAIL_LOG_S = 60.0  # while the broker stays away, one line a minute


def notice(kind: str, **ids: Any) -> bytes:
    """One notice: {"kind", ...ids} as compact JSON."""
    if kind not in KINDS:
        raise ValueError(f"notice kind {kind!r}: one of {', '.join(sorted(KINDS))}")
    return json.dumps({"kind": kind, **ids}, separators=(",", ":")).encode()


def read_notice(payload: bytes) -> dict[str, Any] | None:
    """A notice from the broker, or None: anyone who may publish on the topic is still not trusted to
    send a page more than a small map of a known kind."""
    if len(payload) > MAX_NOTICE:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str) or body["kind"] not in KINDS:
        return None
    return body


class Hub:
    """Fans notices out to the desk's live clients, each through its own bounded queue; a client that
    falls behind gets one {"kind": "reload"} instead of an unbounded backlog. While the broker it follows is
    away (`deaf`), its clients are told so ({"kind": "feed", "up": false}), and a reload when it is back."""

    def __init__(self) -> None:
        self._clients: set[asyncio.Queue[dict[str, Any]]] = set()
        self.received = 0
        self.refused = 0
        self.deaf = False  # its broker away or not reached yet: the workers' notices do not reach this desk

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, payload: bytes) -> None:
        body = read_notice(payload)
        if body is None:
            self.refused += 1
            return
        self.received += 1
        self._tell(body)

    def _tell(self, body: dict[str, Any]) -> None:
        for q in self._clients:
            if q.full():
                _reload(q)
            else:
                q.put_nowait(body)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        try:
            yield q
        finally:
            self._clients.discard(q)

    async def follow(self, broker: BrokerConfig) -> None:
        """Feed the hub from the broker until cancelled, reconnecting with a short backoff (a desk that
        was cut off tells its pages to reload, since it missed what happened meanwhile). A broker away is
        logged at the first failure, then once a minute with the count, and when it is back: each try logged a
        line, one every 2 s of an outage."""
        backoff = 0.1
        failing: float | None = None  # when the last failure was logged, while tries keep failing
        failed = 0
        self.deaf = True  # until subscribed: a page connecting now must not read "live", and gets the reload
        while True:
            try:
                async with mqtt_client(broker, "live") as client:
                    await client.subscribe(CHANGES_TOPIC, qos=0)
                    backoff = 0.1
                    if failing is not None:
                        event(log, "change feed reconnected", logging.WARNING, failed=failed)
                    failing, failed = None, 0
                    self.deaf = False
                    for q in self._clients:
                        _reload(q)
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            self.publish(message.payload)
            except aiomqtt.MqttError as exc:
                if not self.deaf:  # the pages must not read "live" while nothing the workers store reaches them
                    self.deaf = True
                    self._tell({"kind": "feed", "up": False})
                failed += 1
                if failing is None or time.monotonic() - failing >= FAIL_LOG_S:
                    event(log, "change feed disconnected", logging.WARNING, error=str(exc), failed=failed)
                    failing = time.monotonic()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


def _reload(q: asyncio.Queue[dict[str, Any]]) -> None:
    """Replace what a client has not read yet with one request to reload everything."""
    while not q.empty():
        q.get_nowait()
    q.put_nowait({"kind": "reload"})


def mqtt_client(broker: BrokerConfig, role: str) -> aiomqtt.Client:
    """A client of the district broker for one desk role (`live`, `down`); a random suffix keeps the ids of
    several desk processes apart (the desk keeps no broker session: the database is its memory)."""
    tls = None
    if broker.tls is not None:
        tls = aiomqtt.TLSParameters(
            ca_certs=None if broker.tls.ca_file is None else str(broker.tls.ca_file),
            certfile=None if broker.tls.cert_file is None else str(broker.tls.cert_file),
            keyfile=None if broker.tls.key_file is None else str(broker.tls.key_file))
    return aiomqtt.Client(broker.host, broker.port, username=broker.username, password=broker.password,
                          identifier=f"{broker.client_id}-desk-{role}-{secrets.token_hex(4)}",
                          keepalive=broker.keepalive, tls_params=tls, timeout=10)
