"""Just enough MQTT 3.1.1 (OASIS standard, 2014) for the benchmark's load generator and district recorder.

paho spends some 90 µs of Python per QoS 1 publish and about half that per delivery, which on a 2-core
machine takes CPU from the brokers and the gateway being measured (a paho generator tops out near 16k msg/s
into an idle Mosquitto here). These clients write pre-encoded packets in large chunks and parse what comes
back with a few slices, so the harness costs little beside what it measures. Only what the benchmark uses:
CONNECT with user/password, QoS 1 PUBLISH out, SUBSCRIBE and QoS 0/1 PUBLISH in, PUBACK both ways.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

CONNACK, PUBLISH, PUBACK, SUBACK = 2, 3, 4, 9


class WireError(Exception):
    pass


def _length(n: int) -> bytes:
    """The fixed header's Remaining Length (section 2.2.3)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, auth: tuple[str, str] | None, keepalive: int = 0) -> bytes:
    flags = 0x02 | (0xC0 if auth else 0)  # clean session, user name and password
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    if auth:
        body += _string(auth[0]) + _string(auth[1])
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, pid: int) -> bytes:
    """QoS 1, not retained; `pid` 1..65535."""
    body = _string(topic) + struct.pack("!H", pid) + payload
    return b"\x32" + _length(len(body)) + body


def subscribe_packet(pid: int, topic: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", pid) + _string(topic) + bytes([qos])
    return b"\x82" + _length(len(body)) + body


class Connection:
    """One TCP connection to a broker, logged in; `packets()` yields (type, flags, body) as they arrive."""

    def __init__(self, host: str, port: int, client_id: str, auth: tuple[str, str] | None = None) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id, auth))
        kind, _, body = next(self.batches())[0]  # nothing else is sent before the CONNACK
        if kind != CONNACK or len(body) != 2 or body[1] != 0:
            raise WireError(f"connection refused: packet type {kind}, return code {body[1:2]!r}")

    def batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        """The complete packets (type, flags, body) of each read, until the broker closes the connection."""
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            out, pos, end = [], 0, len(buf)
            while end - pos >= 2:
                n, shift, i = 0, 0, pos + 1
                while i < end and buf[i] & 0x80:
                    n |= (buf[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                if i >= end:
                    break
                n |= buf[i] << shift
                if end - (i + 1) < n:
                    break
                out.append((buf[pos] >> 4, buf[pos] & 0x0F, buf[i + 1:i + 1 + n]))
                pos = i + 1 + n
            buf = buf[pos:]
            if out:
                yield out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


class Subscriber:
    """Subscribes to one filter and hands every PUBLISH to `on_publish(topic, payload)` on its own thread,
    acknowledging QoS 1 deliveries after the handler has seen them."""

    def __init__(self, host: str, port: int, client_id: str, topic: str,
                 on_publish: Callable[[str, bytes], None], auth: tuple[str, str] | None = None) -> None:
        self.conn = Connection(host, port, client_id, auth)
        self.on_publish = on_publish
        self.subscribed = threading.Event()
        self.conn.sock.sendall(subscribe_packet(1, topic))
        self._thread = threading.Thread(target=self._run, name=f"wire-{client_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        acks = bytearray()
        for batch in self.conn.batches():
            for kind, flags, body in batch:
                if kind == PUBLISH:
                    tlen = struct.unpack_from("!H", body)[0]
                    qos = (flags >> 1) & 3
                    start = 2 + tlen + (2 if qos else 0)
                    self.on_publish(body[2:2 + tlen].decode(), body[start:])
                    if qos:
                        acks += b"\x40\x02" + body[2 + tlen:start]
                elif kind == SUBACK:
                    self.subscribed.set()
            if acks:  # the whole read is handled: acknowledge it in one write
                try:
                    self.conn.sock.sendall(acks)
                except OSError:
                    return
                acks.clear()

    def close(self) -> None:
        self.conn.close()
        self._thread.join(5)
