"""An emulated WAN link for the benchmarks: a TCP proxy on loopback with a one-way delay and a rate limit per
direction, in user space (the benchmark machine's kernel has no tc netem).

    .venv/bin/python -m bench.wanlink --target 127.0.0.1:8883 --delay-ms 20 --up-mbit 10 --down-mbit 10

Each accepted connection gets its own connection to the target; "up" is client to target (site to district),
"down" the way back. Each direction is a FIFO through two stages, as on a real link:

- serialisation: a token bucket of `rate` bits/s and `burst` bytes. Bytes are cut into segments of at most
  MSS bytes (as TCP would put them on the wire), and a segment leaves once the bucket holds it, so a burst
  of writes takes its size / rate to cross and a small write on an idle link goes at once;
- propagation: a segment is delivered `delay` seconds after it left.

Only TCP payload bytes are counted against the rate: the 40-odd bytes of IP and TCP header per segment that
a real link also carries are not (about 3% for full segments). Order is kept because each direction is one
queue served in order. Memory is bounded: once `queue_bytes` are waiting in one direction the proxy stops
reading from that side, and TCP's own flow control holds the sender back, as a full bottleneck buffer would.
The TCP handshake's own round trip is not emulated (the proxy connects to the target at once); everything
above it (TLS handshake, MQTT CONNECT) crosses the emulated link like any other bytes.

With delay 0 and no rate limit the proxy only copies bytes: `WanLink.stats()` and the benchmark's
pass-through round show what it carries that way and the CPU it takes.

Run as a process (`WanLink` starts one) so that its event loop does not share a GIL with the benchmark's
recorders; it prints "listening HOST PORT" once ready and a JSON line of counters on SIGUSR1 and at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MSS = 1448  # TCP payload of a 1500-byte Ethernet frame with timestamps


@dataclass(frozen=True)
class LinkSpec:
    delay_s: float = 0.020  # one way, each direction
    up_bps: float = 10e6  # bits/s, client to target; 0 = unlimited
    down_bps: float = 10e6  # bits/s, target to client; 0 = unlimited
    burst_bytes: int = MSS  # token bucket depth
    queue_bytes: int = 1 << 20  # per direction, before the proxy stops reading the sender

    def describe(self) -> str:
        def rate(bps: float) -> str:
            return f"{bps / 1e6:g} Mbit/s" if bps else "unlimited"
        return (f"{self.delay_s * 2000:g} ms RTT, up {rate(self.up_bps)}, down {rate(self.down_bps)}"
                if self.delay_s or self.up_bps or self.down_bps else "pass-through")


class Counters:
    """Totals over all connections, per direction."""

    def __init__(self) -> None:
        self.bytes = {"up": 0, "down": 0}
        self.segments = {"up": 0, "down": 0}
        self.peak_queue = {"up": 0, "down": 0}
        self.connections = 0
        self.started = time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": dict(self.bytes), "segments": dict(self.segments), "peak_queue_bytes": dict(self.peak_queue),
                "connections": self.connections, "uptime_s": round(time.monotonic() - self.started, 3)}


class Direction:
    """One way of one connection: shaper, delay line, and the writer at the far end."""

    def __init__(self, name: str, bps: float, spec: LinkSpec, counters: Counters,
                 source: asyncio.Transport, sink: asyncio.Transport) -> None:
        self.name = name
        self.rate = bps / 8.0  # bytes/s; 0 = unlimited
        self.delay = spec.delay_s
        self.burst = spec.burst_bytes
        self.limit = spec.queue_bytes
        self.counters = counters
        self.source = source
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.direct = not self.rate and not self.delay
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.tokens = float(self.burst)
        self.stamp = self.loop.time()
        self.free_at = 0.0  # when the last scheduled segment has left the shaper
        self.timer: asyncio.TimerHandle | None = None
        self.paused: set[str] = set()  # "queue" (ours is full), "sink" (its write buffer is full)
        self.ended = False

    def feed(self, data: bytes) -> None:
        c = self.counters
        c.bytes[self.name] += len(data)
        if self.direct:
            c.segments[self.name] += 1
            self.sink.write(data)
            return
        now = self.loop.time()
        step = MSS if self.rate else len(data)
        for i in range(0, len(data), step):
            seg = data[i:i + step]
            self.queue.append((self._leave(now, len(seg)) + self.delay, seg))
        c.segments[self.name] += (len(data) + step - 1) // step
        self.queued += len(data)
        c.peak_queue[self.name] = max(c.peak_queue[self.name], self.queued)
        if self.queued > self.limit:
            self.pause("queue")
        if self.timer is None:
            self._arm()

    def _leave(self, now: float, n: int) -> float:
        """When a segment of n bytes that arrived at `now` has left the shaper (FIFO behind earlier ones)."""
        if not self.rate:
            return now
        t = max(now, self.free_at)
        tokens = min(float(self.burst), self.tokens + (t - self.stamp) * self.rate)
        if tokens < n:
            t += (n - tokens) / self.rate
            tokens = float(n)
        self.tokens, self.stamp, self.free_at = tokens - n, t, t
        return t

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self.timer = None
        now = self.loop.time()
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(self.queue.popleft()[1])
        if out:
            data = b"".join(out)
            self.queued -= len(data)
            if not self.sink.is_closing():
                self.sink.write(data)
        if self.queue:
            self._arm()
        else:
            self._finish_if_ended()
        if self.queued <= self.limit // 2:
            self.resume("queue")

    def pause(self, why: str) -> None:
        if not self.paused:
            self.source.pause_reading()
        self.paused.add(why)

    def resume(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and not self.source.is_closing():
                self.source.resume_reading()

    def end(self) -> None:
        """The source is gone: close the far end once what is already on the link has arrived."""
        self.ended = True
        if not self.queue:
            self._finish_if_ended()

    def _finish_if_ended(self) -> None:
        if self.ended and not self.sink.is_closing():
            self.sink.close()


class Side(asyncio.Protocol):
    """One socket of a proxied connection; `outgoing` carries what it reads to the other socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.outgoing: Direction | None = None
        self.incoming: Direction | None = None  # pauses its source while this side's write buffer is full
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.outgoing is None:
            self.early.append(data)
        else:
            self.outgoing.feed(data)

    def eof_received(self) -> bool:
        return False  # close; the peer is closed once the bytes already sent have crossed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outgoing is not None:
            self.outgoing.end()  # closes the peer, which ends the other direction
        if self.incoming is not None and self.incoming.timer is not None:
            self.incoming.timer.cancel()  # nobody left to deliver to
            self.incoming.timer = None
            self.incoming.queue.clear()

    def pause_writing(self) -> None:
        if self.incoming is not None:
            self.incoming.pause("sink")

    def resume_writing(self) -> None:
        if self.incoming is not None:
            self.incoming.resume("sink")


class Proxy:
    def __init__(self, target: tuple[str, int], spec: LinkSpec) -> None:
        self.target = target
        self.spec = spec
        self.counters = Counters()

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Accepted(self), host, port)

    async def join(self, client: Side) -> None:
        """Connect to the target for an accepted client and wire both directions."""
        assert client.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(Side, *self.target)
        except OSError:
            client.transport.close()
            return
        assert upstream.transport is not None
        if client.transport.is_closing():
            upstream.transport.close()
            return
        self.counters.connections += 1
        up = Direction("up", self.spec.up_bps, self.spec, self.counters, client.transport, upstream.transport)
        down = Direction("down", self.spec.down_bps, self.spec, self.counters, upstream.transport, client.transport)
        client.outgoing, client.incoming = up, down
        upstream.outgoing, upstream.incoming = down, up
        for data in client.early:
            up.feed(data)
        client.early.clear()
        client.transport.resume_reading()


class _Accepted(Side):
    """A client socket: held (not read) until its upstream connection exists."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.proxy.join(self))


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    spec = LinkSpec(delay_s=args.delay_ms / 1000, up_bps=args.up_mbit * 1e6, down_bps=args.down_mbit * 1e6,
                    burst_bytes=args.burst_bytes, queue_bytes=args.queue_bytes)
    proxy = Proxy((host, int(port)), spec)
    server = await proxy.serve(args.listen, args.port)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]} {bound[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps(proxy.counters.as_dict()), flush=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(json.dumps(proxy.counters.as_dict()), flush=True)


class WanLink:
    """The proxy as a child process, for the benchmark: `port` to connect to, `stats()` of what crossed."""

    def __init__(self, target: tuple[str, int], spec: LinkSpec) -> None:
        self.spec = spec
        mbit = 1e6
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.wanlink", "--target", f"{target[0]}:{target[1]}",
             "--delay-ms", repr(spec.delay_s * 1000), "--up-mbit", repr(spec.up_bps / mbit),
             "--down-mbit", repr(spec.down_bps / mbit), "--burst-bytes", str(spec.burst_bytes),
             "--queue-bytes", str(spec.queue_bytes)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"wanlink did not start: {line!r}")
        self.port = int(line[2])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR1)
        out: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WanLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    defaults = LinkSpec()
    p = argparse.ArgumentParser(prog="python -m bench.wanlink", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--delay-ms", type=float, default=defaults.delay_s * 1000, help="one-way delay, each direction")
    p.add_argument("--up-mbit", type=float, default=defaults.up_bps / 1e6, help="client to target; 0: unlimited")
    p.add_argument("--down-mbit", type=float, default=defaults.down_bps / 1e6, help="target to client; 0: unlimited")
    p.add_argument("--burst-bytes", type=int, default=defaults.burst_bytes, help="token bucket depth")
    p.add_argument("--queue-bytes", type=int, default=defaults.queue_bytes,
                   help="bytes waiting per direction before the proxy stops reading the sender")
    asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    main()

