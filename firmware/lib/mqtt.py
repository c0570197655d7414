"""Small asyncio MQTT 3.1.1 client for the node (there is no pip on a device).

One supervisor task owns the connection: it connects, re-subscribes, runs the on_connect hook (the
birth), then waits until the reader or the keepalive watchdog declares the link dead, and reconnects
with exponential backoff and jitter. publish() never gives up on a QoS 1 message: it resends with DUP
when no PUBACK comes within `ack_timeout`, and again after every reconnect, and returns only once the
broker has acknowledged it. That is the promise the flash queue builds on (ack only after PUBACK).
"""

import asyncio
import random
import socket
import struct
from time import ticks_diff, ticks_ms

from micropython import const

_CONNACK = const(("", "bad protocol", "client id rejected", "server unavailable", "bad user or password",
            "not authorized"))


class MQTTError(OSError):
    """The broker refused us (CONNACK code, SUBACK failure) or broke the protocol."""


class _SendFailed(OSError):
    """A send that ended the link; its cause was told and kept where it happened."""


class MQTTClient:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60, clean=True,
                 will=None, ssl=None, max_packet=2048, on_message=None, on_connect=None, ack_timeout=5,
                 backoff=(1, 60), connect_timeout=10):
        """will: (topic, payload) sent retained at QoS 1 if we vanish. ssl: None, True or an SSLContext.
        on_message(topic str, payload bytes, retained bool); on_connect(client) is a coroutine."""
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clean = clean
        self.will = will
        self.ssl = ssl
        self.max_packet = max_packet
        self.on_message = on_message
        self.on_connect = on_connect
        # kept under their arguments' names, in seconds: an attribute of its own (ms) is a name more to intern
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff
        # What the link has been through, for diagnostics (tests/firmware/test_mqtt_client.py reads them).
        self.connects = self.resends = self.pings = self.oversize = self.cb_errors = 0
        self.last_error = None
        self.ip = None  # the broker's address, looked up by _supervise (a name the HAL's Board interns anyway)
        self._subs = []
        self._pend = {}  # pid -> [Event, result (True for PUBACK, or the SUBACK code), sent at ms (None: a SUBSCRIBE)]
        self._pid = 0
        self._r = self._w = None
        self._open = asyncio.Event()
        self._down = asyncio.Event()
        self._lock = asyncio.Lock()
        self._hb = bytearray(5)  # fixed header, reused under the send lock
        self._task = None
        self._run = False
        self._ping_at = 0
        self._rx = self._tx = ticks_ms()

    # -- public -----------------------------------------------------------------------------------------

    def start(self):
        """Begin connecting in the background; publish() and subscribe() wait for the link."""
        if not self._run:
            self._run = True
            self._task = asyncio.create_task(self._supervise())

    def isconnected(self):
        return self._open.is_set()

    async def wait_connected(self):
        await self._open.wait()

    async def publish(self, topic, payload, retain=False, qos=0):
        """QoS 0: sent once when connected. QoS 1: returns after PUBACK, resending with DUP until then."""
        topic = topic.encode() if isinstance(topic, str) else topic
        if len(topic) + len(payload) + 4 > self.max_packet:
            raise ValueError("message over max_packet")
        if qos == 0:
            await self._gate()
            await self._send_publish(topic, payload, retain, 0, 0, 0)
            return
        pid = self._new_pid()
        slot = self._pend[pid] = [asyncio.Event(), None, 0]
        dup = 0
        try:
            while True:
                await self._gate()
                slot[0].clear()
                slot[2] = 0
                try:
                    await self._send_publish(topic, payload, retain, 1, pid, dup)
                except OSError:
                    pass  # _send dropped the link; the reconnect wakes us below
                dup = 1
                slot[2] = ticks_ms() or 1  # the keepalive task wakes us if no PUBACK comes in time
                await slot[0].wait()
                if slot[1]:
                    return
                self.resends += 1
        finally:
            del self._pend[pid]

    async def subscribe(self, topic, qos=1):
        """Subscribe now if connected, and again on every reconnect."""
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
        if self._open.is_set():
            await self._subscribe(topic, qos)

    async def disconnect(self):
        """Say goodbye (the broker then drops the will) and stop reconnecting."""
        self._run = False
        if self._w is not None:
            try:
                await self._send(0xE0, 0)
            except OSError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _error(self, e):
        """Keep the latest failure for the health figures; print it when it differs from the one before,
        so a link that keeps failing the same way is logged once, not on every retry."""
        if isinstance(e, _SendFailed):
            return
        if repr(e) != repr(self.last_error):
            print("mqtt: %s: %s" % (type(e).__name__, e))
        self.last_error = e

    # -- connection -------------------------------------------------------------------------------------

    async def _supervise(self):
        fails = 0
        bad = False  # the last connect failed
        bmin, bmax = int(self.backoff[0] * 1000), int(self.backoff[1] * 1000)
        while self._run:
            try:
                if fails:  # after a failed connect, or a link that ended (below): only the first connect goes at once
                    delay = min(bmax, bmin << min(fails - 1, 16))
                    await asyncio.sleep_ms(delay // 2 + (delay // 2) * random.getrandbits(10) // 1024)
                try:
                    if self.ip is None or (bad and not fails & (fails - 1)):
                        # The broker's address is looked up at the first connect, and again only after connects to it
                        # failed 1, 2, 4, 8... times in a row (a broker that moved), not at every reconnect: getaddrinfo
                        # blocks the whole node, unfed and not sampling, for as long as lwIP retries a DNS server that
                        # does not answer, and a site's DNS may be away while its broker is not. A failed lookup keeps
                        # the address known.
                        try:
                            a = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
                            # ("a.b.c.d", port) on an ESP32; the unix port's is a raw sockaddr (IPv4: 16 bytes)
                            self.ip = a[0] if isinstance(a, tuple) else (
                                "%d.%d.%d.%d" % tuple(a[4:8]) if len(a) == 16 else self.host)
                        except Exception as e:
                            if self.ip is None:
                                raise
                            self._error(e)
                    await self._connect()
                except Exception as e:  # any failure to connect is retried the same way
                    self._error(e)
                    fails += 1
                    bad = True
                    continue
                bad = False
                delay = ticks_ms()  # when this link came up
                self.connects += 1
                self._down.clear()
                reader = keeper = None
                try:  # everything from here on: a failure drops this link, never the supervisor (MemoryError too)
                    reader = asyncio.create_task(self._read_loop())
                    keeper = asyncio.create_task(self._keep_alive())
                    for topic, qos in self._subs:
                        try:
                            await self._subscribe(topic, qos)
                        except MQTTError as e:  # refused (ACL): reconnecting would not change that
                            self._error(e)
                    if self.on_connect is not None:
                        await self.on_connect(self)
                    self._open.set()
                    await self._down.wait()
                except Exception as e:  # the link is dropped and rebuilt below
                    self._error(e)
                finally:
                    self._open.clear()
                    for task in (reader, keeper):
                        if task is not None:
                            task.cancel()
                    w, self._r, self._w = self._w, None, None
                    for slot in self._pend.values():
                        slot[0].set()  # waiting publishers resend after the reconnect
                    await _close(w)
                # A link that ended within the longest backoff counts as a failed connect: a broker that takes the
                # connect and drops the link (another node with our client id takes it over) is retried with
                # backoff, not at once and without end. One that lasted waits the first step, drawn at random: at
                # once, a broker's restart had every node of the site reconnect in the same moment.
                fails = fails + 1 if ticks_diff(ticks_ms(), delay) < bmax else 1
            except Exception:
                # Out of memory where nothing catches it (the teardown above, the print of an error): the
                # supervisor ended, and the node sampled on, fed its watchdog and never reconnected. Retried as a
                # failed connect instead; nothing here may allocate.
                fails += 1
                bad = True

    async def _connect(self):
        if self.ssl:  # the certificate is checked against the host's name, not the address looked up
            coro = asyncio.open_connection(self.ip, self.port, ssl=self.ssl, server_hostname=self.host)
        else:
            coro = asyncio.open_connection(self.ip, self.port)
        ms = int(self.connect_timeout * 1000)
        r, w = await asyncio.wait_for_ms(coro, ms)
        try:
            flags = 0x02 if self.clean else 0
            parts = [b"\x00\x04MQTT\x04", None, struct.pack(">H", self.keepalive), _str(self.client_id)]
            if self.will:
                flags |= 0x2C  # will flag, QoS 1, retain
                parts.append(_str(self.will[0]))
                parts.append(_str(self.will[1]))
            if self.user is not None:
                flags |= 0x80
                parts.append(_str(self.user))
                if self.password is not None:
                    flags |= 0x40
                    parts.append(_str(self.password))
            parts[1] = bytes((flags,))
            self._w = w
            await self._send(0x10, sum(len(p) for p in parts), *parts)
            ack = await asyncio.wait_for_ms(r.readexactly(4), ms)
            if ack[0] != 0x20 or ack[1] != 2:
                raise MQTTError("no CONNACK")
            if ack[3]:
                raise MQTTError("refused: " + (_CONNACK[ack[3]] if ack[3] < 6 else str(ack[3])))
        except BaseException:
            self._w = None
            await _close(w)
            raise
        self._r = r
        self._ping_at = 0
        self._rx = self._tx = ticks_ms()

    def _drop(self):
        self._open.clear()
        self._down.set()

    async def _gate(self):
        """Wait for the link. The supervisor's own calls (the on_connect hook) pass before anyone else,
        and fail rather than wait when the link they are setting up goes down."""
        if asyncio.current_task() is self._task:
            if self._w is None or self._down.is_set():
                raise OSError("link lost during connect hook")
            return
        while not self._open.is_set():
            await self._open.wait()

    async def _send(self, first, n, *parts):
        """One packet: fixed header (type byte `first`, remaining length n), then `parts`. A link that
        cannot take it within ack_timeout (a stalled peer, a full socket buffer) is dropped."""
        async with self._lock:
            w = self._w
            if w is None:
                raise OSError("not connected")
            w.write(_fixed(self._hb, first, n))
            for p in parts:
                w.write(p)
            try:
                if getattr(w, "out_buf", 1):  # only a backed-up socket can block: bound that wait
                    await asyncio.wait_for_ms(w.drain(), int(self.ack_timeout * 1000))
                else:
                    await w.drain()
            except Exception as e:  # timeout or socket error: this link is finished
                self._error(e)
                self._drop()
                raise _SendFailed("send failed")
            self._tx = ticks_ms()

    async def _send_publish(self, topic, payload, retain, qos, pid, dup):
        first = 0x30 | dup << 3 | qos << 1 | (1 if retain else 0)
        n = 2 + len(topic) + len(payload)
        if qos:
            await self._send(first, n + 2, struct.pack(">H", len(topic)), topic, struct.pack(">H", pid), payload)
        else:
            await self._send(first, n, struct.pack(">H", len(topic)), topic, payload)

    async def _subscribe(self, topic, qos):
        t = _str(topic)
        pid = self._new_pid()
        slot = self._pend[pid] = [asyncio.Event(), None, None]
        try:
            await self._send(0x82, 3 + len(t), struct.pack(">H", pid), t, bytes((qos,)))
            await asyncio.wait_for_ms(slot[0].wait(), int(self.ack_timeout * 1000))
        finally:
            del self._pend[pid]
        if slot[1] is None:
            raise OSError("link lost before SUBACK")
        if slot[1] & 0x80:
            raise MQTTError("subscription refused: " + str(topic))

    def _new_pid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self._pend:
                self._pid = pid
                return pid

    # -- tasks of one connection ------------------------------------------------------------------------

    async def _read_loop(self):
        r = self._r
        try:
            while True:
                h = await r.readexactly(2)
                b = h[0]
                c = h[1]
                n = c & 0x7F
                shift = 7
                while c & 0x80:
                    if shift > 21:
                        raise MQTTError("bad remaining length")
                    c = (await r.readexactly(1))[0]
                    n |= (c & 0x7F) << shift
                    shift += 7
                self._rx = ticks_ms()
                if b & 0xF0 == 0x30:
                    await self._on_publish(r, b, n)
                    continue
                # Besides PUBLISH a broker sends us a PUBACK, a SUBACK of one topic or a PINGRESP, each of its one size
                # and flags 0 (MQTT 3.1.1 sections 2.2.2, 3.4, 3.9, 3.13). Anything else (a CONNACK again, the QoS 2
                # flow, an UNSUBACK, a reserved type) was ignored unsaid if short; it ends the link, said why.
                if not ((b == 0x40 and n == 2) or (b == 0x90 and n == 3) or (b == 0xD0 and not n)):
                    raise MQTTError("unexpected packet 0x%02x of %d bytes" % (b, n))
                if b == 0xD0:  # PINGRESP
                    self._ping_at = 0
                    continue
                body = await r.readexactly(n)
                slot = self._pend.get(body[0] << 8 | body[1])
                # An ack of the other kind is no answer: a SUBACK "granting" QoS 1 ended a publish as acked.
                if slot is not None and (b == 0x90) == (slot[2] is None):
                    slot[1] = True if b == 0x40 else body[2]
                    slot[0].set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # EOF, reset or protocol error all end this link
            if self._run:  # after our DISCONNECT the broker's close is the expected end, not a failure
                self._error(e)
        self._drop()

    async def _on_publish(self, r, b, n):
        qos = b >> 1 & 3
        if qos == 2:
            raise MQTTError("QoS 2 not subscribed")
        tlen = struct.unpack(">H", await r.readexactly(2))[0]
        left = n - 2 - tlen - (2 if qos else 0)
        if left < 0 or qos == 3:  # both QoS bits set: a malformed PUBLISH (MQTT 3.1.1 section 3.3.1.2)
            raise MQTTError("bad PUBLISH")
        topic = payload = None
        if n > self.max_packet:
            await _skip(r, tlen)
        else:
            topic = await r.readexactly(tlen)
        pid = struct.unpack(">H", await r.readexactly(2))[0] if qos else 0
        if topic is not None:
            try:
                payload = bytearray(left)
            except MemoryError:
                topic = None
        if payload is None:
            # Too big for our heap: read it away in small pieces, count it, and ack it so a persistent
            # session does not redeliver it forever.
            self.oversize += 1
            await _skip(r, left)
        else:
            await _skip(r, left, payload)
        if qos and not pid:  # QoS 1 needs a packet id other than 0 (MQTT 3.1.1 section 2.3.1): end the link
            raise MQTTError("bad PUBLISH")
        if topic is not None and self.on_message is not None:
            try:
                topic = topic.decode()
                # Only what we subscribed to reaches the handler (the node reads anything else as a command)
                if (topic, 0) not in self._subs and (topic, 1) not in self._subs:
                    raise MQTTError("PUBLISH not subscribed: " + topic)
                self.on_message(topic, payload, bool(b & 1))
            except Exception as e:  # a bad handler (or topic) must not kill the link
                self.cb_errors += 1
                self._error(e)
        if qos:
            await self._send(0x40, 2, struct.pack(">H", pid))

    async def _keep_alive(self):
        """The link's clock. Wakes QoS 1 publishers whose PUBACK is overdue (they resend with DUP).
        Sends PINGREQ when either direction has been quiet for half the keepalive; a PINGRESP that does
        not come within min(keepalive/2, 10 s) means the link is dead (a broker or path that went
        silent without closing the socket)."""
        ka = self.keepalive * 1000
        half = ka // 2
        dead = min(half, 10000)
        ack = int(self.ack_timeout * 1000)
        tick = max(50, min(1000, ack // 4, ka // 8 or 1000))
        while True:
            await asyncio.sleep_ms(tick)
            now = ticks_ms()
            for slot in self._pend.values():
                if slot[2] and slot[1] is None and ticks_diff(now, slot[2]) > ack:
                    slot[2] = 0
                    slot[0].set()
            if not ka:
                continue
            if self._ping_at:
                if ticks_diff(now, self._ping_at) > dead:
                    self._error(OSError("no PINGRESP"))
                    self._drop()
                    return
            elif ticks_diff(now, self._tx) >= half or ticks_diff(now, self._rx) >= half:
                self._ping_at = now or 1
                self.pings += 1
                try:
                    await self._send(0xC0, 0)
                except OSError:
                    return


def _str(s):
    """MQTT UTF-8 string: 2-byte length, then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def _fixed(buf, first, n):
    """Fixed header (type byte, remaining length) written into buf; a memoryview of it."""
    buf[0] = first
    i = 1
    while True:
        c = n & 0x7F
        n >>= 7
        buf[i] = c | (0x80 if n else 0)
        i += 1
        if not n:
            return memoryview(buf)[:i]


async def _close(w):
    try:
        w.close()
        await w.wait_closed()
    except Exception:  # a dead socket may fail to close; it is gone either way
        pass


async def _skip(r, n, buf=None):
    """n bytes read in small pieces: into buf when given (a payload, allocated once), or away."""
    i = 0
    while i < n:
        c = await r.readexactly(min(n - i, 128))
        if buf is not None:
            buf[i:i + 128] = c
        i += 128
