"""Gateway throughput benchmark (issue 4): the site gateway against a plain Mosquitto bridge, in one run.

    .venv/bin/python -m bench.gateway_throughput            # full sizes, writes the JSON and docs/performance.md
    .venv/bin/python -m bench.gateway_throughput --quick    # a few seconds of load, for a quick look

Brokers come from deploy/mosquitto (site: passwords, ACL, `set_tcp_nodelay true`; district: mutual TLS) through
lifeline/virtual/site.py, and the gateway runs as `lifeline gateway --config site.toml` with the config that kit
writes. The load generator (lifeline/virtual/loadgen.py) publishes pre-sealed QoS 1 data messages of three readings from
many devices, as a `loadgen` user the benchmark adds to the site broker's password file and ACL (one connection
per worker process instead of one per device, so the generator is not the bottleneck). Phases:

1. bridge: the load into a second site broker with the same config plus a QoS 1 TLS bridge to the district;
2. gateway: the same load into the gateway's site broker, counted at the district inside the telemetry packs;
3. alarms: one gas device alternating above red and below blue's clear level (pending turned off for it by a
   per-device override) while the gateway carries a paced background load; latency is host publish time to
   district receipt of the transition;
4. over an emulated district link (bench/wanlink.py, default 40 ms RTT and 10 Mbit/s each way): first the
   bridge's loopback load through the proxy with no delay or limit (what the proxy itself carries), then
   phases 1 to 3 again with both the bridge and the gateway reaching the district broker through the link
   (the gateway restarted with its district port moved to the link's, nothing else changed);
5. at scale (issue 20): a second site with many more registered devices (default 50,000, listed in its
   devices.csv: [site] devices_file), the gateway alone, on loopback: its resident memory once started
   (every device registered, none heard), after every device has sent a few messages (each then has its
   per-device state), its peak, and alarm latency at the same background rate; then a new gateway on the same
   store (a restart, every device's state in it), its memory once started and its peak after every device
   has sent once more.

Throughput is device messages after de-duplication by (dev, seq), from the generator's release to the district's
receipt of the last new one. The gateway's peak RSS is VmHWM, and each process's CPU time, from /proc
(bench/procmeter.py); the JSON, the tables and the block of docs/performance.md are bench/report.py's. Nothing
here asserts speed; the smoke test (tests/test_bench_smoke.py) runs --quick and checks completeness only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench import report
from bench.procmeter import CpuMeter, broker_pid, proc_status
from bench.wanlink import LinkSpec, WanLink
from lifeline import site_auth
from lifeline.virtual import wire
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.loadgen import Generator, Load, device_id, device_key
from lifeline.virtual.recorder import CountingRecorder
from lifeline.virtual.site import DEPLOY, Device, GatewayProcess, Site, adapt, metrics, reading
from protocol import district as dtopics
from protocol import topics

SITE = "bench"
ALARM_DEV = "bench-alarm"
LOADGEN_USER = "loadgen"
RED = 60.0  # above gas.ch4's red level (50 %LEL)
CLEAR = 5.0  # below blue's clear level (8 %LEL), so each such reading clears the alarm
# Issue 20's targets: on loopback the gateway at half the bridge's rate, over the emulated link at least its rate.
TARGETS = {"ratio": 0.5, "cpu_us": 35.0, "alarm_p99_ms": 50.0, "rss_mb": 60.0}
LINK_TARGETS = {**TARGETS, "ratio": 1.0}
SCALE_TARGETS = {"alarm_p99_ms": 50.0, "rss_mb": 60.0}  # issue 20, with 50,000 registered devices


@dataclass(frozen=True)
class Sizes:
    devices: int
    messages: int  # per device, in the throughput phases
    workers: int
    alarm_samples: int
    alarm_interval_s: float
    background_rate: float  # device messages/s through the gateway during the alarm phase
    rounds: int  # bridge and gateway phases alternate this many times; the median round is reported
    link_messages: int  # per device, in the throughput phases over the emulated link
    link_rounds: int  # 0: no link scenario
    scale_devices: int  # registered devices in the scale scenario; 0: none
    scale_messages: int  # per device, in its throughput phase
    check_processes: int = 0  # the gateway's [ingest] check_processes (gateway/check_stage.py)


FULL = Sizes(devices=200, messages=500, workers=2, alarm_samples=300, alarm_interval_s=0.1, background_rate=1000,
             rounds=3, link_messages=300, link_rounds=3, scale_devices=50_000, scale_messages=4)
QUICK = Sizes(devices=20, messages=40, workers=2, alarm_samples=20, alarm_interval_s=0.05, background_rate=1000,
              rounds=1, link_messages=40, link_rounds=1, scale_devices=0, scale_messages=2)
SLOW_COMMIT_S = 0.025  # a bound of gateway.metrics.COMMIT_BUCKETS: a store commit this slow delays an alarm visibly
CHECK = "check process "  # the CPU meter's name for the gateway's check processes, numbered from 1


class Tally:
    """Distinct (dev, seq) seen at the district, and the upstream bytes (topic + payload) that carried them;
    called from one recorder thread."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.last_new = 0.0
        self.bytes = 0

    def add(self, dev: str, seq: int) -> int:
        if (dev, seq) in self.seen:
            self.duplicates += 1
            return 0
        self.seen.add((dev, seq))
        self.last_new = time.monotonic()
        return 1

    def count_telemetry(self, topic: str, payload: bytes) -> int:
        # The alarm device's own readings travel as telemetry too; they are not part of the counted load.
        self.bytes += len(topic) + len(payload)
        return sum(self.add(p["dev"], p["seq"]) for p in cbor2.loads(payload)["packs"] if p["dev"] != ALARM_DEV)

    def count_bridged(self, topic: str, payload: bytes) -> int:
        """A device message as the bridge forwards it: COSE_Mac0 (tag 17) around the CBOR body; the device is
        the envelope's key id."""
        if f"/{ALARM_DEV}/" in topic:
            return 0  # wait_bridge's probes
        self.bytes += len(topic) + len(payload)
        _, unprotected, body, _ = cbor2.loads(payload).value
        return self.add(unprotected[4].decode(), cbor2.loads(body)["seq"])


class Confirmed:
    """When each device's commit confirmation (retained, on its done topic at the site broker) first covered a
    sequence number: the nodes keep a message in flash until then, and re-send what stays unconfirmed for 30 s
    (firmware/lib/app/runtime.py), so a site that confirms slowly under load invites a storm of re-sends."""

    def __init__(self, host: str, port: int, auth: tuple[str, str]) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self._tops: dict[str, list[tuple[int, float]]] = {}  # dev -> (newest confirmed number, when) in turn
        self._sub = wire.Subscriber(host, port, f"bench-done-{time.time_ns()}",
                                    f"{topics.ROOT}/{SITE}/+/{topics.DONE}", self._on_message, auth)
        self.subscribed = self._sub.subscribed

    def _on_message(self, topic: str, payload: bytes) -> None:
        dev = topic.split("/")[3]
        ranges = topics.done_ranges(payload)
        if ranges:
            with self._lock:
                self.received += 1
                self._tops.setdefault(dev, []).append((ranges[-1][1], time.monotonic()))

    def all_by(self, devs: list[str], seq: int, timeout: float) -> float | None:
        """The monotonic time by which every one of `devs` was confirmed up to `seq`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                firsts = [next((t for top, t in self._tops.get(d, []) if top >= seq), None) for d in devs]
            if all(t is not None for t in firsts):
                return max(t for t in firsts if t is not None)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        self._sub.close()


class AlarmProbe:
    """Publish times of the alarm device's readings, matched to the transitions the district receives.

    Besides the end-to-end latency (monotonic clock), the wall clock splits it at the transition's `t_gw`,
    the time the gateway took the message off the site connection: before it is the site broker and the
    wait for the gateway's loop, after it the checks, the commit, the outbox and the uplink."""

    def __init__(self) -> None:
        self.published: dict[float, tuple[float, float]] = {}  # reading -> (monotonic, wall) publish time
        self.latency_s: dict[float, float] = {}
        self.to_gateway_s: list[float] = []
        self.from_gateway_s: list[float] = []
        self.events: list[str] = []
        self.repeats = 0
        self.others = 0  # alarms of other devices (none expected)
        self._lock = threading.Lock()

    def on_alarm(self, topic: str, payload: bytes, now: float) -> None:
        wall = time.time()
        body = cbor2.loads(payload)
        with self._lock:
            if body.get("dev") != ALARM_DEV:
                self.others += 1
                return
            key = _key(body["reading"])
            sent = self.published.get(key)
            if sent is None or key in self.latency_s:
                self.repeats += 1
                return
            self.latency_s[key] = now - sent[0]
            self.to_gateway_s.append(body["t_gw"] - sent[1])
            self.from_gateway_s.append(wall - body["t_gw"])
            self.events.append(body["ev"])

    def sent(self, value: float) -> None:
        with self._lock:
            self.published[_key(value)] = (time.monotonic(), time.time())


def _key(value: float) -> float:
    return round(float(value), 4)


def _count_alarm(topic: str, payload: bytes) -> int:
    return 1


# ------------------------------------------------------------------------------------------ set-up


def build_site(workdir: Path, sizes: Sizes, devices_csv: bool = False) -> tuple[Site, str]:
    """Both brokers from the deploy configs, the load devices registered with the generator's keys (in
    devices.csv with `devices_csv`, as a large site has them), and a login for the generator; returns the
    site and that login's password."""
    site = Site(workdir, SITE, tls=True, devices_csv=devices_csv, metrics=True, extra_toml=(
        f"[ingest]\ncheck_processes = {sizes.check_processes}\n\n"
        f"[rules.overrides.gas.devices.{ALARM_DEV}.ch4]\nfor_samples = 1\n"))
    for i in range(sizes.devices):
        site.devices[device_id(i)] = Device(device_id(i), "gas", device_key(i))
    site.add(ALARM_DEV, "gas")
    site.start()
    password = os.urandom(12).hex()
    auth = workdir / "auth"
    subprocess.run([site_auth.mosquitto_passwd(), "-b", str(auth / "passwd"), LOADGEN_USER, password], check=True)
    with (auth / "acl").open("a") as acl:
        acl.write(f"\n# benchmark load generator: publishes for every device, reads their confirmations\n"
                  f"user {LOADGEN_USER}\ntopic write {topics.ROOT}/{SITE}/+/{topics.DATA}\n"
                  f"topic read {topics.ROOT}/{SITE}/+/{topics.DONE}\n")
    assert site.site_broker is not None and site.site_broker.proc is not None
    site.site_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads password_file and acl_file
    wait_login(site.site_broker.port, LOADGEN_USER, password)
    return site, password


def wait_login(port: int, user: str, password: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{time.time_ns()}")
        client.username_pw_set(user, password)
        result: list[bool] = []

        def on_connect(c: paho.Client, u: object, f: object, rc: Any, p: object, result: list[bool] = result) -> None:
            result.append(not rc.is_failure)

        client.on_connect = on_connect
        client.connect("127.0.0.1", port)
        end = time.monotonic() + 2
        while not result and time.monotonic() < end:
            client.loop(0.05)
        client.disconnect()
        if result and result[0]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user} cannot log in to the broker on port {port}")
        time.sleep(0.1)


def bridge_broker(site: Site, district_port: int, name: str) -> Mosquitto:
    """A site broker with the deploy config and the same password file and ACL, bridging every device's
    data topic to the district (QoS 1, mutual TLS as the site, under the site's uplink prefix). Nothing else
    is set for the bridge: Mosquitto's defaults, and the deploy config's global limits, apply to it."""
    auth = site.dir / "auth"
    files = {"passwd": auth / "passwd", "acl": auth / "acl", "server.crt": site.pki["server.crt"],
             "server.key": site.pki["server.key"], "ca.crt": site.pki["ca"]}
    conf = adapt((DEPLOY / "site.conf").read_text(), {"8883": free_port()}, files)
    conf += (f"\nconnection {name}\naddress 127.0.0.1:{district_port}\n"
             f"topic +/{topics.DATA} out 1 {topics.ROOT}/{SITE}/ {bridge_prefix()}\n"
             f"bridge_cafile {site.pki['ca']}\nbridge_certfile {site.pki[SITE + '.crt']}\n"
             f"bridge_keyfile {site.pki[SITE + '.key']}\nnotifications false\ncleansession true\n")
    return Mosquitto(conf, workdir=site.dir / name, anonymous=False).start()


def bridge_prefix() -> str:
    """Where the bridge puts device messages: under the site's uplink, which the district ACL lets it write."""
    return f"{dtopics.ROOT}/{SITE}/up/bridge/"


# ------------------------------------------------------------------------------------------ measuring


def gateway_progress(label: str, rss: Callable[[], float | None] | None) -> report.Progress:
    """report.Progress with the gateway's RSS on each line."""
    def mem() -> str:
        mb = rss() if rss else None
        return f", gateway RSS {mb:.0f} MB" if mb is not None else ""
    return report.Progress(label, extra=mem)


def wait_count(tally: Tally, before: int, total: int, timeout: float, progress: report.Progress) -> bool:
    """Poll until `total` more than `before` reached the district."""
    deadline = time.monotonic() + timeout
    while len(tally.seen) < before + total:
        if time.monotonic() > deadline:
            progress.show(len(tally.seen) - before, total, "at the district", force=True)
            return False
        progress.show(len(tally.seen) - before, total, "at the district")
        time.sleep(0.02)
    progress.show(len(tally.seen) - before, total, "at the district", force=True)
    return True


def timeout_for(n: int) -> float:
    return 60.0 + n / 500.0


def throughput(label: str, port: int, auth: tuple[str, str], load: Load, tally: Tally, procs: dict[str, int],
               rss: Callable[[], float | None] | None = None, link: WanLink | None = None) -> dict[str, Any]:
    """Run one load to the end; device messages per second from the release to the last new arrival."""
    total = load.devices * load.messages_per_device
    before, bytes_before = len(tally.seen), tally.bytes
    link_before = link.stats()["bytes"] if link else None
    gen = Generator(load, "127.0.0.1", port, auth)
    released = gen.go()
    meter = CpuMeter(procs)
    print(f"  [{label}] {total:,} messages released", file=sys.stderr, flush=True)
    complete = wait_count(tally, before, total, timeout_for(total), gateway_progress(label, rss))
    usage = meter.stop()
    published, first, last = gen.join()
    usage["cpu_s"]["load generator"] = round(gen.cpu_s, 2)
    got = len(tally.seen) - before
    seconds = tally.last_new - released
    out = {"device_messages": total, "site_acked": published, "received": got, "lost": total - got,
           "complete": complete, "seconds": round(seconds, 3), "msgs_per_s": round(got / seconds, 1),
           "site_publish_msgs_per_s": round(published / (last - first), 1),
           "upstream_bytes_per_msg": round((tally.bytes - bytes_before) / max(got, 1), 1),
           **usage}
    if link is not None and link_before is not None:
        # Everything that crossed the link in this phase (MQTT framing, TLS records, PUBACKs, pings).
        crossed = {d: link.stats()["bytes"][d] - link_before[d] for d in ("up", "down")}
        out["link_bytes_per_msg"] = {d: round(n / max(got, 1), 1) for d, n in crossed.items()}
        out["link_up_mbit_s"] = round(crossed["up"] * 8 / usage["wall_s"] / 1e6, 2)
    return out


def per_commit(run_: dict[str, Any], commits: float) -> float:
    """Device messages a store commit: the ingest's batch size, which sets what the commit and the per-device
    state written with it cost a message (the in-process figure, bench/ingest_cpu.py, takes batches of 500)."""
    return round(int(run_["received"]) / max(commits, 1), 1)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def store_commits(site: Site) -> tuple[float, float]:
    """The gateway's store commits so far, and how many of them took longer than SLOW_COMMIT_S (its histogram
    `lifeline_store_commit_seconds`): a commit waiting on the disk holds up every alarm behind it."""
    buckets = {x.labels["le"]: x.value for x in metrics(site.metrics_port)
               if x.name == "lifeline_store_commit_seconds_bucket"}
    if not buckets:
        return 0.0, 0.0
    return buckets["+Inf"], buckets["+Inf"] - buckets[str(SLOW_COMMIT_S)]


def alarm_phase(site: Site, sizes: Sizes, first_seq: int, start_time: float, auth: tuple[str, str], tally: Tally,
                probe: AlarmProbe, rss: Callable[[], float | None], gateway: dict[str, int]) -> dict[str, Any]:
    """Background load through the gateway while the alarm device flips between red and clear. `gateway`: its
    processes, whose CPU the phase reports a message: at this light load a batch holds about one message, and
    a message costs several times what it does at full load (docs/performance.md, "Light load")."""
    assert site.site_broker is not None
    warmup_s = 1.0
    span = warmup_s + sizes.alarm_samples * sizes.alarm_interval_s + 1.0
    per_device = max(1, math.ceil(sizes.background_rate * span / sizes.devices))
    load = Load(SITE, sizes.devices, per_device, sizes.background_rate, sizes.workers,
                start_time=start_time, first_seq=first_seq)
    total = sizes.devices * per_device
    before = len(tally.seen)
    dev = site.devices[ALARM_DEV]
    commits_before, slow_before = store_commits(site)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{ALARM_DEV}")
    client.username_pw_set(ALARM_DEV, dev.password)
    client.connect("127.0.0.1", site.site_broker.port)
    client.loop_start()
    gen = Generator(load, "127.0.0.1", site.site_broker.port, auth)
    meter = CpuMeter(gateway)
    released = gen.go()
    print(f"  [alarms] background {sizes.background_rate:,.0f} msg/s for {span:.0f} s, {sizes.alarm_samples} "
          f"alarm readings every {sizes.alarm_interval_s * 1000:.0f} ms", file=sys.stderr, flush=True)
    alarms = gateway_progress("alarms", rss)
    for k in range(sizes.alarm_samples):
        value = RED + k / 1000 if k % 2 == 0 else CLEAR - k / 10000
        topic, payload, _ = site.data(ALARM_DEV, [reading("ch4", value, "%LEL")])
        at = released + warmup_s + k * sizes.alarm_interval_s
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        probe.sent(value)
        client.publish(topic, payload, qos=1)
        alarms.show(len(probe.latency_s), sizes.alarm_samples, "at the district")
    deadline = time.monotonic() + 10
    while len(probe.latency_s) < sizes.alarm_samples and time.monotonic() < deadline:
        time.sleep(0.02)
    complete = wait_count(tally, before, total, timeout_for(total), gateway_progress("background", rss))
    published, first, last = gen.join()
    cpu_s = sum(meter.stop()["cpu_s"].values())
    client.loop_stop()
    client.disconnect()
    commits_after, slow_after = store_commits(site)
    commits = commits_after - commits_before
    lat_ms = [s * 1000 for s in probe.latency_s.values()]
    got = len(tally.seen) - before
    messages = got + len(lat_ms)
    return {"samples": sizes.alarm_samples, "received": len(lat_ms), "lost": sizes.alarm_samples - len(lat_ms),
            "p50_ms": round(percentile(lat_ms, 50), 2) if lat_ms else None,
            "p99_ms": round(percentile(lat_ms, 99), 2) if lat_ms else None,
            "max_ms": round(max(lat_ms), 2) if lat_ms else None,
            "split_p50_p99_ms": {part: [round(percentile(v, 50) * 1000, 2), round(percentile(v, 99) * 1000, 2)]
                                 for part, v in (("publish_to_gateway", probe.to_gateway_s),
                                                 ("gateway_to_district", probe.from_gateway_s)) if v},
            "events": {ev: probe.events.count(ev) for ev in sorted(set(probe.events))},
            "repeats": probe.repeats, "other_alarms": probe.others,
            "store_commits": {"all": commits, "slow": slow_after - slow_before,
                              "slow_over_s": SLOW_COMMIT_S},
            "gateway_cpu_us_per_msg": round(cpu_s / max(messages, 1) * 1e6, 1),
            "msgs_per_commit": round(messages / max(commits, 1), 2),
            "background": {"target_msgs_per_s": sizes.background_rate, "messages_per_device": per_device,
                           "achieved_msgs_per_s": round(published / (last - first), 1),
                           "device_messages": total, "received": got, "lost": total - got, "complete": complete}}


# ------------------------------------------------------------------------------------------ the run


def summary(runs: list[dict[str, Any]], tally: Tally) -> dict[str, Any]:
    """The median round's figures, with every round's rate and the totals over all rounds."""
    median = sorted(runs, key=lambda r: r["msgs_per_s"])[len(runs) // 2]
    out = dict(median)
    out.update(rounds=[r["msgs_per_s"] for r in runs], device_messages_total=sum(r["device_messages"] for r in runs),
               lost_total=sum(r["lost"] for r in runs), duplicates=tally.duplicates)
    return out


class Rig:
    """What the phases of one run share: the site, the district recorders and the devices' next sequence
    number (each load continues it, so the gateway never drops a repeat as a duplicate)."""

    def __init__(self, site: Site, sizes: Sizes, auth: tuple[str, str], stack: contextlib.ExitStack,
                 gateway_cpu: int | None = None) -> None:
        assert site.district_broker is not None
        self.site, self.sizes, self.auth, self.stack = site, sizes, auth, stack
        self.gateway_cpu = gateway_cpu
        self.gateway_cpus: list[int] = []  # as the kernel reports the gateway's affinity, once it ran
        self.next_seq = 1
        # Reading times a day back (trusted by the clock check) that rise with the sequence number through
        # every phase: the alarm engine skips a reading older than one it has judged, and every phase's
        # readings must cost it the same work.
        self.time_base = time.time() - 86400
        self.bridged, self.telemetry, self.probe = Tally(), Tally(), AlarmProbe()
        district = ("127.0.0.1", site.district_broker.port)
        district_auth = ("district", site.district_password)
        self.recorders = [
            CountingRecorder(*district, bridge_prefix() + "#", self.bridged.count_bridged, auth=district_auth),
            CountingRecorder(*district, dtopics.up(SITE, dtopics.TELEMETRY), self.telemetry.count_telemetry,
                     auth=district_auth),
            CountingRecorder(*district, dtopics.up(SITE, dtopics.ALARM), _count_alarm,
                     lambda t, p, now: self.probe.on_alarm(t, p, now), auth=district_auth)]
        for r in self.recorders:
            stack.callback(r.close)
            r.subscribed.wait(10)
        assert site.site_broker is not None
        self.confirmed = Confirmed("127.0.0.1", site.site_broker.port, auth)
        stack.callback(self.confirmed.close)
        self.confirmed.subscribed.wait(10)

    def errors(self) -> list[str]:
        return [e for r in self.recorders for e in r.errors]

    def load(self, messages: int) -> Load:
        load = Load(SITE, self.sizes.devices, messages, 0, self.sizes.workers, start_time=self.time_base,
                    first_seq=self.next_seq)
        self.next_seq += messages
        return load

    def bridge(self, district_port: int, name: str) -> Mosquitto:
        bridge = bridge_broker(self.site, district_port, name)
        self.stack.callback(bridge.stop)
        wait_bridge(bridge, self.site)
        return bridge

    def gateway(self) -> GatewayProcess:
        gateway = GatewayProcess(self.site, cpu=self.gateway_cpu).start()
        self.stack.callback(gateway.kill)
        asyncio.run(gateway.ready())
        assert gateway.proc is not None
        self.gateway_cpus = sorted(os.sched_getaffinity(gateway.proc.pid))
        return gateway

    def procs(self, **named: int) -> dict[str, int]:
        assert self.site.district_broker is not None
        return {**named, "district broker": broker_pid(self.site.district_broker), "bench (recorders)": os.getpid()}

    def rounds(self, n: int, messages: int, bridge: Mosquitto, gateway: GatewayProcess, tag: str = "",
               link: WanLink | None = None,
               profile: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Bridge and gateway phases alternating n times on the same load size."""
        assert gateway.proc is not None and self.site.site_broker is not None
        pid = gateway.proc.pid
        extra = {"wan link": link.pid} if link else {}
        bridge_procs = self.procs(**{"site broker": broker_pid(bridge)}, **extra)
        gateway_procs = self.procs(**gateway_pids(gateway), **{"site broker": broker_pid(self.site.site_broker)},
                                   **extra)
        bridge_runs, gateway_runs = [], []
        for i in range(n):
            load = self.load(messages)
            say(f"round {i + 1}/{n}{tag}: plain Mosquitto bridge, site -> district")
            bridge_runs.append(throughput("bridge" + tag, bridge.port, self.auth, load, self.bridged, bridge_procs,
                                          link=link))
            say(f"round {i + 1}/{n}{tag}: the gateway")
            spy = start_profile(pid, profile) if profile and i == 0 else None
            upstream_before, done_before = self.recorders[1].mqtt_messages, self.confirmed.received
            commits_before = store_commits(self.site)[0]
            gateway_runs.append(throughput("gateway" + tag, self.site.site_broker.port, self.auth, load,
                                           self.telemetry, gateway_procs, gateway_rss(gateway_pids(gateway)), link))
            gateway_runs[-1]["upstream_publishes"] = self.recorders[1].mqtt_messages - upstream_before
            commits = store_commits(self.site)[0] - commits_before
            gateway_runs[-1]["msgs_per_commit"] = per_commit(gateway_runs[-1], commits)
            gateway_runs[-1].update(self.confirmations(load, done_before))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        for g in gateway_runs:
            add_gateway_cpu(g)
        for b in bridge_runs:
            b["brokers_cpu_us_per_msg"] = round(
                (b["cpu_s"]["site broker"] + b["cpu_s"]["district broker"]) / max(b["received"], 1) * 1e6, 1)
        return bridge_runs, gateway_runs

    def confirmations(self, load: Load, received_before: int) -> dict[str, Any]:
        """How long after the round's last message reached the district every device had its confirmation,
        and how many confirmations the round took."""
        top = load.first_seq + load.messages_per_device - 1
        by = self.confirmed.all_by([device_id(i) for i in range(load.devices)], top, 60.0)
        return {"confirmed_all_after_s": None if by is None else round(max(0.0, by - self.telemetry.last_new), 2),
                "confirmations": self.confirmed.received - received_before}

    def alarms(self, gateway: GatewayProcess, tag: str = "") -> dict[str, Any]:
        self.probe = AlarmProbe()  # the same readings recur in each alarm phase
        say(f"alarm latency under background load{tag}")
        pids = gateway_pids(gateway)
        result = alarm_phase(self.site, self.sizes, self.next_seq, self.time_base, self.auth, self.telemetry,
                             self.probe, gateway_rss(pids), pids)
        self.next_seq += result["background"]["messages_per_device"]
        return result

    def compare(self, bridge_runs: list[dict[str, Any]], gateway_runs: list[dict[str, Any]],
                alarm: dict[str, Any], memory: dict[str, float], exit_code: int,
                targets: dict[str, float]) -> dict[str, Any]:
        """One scenario's figures and which targets they meet."""
        bridge, gateway = summary(bridge_runs, self.bridged), summary(gateway_runs, self.telemetry)
        ratio = gateway["msgs_per_s"] / bridge["msgs_per_s"]
        rss = {"peak_mb": round(memory.get("VmHWM", 0.0), 1), "end_mb": round(memory.get("VmRSS", 0.0), 1),
               "end_pss_mb": round(memory.get("Pss", 0.0), 1)}
        return {"bridge": bridge, "gateway": gateway, "ratio": round(ratio, 3), "alarm": alarm, "rss": rss,
                "check_processes": self.sizes.check_processes,
                "gateway_exit_code": exit_code, "targets": targets,
                "met": {"ratio": ratio >= targets["ratio"],
                        "cpu": gateway["gateway_cpu_us_per_msg"] <= targets["cpu_us"],
                        "alarm_p99": alarm["p99_ms"] is not None and alarm["p99_ms"] <= targets["alarm_p99_ms"],
                        "rss": rss["peak_mb"] <= targets["rss_mb"]}}


def gateway_pids(gateway: GatewayProcess) -> dict[str, int]:
    """The gateway's processes by the CPU meter's names: the daemon, and its check processes if it has any."""
    assert gateway.proc is not None
    pid = gateway.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    checks = [c for c in children if "gateway.check_worker" in Path(f"/proc/{c}/cmdline").read_text()]
    return {"gateway": pid, **{f"{CHECK}{i + 1}": int(c) for i, c in enumerate(checks)}}


def gateway_memory(pids: dict[str, int]) -> dict[str, float]:
    """VmRSS and VmHWM summed over the gateway's processes (pages a child shares count twice: an upper bound)."""
    out: dict[str, float] = {}
    for pid in pids.values():
        for key, mb in proc_status(pid).items():
            out[key] = out.get(key, 0.0) + mb
    return out


def gateway_rss(pids: dict[str, int]) -> Callable[[], float | None]:
    return lambda: gateway_memory(pids).get("VmRSS")


def add_gateway_cpu(run_: dict[str, Any]) -> None:
    """CPU a message of all the gateway's processes, how busy that kept them, and the daemon's own share."""
    cpu = run_["cpu_s"]
    total = sum(v for k, v in cpu.items() if k == "gateway" or k.startswith(CHECK))
    received = max(run_["received"], 1)
    run_["gateway_cpu_us_per_msg"] = round(total / received * 1e6, 1)
    run_["gateway_cpu_busy"] = round(total / run_["wall_s"], 2)
    if any(k.startswith(CHECK) for k in cpu):
        run_["ingest_cpu_us_per_msg"] = round(cpu["gateway"] / received * 1e6, 1)
        run_["ingest_cpu_busy"] = round(cpu["gateway"] / run_["wall_s"], 2)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def stop_gateway(gateway: GatewayProcess) -> tuple[dict[str, float], int]:
    """Peak memory, then SIGTERM (drain) and the exit code."""
    memory = gateway_memory(gateway_pids(gateway))
    gateway.signal(signal.SIGTERM)
    return memory, asyncio.run(gateway.wait())


def route_gateway(site: Site, port: int) -> None:
    """Point the gateway's site.toml at another district port (the link's near end); nothing else changes."""
    text = site.config_path.read_text()
    old = f'[district_broker]\nhost = "127.0.0.1"\nport = {site.ports["district_tls"]}\n'
    if text.count(old) != 1:
        raise RuntimeError(f"site.toml has no single district_broker port to re-route:\n{text}")
    site.config_path.write_text(text.replace(old, f'[district_broker]\nhost = "127.0.0.1"\nport = {port}\n'))


def run(sizes: Sizes, spec: LinkSpec, workdir: Path, profile: Path | None = None,
        profile_link: Path | None = None, gateway_cpu: int | None = None) -> dict[str, Any]:
    say(f"setting up brokers, certificates and {sizes.devices} device logins in {workdir}")
    site, password = build_site(workdir, sizes)
    with contextlib.ExitStack() as stack:
        stack.callback(site.stop)
        bench = Rig(site, sizes, (LOADGEN_USER, password), stack, gateway_cpu)
        district_port = site.ports["district_tls"]

        # Loopback: both go straight to the district broker.
        bridge = bench.bridge(district_port, "bench-bridge")
        gateway = bench.gateway()
        runs = bench.rounds(sizes.rounds, sizes.messages, bridge, gateway, profile=profile)
        bridge.stop()
        alarm = bench.alarms(gateway)
        loopback = bench.compare(*runs, alarm, *stop_gateway(gateway), TARGETS)

        link_result: dict[str, Any] | None = None
        if sizes.link_rounds:
            link_result = over_link(bench, spec, district_port, profile_link)
        errors = bench.errors()
    result = {"sizes": asdict(sizes), **loopback, "recorder_errors": errors[:20],
              "cpus": {"gateway": bench.gateway_cpus, "the rest": sorted(os.sched_getaffinity(0))}}
    if link_result is not None:
        result["link"] = link_result
    if sizes.scale_devices:
        result["scale"] = at_scale(sizes, workdir / "scale", gateway_cpu)
    return result


def at_scale(sizes: Sizes, workdir: Path, gateway_cpu: int | None = None) -> dict[str, Any]:
    """The gateway alone on loopback with `scale_devices` registered: memory once started (registered, none
    heard), after each device has sent `scale_messages` (each then has its per-device state), the peak, CPU
    per message and alarm latency at the same background rate. A site of its own (brokers, logins, a
    devices.csv of that many devices, as a large site keeps them); no bridge: the comparison with it is the
    200-device run's."""
    big = replace(sizes, devices=sizes.scale_devices)
    say(f"at scale: a site of {big.devices:,} registered devices, the gateway alone")
    site, password = build_site(workdir, big, devices_csv=True)
    with contextlib.ExitStack() as stack:
        stack.callback(site.stop)
        rig = Rig(site, big, (LOADGEN_USER, password), stack, gateway_cpu)
        assert site.site_broker is not None
        began = time.monotonic()
        gateway = rig.gateway()
        ready_s = time.monotonic() - began
        pids = gateway_pids(gateway)
        registered = gateway_memory(pids)
        tag = f" ({big.devices:,} devices)"
        say(f"throughput{tag}: every device sends {sizes.scale_messages}")
        load, done_before = rig.load(sizes.scale_messages), rig.confirmed.received
        commits_before = store_commits(site)[0]
        run_ = throughput("gateway" + tag, site.site_broker.port, rig.auth, load, rig.telemetry,
                          rig.procs(**pids, **{"site broker": broker_pid(site.site_broker)}), gateway_rss(pids))
        run_["msgs_per_commit"] = per_commit(run_, store_commits(site)[0] - commits_before)
        run_.update(rig.confirmations(load, done_before))
        add_gateway_cpu(run_)
        heard = gateway_memory(pids)
        alarm = rig.alarms(gateway, tag)
        memory, code = stop_gateway(gateway)
        # A site's gateway is restarted with every device in its store (the alarm engine reads them all back)
        say(f"restart{tag}: a new gateway on the same store, every device sends once more")
        again = rig.gateway()
        again_pids = gateway_pids(again)
        restarted = gateway_memory(again_pids)
        rerun = throughput("gateway, restarted" + tag, site.site_broker.port, rig.auth, rig.load(1), rig.telemetry,
                           rig.procs(**again_pids, **{"site broker": broker_pid(site.site_broker)}),
                           gateway_rss(again_pids))
        memory_again, code_again = stop_gateway(again)
        errors = rig.errors()
    rss = {"registered_mb": round(registered.get("VmRSS", 0.0), 1),
           "registered_peak_mb": round(registered.get("VmHWM", 0.0), 1),
           "heard_mb": round(heard.get("VmRSS", 0.0), 1), "peak_mb": round(memory.get("VmHWM", 0.0), 1),
           "end_mb": round(memory.get("VmRSS", 0.0), 1), "end_pss_mb": round(memory.get("Pss", 0.0), 1),
           "restarted_mb": round(restarted.get("VmRSS", 0.0), 1),
           "restarted_peak_mb": round(memory_again.get("VmHWM", 0.0), 1)}
    return {"devices": big.devices, "messages_per_device": sizes.scale_messages, "ready_s": round(ready_s, 2),
            "check_processes": sizes.check_processes,
            "gateway": run_, "restarted": rerun, "alarm": alarm, "rss": rss, "gateway_exit_code": code or code_again,
            "recorder_errors": errors[:20], "targets": SCALE_TARGETS,
            "met": {"alarm_p99": alarm["p99_ms"] is not None and alarm["p99_ms"] <= SCALE_TARGETS["alarm_p99_ms"],
                    "rss": max(rss["peak_mb"], rss["restarted_peak_mb"]) <= SCALE_TARGETS["rss_mb"]}}


def over_link(bench: Rig, spec: LinkSpec, district_port: int, profile: Path | None = None) -> dict[str, Any]:
    """The same comparison with both the bridge and the gateway reaching the district through one emulated
    WAN link, after a pass-through round that shows what the proxy itself carries."""
    sizes, stack = bench.sizes, bench.stack
    target = ("127.0.0.1", district_port)
    say("pass-through proxy (no delay, no limit): the bridge's loopback load through bench/wanlink.py")
    with WanLink(target, LinkSpec(0.0, 0.0, 0.0)) as plain:
        bridge = bench.bridge(plain.port, "bench-bridge-plain")
        procs = bench.procs(**{"site broker": broker_pid(bridge), "wan link": plain.pid})
        passed = throughput("bridge, pass-through", bridge.port, bench.auth, bench.load(sizes.messages),
                            bench.bridged, procs, link=plain)
        bridge.stop()
    passed["wanlink_cpu_us_per_msg"] = round(passed["cpu_s"]["wan link"] / max(passed["received"], 1) * 1e6, 1)

    link = stack.enter_context(WanLink(target, spec))
    say(f"over an emulated district link: {spec.describe()}")
    route_gateway(bench.site, link.port)
    bridge = bench.bridge(link.port, "bench-bridge-link")
    gateway = bench.gateway()
    runs = bench.rounds(sizes.link_rounds, sizes.link_messages, bridge, gateway, " (link)", link, profile)
    bridge.stop()
    alarm = bench.alarms(gateway, " (link)")
    out = bench.compare(*runs, alarm, *stop_gateway(gateway), LINK_TARGETS)
    return {"spec": {"rtt_ms": spec.delay_s * 2000, "up_mbit_s": spec.up_bps / 1e6,
                     "down_mbit_s": spec.down_bps / 1e6, "burst_bytes": spec.burst_bytes,
                     "queue_bytes": spec.queue_bytes},
            "pass_through": passed, "counters": link.stats(), **out}


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway during the throughput phase, waits included (folded stacks)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--idle",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return proc


def wait_bridge(bridge: Mosquitto, site: Site, timeout: float = 15.0) -> None:
    """The bridge connects in the background: wait until a probe message crosses it."""
    assert site.district_broker is not None
    seen = threading.Event()
    probe_topic = f"{topics.ROOT}/{SITE}/{ALARM_DEV}/{topics.DATA}"
    rec = CountingRecorder("127.0.0.1", site.district_broker.port, bridge_prefix() + f"{ALARM_DEV}/#",
                   lambda t, p: 0, lambda t, p, now: seen.set(), auth=("district", site.district_password))
    try:
        rec.subscribed.wait(10)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{time.time_ns()}")
        client.username_pw_set(ALARM_DEV, site.devices[ALARM_DEV].password)
        client.connect("127.0.0.1", bridge.port)
        client.loop_start()
        deadline = time.monotonic() + timeout
        while not seen.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge did not connect to the district broker:\n"
                                   + bridge.log_path.read_text(errors="replace")[-2000:])
            client.publish(probe_topic, b"bridge probe", qos=1)
            seen.wait(0.3)
        client.loop_stop()
        client.disconnect()
    finally:
        rec.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds of load)")
    for name, kind, what in (("devices", int, "devices publishing"),
                             ("messages", int, "messages per device in each throughput phase"),
                             ("workers", int, "load generator processes"),
                             ("alarm_samples", int, "alarm readings"),
                             ("alarm_interval_s", float, "seconds between alarm readings"),
                             ("background_rate", float, "messages/s of background load in the alarm phase"),
                             ("rounds", int, "bridge and gateway phases, alternating; the median is reported"),
                             ("link_messages", int, "messages per device in each phase over the emulated link"),
                             ("link_rounds", int, "rounds over the emulated link (0: none)"),
                             ("scale_devices", int, "registered devices in the scale scenario (0: none)"),
                             ("scale_messages", int, "messages per device in the scale scenario"),
                             ("check_processes", int, "the gateway's [ingest] check_processes")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                            help=f"{what} (default {getattr(FULL, name):g}, --quick {getattr(QUICK, name):g})")
    link = LinkSpec()
    parser.add_argument("--delay-ms", type=float, default=link.delay_s * 1000,
                        help="the emulated link's one-way delay, each direction (default %(default)g)")
    parser.add_argument("--up-mbit", type=float, default=link.up_bps / 1e6,
                        help="its rate site -> district, Mbit/s; 0: unlimited (default %(default)g)")
    parser.add_argument("--down-mbit", type=float, default=link.down_bps / 1e6,
                        help="its rate district -> site, Mbit/s; 0: unlimited (default %(default)g)")
    parser.add_argument("--json", type=Path, default=report.RESULTS / "gateway_throughput.json")
    parser.add_argument("--doc", type=Path, default=report.ROOT / "docs" / "performance.md",
                        help="markdown file whose '## Gateway throughput' section gets the table")
    parser.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, store)")
    parser.add_argument("--profile", type=Path, help="py-spy folded stacks of the gateway during phase 2 "
                        "(sampling slows it: such a run does not update the markdown file)")
    parser.add_argument("--profile-link", type=Path, help="the same for its first round over the emulated link")
    parser.add_argument("--gateway-cpu", type=int, help="run the gateway on this CPU alone and everything else "
                        "(brokers, load, recorders) on the others: the gateway's figure per core")
    args = parser.parse_args(argv)
    if args.gateway_cpu is not None:
        cpus = os.sched_getaffinity(0)
        if args.gateway_cpu not in cpus or len(cpus) < 2:
            parser.error(f"--gateway-cpu {args.gateway_cpu}: needs one of {sorted(cpus)} and another CPU besides")
        os.sched_setaffinity(0, cpus - {args.gateway_cpu})  # the brokers and generators started later inherit it
    base = QUICK if args.quick else FULL
    sizes = Sizes(**{name: value if getattr(args, name) is None else getattr(args, name)
                     for name, value in asdict(base).items()})
    spec = LinkSpec(delay_s=args.delay_ms / 1000, up_bps=args.up_mbit * 1e6, down_bps=args.down_mbit * 1e6)
    load_before = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    try:
        result = run(sizes, spec, workdir, args.profile, args.profile_link, args.gateway_cpu)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "gateway_throughput",
              "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": f".venv/bin/python -m bench.gateway_throughput {argv_text}".rstrip(),
              "machine": report.machine(), "load_average_before": load_before, "git": report.git_state(), **result}
    report.save(args.json, result)
    print()
    print(report.table(result))
    if "link" in result:
        print("\n" + "\n".join(report.link_text(result)))
    if "scale" in result:
        print("\n" + "\n".join(report.scale_text(result)))
    print(f"\ngateway on CPU {result['cpus']['gateway']}, the rest on {result['cpus']['the rest']}")
    print(f"JSON: {args.json}")
    if not args.no_doc and not args.profile and not args.profile_link:
        report.write_doc(args.doc, result)
        print(f"table written to {args.doc}")
    lost = sum(x["gateway"]["lost_total"] + x["bridge"]["lost_total"] + x["alarm"]["lost"]
               + x["alarm"]["background"]["lost"] for x in (result, result.get("link") or result))
    lost += result["link"]["pass_through"]["lost"] if "link" in result else 0
    if "scale" in result:
        s = result["scale"]
        lost += s["gateway"]["lost"] + s["restarted"]["lost"] + s["alarm"]["lost"] + s["alarm"]["background"]["lost"]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
