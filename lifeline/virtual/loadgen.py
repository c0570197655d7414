"""Load generator for the gateway benchmark: many simulated devices publishing sealed QoS 1 packs.

Messages are built, sealed and encoded as MQTT packets before the clock starts, in worker processes, so
what is measured is the system under test and not Python building HMACs. Each worker owns a slice of the
devices and writes their packets over its own connection (lifeline/virtual/wire.py), keeping up to WINDOW QoS 1
publishes in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from lifeline.virtual import wire
from protocol import message, senml, topics


@dataclass(frozen=True)
class Load:
    site: str
    devices: int
    messages_per_device: int
    rate: float  # messages/s over all workers; 0 means as fast as the broker takes them
    workers: int = 2
    start_time: float = 1763900000.0
    first_seq: int = 1  # a later load on the same devices continues their sequence numbers


WINDOW = 1000  # QoS 1 publishes in flight per worker
CHUNK = 64  # packets per socket write


def device_id(i: int) -> str:
    return f"load-{i:04d}"


def device_key(i: int) -> bytes:
    return (b"%032d" % i)[:32]


def build(load: Load, dev: int, seq: int) -> tuple[str, bytes]:
    """One gas-style pack of three readings, as a node would send it."""
    name = device_id(dev)
    t = load.start_time + seq
    pack = senml.pack([senml.record("ch4", float(seq % 7), "%LEL"), senml.record("temp", 20.5, "Cel"),
                       senml.record("batt", 90, "%EL")], bn=name + ":", bt=t)
    body = message.data(name, 1, seq, pack)
    return topics.device(load.site, name, topics.DATA), message.encode(body, device_key(dev))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _worker(load: Load, host: str, port: int, auth: tuple[str, str] | None, index: int, ready: Barrier,
            result: Queue[tuple[int, float, float, float]]) -> None:
    mine = [d for d in range(load.devices) if d % load.workers == index]
    seqs = range(load.first_seq, load.first_seq + load.messages_per_device)
    msgs = [build(load, d, s) for s in seqs for d in mine]
    packets = [wire.publish_packet(topic, payload, i % 65535 + 1) for i, (topic, payload) in enumerate(msgs)]
    conn = wire.Connection(host, port, f"loadgen-{index}-{time.time_ns()}", auth)
    acked = [0]
    done = threading.Event()

    def read_acks() -> None:
        for batch in conn.batches():
            acked[0] += sum(kind == wire.PUBACK for kind, _, _ in batch)
            if acked[0] >= len(packets):
                break
        done.set()

    threading.Thread(target=read_acks, daemon=True).start()
    ready.wait()
    start, cpu = time.monotonic(), _cpu()
    rate = load.rate / load.workers if load.rate else 0.0
    sent = 0
    while sent < len(packets):
        due = int((time.monotonic() - start) * rate) + 1 if rate else len(packets)
        upto = min(due, acked[0] + WINDOW, sent + CHUNK, len(packets))
        if upto > sent:
            conn.sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
        else:
            time.sleep(0.0005)
    done.wait(600)
    result.put((acked[0], start, time.monotonic(), _cpu() - cpu))
    conn.close()


class Generator:
    """The worker processes of one load; they publish once every worker has built its messages.

    `auth` is a (user, password) the site broker's ACL lets publish every device's data topic."""

    def __init__(self, load: Load, host: str, port: int, auth: tuple[str, str] | None = None) -> None:
        ctx = mp.get_context("fork")
        self._ready = ctx.Barrier(load.workers + 1)
        self._result: Queue[tuple[int, float, float, float]] = ctx.Queue()
        self.cpu_s = 0.0  # CPU seconds the workers spent publishing (known after join)
        self._procs = [ctx.Process(target=_worker, args=(load, host, port, auth, i, self._ready, self._result),
                                   daemon=True) for i in range(load.workers)]
        for p in self._procs:
            p.start()

    def go(self) -> float:
        """Release the workers once they are ready; returns the release time (monotonic)."""
        self._ready.wait()
        return time.monotonic()

    def join(self) -> tuple[int, float, float]:
        """(messages PUBACKed by the site broker, first start, last end) over all workers."""
        parts = [self._result.get(timeout=600) for _ in self._procs]
        for p in self._procs:
            p.join(10)
        self.cpu_s = sum(c for *_, c in parts)
        return sum(p[0] for p in parts), min(p[1] for p in parts), max(p[2] for p in parts)
