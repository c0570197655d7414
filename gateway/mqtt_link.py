"""One MQTT connection of the gateway: an asyncio Protocol that parses every packet of a read at once, with
each delivery acknowledged only when we say so.

The ingest must not PUBACK a message before its batch is committed. paho can hold the PUBACK back
(`manual_ack`), but it reads one packet per `loop_read` with a `recv` per header byte, and that cost about
14 µs a message here (bench/mqtt_receive.py; docs/performance.md, "The receive path"). So the Link reads
what the socket has, cuts it into packets with the `mqtt5` package's reader (MQTT 5, sans-I/O, written in
Rust; its public `read` and packet classes only) and keeps the deliveries in a deque until the caller takes
and acknowledges them. What a client must do besides that is here: CONNECT with a session that never
expires (MQTT 5's form of clean_session False), or a clean one with a will (the uplink's), SUBSCRIBE and wait
for the SUBACK, PUBLISH at QoS 0 or 1 (waiting for the PUBACK, and telling one that refused), PINGREQ on the
keepalive, and LinkError once the connection is gone.

Hostile or broken input: the CONNECT asks the broker for packets of at most `max_packet` bytes, and the
Link closes with a LinkError on a packet that declares more, on anything the reader finds malformed, and
on a packet a client never receives. A PUBLISH whose topic or a text property is not UTF-8 is malformed to
MQTT 5 too, but closing on it would hold the queue behind it for good (the broker delivers it again at each
connection), and the reader panics on it: it is handed over with its topic escaped and without properties,
counted in `not_utf8` and logged once a connection (_not_utf8). The reader panics on such text in any other
packet too, so none reaches it: a broker's packet with a text property not UTF-8 (a DISCONNECT's or a SUBACK's
reason string) is counted in `not_utf8` and ends the link as before, its LinkError naming it (_control_not_utf8),
and a packet only a client sends ends it unread. The broker's window of unacknowledged
deliveries is `receive_max`, and past `inbox_max` deliveries not yet taken the link stops reading until the
caller has taken half, except while a SUBACK is awaited (a returning session's queue comes before the SUBACK,
and nobody takes deliveries before the subscription is confirmed). A PUBACK behind the deliveries does not
lift the limit: the caller publishes while it takes deliveries, and taking them lets the PUBACK in.

One Link is one connection: message ids belong to it, so an ack can never reach a later connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Sequence
from types import TracebackType

import mqtt5

from gateway.logs import event
from gateway.site_config import BrokerConfig

NEVER_EXPIRES = 0xFFFFFFFF  # session expiry: the broker keeps the session (and its queue) while we are away
RECEIVE_MAX = 1000  # unacknowledged QoS 1 deliveries the broker may have out to us, as deploy's site.conf
MAX_PACKET = 1 << 20  # bytes; the site broker's message_size_limit is 64 KiB
# Deliveries held before the link stops reading the socket (TCP then holds the broker back): Mosquitto 2.0.11
# was seen sending a returning session's queue past its window of unacknowledged messages, and QoS 0 has none.
INBOX_MAX = 5000
# A PINGREQ goes after every batch of PUBACKs: Mosquitto 2.0.11 (Debian's) lets the freed window fill with
# queued messages but may not write them until the client's next packet, so a client that acknowledges a
# batch in one write waited for its keepalive (seen with bench/mqtt_receive.py; MQTT allows a PINGREQ at any
# time). It costs two bytes each way per batch. (mqtt5's enums are not ints at run time: compare `.value`.)
PINGREQ = mqtt5.PingReqPacket().write()
DISCONNECT = mqtt5.DisconnectPacket().write()

Message = mqtt5.PublishPacket  # a delivery: topic, payload, qos, retain, packet_id


class LinkError(Exception):
    """The connection could not be made, or was lost; whatever was not acknowledged comes again."""


class Link(asyncio.Protocol):
    """One persistent-session connection with manual acknowledgement; use as `async with Link(...)`."""

    def __init__(self, broker: BrokerConfig, logger: logging.Logger, timeout_s: float = 10.0,
                 max_packet: int = MAX_PACKET, receive_max: int = RECEIVE_MAX, inbox_max: int = INBOX_MAX,
                 not_utf8: Counter[str] | None = None, *, clean: bool = False, will: mqtt5.Will | None = None,
                 ack_timeout_s: float | None = None) -> None:
        """`not_utf8`: where to count packets with text that is not UTF-8, by packet name (the subscriber keeps one
        across its connections; the metric `lifeline_link_not_utf8`). `clean`: a session that starts empty and
        ends with the connection (a publisher's), not the persistent one. `timeout_s` bounds the connect, and
        `ack_timeout_s` (by default the same) a PUBACK or SUBACK."""
        self.broker = broker
        self.log = logger
        self.timeout_s = timeout_s
        self.ack_timeout_s = timeout_s if ack_timeout_s is None else ack_timeout_s
        self.clean = clean
        self.will = will
        self.max_packet = max_packet
        self.receive_max = receive_max
        self.inbox_max = inbox_max
        self._paused = False  # reading stopped until the inbox is down to half of inbox_max
        self._subscribing = 0  # SUBACKs awaited
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._connack = asyncio.Event()  # the broker answered the CONNECT, or the connection went first
        self._refused: str | None = None
        self._error: str | None = None  # set once the connection is gone, with the reason
        self._closed = asyncio.Event()  # the transport is closed
        self._inbox: deque[Message] = deque()
        self._wake = asyncio.Event()  # a delivery arrived or the connection went
        self._waiting: dict[int, asyncio.Future[mqtt5.PubAckPacket | mqtt5.SubAckPacket]] = {}
        self._next_id = 0
        self._acks: list[bytes] = []  # PUBACKs to write at the next turn of the loop
        self._last_in = self._last_ping = time.monotonic()
        self._keepalive_s = broker.keepalive  # as the CONNACK may set it (MQTT 5's Server Keep Alive)
        # QoS 1 publishes the broker takes unacknowledged: its Receive Maximum, from the CONNACK (MQTT 5 3.2.2.3.3)
        self.send_quota = 65535
        self._quota = asyncio.Semaphore(self.send_quota)
        self._misc: asyncio.Task[None] | None = None
        self.not_utf8: Counter[str] = Counter() if not_utf8 is None else not_utf8
        self._told_not_utf8 = False  # a delivery of them logged on this connection

    # --- connection ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Link:
        b = self.broker
        connect = mqtt5.ConnectPacket(
            b.client_id, username=b.username, password=None if b.password is None else b.password.encode(),
            clean_start=self.clean, keep_alive=b.keepalive, will=self.will,
            session_expiry_interval=0 if self.clean else NEVER_EXPIRES,
            receive_max=self.receive_max, max_packet_size=self.max_packet)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._loop.create_connection(lambda: self, b.host, b.port, ssl=self._tls())
                self._write(connect.write())
                await self._connack.wait()
        except TimeoutError:
            self._fail(f"no CONNACK in {self.timeout_s} s")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._fail(str(exc) or type(exc).__name__)
        except BaseException:
            await self.close()
            raise
        if self._refused is not None or self._error is not None:
            reason = self._refused or self._error
            await self.close()
            raise LinkError(reason)
        self._misc = self._loop.create_task(self._keepalive())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect cleanly if the connection is still up; what was not acknowledged stays in the session."""
        if self._misc is not None:
            self._misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc
        t = self._transport
        if t is None:
            return
        self._error = self._error or "closed"
        if not t.is_closing():
            # Acknowledgements of committed batches go out, then the DISCONNECT, and the broker closes. Closing
            # our socket at once would reset the connection if deliveries are still arriving (Linux sends RST
            # when unread data is left), and the broker would drop the acknowledgements it had not read yet.
            self._flush()
            t.write(DISCONNECT)
            self._paused = False
            t.resume_reading()  # what still comes is dropped (data_received), so the broker's close is seen
            if t.can_write_eof():
                with contextlib.suppress(OSError):  # the broker may have closed first (a refused CONNECT)
                    t.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._closed.wait()
        t.close()

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.broker.tls
        if tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # certificate and host name checked
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs()
        if tls.cert_file is not None:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        return ctx

    async def _keepalive(self) -> None:
        """A PINGREQ every half keepalive; the connection is taken as dead after 1.5 keepalives of silence."""
        keepalive = self._keepalive_s
        if keepalive <= 0:
            return
        while self._error is None:
            await asyncio.sleep(min(1.0, keepalive / 2))
            now = time.monotonic()
            if now - self._last_in > 1.5 * keepalive:
                self._fail(f"nothing from the broker in {1.5 * keepalive:g} s")
            elif now - self._last_ping >= keepalive / 2 and self._transport is not None:
                self._last_ping = now
                self._transport.write(PINGREQ)

    # --- what the caller does ------------------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; retained flags as MQTT 3.1.1 had them (set only on subscribe).
        A filter the broker refuses (an ACL that does not let us read) is a LinkError: a link kept up without it
        would look connected and receive nothing."""
        filters = [mqtt5.TopicFilter(t, max_qos=_qos(qos), retain_as_published=False) for t in topics]
        mid = self._message_id()
        self._subscribing += 1  # reading goes on past inbox_max until the SUBACK is in (module docstring)
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        try:
            suback = await self._request(mid, mqtt5.SubscribePacket(mid, filters).write(), "subscribe")
        finally:
            self._subscribing -= 1
        if not isinstance(suback, mqtt5.SubAckPacket):
            raise self._misanswered("subscribe", suback)
        if len(suback.reason_codes) != len(topics):
            raise LinkError(f"a SUBACK of {len(suback.reason_codes)} codes for {len(topics)} filters")
        codes = zip(topics, suback.reason_codes, strict=True)
        refused = [f"{t} ({code.name})" for t, code in codes if code.value >= 0x80]
        if refused:
            raise LinkError(f"subscription refused: {', '.join(refused)}")

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> str | None:
        """Returns once written (QoS 0) or once the broker's PUBACK is in (QoS 1); at most the broker's Receive
        Maximum of QoS 1 publishes are out at once, the rest wait their turn. Returns the reason of a PUBACK that
        refused the message (Mosquitto: its access rules deny the topic), which the broker did not take: MQTT
        3.1.1 acknowledged such a message as taken and dropped it."""
        if qos == 0:
            self._write(mqtt5.PublishPacket(topic, payload, retain=retain).write())
            return None
        async with self._quota:
            mid = self._message_id()
            packet = mqtt5.PublishPacket(topic, payload, qos=_qos(qos), retain=retain, packet_id=mid)
            puback = await self._request(mid, packet.write(), "publish")
        if not isinstance(puback, mqtt5.PubAckPacket):
            raise self._misanswered("publish", puback)
        return puback.reason_code.name if puback.reason_code.value >= 0x80 else None

    async def message(self) -> Message:
        """The next delivery, in arrival order; raises LinkError once the connection is gone."""
        while not self._inbox:
            if self._error is not None:
                raise LinkError(self._error)
            self._wake.clear()
            await self._wake.wait()
        if self._paused:
            self._resume()
        return self._inbox.popleft()

    def ready(self, limit: int) -> list[Message]:
        """Up to `limit` deliveries that need no waiting: every packet read so far is already parsed."""
        inbox = self._inbox
        taken = [inbox.popleft() for _ in range(min(limit, len(inbox)))]
        if self._paused:
            self._resume()
        return taken

    def _resume(self) -> None:
        t = self._transport
        if len(self._inbox) <= self.inbox_max // 2 and t is not None and not t.is_closing():
            self._paused = False
            t.resume_reading()

    def ack(self, message: Message) -> None:
        """Send the PUBACK for a delivery (QoS 0 has none); the PUBACKs of one turn of the loop go together."""
        if message.packet_id is not None:  # QoS 1 (a QoS 0 delivery has no id)
            if not self._acks:
                self._loop.call_soon(self._flush)
            self._acks.append(mqtt5.PubAckPacket(message.packet_id).write())

    def _flush(self) -> None:
        if not self._acks:
            return
        t = self._transport
        if t is not None and not t.is_closing():
            self._acks.append(PINGREQ)  # see PINGREQ above
            t.write(b"".join(self._acks))
        self._acks.clear()

    def _message_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id
        raise LinkError("no free message id")

    async def _request(self, mid: int, data: bytes, what: str) -> mqtt5.PubAckPacket | mqtt5.SubAckPacket:
        answer: asyncio.Future[mqtt5.PubAckPacket | mqtt5.SubAckPacket] = self._loop.create_future()
        self._waiting[mid] = answer
        try:
            self._write(data)
            async with asyncio.timeout(self.ack_timeout_s):
                return await answer
        except TimeoutError:
            raise LinkError(f"{what}: no acknowledgement in {self.ack_timeout_s:g} s") from None
        finally:
            del self._waiting[mid]

    def _write(self, data: bytes) -> None:
        t = self._transport
        if self._error is not None or t is None or t.is_closing():
            raise LinkError(self._error or "not connected")
        t.write(data)

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc is not None else "connection closed by the broker")
        self._closed.set()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:  # closing or failed: nothing more is taken or acknowledged
            return
        self._last_in = time.monotonic()
        buf = self._buf
        buf += data
        pos = 0
        try:
            with memoryview(buf) as view:
                while pos < len(buf):
                    kind = view[pos] >> 4
                    if kind in _CLIENT_ONLY:  # never read: its texts could panic the reader
                        raise ValueError(f"a {_CLIENT_ONLY[kind]}, which only a client sends")
                    bad = None if kind != 3 or _plain(view, pos) else _not_utf8(view[pos:])
                    if bad is not None:
                        delivery, used, field = bad
                        self.not_utf8["PUBLISH"] += 1
                        if not self._told_not_utf8:
                            self._told_not_utf8 = True
                            event(self.log, "delivery-not-utf8", logging.WARNING, field=field, topic=delivery.topic,
                                  packet_id=delivery.packet_id)
                        packet: mqtt5.Packet = delivery
                    elif kind != 3 and (control := _control_not_utf8(view[pos:])) is not None:
                        self.not_utf8[control[0]] += 1
                        if kind == 14:  # the broker's DISCONNECT: its reason code is what the operator needs
                            self._fail(f"disconnected by the broker: {control[1]}")
                            return
                        raise ValueError(control[1])
                    else:
                        try:
                            packet, used = mqtt5.read(view[pos:])
                        except IndexError:  # the rest of the packet is still to come
                            self._check_size(view[pos:pos + 5])
                            break
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except BaseException as exc:  # a pyo3 PanicException is a BaseException: should the
                            # reader (Rust) panic on a packet not caught above, it is malformed all the same
                            raise ValueError(f"{type(exc).__name__}: {exc}") from None
                    if used > self.max_packet:
                        raise ValueError(f"a packet of {used} bytes, over the limit of {self.max_packet}")
                    pos += used
                    if isinstance(packet, mqtt5.PublishPacket):
                        if packet.qos.value > 1:
                            raise ValueError("a QoS 2 delivery, never subscribed for")
                        if packet.qos.value == 1 and not packet.packet_id:
                            raise ValueError("a QoS 1 delivery without a packet id")
                        if packet.topic_alias is not None:  # the CONNECT allows none: taken, it had no topic
                            raise ValueError("a topic alias, never allowed")
                        self._inbox.append(packet)
                    else:
                        self._control(packet)
        except ValueError as exc:
            self._fail(f"malformed packet from the broker: {exc}")
            return
        del buf[:pos]
        if self._inbox:
            self._wake.set()
            if len(self._inbox) >= self.inbox_max and not self._subscribing and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()

    def _check_size(self, head: memoryview) -> None:
        """Refuse a packet whose fixed header declares more than max_packet bytes before it is all read."""
        size, end = _varint(head, 1, len(head))
        if end > 0 and end + size > self.max_packet:
            raise ValueError(f"a packet of {end + size} bytes, over the limit of {self.max_packet}")

    def _control(self, packet: mqtt5.Packet) -> None:
        if isinstance(packet, mqtt5.PubAckPacket | mqtt5.SubAckPacket):
            answer = self._waiting.get(packet.packet_id)
            if answer is not None and not answer.done():
                answer.set_result(packet)
        elif isinstance(packet, mqtt5.PingRespPacket):
            pass
        elif isinstance(packet, mqtt5.ConnAckPacket) and not self._connack.is_set():
            if packet.reason_code.value != 0:
                self._refused = f"connection refused: {packet.reason_code.name}"
            if packet.server_keep_alive is not None:
                self._keepalive_s = packet.server_keep_alive
            self.send_quota = packet.receive_max
            self._quota = asyncio.Semaphore(packet.receive_max)
            self._connack.set()
        elif isinstance(packet, mqtt5.DisconnectPacket):
            reason = packet.reason_code.name + (f" ({packet.reason_str})" if packet.reason_str else "")
            self._fail(f"disconnected by the broker: {reason}")
        else:
            raise ValueError(f"unexpected {type(packet).__name__}")

    def _misanswered(self, what: str, answer: mqtt5.Packet) -> LinkError:
        """The broker answered a request with the other kind of acknowledgement (the packet ids are shared): it
        is not to be trusted with this connection."""
        reason = f"{what} answered with a {type(answer).__name__}"
        self._fail(reason)
        return LinkError(reason)

    def _fail(self, reason: str) -> None:
        """The connection is over: say why once, wake whoever waits, and drop the socket."""
        if self._error is None:
            self._error = reason
        self._connack.set()
        self._wake.set()
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(LinkError(reason))
        t = self._transport
        if t is not None and not t.is_closing():
            t.abort()


def _plain(view: memoryview, pos: int) -> bool:
    """The PUBLISH at `pos` has an ASCII topic and no properties, as every device message through Mosquitto has:
    the reader can take it. A quick look (half a microsecond), not a check: False sends it to _not_utf8."""
    try:
        i = pos + 2
        while view[i - 1] & 0x80:  # the remaining length
            i += 1
        topic_end = i + 2 + (view[i] << 8 | view[i + 1])
        return view[i + 2:topic_end].tobytes().isascii() and not view[topic_end + 2 if view[pos] & 6 else topic_end]
    except IndexError:
        return False


def _not_utf8(packet: memoryview) -> tuple[Message, int, str] | None:
    """A whole PUBLISH whose topic or a text property is not UTF-8: the delivery with its topic escaped (which no
    topic check takes for a topic of its own) and without its properties (the gateway reads none), the bytes it
    took, and the field. None for a PUBLISH the reader can take, or one not all here yet; ValueError for one
    malformed. The reader must not see such text: it panics, with the UnicodeDecodeError as an unraisable
    warning and Rust's panic message on stderr, and it decodes texts before it finds some packets malformed."""
    size, i = _varint(packet, 1, min(len(packet), 5))
    end = i + size
    if i < 0 or end > len(packet):
        return None  # the reader's to judge: a remaining length of five bytes, or the rest still to come
    topic_end = i + 2 + int.from_bytes(packet[i:min(i + 2, end)])
    qos = packet[0] >> 1 & 3
    length, props = _varint(packet, topic_end + 2 if qos else topic_end, end)
    if size < 2 or props < 0 or props + length > end:
        raise ValueError("a PUBLISH whose topic or properties run past its end")
    topic = packet[i + 2:topic_end].tobytes()
    bad = _text_property_not_utf8(packet[props:props + length]) if _utf8(topic) else ("topic", topic)
    if bad is None:
        return None
    field = bad[0]
    delivery = mqtt5.PublishPacket(topic.decode(errors="backslashreplace"), packet[props + length:end].tobytes(),
                                   qos=mqtt5.QoS(qos), retain=bool(packet[0] & 1), duplicate=bool(packet[0] & 8),
                                   packet_id=int.from_bytes(packet[topic_end:topic_end + 2]) if qos else None)
    return delivery, end, field


def _control_not_utf8(packet: memoryview) -> tuple[str, str] | None:
    """A whole packet from the broker, other than a PUBLISH, with a text property that is not UTF-8: (its name, the
    link's reason to end: a DISCONNECT's reason code, or what is malformed, with the text escaped). None for one
    the reader can take, or one not all here yet; ValueError for properties malformed."""
    kind = packet[0] >> 4
    size, i = _varint(packet, 1, min(len(packet), 5))
    end = i + size
    if kind not in _CONTROL or i < 0 or end > len(packet):
        return None
    name, fixed, least = _CONTROL[kind]
    if size < least:  # the short forms without properties (MQTT 5 3.4.2.1, 3.14.2.1)
        return None
    length, props = _varint(packet, i + fixed, end)
    if props < 0 or props + length > end:
        raise ValueError(f"a {name} whose properties run past its end")
    bad = _text_property_not_utf8(packet[props:props + length])
    if bad is None:
        return None
    field, text = bad
    shown = str(text, "utf-8", "backslashreplace")
    if kind == 14:
        try:
            code = mqtt5.DisconnectReasonCode(packet[i]).name
        except ValueError:
            code = f"reason code {packet[i]:#04x}"
        return name, f"{code} (its {field}, not UTF-8: {shown})"
    return name, f"a {name} whose {field} is not UTF-8: {shown}"


# The packets a broker sends besides PUBLISH: (name, bytes before their properties, least remaining length with
# properties). Their only texts are properties (MQTT 5 3.2-3.15).
_CONTROL = {2: ("CONNACK", 2, 3), 4: ("PUBACK", 3, 4), 5: ("PUBREC", 3, 4), 6: ("PUBREL", 3, 4),
            7: ("PUBCOMP", 3, 4), 9: ("SUBACK", 2, 3), 11: ("UNSUBACK", 2, 3), 14: ("DISCONNECT", 1, 2),
            15: ("AUTH", 1, 2)}
_CLIENT_ONLY = {1: "CONNECT", 8: "SUBSCRIBE", 10: "UNSUBSCRIBE", 12: "PINGREQ"}

# MQTT 5's properties (2.2.2.2): the texts (0x26, a user property, is a pair of them), the sizes of those of fixed
# size, and binary data (a length and bytes); 0x0B, a subscription identifier, is a variable byte integer.
_TEXTS = {0x03: "content type", 0x08: "response topic", 0x12: "assigned client identifier",
          0x15: "authentication method", 0x1A: "response information", 0x1C: "server reference",
          0x1F: "reason string", 0x26: "user property"}
_FIXED = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x18: 4, 0x19: 1, 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1,
          0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
_BINARY = (0x09, 0x16)


def _text_property_not_utf8(props: memoryview) -> tuple[str, bytes] | None:
    """The first text property that is not UTF-8, as (its name, its bytes), or None; ValueError if they are
    malformed."""
    i = 0
    while i < len(props):
        pid, i = props[i], i + 1
        if pid in _FIXED:
            i += _FIXED[pid]
        elif pid == 0x0B:
            i = _varint(props, i, len(props))[1]
        elif pid in _TEXTS or pid in _BINARY:
            for _ in range(2 if pid == 0x26 else 1):
                value_end = i + 2 + int.from_bytes(props[i:i + 2])
                if pid in _TEXTS and value_end <= len(props) and not _utf8(props[i + 2:value_end]):
                    return _TEXTS[pid], props[i + 2:value_end].tobytes()
                i = value_end
        else:
            raise ValueError(f"a property {pid:#04x}, unknown to MQTT 5")
        if not 0 <= i <= len(props):
            raise ValueError("properties that run past their length")
    return None


def _utf8(text: bytes | memoryview) -> bool:
    try:
        str(text, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _varint(data: memoryview, i: int, end: int) -> tuple[int, int]:
    """MQTT's variable byte integer at `i`, read before `end`: (value, where it ends), or (0, -1)."""
    value = 0
    for n in range(4):
        if i + n >= end:
            break
        value |= (data[i + n] & 0x7F) << (7 * n)
        if data[i + n] < 0x80:
            return value, i + n + 1
    return 0, -1


def _qos(qos: int) -> mqtt5.QoS:
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos}: the link handles 0 and 1")
    return mqtt5.QoS.AT_LEAST_ONCE if qos else mqtt5.QoS.AT_MOST_ONCE
