"""What the desk sends down to a site: device commands, rule-set changes and alarm acknowledgements.

Each goes to `district/v1/{site}/down/{cmd,rules,alarm-ack}` at QoS 1 as one CBOR map, exactly what
gateway/district_wire.py parses (`command_request`, `ruleset_data`, `alarm_acks`); tests/district read
them back with those parsers. A command's row is written before it is sent, so an ack can never arrive for a
command the district has no record of; the ingest stores the ack when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiomqtt
import cbor2
from sqlalchemy import Connection, Engine, select, update

from district.live import mqtt_client
from district.schema import commands, devices, sites
from gateway.rules import RuleError, parse_ruleset
from gateway.site_config import BrokerConfig
from protocol import district as dtopics
from protocol.topics import TopicError, check_id

MAX_OP = 64
MAX_ARGS = 4096  # bytes of JSON: a device's command decoder has a small heap
MAX_RULESET = 65536

Publish = Callable[[str, bytes], Awaitable[None]]


class DownlinkError(Exception):
    """A downlink the desk refuses (`status` 400 bad input, 404 no such site or device) or could not
    send (503: the district broker did not take it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def broker_publisher(broker: BrokerConfig) -> Publish:
    """Publish at QoS 1 over a short-lived connection: desk actions are rare, and a connection per action
    means no link to keep alive or lose between them."""
    async def publish(topic: str, payload: bytes) -> None:
        try:
            async with mqtt_client(broker, "down") as client:
                await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            raise DownlinkError(503, f"the district broker did not take it: {exc}") from None
    return publish


class Downlink:
    """Sends to sites through `publish` (a broker's, or a test's)."""

    def __init__(self, publish: Publish, clock: Callable[[], float] = time.time) -> None:
        self.publish = publish
        self.clock = clock

    async def alarm_ack(self, site: str, acks: Sequence[tuple[str, int | None]]) -> None:
        """(alarm id, the step the district acknowledged it at, None when its gateway numbers none): the gateway
        takes an ack unless the alarm has escalated since its step (an escalation the district had not received
        then stays unacknowledged; a fall does not). A gateway from before the steps reads the ids alone."""
        await self.publish(dtopics.down(site, dtopics.ALARM_ACK),
                           cbor2.dumps({"ids": [i for i, _ in acks], "steps": [s for _, s in acks]}))

    async def command(self, engine: Engine, actor: str, site: Any, dev: Any, op: Any, args: Any) -> int:
        """A device command: checked, recorded, sent; returns its id."""
        if not isinstance(op, str) or not op.strip() or len(op) > MAX_OP or not op.isprintable():
            raise DownlinkError(400, f"op: a command name of 1-{MAX_OP} printable characters")
        if not isinstance(args, Mapping):
            raise DownlinkError(400, "args: a map of the command's arguments")
        text = _json(args, "args", MAX_ARGS)
        cmd_id = await asyncio.to_thread(self._known_and_recorded, engine, actor, site, dev, op, text)
        body = {"dev": dev, "id": cmd_id, "op": op, "args": dict(args)}
        await self._send(engine, cmd_id, dtopics.down(site, dtopics.DOWN_CMD), cbor2.dumps(body))
        return cmd_id

    async def rules(self, engine: Engine, actor: str, site: Any, ruleset: Any) -> int:
        """A rule-set change for a site, checked with the gateway's own parser before it goes."""
        if not isinstance(ruleset, Mapping):
            raise DownlinkError(400, "ruleset: a rule set as a map, as in a rule file")
        try:
            parse_ruleset(ruleset)
        except RuleError as exc:
            raise DownlinkError(400, f"ruleset: {exc}") from None
        text = _json(ruleset, "ruleset", MAX_RULESET)
        cmd_id = await asyncio.to_thread(self._known_and_recorded, engine, actor, site, None, "rules", text)
        await self._send(engine, cmd_id, dtopics.down(site, dtopics.RULES), cbor2.dumps({"ruleset": dict(ruleset)}))
        return cmd_id

    def _known_and_recorded(self, engine: Engine, actor: str, site: Any, dev: Any, op: str, args: str) -> int:
        """The site (and device) checked and the row written, in a thread: on the event loop, a database
        locked by a worker held up every other request of the desk until the busy timeout."""
        with engine.begin() as conn:
            _known(conn, site, dev)
            return self._record(conn, actor, site, dev, op, args)

    def _record(self, conn: Connection, actor: str, site: str, dev: str | None, op: str, args: str) -> int:
        cmd_id = secrets.randbits(63)
        conn.execute(commands.insert().values(id=cmd_id, site=site, dev=dev, op=op, args=args, actor=actor,
                                              sent=self.clock()))
        return cmd_id

    async def _send(self, engine: Engine, cmd_id: int, topic: str, payload: bytes) -> None:
        """Publish; a send that failed is answered in the row at once, so the desk never waits for an ack
        of something the site never got. Written in a thread, as the row was: on the event loop, a database
        locked by a worker held up every other request of the desk."""
        try:
            await self.publish(topic, payload)
        except DownlinkError as exc:
            failed = update(commands).where(commands.c.id == cmd_id).values(
                ok=False, result=json.dumps(str(exc)), answered=self.clock())

            def answer() -> None:
                with engine.begin() as conn:
                    conn.execute(failed)
            await asyncio.to_thread(answer)
            raise


def _json(value: Mapping[str, Any], what: str, limit: int) -> str:
    """The JSON text the row keeps, once the value is known to go on the wire too: text JSON would escape but
    UTF-8 cannot hold (a lone surrogate) is refused here, before a row says it was sent."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        cbor2.dumps(value)
    except (TypeError, ValueError, cbor2.CBOREncodeError) as exc:  # UnicodeEncodeError is a ValueError
        raise DownlinkError(400, f"{what}: {exc}") from None
    if len(text) > limit:
        raise DownlinkError(400, f"{what}: at most {limit} bytes as JSON")
    return text


def _known(conn: Connection, site: Any, dev: Any) -> None:
    """The site (and device) must be one the district has heard from."""
    try:
        check_id(site, "site")
    except TopicError:
        raise DownlinkError(400, "site: a site id") from None
    if conn.execute(select(sites.c.site).where(sites.c.site == site)).first() is None:
        raise DownlinkError(404, f"no site {site}")
    if dev is None:
        return
    if not isinstance(dev, str) or not dev:
        raise DownlinkError(400, "dev: a device id")
    if conn.execute(select(devices.c.dev).where(devices.c.site == site, devices.c.dev == dev)).first() is None:
        raise DownlinkError(404, f"no device {dev} at {site}")
