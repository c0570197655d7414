"""CPU per received QoS 1 message for the gateway's MQTT link and the clients it could use instead (issue 20).

    .venv/bin/python -m bench.mqtt_receive                      # 100,000 messages, 2 rounds, every client
    .venv/bin/python -m bench.mqtt_receive --messages 20000 --rounds 1 --clients link,floor

For each client and round: a real Mosquitto (lifeline.virtual.broker, with the deploy config's window of
1,000 unacknowledged messages) gets a persistent session for the client's id with a QoS 1 subscription, then
N small messages (a device data topic and a 110-byte payload, about 150 bytes on the wire) are published
into it at QoS 1 while the client is away. The client then connects and drains the session the way
gateway.ingest.Subscriber consumes: a batch of what is at hand (up to BATCH), an Incoming tuple per message,
then a PUBACK for each. The figure is this process's CPU time (user + system) from the connect to the last
message acknowledged, over N. The broker is another process and is not counted. Clients and rounds are
interleaved so a change of load on the machine falls on all of them alike.

The clients:
- link: gateway.mqtt_link.Link of the tree measured, as gateway.ingest.Subscriber drives it: the baseline
  (up to commit 5d6c243 paho's client with manual ack; since issue 20 the mqtt5 reader, like `mqtt5` below,
  so compare a base tree's `--clients link` with the branch's in one sitting);
- aiomqtt: aiomqtt.Client iterating `messages`; it cannot hold the PUBACK (paho acknowledges when the
  message is queued), so it does less than the gateway needs and is shown for scale;
- zmqtt: zmqtt.MQTTClient, MQTT 3.1.1, `subscribe(auto_ack=False)` and `await message.ack()`;
- gmqtt: gmqtt.Client, which holds the PUBACK only under MQTT 5 with `optimistic_acknowledgement=False`,
  and then until an async on_message returns: one task per message, finished when the batch is committed;
- mqtt5: the mqtt5 package's packet reader and writers (MQTT 5, sans-I/O, in Rust) under a small asyncio
  Protocol that reads many packets per `recv`, with the Link's ready()/ack() shape;
- floor: the same Protocol with a minimal hand-written MQTT 3.1.1 PUBLISH parser, to know the floor.

zmqtt, gmqtt and mqtt5 are not dependencies of the project: install them to measure them (a client that
cannot be imported is skipped and said so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench import report
from gateway.ingest import Incoming, Subscriber
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto

TOPIC = "lifeline/bench/gas-0001/data"
PAYLOAD = bytes(range(110))
BATCH = 200
CONF = "max_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
CLIENTS = ("link", "aiomqtt", "zmqtt", "gmqtt", "mqtt5", "floor")
V5 = {"gmqtt", "mqtt5"}
NEVER_EXPIRES = 0xFFFFFFFF
# NUDGE: Mosquitto 2.0.11 (Debian's, here) moves queued messages into flight when PUBACKs free the window
# but may not write them until the client's next packet; a client that acknowledges a whole batch in one
# write then waits for its keepalive. A PINGREQ after each batch of PUBACKs (allowed at any time by MQTT
# 3.1.1, 3.12) makes the broker write them at once: seen in this bench, which stalled without it.


# --- filling a session ------------------------------------------------------------------------------------

def make_session(port: int, client_id: str, v5: bool) -> None:
    """Connect once as the consumer to be, subscribe at QoS 1 and leave: the session keeps what comes next."""
    done = threading.Event()
    if v5:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = NEVER_EXPIRES
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.connect("127.0.0.1", port)
    c.on_subscribe = lambda *a: done.set()
    c.loop_start()
    c.subscribe(TOPIC, 1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def publish(port: int, n: int, chunk: int = 1000) -> None:
    """N QoS 1 messages, all acknowledged by the broker before this returns.

    In chunks of the broker's window: paho's publish queue slows down past some ten thousand messages."""
    acked = 0
    cond = threading.Condition()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.max_inflight_messages_set(chunk)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    for sent in range(0, n, chunk):
        for _ in range(min(chunk, n - sent)):
            c.publish(TOPIC, PAYLOAD, 1)
        with cond:
            if not cond.wait_for(lambda s=sent: acked >= min(s + chunk, n), 60):
                raise RuntimeError(f"only {acked} of {n} published")
    c.disconnect()
    c.loop_stop()


def goodbyes(broker: Mosquitto, client_id: str) -> int:
    """How many times the broker's log says the client went (a DISCONNECT read, or the socket closed)."""
    log = broker.log_path.read_text(errors="replace")
    return log.count(f"Client {client_id} disconnected") + log.count(f"Client {client_id} closed its connection")


def gone_from(broker: Mosquitto, client_id: str, before: int, timeout_s: float = 30.0) -> None:
    """Wait until the broker has read the client's last packets, up to its DISCONNECT.

    The client has closed its end already, but the broker can still be reading PUBACKs behind: Mosquitto
    2.0.11 sends a returning session's queue past its window of unacknowledged messages."""
    deadline = time.monotonic() + timeout_s
    while goodbyes(broker, client_id) <= before and time.monotonic() < deadline:
        time.sleep(0.05)


def left_over(port: int, client_id: str, v5: bool) -> int:
    """What the session still holds after the drain (delivered again within half a second): should be 0."""
    got = 0

    def on_message(*_: Any) -> None:
        nonlocal got
        got += 1

    if v5:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = NEVER_EXPIRES
        c.on_message = on_message
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_message = on_message
        c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    return got


# --- the clients: each drains n messages from its session and returns ------------------------------------

async def drain_link(port: int, client_id: str, n: int) -> None:
    broker = BrokerConfig("127.0.0.1", port, client_id, None, None, None, 60)
    got = 0
    done = asyncio.Event()

    def handle(batch: list[Incoming]) -> None:
        nonlocal got
        got += len(batch)
        if got >= n:
            done.set()

    sub = Subscriber("bench", broker, [TOPIC], handle, batch_max=BATCH)
    task = asyncio.create_task(sub.run())
    await done.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drain_aiomqtt(port: int, client_id: str, n: int) -> None:
    import aiomqtt
    got = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as client:
        await client.subscribe(TOPIC, qos=1)
        async for m in client.messages:
            Incoming(str(m.topic), m.payload if isinstance(m.payload, bytes) else b"", m.retain, time.time())
            got += 1
            if got >= n:
                break


async def drain_zmqtt(port: int, client_id: str, n: int) -> None:
    import zmqtt
    got = 0
    client = zmqtt.MQTTClient("127.0.0.1", port, client_id=client_id, clean_session=False,
                              reconnect=zmqtt.ReconnectConfig(enabled=False))
    async with client, client.subscribe(TOPIC, qos=zmqtt.QoS.AT_LEAST_ONCE, auto_ack=False) as sub:
        while got < n:
            m = await sub.get_message()
            Incoming(m.topic, m.payload, m.retain, time.time())
            await m.ack()
            got += 1


async def drain_gmqtt(port: int, client_id: str, n: int) -> None:
    import gmqtt
    loop = asyncio.get_running_loop()
    inbox: deque[tuple[str, bytes, bool, asyncio.Future[int]]] = deque()
    wake = asyncio.Event()

    async def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        committed: asyncio.Future[int] = loop.create_future()
        inbox.append((topic, payload, bool(properties.get("retain")), committed))
        wake.set()
        return await committed  # the PUBACK goes when this returns

    client = gmqtt.Client(client_id, clean_session=False, optimistic_acknowledgement=False,
                          session_expiry_interval=NEVER_EXPIRES)
    client.on_message = on_message
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
    client.subscribe(TOPIC, qos=1)
    got = 0
    while got < n:
        while not inbox:
            wake.clear()
            await wake.wait()
        batch = [inbox.popleft() for _ in range(min(BATCH, len(inbox)))]
        now = time.time()
        [Incoming(t, p, r, now) for t, p, r, _ in batch]
        for *_, committed in batch:
            committed.set_result(0)
        got += len(batch)
    await asyncio.sleep(0.2)  # let the last tasks return and send their PUBACKs
    await client.disconnect()


class BufferedLink(asyncio.Protocol):
    """The prototype: one read for many packets, deliveries parsed into a deque, PUBACKs written per batch.

    Only what the bench needs (CONNECT, SUBSCRIBE, PUBLISH in, PUBACK out); `parse` is the codec."""

    def __init__(self, parse: Callable[[BufferedLink, bytearray], int]) -> None:
        self.parse = parse
        self.buf = bytearray()
        self.inbox: deque[tuple[str, bytes, bool, int]] = deque()
        self.wake = asyncio.Event()
        self.control: asyncio.Queue[int] = asyncio.Queue()  # CONNACK, SUBACK: the packet type
        self.transport: asyncio.Transport | None = None
        self.acks: list[bytes] = []
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        used = self.parse(self, self.buf)
        if used:
            del self.buf[:used]
        if self.inbox:
            self.wake.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.wake.set()

    def ready(self, limit: int) -> list[tuple[str, bytes, bool, int]]:
        return [self.inbox.popleft() for _ in range(min(limit, len(self.inbox)))]

    def ack(self, puback: bytes) -> None:
        if not self.acks:
            asyncio.get_running_loop().call_soon(self.flush)
        self.acks.append(puback)

    def flush(self) -> None:
        assert self.transport is not None
        self.acks.append(b"\xc0\x00")  # PINGREQ: see NUDGE above
        self.transport.write(b"".join(self.acks))
        self.acks.clear()


def parse_311(link: BufferedLink, buf: bytearray) -> int:
    """MQTT 3.1.1 packets out of `buf`; returns the bytes used. PUBLISH to the inbox, the rest to control."""
    pos, end = 0, len(buf)
    while end - pos >= 2:
        size, shift, i = 0, 0, pos + 1
        while True:
            if i >= end:
                return pos
            b = buf[i]
            size |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("remaining length over 4 bytes")
        if i + size > end:
            return pos
        first = buf[pos]
        kind = first >> 4
        if kind == 3:
            tlen = buf[i] << 8 | buf[i + 1]
            topic = buf[i + 2:i + 2 + tlen].decode()
            j = i + 2 + tlen
            if first & 0x06:
                mid = buf[j] << 8 | buf[j + 1]
                j += 2
            else:
                mid = 0
            link.inbox.append((topic, bytes(buf[j:i + size]), bool(first & 1), mid))
        else:
            link.control.put_nowait(kind)
        pos = i + size
    return pos


def parse_mqtt5(link: BufferedLink, buf: bytearray) -> int:
    import mqtt5
    pos = 0
    with memoryview(buf) as view:
        while pos < len(buf):
            try:
                packet, used = mqtt5.read(view[pos:])
            except IndexError:  # not all of the packet is in yet
                break
            pos += used
            if isinstance(packet, mqtt5.PublishPacket):
                link.inbox.append((packet.topic, packet.payload, packet.retain, packet.packet_id or 0))
            elif isinstance(packet, mqtt5.ConnAckPacket):
                link.control.put_nowait(2)
            elif isinstance(packet, mqtt5.SubAckPacket):
                link.control.put_nowait(9)
    return pos


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    size, out = len(body), bytearray([first])
    while True:
        b, size = size & 0x7F, size >> 7
        out.append(b | (0x80 if size else 0))
        if not size:
            return bytes(out + body)


async def drain_buffered(port: int, client_id: str, n: int, v5: bool) -> None:
    loop = asyncio.get_running_loop()
    transport, link = await loop.create_connection(
        lambda: BufferedLink(parse_mqtt5 if v5 else parse_311), "127.0.0.1", port)
    if v5:
        import mqtt5
        transport.write(mqtt5.ConnectPacket(client_id, clean_start=False, keep_alive=60,
                                            session_expiry_interval=NEVER_EXPIRES).write())
        transport.write(mqtt5.SubscribePacket(1, [mqtt5.TopicFilter(TOPIC, max_qos=mqtt5.QoS.AT_LEAST_ONCE)]).write())

        def puback(mid: int) -> bytes:
            return mqtt5.PubAckPacket(mid).write()
    else:
        transport.write(_packet(0x10, _string("MQTT") + bytes([4, 0x00]) + struct.pack("!H", 60) + _string(client_id)))
        transport.write(_packet(0x82, struct.pack("!H", 1) + _string(TOPIC) + b"\x01"))

        def puback(mid: int) -> bytes:
            return struct.pack("!BBH", 0x40, 2, mid)
    assert await link.control.get() == 2 and await link.control.get() == 9
    got = 0
    while got < n:
        while not link.inbox:
            link.wake.clear()
            await link.wake.wait()
        batch = link.ready(BATCH)
        now = time.time()
        [Incoming(t, p, r, now) for t, p, r, _ in batch]
        for m in batch:
            link.ack(puback(m[3]))
        got += len(batch)
    await asyncio.sleep(0)  # the last PUBACKs go out
    transport.write(b"\xe0\x00")  # DISCONNECT: the broker closes once it has read all before it
    await link.closed.wait()


DRAIN: dict[str, Callable[[int, str, int], Awaitable[None]]] = {
    "link": drain_link, "aiomqtt": drain_aiomqtt, "zmqtt": drain_zmqtt, "gmqtt": drain_gmqtt,
    "mqtt5": lambda port, cid, n: drain_buffered(port, cid, n, True),
    "floor": lambda port, cid, n: drain_buffered(port, cid, n, False),
}
IMPORTS = {"aiomqtt": "aiomqtt", "zmqtt": "zmqtt", "gmqtt": "gmqtt", "mqtt5": "mqtt5"}


def available(name: str) -> bool:
    module = IMPORTS.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def measure(name: str, n: int, round_: int) -> dict[str, float]:
    client_id = f"bench-{name}-{round_}"
    with Mosquitto(CONF) as broker:
        make_session(broker.port, client_id, name in V5)
        publish(broker.port, n)
        before = goodbyes(broker, client_id)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        asyncio.run(asyncio.wait_for(DRAIN[name](broker.port, client_id, n), 600))
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
        gone_from(broker, client_id, before)
        left = left_over(broker.port, client_id, name in V5)
    return {"cpu_us_per_msg": round(cpu / n * 1e6, 2), "msg_per_s": round(n / wall), "wall_s": round(wall, 2),
            "left_in_session": left}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_receive", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated, from " + ", ".join(CLIENTS))
    parser.add_argument("--json", type=Path, default=report.RESULTS / "mqtt_receive.json")
    args = parser.parse_args()
    names = [c for c in args.clients.split(",") if c]
    for c in names:
        if c not in DRAIN:
            parser.error(f"unknown client {c}")
    skipped = [c for c in names if not available(c)]
    names = [c for c in names if c not in skipped]
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}", file=sys.stderr)
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in names}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        for c in names:
            print(f"round {r + 1}/{args.rounds} {c:<8} publishing {args.messages:,} ... ", end="", flush=True)
            runs[c].append(measure(c, args.messages, r))
            x = runs[c][-1]
            print(f"{x['cpu_us_per_msg']:7.2f} µs/msg  {x['msg_per_s']:>8,} msg/s  left {x['left_in_session']}"
                  f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    base = statistics.median(x["cpu_us_per_msg"] for x in runs["link"]) if "link" in runs else None
    rows: dict[str, dict[str, Any]] = {}
    for c, xs in runs.items():
        cpu = statistics.median(x["cpu_us_per_msg"] for x in xs)
        rows[c] = {"cpu µs/msg": round(cpu, 2), "best": min(x["cpu_us_per_msg"] for x in xs),
                   "msg/s": round(statistics.median(x["msg_per_s"] for x in xs)),
                   "vs link": round(cpu / base, 2) if base else "",
                   "saves µs": round(base - cpu, 2) if base else ""}
    print(f"\n{args.messages:,} QoS 1 messages of {len(PAYLOAD)} bytes on {TOPIC}, median of {args.rounds} rounds")
    report.print_rows(rows, ["cpu µs/msg", "best", "msg/s", "vs link", "saves µs"])
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")
    versions = {}
    for c in names:  # the libraries measured (the link's own is in the git state below)
        with contextlib.suppress(Exception):
            versions[c] = version(IMPORTS[c])
    report.save(args.json, {"messages": args.messages, "payload_bytes": len(PAYLOAD), "rounds": args.rounds,
                            "batch": BATCH, "summary": rows, "runs": runs, "versions": versions,
                            "load_before": load_before, "load_after": load_after,
                            "machine": report.machine(), "git": report.git_state(),
                            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
