"""bench/wanlink.py keeps what it promises: every byte arrives, in order, both ways; nothing arrives before
its one-way delay, and nothing crosses faster than its rate (lower bounds only: how fast the proxy can go is
the benchmark's business); a close on one side reaches the other once the bytes in flight have crossed."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not an installed package
from bench.wanlink import LinkSpec, WanLink

DELAY = 0.025
RATE = 8e6  # bits/s, 1 MB/s


async def _echo_server() -> tuple[asyncio.Server, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            seen.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


async def _exchange(spec: LinkSpec, payload: bytes) -> tuple[float, float, bytes, bytes, dict[str, object]]:
    server, seen = await _echo_server()
    port = server.sockets[0].getsockname()[1]
    link = await asyncio.to_thread(WanLink, ("127.0.0.1", port), spec)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        t0 = time.monotonic()
        writer.write(b"?")
        await reader.readexactly(1)
        rtt = time.monotonic() - t0
        t0 = time.monotonic()
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        bulk = time.monotonic() - t0
        writer.close()
        await writer.wait_closed()
        stats = await asyncio.to_thread(link.stats)
    finally:
        link.close()
        server.close()
    return rtt, bulk, echoed, b"".join(seen)[1:], stats


def test_delay_rate_order_and_counts() -> None:
    payload = os.urandom(300_000)
    rtt, bulk, echoed, at_server, stats = asyncio.run(_exchange(LinkSpec(DELAY, RATE, RATE), payload))
    assert at_server == payload and echoed == payload
    assert rtt >= 2 * DELAY
    # Up and back each serialise the payload at RATE; the two stages overlap, so one pass is the floor.
    assert bulk >= len(payload) * 8 / RATE + 2 * DELAY - 0.01
    assert stats["bytes"] == {"up": len(payload) + 1, "down": len(payload) + 1}
    assert stats["connections"] == 1


def test_pass_through_copies_bytes_unchanged() -> None:
    payload = os.urandom(1_000_000)
    _, _, echoed, at_server, stats = asyncio.run(_exchange(LinkSpec(0.0, 0.0, 0.0), payload))
    assert at_server == payload and echoed == payload
    assert stats["bytes"] == {"up": len(payload) + 1, "down": len(payload) + 1}


def test_close_reaches_the_far_side_after_the_bytes_in_flight() -> None:
    async def scenario() -> tuple[bytes, float]:
        got = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result((await reader.read(), time.monotonic()))  # to EOF
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        link = await asyncio.to_thread(WanLink, ("127.0.0.1", server.sockets[0].getsockname()[1]),
                                       LinkSpec(DELAY, RATE, RATE))
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", link.port)
            t0 = time.monotonic()
            writer.write(b"last words" * 1000)
            writer.close()
            data, at = await asyncio.wait_for(got, 10)
        finally:
            link.close()
            server.close()
        return data, at - t0

    data, after = asyncio.run(scenario())
    assert data == b"last words" * 1000
    assert after >= DELAY
