"""District ingest benchmark (issue 19): how many device readings a second the district stores, with 1 and 2
workers, on SQLite and on PostgreSQL, against a subscriber that only counts, in one run; and how long a reading
takes from its sample time to a desk page's live feed.

    .venv/bin/python -m bench.district_ingest            # full sizes, writes bench/results/district_ingest.json
    .venv/bin/python -m bench.district_ingest --quick    # a few seconds of load, for a quick look

The load is sealed upstream telemetry, built before the clock starts as a gateway builds it
(gateway/district_wire.py around each device's own sealed message, protocol/site_seal.py around the body) and
published straight to the district broker as the site, QoS 1, `--per-publish` device messages a publish (the
gateway's upstream batch under load). Not through a gateway: one gateway takes about a core at its own rate
(docs/performance.md), and on a two-core machine it would take the CPU the workers are measured on, so the
figure would be the machine's split between them rather than the district's rate. What the district does
with a publish is the same either way: the site seal, every device's MAC, the checks and the commit.

Phases, each on the same district broker (lifeline/virtual/site.py, the deploy config):

1. baseline: a paho subscriber of `district/v1/+/up/#` that only counts publishes;
2. ingest: `lifeline district --worker N` processes (N = 1, then 2) on a fresh SQLite file, then on one
   PostgreSQL server (lifeline/virtual/postgres.py), each configuration under its own client ids and its
   sessions cleared afterwards; rate = device readings stored (3 a message) from the release to the last
   commit, polled from the messages table;
3. desk latency: the shipped supervisor (`lifeline district`: one worker and the desk) on SQLite, a paced load
   of `--latency-rate` readings/s whose sample time is the moment it is published, and an httpx client of
   `/api/events` logged in as a viewer; latency = arrival of a `reading` notice - the sample time it names.

CPU per process is read from /proc (bench/procmeter.py). Nothing here asserts speed; tests/test_bench_smoke.py
runs --quick and checks completeness only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, create_engine, func, select

from bench import report
from bench.procmeter import CpuMeter, broker_pid
from district.schema import messages
from district.store import url_of
from gateway import district_wire
from lifeline.virtual import wire
from lifeline.virtual.broker import free_port
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.loadgen import Load, build, device_id, device_key
from lifeline.virtual.postgres import Postgres
from lifeline.virtual.site import DISTRICT_USER, Device, Site, environment, lifeline_cmd
from protocol import district as dtopics
from protocol import message, senml, site_seal

SITE = "bench"
READINGS = 3  # per device message (lifeline/virtual/loadgen.py's gas-style pack)
TARGETS = {"desk_p99_s": 1.0}
TICK = 0.05  # s between publishes in the desk latency phase
VIEWER, PASSWORD = "bench.viewer", "bench-viewer-password-1"


@dataclass(frozen=True)
class Sizes:
    devices: int
    messages: int  # per device, in each ingest configuration
    per_publish: int  # device messages in one upstream publish
    latency_rate: float  # readings/s in the desk latency phase
    latency_s: float


FULL = Sizes(devices=200, messages=150, per_publish=100, latency_rate=1000, latency_s=30)
QUICK = Sizes(devices=20, messages=20, per_publish=20, latency_rate=1000, latency_s=5)


# ------------------------------------------------------------------------------------------ the load


def upstream(site: Site, packs: list[bytes]) -> bytes:
    """One telemetry publish as a gateway seals it."""
    body = district_wire.telemetry(SITE, packs, [])
    sealed: bytes = site_seal.seal(site.site_key, SITE, dtopics.TELEMETRY, body)
    return sealed


def entry(dev: int, seq: int, sealed: bytes) -> bytes:
    return district_wire.telemetry_entry(device_id(dev), seq, 1, [], sealed=sealed)


def ingest_load(site: Site, sizes: Sizes, first_seq: int) -> list[bytes]:
    """Every device's messages first_seq.. as upstream publish packets, devices interleaved."""
    # Sample times within the last hours, as live data has: older than `raw_days`, worker 1's retention
    # would fold them while they arrive, and that is not ingest.
    load = Load(SITE, sizes.devices, sizes.messages, 0, start_time=time.time() - 4 * 3600)
    entries = [entry(d, s, build(load, d, s)[1]) for s in range(first_seq, first_seq + sizes.messages)
               for d in range(sizes.devices)]
    topic = dtopics.up(SITE, dtopics.TELEMETRY)
    return [wire.publish_packet(topic, upstream(site, entries[i:i + sizes.per_publish]), n % 65535 + 1)
            for n, i in enumerate(range(0, len(entries), sizes.per_publish))]


class Publisher:
    """The site's connection to the district broker; a thread counts PUBACKs."""

    def __init__(self, site: Site) -> None:
        assert site.district_broker is not None
        self.conn = wire.Connection("127.0.0.1", site.district_broker.port, f"{SITE}-bench-{time.time_ns()}",
                                    (SITE, site.gateway_password))
        self.acked = 0
        threading.Thread(target=self._acks, daemon=True).start()

    def _acks(self) -> None:
        for batch in self.conn.batches():
            self.acked += sum(kind == wire.PUBACK for kind, _, _ in batch)

    def send(self, packets: list[bytes]) -> None:
        self.conn.sock.sendall(b"".join(packets))

    def wait_acked(self, n: int, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.acked < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acked >= n


# ------------------------------------------------------------------------------------------ measuring


def wait_for(count: Callable[[], int], total: int, progress: report.Progress, what: str,
             timeout: float) -> tuple[int, float]:
    """Poll until `count()` reaches `total`; (the count, monotonic time it was first seen there)."""
    deadline = time.monotonic() + timeout
    n = count()
    while n < total and time.monotonic() < deadline:
        progress.show(n, total, what)
        time.sleep(0.05)
        n = count()
    progress.show(n, total, what, force=True)
    return n, time.monotonic()


def reader(database: str) -> Engine:
    """A plain reader of the district's database: not district.store.open_engine, whose SQLite transactions
    take the write lock, so counting would queue with the workers for it and slow what it measures."""
    return create_engine(url_of(database))


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(messages)).scalar_one())


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def baseline(site: Site, packets: list[bytes], sizes: Sizes) -> dict[str, Any]:
    """The same publishes to a subscriber that only counts them."""
    assert site.district_broker is not None
    got, last = [0], [0.0]
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{time.time_ns()}")
    client.username_pw_set(DISTRICT_USER, site.district_password)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{dtopics.ROOT}/+/up/#", qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        got[0] += 1
        last[0] = time.monotonic()

    client.on_message = on_message
    client.connect("127.0.0.1", site.district_broker.port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the counting subscriber did not subscribe")
        publisher = Publisher(site)
        meter = CpuMeter({"district broker": broker_pid(site.district_broker), "bench (publisher, counter)":
                          os.getpid()})
        released = time.monotonic()
        publisher.send(packets)
        n, _ = wait_for(lambda: got[0], len(packets), report.Progress("baseline"), "publishes counted", 120)
        usage = meter.stop()
        publisher.conn.close()
    finally:
        client.loop_stop()
        client.disconnect()
    total = sizes.devices * sizes.messages
    return rates(total if n == len(packets) else n * sizes.per_publish, total, last[0] - released, usage)


def rates(received: int, total: int, seconds: float, usage: dict[str, Any]) -> dict[str, Any]:
    return {"device_messages": total, "received": received, "lost": total - received, "seconds": round(seconds, 3),
            "msgs_per_s": round(received / seconds, 1), "readings_per_s": round(received * READINGS / seconds, 1),
            **usage}


def postgres_pids(pg: Postgres) -> dict[str, int]:
    """The server and its backends (the workers' connections exist once they have started)."""
    with contextlib.suppress(OSError):
        main = int((pg.data / "postmaster.pid").read_text().split()[0])
        out = {"postgres": main}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == main:
                    out[f"postgres {stat.parent.name}"] = int(stat.parent.name)
        return out
    return {}


def clear_sessions(site: Site, client_id: str, workers: int) -> None:
    """Drop the workers' persistent sessions, so a later phase's publishes are not queued for them."""
    assert site.district_broker is not None
    for n in range(1, workers + 1):
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-w{n}", clean_session=True)
        c.username_pw_set(DISTRICT_USER, site.district_password)
        c.connect("127.0.0.1", site.district_broker.port)
        c.loop_start()
        time.sleep(0.2)
        c.loop_stop()
        c.disconnect()


def config(site: Site, path: Path, database: str, workers: int, label: str) -> tuple[Path, str]:
    conf = write_config(site, path, database=database, workers=workers)
    client_id = f"district-{label}"
    conf.write_text(conf.read_text().replace(f'client_id = "district-{SITE}"', f'client_id = "{client_id}"'))
    return conf, client_id


def ingest(site: Site, workdir: Path, sizes: Sizes, label: str, database: str, workers: int, packets: list[bytes],
           pg: Postgres | None) -> dict[str, Any]:
    """One configuration: its workers started, the load released, every message stored."""
    rundir = workdir / label
    rundir.mkdir()
    conf, client_id = config(site, rundir / "district.toml", database, workers, label)
    engine = reader(database)
    procs = [DistrictProcess(conf, "--worker", str(n), log_path=rundir / f"worker{n}.log").start()
             for n in range(1, workers + 1)]
    try:
        for p in procs:
            p.wait_subscribed(60)
        before = stored(engine)
        total = sizes.devices * sizes.messages
        publisher = Publisher(site)
        pids = {f"worker {n}": p.proc.pid for n, p in enumerate(procs, 1) if p.proc is not None}
        pids["district broker"] = broker_pid(site.district_broker)
        pids.update(postgres_pids(pg) if pg else {})
        meter = CpuMeter(pids)
        released = time.monotonic()
        publisher.send(packets)
        def count() -> int:
            for p in procs:
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(f"{label}: a worker exited with {p.proc.returncode}: {p.log()[-3000:]}")
            return stored(engine) - before

        n, last = wait_for(count, total, report.Progress(label), "device messages stored", 60 + total / 200)
        usage = meter.stop()
        publisher.conn.close()
    finally:
        codes = [p.stop() for p in procs]
        engine.dispose()
        clear_sessions(site, client_id, workers)
    cpu = usage["cpu_s"]
    pg_cpu = round(sum(v for k, v in cpu.items() if k.startswith("postgres")), 2)
    usage["cpu_s"] = {k: v for k, v in cpu.items() if not k.startswith("postgres")} | (
        {"postgres (server and backends)": pg_cpu} if pg else {})
    out = rates(n, total, last - released, usage)
    worker_cpu = [cpu[f"worker {k}"] for k in range(1, workers + 1)]
    out.update(workers=workers, exit_codes=codes,
               worker_cpu_us_per_msg=round(sum(worker_cpu) / max(n, 1) * 1e6, 1),
               worker_cpu_busy=[round(c / usage["wall_s"], 2) for c in worker_cpu])
    return out


# ------------------------------------------------------------------------------------------ desk latency


class Feed:
    """An httpx client of the desk's /api/events, in a thread: (arrival wall time - sample time) of every
    `reading` notice, and the reloads the desk sent instead of notices it dropped."""

    def __init__(self, base: str) -> None:
        self.web = httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=3.0))
        login = self.web.post("/api/login", json={"user": VIEWER, "password": PASSWORD})
        login.raise_for_status()
        self.latency_s: list[float] = []
        self.after_receipt_s: list[float] = []  # from the worker taking the publish off the broker
        self.reloads = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        if not self.ready.wait(15):
            raise RuntimeError("no hello on /api/events")

    def _read(self) -> None:
        with contextlib.suppress(httpx.ReadTimeout, httpx.RemoteProtocolError), \
                self.web.stream("GET", "/api/events") as response:
            for line in response.iter_lines():
                if line.startswith("event: hello"):
                    self.ready.set()
                elif line.startswith("data: ") and line != "data: {}":
                    now, body = time.time(), json.loads(line[6:])
                    if body.get("kind") == "reading":
                        self.latency_s.append(now - float(body["t"]))
                        self.after_receipt_s.append(now - float(body["received"]))
                    elif body.get("kind") == "reload":
                        self.reloads += 1

    def close(self) -> None:
        self.thread.join(10)  # the read timeout ends it once the load has stopped
        self.web.close()


def add_viewer(conf: Path) -> None:
    done = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", VIEWER, "--role",
                           "viewer"], input=PASSWORD + "\n", capture_output=True, text=True, env=environment(),
                          cwd=report.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"--add-user failed: {done.stderr}")


def ticks(sizes: Sizes) -> int:
    return int(sizes.latency_s / TICK)


def paced_messages(sizes: Sizes, tick: int) -> int:
    """Device messages due by the end of `tick`."""
    return round(tick * sizes.latency_rate * TICK / READINGS)


def paced(site: Site, sizes: Sizes, first_seq: int) -> Iterator[bytes]:
    """Packets at latency_rate readings/s, one publish every TICK; each is built when it is due, so its
    readings' sample time is its publish time."""
    topic = dtopics.up(SITE, dtopics.TELEMETRY)
    sent, dev, seqs = 0, 0, [first_seq] * sizes.devices
    start = time.monotonic()
    for k in range(1, ticks(sizes) + 1):
        time.sleep(max(0.0, start + k * TICK - time.monotonic()))
        due = paced_messages(sizes, k)
        packs = []
        while sent < due:
            now = time.time()
            name = device_id(dev)
            pack = senml.pack([senml.record("ch4", 2.0, "%LEL"), senml.record("temp", 20.5, "Cel"),
                               senml.record("batt", 90, "%EL")], bn=name + ":", bt=now)
            sealed = message.encode(message.data(name, 1, seqs[dev], pack), device_key(dev))
            packs.append(entry(dev, seqs[dev], sealed))
            seqs[dev] += 1
            dev, sent = (dev + 1) % sizes.devices, sent + 1
        yield wire.publish_packet(topic, upstream(site, packs), k % 65535 + 1)


def desk_latency(site: Site, workdir: Path, sizes: Sizes, first_seq: int) -> dict[str, Any]:
    rundir = workdir / "desk"
    rundir.mkdir()
    desk_port = free_port()
    conf = write_config(site, rundir / "district.toml", database=str(rundir / "district.sqlite"), workers=1,
                        desk_port=desk_port)
    conf.write_text(conf.read_text().replace(f'client_id = "district-{SITE}"', 'client_id = "district-desk"'))
    add_viewer(conf)
    district = DistrictProcess(conf, log_path=rundir / "district.log").start()
    engine = reader(str(rundir / "district.sqlite"))
    try:
        district.wait_log("desk-started", 60)
        district.wait_subscribed(60)
        feed = Feed(f"http://127.0.0.1:{desk_port}")
        publisher = Publisher(site)
        progress = report.Progress("desk latency")
        start = time.monotonic()
        for sent, packet in enumerate(paced(site, sizes, first_seq), 1):
            publisher.send([packet])
            progress.show(sent, ticks(sizes), f"publishes sent, {len(feed.latency_s):,} reading notices on the feed")
        elapsed = time.monotonic() - start
        total = paced_messages(sizes, ticks(sizes))
        n, _ = wait_for(lambda: stored(engine), total, progress, "device messages stored", 60)
        time.sleep(1.0)  # the notices of the last commit
        feed.close()
        publisher.conn.close()
    finally:
        code = district.stop()
        engine.dispose()
    lat = feed.latency_s
    return {"engine": "sqlite", "workers": 1, "readings_per_s_target": sizes.latency_rate,
            "readings_per_s_achieved": round(total * READINGS / elapsed, 1), "device_messages": total,
            "stored": n, "lost": total - n, "notices": len(lat), "reloads": feed.reloads,
            "p50_s": _round(percentile(lat, 50)), "p99_s": _round(percentile(lat, 99)),
            "max_s": _round(max(lat) if lat else None),
            "after_receipt_p50_s": _round(percentile(feed.after_receipt_s, 50)),
            "after_receipt_p99_s": _round(percentile(feed.after_receipt_s, 99)), "exit_code": code}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ------------------------------------------------------------------------------------------ the run


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    site = Site(workdir / "site", SITE, tls=False)
    for i in range(sizes.devices):
        site.devices[device_id(i)] = Device(device_id(i), "gas", device_key(i))
    site.start()
    pg = Postgres()
    try:
        pg.start()
        out: dict[str, Any] = {"sizes": asdict(sizes), "load": "sealed upstream telemetry straight to the "
                               "district broker (gateway/district_wire.py + protocol/site_seal.py)"}
        seq = 1
        print(f"building {sizes.devices * sizes.messages:,} device messages a configuration", file=sys.stderr)
        packets = ingest_load(site, sizes, seq)
        out["baseline"] = baseline(site, packets, sizes)
        runs: dict[str, Any] = {}
        for engine_name, database in (("sqlite", None), ("postgresql", pg.url)):
            for workers in (1, 2):
                label = f"{engine_name}-{workers}w"
                if database is None:
                    url = str(workdir / label / "district.sqlite")
                else:  # one server for both: the unique keys need fresh sequence numbers
                    url = database
                    seq += sizes.messages
                    packets = ingest_load(site, sizes, seq)
                runs[label] = ingest(site, workdir, sizes, label, url, workers, packets,
                                     pg if database else None)
        out["ingest"] = runs
        out["desk"] = desk_latency(site, workdir, sizes, seq + sizes.messages)
    finally:
        pg.close()
        site.stop()
    gw = json.loads((report.RESULTS / "gateway_throughput.json").read_text())["gateway"]["msgs_per_s"]
    out["gateway_msgs_per_s"] = gw
    out["targets"] = {**TARGETS, "worker_msgs_per_s": gw}
    out["met"] = {"desk_p99": out["desk"]["p99_s"] is not None and out["desk"]["p99_s"] <= TARGETS["desk_p99_s"],
                  **{f"per_worker_{k}": r["msgs_per_s"] / r["workers"] >= gw for k, r in runs.items()}}
    return out


def table(r: dict[str, Any]) -> str:
    b, gw = r["baseline"], r["gateway_msgs_per_s"]
    rows = [("baseline: subscriber that only counts", f"{b['readings_per_s']:,.0f}", f"{b['msgs_per_s']:,.0f}",
             "", "", "")]
    for label, x in r["ingest"].items():
        per = x["msgs_per_s"] / x["workers"]
        busy = " + ".join(f"{c:.0%}" for c in x["worker_cpu_busy"])
        rows.append((label, f"{x['readings_per_s']:,.0f}", f"{x['msgs_per_s']:,.0f}",
                     f"{x['worker_cpu_us_per_msg']:.0f} ({busy})", f"{per:,.0f} vs {gw:,.0f}",
                     "yes" if per >= gw else "**no**"))
    out = ["| configuration | readings/s | device messages/s | worker CPU µs/message (busy) | per worker vs "
           "gateway | met |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    d = r["desk"]
    out += ["", "| desk latency, sample -> /api/events | result | target | met |", "| --- | ---: | --- | --- |",
            f"| p50 / p99 / max, s ({d['notices']:,} notices at {d['readings_per_s_achieved']:,.0f} readings/s, "
            f"{d['reloads']} reloads) | {d['p50_s']} / {d['p99_s']} / {d['max_s']} | p99 ≤ "
            f"{TARGETS['desk_p99_s']:g} | {'yes' if r['met']['desk_p99'] else '**no**'} |",
            f"| of which after the worker took the publish, p50 / p99, s | {d['after_receipt_p50_s']} / "
            f"{d['after_receipt_p99_s']} | | |"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds of load")
    parser.add_argument("--json", type=Path, default=report.RESULTS / "district_ingest.json")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    for name, value in asdict(FULL).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=None)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = replace(base, **{k: getattr(args, k) for k in asdict(base) if getattr(args, k) is not None})
    load_before = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="bench-district-"))
    try:
        result = run(sizes, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "district_ingest", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": f".venv/bin/python -m bench.district_ingest {argv_text}".rstrip(),
              "machine": report.machine(), "load_average_before": load_before, "git": report.git_state(),
              **result}
    report.save(args.json, result)
    print()
    print(table(result))
    print(f"\nJSON: {args.json}")
    lost = result["baseline"]["lost"] + result["desk"]["lost"] + sum(x["lost"] for x in result["ingest"].values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
