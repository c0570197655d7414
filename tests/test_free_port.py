"""lifeline.virtual.broker.free_port: ports for the servers tests start, never from the ephemeral range (where
outgoing connections take theirs) and never another xdist worker's."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from lifeline.virtual.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def ports(worker: str, count: int, n: int = 50) -> list[int]:
    env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": str(count)}
    out = subprocess.run([sys.executable, "-c", "from lifeline.virtual.broker import free_port\n"
                          f"print(*[free_port() for _ in range({n})])"], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [int(p) for p in out.split()]


def test_ports_are_below_the_ephemeral_range_distinct_and_each_workers_own() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    a, b = ports("gw0", 2), ports("gw1", 2)
    assert len(set(a)) == len(a) and len(set(b)) == len(b)
    assert all(p < low for p in a + b)
    assert max(a) < min(b)  # gw0's share lies below gw1's


def test_a_port_someone_holds_is_passed_over() -> None:
    first = free_port()
    held = []
    for port in range(first + 1, first + 40):
        with contextlib.suppress(OSError):
            held.append(socket.create_server(("127.0.0.1", port)))
    try:
        assert held and not {free_port() for _ in range(20)} & {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()
