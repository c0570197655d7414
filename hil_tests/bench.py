"""The bench behind the plugin's fixtures: a site (brokers from deploy/mosquitto, the gateway daemon) and
the devices under test, virtual or real, each flashed and provisioned with `lifeline flash`'s code path.

A virtual device starts blank (MicroPython at its REPL on a pty), is flashed through the pty exactly like
a board through its USB-serial adapter, gets sim.json (the world around it) and is reset into the
firmware. A real board is flashed the same way on its serial port and reaches the site broker over the
bench's Wi-Fi at --bench-host. The bench is ready when every device's birth has reached the district.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from lifeline import flash, site_auth, upy
from lifeline.demo import report as demo_report
from lifeline.demo import run as demo
from lifeline.virtual import stimulus
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.device import VirtualDevice
from protocol import district as dtopics

SITE_ID = "bench"
SEED = upy.ROOT / "seeds" / "demo_site.toml"
ONLINE_TIMEOUT_S = 60.0
GATEWAY_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """The bench could not be set up; the message names the part that failed."""


def baselines() -> dict[str, dict[str, Any]]:
    """Quiet readings per device class (the [baseline] tables the demo site uses too)."""
    data = tomllib.loads(SEED.read_text())
    return {cls: dict(chans) for cls, chans in data.get("baseline", {}).items()}


@dataclass(frozen=True)
class DeviceSpec:
    """One --device option: "virtual", or "serial:PORT" with ",key=value" options: profile (default gas),
    id, stim (the stimulus board's serial port) and rig (its rig map, JSON; docs/hil.md)."""

    kind: str
    port: str | None = None
    profile: str = "gas"
    dev_id: str | None = None
    stim: str | None = None
    rig: Path | None = None

    @classmethod
    def parse(cls, text: str) -> DeviceSpec:
        head, *opts = text.split(",")
        if head == "virtual" and not opts:
            return cls("virtual")
        if not head.startswith("serial:") or len(head) == len("serial:"):
            raise ValueError(f"--device {text!r}: expected 'virtual' or 'serial:PORT[,profile=P][,id=ID]"
                             "[,stim=PORT][,rig=FILE]'")
        kw: dict[str, str] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            if not sep or key not in ("profile", "id", "stim", "rig"):
                raise ValueError(f"--device {text!r}: unknown option {opt!r} (profile, id, stim, rig)")
            kw[key] = value
        profile = kw.get("profile", "gas")
        if profile not in flash.PROFILES:
            raise ValueError(f"--device {text!r}: profile {profile!r} is not one of {', '.join(flash.PROFILES)}")
        if ("stim" in kw) != ("rig" in kw):
            raise ValueError(f"--device {text!r}: stim and rig go together")
        return cls("serial", head[len("serial:"):], profile, kw.get("id"), kw.get("stim"),
                   Path(kw["rig"]) if "rig" in kw else None)


@dataclass
class Dut:
    """A device under test as the tests see it."""

    id: str
    profile: str
    spec: DeviceSpec
    key: bytes = field(repr=False)
    password: str = field(default="", repr=False)
    board: VirtualDevice | None = None
    stimulus: stimulus.Stimulus | None = None
    control_port: int | None = None

    @property
    def virtual(self) -> bool:
        return self.board is not None

    @property
    def port(self) -> str:
        """The serial port (a virtual device's pty): what `lifeline flash` and mpremote talk to."""
        if self.board is not None:
            return self.board.port
        assert self.spec.port is not None
        return self.spec.port

    def console(self) -> str:
        return self.board.console().decode(errors="replace") if self.board is not None else ""

    def reset(self) -> None:
        """A reset: the EN line of a virtual board; over the REPL for a real one (Ctrl-C, Ctrl-D)."""
        if self.board is not None:
            self.board.reset()
        else:
            with flash.board(self.port) as b:
                b.reboot()

    def power_cut(self, off_s: float = 0.5) -> None:
        """Power off (SIGKILL on a virtual board, the rig's "power" relay on a real one), then on."""
        if self.board is not None:
            self.board.power_off()
            time.sleep(off_s)
            self.board.power_on()
            return
        if self.stimulus is None:
            raise stimulus.Unsupported(f"{self.id}: no stimulus board to cut the power with")
        self.stimulus.set(power=False)
        time.sleep(off_s)
        self.stimulus.set(power=True)

    def quiet(self) -> None:
        """Back to the baseline between tests: scripted readings, network up, main loop running."""
        if self.board is not None:
            if not self.board.running:
                self.board.power_on()
            assert isinstance(self.stimulus, stimulus.SimStimulus)
            channels = sorted(baselines().get(self.profile, {}))
            self.stimulus.send({"clear": channels, "net": True, "hang": False})
        elif isinstance(self.stimulus, stimulus.SerialStimulus):
            base = baselines().get(self.profile, {})
            self.stimulus.set(**{k: v for k, v in base.items() if k in self.stimulus.rig})
            if "net" in self.stimulus.rig:
                self.stimulus.network(True)


class District:
    """What reached the district broker since `since` (Unix time), with receipt times."""

    def __init__(self, site: Site, since: float) -> None:
        assert site.recorder is not None
        self.site = site
        self.recorder = site.recorder
        self.since = since

    def entries(self, kind: str | None = None, dev: str | None = None) -> list[demo_report.Entry]:
        with self.recorder.lock:
            found = [e for e in self.recorder.log.entries if e.t >= self.since]
        return [e for e in found if (kind is None or e.kind == kind) and (dev is None or _dev_of(e) == dev)]

    def wait_for(self, what: str, pred: Callable[[demo_report.Entry], bool], timeout: float = 20.0,
                 kind: str | None = None, dev: str | None = None) -> demo_report.Entry:
        """The first matching entry, waiting for it; fails naming `what` and the last few arrivals."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.entries(kind, dev):
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                last = [(e.kind, e.body) for e in self.entries()[-6:]]
                raise AssertionError(f"the district did not see {what} within {timeout:.0f} s; last: {last}")
            time.sleep(0.05)

    def birth(self, dev: str, timeout: float = ONLINE_TIMEOUT_S) -> demo_report.Entry:
        return self.wait_for(f"the birth of {dev}", lambda e: e.body.get("st") == "online", timeout,
                             dtopics.UP_STATE, dev)

    def alarms(self, dev: str, rule: str) -> list[demo_report.Entry]:
        """First sendings (not re-sends) of one rule's alarm transitions for a device, in arrival order."""
        return [e for e in self.entries(dtopics.ALARM, dev)
                if e.body.get("rule") == rule and not e.body.get("resend")]

    def seqs(self, dev: str) -> list[int]:
        """Sequence numbers of the device's data and events that reached the district (duplicates kept)."""
        out = [int(p["seq"]) for e in self.entries(dtopics.TELEMETRY)
               for p in e.body.get("packs", ()) if p.get("dev") == dev and p.get("seq") is not None]
        out += [int(e.body["seq"]) for e in self.entries(dtopics.UP_EVENT, dev) if "seq" in e.body]
        return out

    def send(self, kind: str, body: Any) -> None:
        """Publish on the site's downlink as the district application does."""
        from paho.mqtt import publish

        site = self.site
        publish.single(dtopics.down(SITE_ID, kind), cbor2.dumps(body), qos=1, hostname="127.0.0.1",
                       port=site.ports["district"], client_id=f"bench-district-{time.time_ns()}",
                       auth={"username": demo.DISTRICT_USER, "password": site.district_password})


def _dev_of(e: demo_report.Entry) -> str | None:
    body = e.body
    if not isinstance(body, dict):
        return None
    if "dev" in body:
        return str(body["dev"])
    packs = body.get("packs") or [{}]
    dev = packs[0].get("dev")
    return None if dev is None else str(dev)


class Site:
    """Site and district brokers (the shipped configs on loopback ports, with passwords and ACLs), the gateway
    daemon on a generated site.toml, and a district recorder."""

    def __init__(self, workdir: Path, devices: Iterable[Dut], bench_host: str | None = None) -> None:
        self.dir = workdir
        self.devices = list(devices)
        self.bench_host = bench_host
        self.ports = {"site": free_port(), "district": free_port(), "metrics": free_port()}
        self.device_port = free_port() if bench_host else self.ports["site"]
        self.passwords: dict[str, str] = {}
        self.district_password = secrets.token_urlsafe(18)
        self.brokers: list[Mosquitto] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.recorder: demo.Recorder | None = None
        self.log_path = self.dir / "gateway.log"

    @property
    def config_path(self) -> Path:
        return self.dir / "site.toml"

    def write_config(self, gateway_district_password: str) -> Path:
        lines = [
            "# Written by the lifeline bench for one session.",
            f'[site]\nid = "{SITE_ID}"\n',
            f'[site_broker]\nhost = "127.0.0.1"\nport = {self.ports["site"]}\n'
            f'username = "{site_auth.GATEWAY_USER}"\npassword_file = "auth/gateway.password"\n',
            f'[district_broker]\nhost = "127.0.0.1"\nport = {self.ports["district"]}\nusername = "{SITE_ID}"\n'
            f'password = "{gateway_district_password}"\n',
            '[store]\npath = "gateway.sqlite"\n',
            '[uplink]\nbatch_max_delay_ms = 100\n',
            f'[metrics]\nhost = "127.0.0.1"\nport = {self.ports["metrics"]}\n',
        ]
        lines += [f'[[devices]]\nid = "{d.id}"\nclass = "{d.profile}"\nkey = "{d.key.hex()}"\n'
                  for d in self.devices]
        self.config_path.write_text("\n".join(lines))
        return self.config_path

    def start(self) -> Site:
        self.dir.mkdir(parents=True, exist_ok=True)
        gw_password = secrets.token_urlsafe(18)
        self.write_config(gw_password)
        auth = self.dir / "auth"
        self.passwords = site_auth.generate(self.config_path, auth)
        for d in self.devices:
            d.password = self.passwords[d.id]
        extra = f"listener {self.device_port} {self.bench_host}\n" if self.bench_host else ""
        site_conf = demo.deploy_conf("site.conf", {"passwd": auth / "passwd", "acl": auth / "acl"}) + extra
        self._broker(site_conf, self.ports["site"], "site-broker")
        dauth = self.dir / "district-auth"
        dauth.mkdir(exist_ok=True)
        demo.hashed_passwords(dauth / "district-passwd",
                               {demo.DISTRICT_USER: self.district_password, SITE_ID: gw_password})
        shutil.copy(demo.DEPLOY / "district.acl", dauth / "district.acl")
        self._broker(demo.deploy_conf("district.conf", {"district-passwd": dauth / "district-passwd",
                                                        "district.acl": dauth / "district.acl"}),
                     self.ports["district"], "district-broker")
        self.recorder = demo.Recorder("127.0.0.1", self.ports["district"], self.district_password, SITE_ID,
                                      lambda entry: None)
        if not self.recorder.connected.wait(10):
            raise BenchError("the district recorder could not connect to the district broker")
        self.start_gateway()
        return self

    def _broker(self, conf: str, port: int, name: str) -> None:
        broker = Mosquitto(conf, port=port, workdir=self.dir / name, anonymous=False)
        self.brokers.append(broker)
        try:
            broker.start()
        except RuntimeError as exc:
            raise BenchError(f"{name}: {exc}") from None

    def start_gateway(self) -> None:
        log = self.log_path.open("ab")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "lifeline.cli", "gateway", "--config", str(self.config_path)],
            stdout=log, stderr=log, cwd=self.dir, start_new_session=True,
            env={**upy.environment(), "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + GATEWAY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise BenchError(f"the gateway exited with {self.gateway.returncode}: {self.gateway_tail()}")
            with contextlib.suppress(OSError):
                m = demo.scrape(self.ports["metrics"])
                if m.get("uplink_connected") and m.get("site_connected"):
                    return
            time.sleep(0.2)
        raise BenchError(f"the gateway did not connect to both brokers within {GATEWAY_TIMEOUT_S:.0f} s: "
                         f"{self.gateway_tail()}")

    def stop_gateway(self) -> None:
        g = self.gateway
        if g is not None and g.poll() is None:
            g.send_signal(signal.SIGTERM)
            try:
                g.wait(20)
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()

    def gateway_tail(self, lines: int = 8) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(text.splitlines()[-lines:])

    def district(self, since: float | None = None) -> District:
        return District(self, time.time() if since is None else since)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's Prometheus endpoint (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=2) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stop(self) -> None:
        self.stop_gateway()
        if self.recorder is not None:
            self.recorder.close()
            with self.recorder.lock:
                self.recorder.log.save(self.dir / "district.jsonl")  # everything the district got, for later
        for b in self.brokers:
            b.stop()


class Bench:
    """The whole bench for one pytest session, set up on first use."""

    def __init__(self, specs: list[DeviceSpec], count: int, profiles: Iterable[str], workdir: Path | None = None,
                 bench_host: str | None = None, wifi: tuple[str, str] = ("", "")) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="lifeline-bench-"))
        for old in ("devices", "site"):  # blank boards and a fresh site every session
            shutil.rmtree(self.dir / old, ignore_errors=True)
        self.specs = specs
        self.bench_host = bench_host
        self.wifi = wifi
        self.devices: list[Dut] = []
        self._lock = threading.Lock()
        for i, spec in enumerate(s for s in specs if s.kind == "serial"):
            self.devices.append(Dut(spec.dev_id or f"{spec.profile}-hw{i + 1}", spec.profile, spec,
                                    secrets.token_bytes(flash.KEY_BYTES)))
        if any(s.kind == "virtual" for s in specs):
            for profile in sorted(set(profiles)):
                for n in range(count):
                    self.devices.append(Dut(f"{profile}-{n + 1:02d}", profile, DeviceSpec("virtual", profile=profile),
                                            secrets.token_bytes(flash.KEY_BYTES)))
        if any(s.kind == "serial" for s in specs) and not bench_host:
            raise BenchError("real boards need --bench-host: the address they reach this machine's site "
                             "broker at over the bench Wi-Fi")
        self.site = Site(self.dir / "site", self.devices, bench_host)

    @property
    def all_virtual(self) -> bool:
        return all(s.kind == "virtual" for s in self.specs)

    def start(self) -> Bench:
        self.site.start()
        district = self.site.district(since=0.0)
        started = time.time()
        for dut in self.devices:
            self._flash(dut)
        for dut in self.devices:
            district.birth(dut.id, ONLINE_TIMEOUT_S - (time.time() - started))
        return self

    def provision(self, dut: Dut, key: bytes | None = None) -> None:
        """Flash the device (only what differs is written) with its identity, or with `key` instead of its
        own, and reset it into the firmware."""
        host = "127.0.0.1" if dut.spec.kind == "virtual" else self.bench_host
        assert host is not None
        prov = flash.Provision(dut.id, SITE_ID, dut.profile, host, self.site.device_port, key or dut.key,
                               mqtt_user=dut.id, mqtt_password=dut.password, wifi_ssid=self.wifi[0],
                               wifi_password=self.wifi[1], ntp=("pool.ntp.org",))
        with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
            files = flash.stage(prov, Path(tmp))
            try:
                with flash.board(dut.port) as b:
                    flash.upload(b, files)
                    b.reboot()
            except flash.FlashError as exc:
                raise BenchError(f"flashing {dut.id} on {dut.port}: {exc}") from None

    def _flash(self, dut: Dut) -> None:
        if dut.spec.kind == "virtual":
            flash_dir = self.dir / "devices" / dut.id
            dut.board = VirtualDevice(flash_dir, dut.id, console_log=self.dir / "devices" / f"{dut.id}.console.log")
            dut.board.power_on()
            dut.control_port = stimulus.free_udp_pair()
            base = baselines().get(dut.profile, {})
            (flash_dir / "sim.json").write_text(json.dumps(stimulus.sim_config(
                dut.control_port, {ch: [[0, v]] for ch, v in base.items()})))
            dut.stimulus = stimulus.SimStimulus(dut.control_port)
        elif dut.spec.stim is not None and dut.spec.rig is not None:
            dut.stimulus = stimulus.SerialStimulus(dut.spec.stim, dut.spec.rig)
        self.provision(dut)

    def for_profile(self, profile: str, hardware: bool = False) -> list[Dut]:
        return [d for d in self.devices if d.profile == profile and (not hardware or not d.virtual)]

    def close(self) -> None:
        for dut in self.devices:
            if dut.board is not None:
                dut.board.close()
            if dut.stimulus is not None:
                dut.stimulus.close()
        self.site.stop()
