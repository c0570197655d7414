"""MQTT subscriptions whose messages are acknowledged only after they are committed to the store.

A broker forgets a QoS 1 message once it has the PUBACK. paho (and so aiomqtt) sends that PUBACK as soon as
the message is handed to the application, so a crash between the PUBACK and the commit would lose it.
aiomqtt 2.x does not expose paho's manual acknowledgement, so this module reaches the paho client inside
(`Client._client`): it turns `manual_ack` on before connecting and calls `ack(mid, qos)` for each message of
a batch after the batch's handler has committed. The session is persistent (fixed client id,
clean_session False), so what arrives while the gateway is down or restarting waits in the broker, and what
was delivered but not acknowledged is delivered again on the next connection; sequence numbers then tell
the repeats apart.

Every connection gets a fresh aiomqtt client: message ids are per connection, and a message left in the
queue of a dead connection must never be acknowledged on the next one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from gateway.config import BrokerConfig
from gateway.logs import event

log = logging.getLogger("lifeline.gateway.ingest")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 15.0


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retained: bool
    received: float


def tls_parameters(broker: BrokerConfig) -> aiomqtt.TLSParameters | None:
    if broker.tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=None if broker.tls.ca_file is None else str(broker.tls.ca_file),
        certfile=None if broker.tls.cert_file is None else str(broker.tls.cert_file),
        keyfile=None if broker.tls.key_file is None else str(broker.tls.key_file),
        cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)


class Subscriber:
    """One persistent-session connection: subscribe, hand messages over in batches, ack after commit.

    `handle(batch)` must commit before it returns; if it raises, nothing of the batch is acknowledged and
    the connection is dropped, so the broker delivers the batch again.
    """

    def __init__(self, name: str, broker: BrokerConfig, topics: Sequence[str],
                 handle: Callable[[list[Incoming]], None], batch_max: int = 200) -> None:
        self.name = name
        self.broker = broker
        self.topics = list(topics)
        self.handle = handle
        self.batch_max = batch_max
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.batches = 0
        self.messages = 0

    def _new_client(self) -> aiomqtt.Client:
        b = self.broker
        client = aiomqtt.Client(
            b.host, b.port, identifier=b.client_id, clean_session=False, username=b.username,
            password=b.password, keepalive=b.keepalive, tls_params=tls_parameters(b),
            logger=logging.getLogger(f"lifeline.mqtt.{self.name}"))
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, consume and reconnect with backoff until cancelled (cancellation disconnects cleanly)."""
        backoff = BACKOFF_FIRST_S
        while True:
            client = self._new_client()
            try:
                async with client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self.connected.set()
                    event(log, "connected", link=self.name, host=self.broker.host, port=self.broker.port,
                          client_id=self.broker.client_id)
                    backoff = BACKOFF_FIRST_S
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                event(log, "disconnected", logging.WARNING, link=self.name, error=str(exc),
                      retry_in_s=round(backoff, 2))
            except Exception as exc:  # the handler failed: its batch stays unacknowledged and comes again
                log.exception("batch handler failed")
                event(log, "reconnecting", logging.ERROR, link=self.name, error=repr(exc),
                      retry_in_s=round(backoff, 2))
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _consume(self, client: aiomqtt.Client) -> None:
        queue = client._queue  # aiomqtt's own queue: taking what is already there needs no task per message
        paho = client._client
        async for first in client.messages:
            _pull(paho, queue, self.batch_max - 1)
            batch = [first]
            while len(batch) < self.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            now = time.time()
            items = [Incoming(m.topic.value, _bytes(m.payload), m.retain, now) for m in batch]
            self.handle(items)  # commits
            for m in batch:
                if m.qos > 0:
                    paho.ack(m.mid, m.qos)
            self.batches += 1
            self.messages += len(batch)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on this connection; raises aiomqtt.MqttError when not connected."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError(f"{self.name}: not connected")
        await client.publish(topic, payload, qos=qos, retain=retain)


def _pull(paho: Any, queue: asyncio.Queue[Any], want: int) -> None:
    """Read the packets already waiting in the socket into aiomqtt's queue.

    aiomqtt's reader takes one packet per turn of the event loop, so without this a batch would hold the
    one or two messages that happened to be decoded, and every message would pay for a commit of its own."""
    try:
        while queue.qsize() < want:
            before = queue.qsize()
            if paho.loop_read() != mqtt.MQTT_ERR_SUCCESS or queue.qsize() == before:
                return
    except OSError as exc:
        raise aiomqtt.MqttError(f"read failed: {exc}") from exc


def _bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode() if payload is not None else b""
