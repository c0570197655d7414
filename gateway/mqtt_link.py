"""paho-mqtt's own client, driven by the asyncio loop, with each delivery acknowledged only when we say so.

The ingest must not PUBACK a message before its batch is committed, and aiomqtt (which wraps paho) gives
no public way to hold the PUBACK back. paho does (`manual_ack=True`, then `ack(mid, qos)`), and it can run
inside someone else's event loop through its documented external-loop interface: the socket callbacks
tell us when to watch the socket for writing, `loop_read`/`loop_write` do the I/O when the loop says the
socket is ready, and `loop_misc` once a second keeps the connection alive. This is the way aiomqtt drives
paho too, reduced to what the gateway's subscriptions need: connect, subscribe, deliveries in arrival
order, acknowledgement, and a publish that returns once the broker has acknowledged it.

One Link is one connection: message ids belong to it, so an ack can never reach a later connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.site_config import BrokerConfig

MISC_INTERVAL_S = 1.0  # how often paho's keepalive bookkeeping runs, as paho's own loop does


class LinkError(Exception):
    """The connection could not be made, or was lost; whatever was not acknowledged comes again."""


class Link:
    """One persistent-session connection with manual acknowledgement; use as `async with Link(...)`."""

    def __init__(self, broker: BrokerConfig, logger: logging.Logger, timeout_s: float = 10.0) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=broker.client_id, clean_session=False,
                             reconnect_on_failure=False, manual_ack=True)
        client.enable_logger(logger)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            client.tls_set(ca_certs=_path(broker.tls.ca_file), certfile=_path(broker.tls.cert_file),
                           keyfile=_path(broker.tls.key_file), cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client
        self._fd: int | None = None
        self._connack = asyncio.Event()  # the broker answered the CONNECT, or the connection went first
        self._refused: str | None = None
        self._error: str | None = None  # set once the connection is gone, with the reason
        self._inbox: deque[mqtt.MQTTMessage] = deque()
        self._wake = asyncio.Event()  # a delivery arrived or the connection went
        self._waiting: dict[int, asyncio.Event] = {}  # SUBACK and PUBACK by message id
        self._misc: asyncio.Task[None] | None = None

    # --- connection ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Link:
        b = self.broker
        try:  # connect() blocks on the TCP (and TLS) handshake, so it runs in a worker thread
            await self._loop.run_in_executor(None, self._client.connect, b.host, b.port, b.keepalive)
        except (OSError, ValueError) as exc:
            raise LinkError(str(exc) or type(exc).__name__) from None
        sock = self._client.socket()
        if sock is not None:
            self._loop.add_reader(sock.fileno(), self._readable)
        self._misc = self._loop.create_task(self._keepalive())
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connack.wait()
            if self._refused is not None or self._error is not None:
                raise LinkError(self._refused or self._error)
        except TimeoutError:
            await self.close()
            raise LinkError(f"no CONNACK in {self.timeout_s} s") from None
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect cleanly if the connection is still up; what was not acknowledged stays in the session."""
        if self._client.socket() is not None and self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
            self._writable()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    while self._client.socket() is not None:
                        self._wake.clear()
                        await self._wake.wait()
        self._unwatch()
        if self._misc is not None:
            self._misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc

    async def _keepalive(self) -> None:
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MISC_INTERVAL_S)

    # --- what the caller does ------------------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], qos: int = 1) -> None:
        rc, mid = self._client.subscribe([(topic, qos) for topic in topics])
        await self._acknowledged(rc, mid, "subscribe")

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Returns once paho reports the message published: for QoS 1, when the broker's PUBACK is in."""
        info = self._client.publish(topic, payload, qos, retain)
        await self._acknowledged(info.rc, info.mid, "publish", info.is_published)

    async def message(self) -> mqtt.MQTTMessage:
        """The next delivery, in arrival order; raises LinkError once the connection is gone."""
        while not self._inbox:
            if self._error is not None:
                raise LinkError(self._error)
            self._wake.clear()
            await self._wake.wait()
        return self._inbox.popleft()

    def ready(self, limit: int) -> list[mqtt.MQTTMessage]:
        """Up to `limit` deliveries that need no waiting: those received, then what is already in the socket.

        paho decodes one packet per `loop_read`, and the loop calls us once per readiness, so without reading
        on here a batch would hold the one or two messages that happened to be decoded."""
        try:
            while len(self._inbox) < limit:
                before = len(self._inbox)
                if self._client.loop_read() != mqtt.MQTT_ERR_SUCCESS or len(self._inbox) == before:
                    break
        except OSError as exc:
            self._gone(f"read failed: {exc}")
        return [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """Send the PUBACK for a delivery (QoS 0 has none)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    async def _acknowledged(self, rc: int, mid: int | None, what: str,
                            done: Callable[[], bool] = lambda: False) -> None:
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"{what} failed: {mqtt.error_string(rc)}")
        arrived = self._waiting[mid] = asyncio.Event()
        try:
            if not done():
                async with asyncio.timeout(self.timeout_s):
                    await arrived.wait()
        except TimeoutError:
            raise LinkError(f"{what}: no acknowledgement in {self.timeout_s} s") from None
        finally:
            del self._waiting[mid]

    # --- paho's callbacks (on the loop, except the socket ones during connect) ----------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {reason}"
        self._connack.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self._gone(f"disconnected: {reason}" if reason.is_failure else "disconnected")
        self._connack.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.append(message)
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        self._arrived(mid)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties) -> None:
        self._arrived(mid)

    def _arrived(self, mid: int) -> None:
        waiting = self._waiting.get(mid)
        if waiting is not None:
            waiting.set()

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
        self._fd = sock.fileno()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
        self._on_loop(self._unwatch)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
        self._on_loop(self._watch_write, sock)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
        self._on_loop(self._unwatch_write)

    # --- the socket on the loop ----------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run now when on the loop's thread (so it sees the socket as it is), else soon on the loop."""
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _readable(self) -> None:
        try:
            self._client.loop_read()
            sock = self._client.socket()
            # TLS may hold decoded bytes the selector cannot see: read them now, not at the next packet.
            while isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                if self._client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    break
                sock = self._client.socket()
        except OSError as exc:
            self._gone(f"read failed: {exc}")

    def _writable(self) -> None:
        try:
            self._client.loop_write()
        except OSError as exc:
            self._gone(f"write failed: {exc}")
        if not self._client.want_write():
            self._unwatch_write()

    def _watch_write(self, sock: mqtt.SocketLike) -> None:
        if self._client.socket() is sock and self._fd is not None:
            self._loop.add_writer(self._fd, self._writable)

    def _unwatch_write(self) -> None:
        if self._fd is not None:
            self._loop.remove_writer(self._fd)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    def _gone(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._wake.set()


def _path(p: object) -> str | None:
    return None if p is None else str(p)
