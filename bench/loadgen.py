"""Load generator for the gateway benchmark: many simulated devices publishing sealed QoS 1 packs.

Messages are built and sealed before the clock starts, in worker processes, so what is measured is the
system under test and not Python building HMACs. Each worker owns a slice of the devices and publishes
through its own paho connection, keeping many QoS 1 messages in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocol import message, senml, topics


@dataclass(frozen=True)
class Load:
    site: str
    devices: int
    messages_per_device: int
    rate: float  # messages/s over all workers; 0 means as fast as the broker takes them
    workers: int = 2
    start_time: float = 1763900000.0


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


def _worker(load: Load, host: str, port: int, index: int, ready: Barrier,
            result: Queue[tuple[int, float, float]]) -> None:
    mine = [d for d in range(load.devices) if d % load.workers == index]
    msgs = [build(load, d, s) for s in range(1, load.messages_per_device + 1) for d in mine]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"loadgen-{index}-{time.time_ns()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]

    def on_publish(c: paho.Client, u: object, mid: int, rc: object, props: object) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    ready.wait()
    start = time.monotonic()
    per_worker_rate = load.rate / load.workers if load.rate else 0.0
    for i, (topic, payload) in enumerate(msgs):
        if per_worker_rate:
            delay = start + i / per_worker_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        client.publish(topic, payload, qos=1)
    while acked[0] < len(msgs):
        time.sleep(0.005)
    result.put((len(msgs), start, time.monotonic()))
    client.loop_stop()
    client.disconnect()


class Generator:
    """The worker processes of one load; they publish once every worker has built its messages."""

    def __init__(self, load: Load, host: str, port: int) -> None:
        ctx = mp.get_context("fork")
        self._ready = ctx.Barrier(load.workers + 1)
        self._result: Queue[tuple[int, float, float]] = ctx.Queue()
        self._procs = [ctx.Process(target=_worker, args=(load, host, port, i, self._ready, self._result),
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
        return sum(n for n, _, _ in parts), min(s for _, s, _ in parts), max(e for _, _, e in parts)
