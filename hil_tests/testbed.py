"""The bench behind the plugin's fixtures: a virtual site (lifeline/virtual/site.py: brokers from
deploy/mosquitto, the gateway daemon), a district recorder on it, and the devices under test, virtual or
real, each flashed and provisioned with `lifeline flash`'s code path.

A virtual device starts blank (MicroPython at its REPL on a pty), is flashed through the pty exactly like
a board through its USB-serial adapter, gets sim.json (the world around it) and is reset into the
firmware. A real board is flashed the same way on its serial port and reaches the site broker over the
bench's Wi-Fi at --bench-host. The bench is ready when every device's birth has reached the district.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeline import flash, upy
from lifeline.virtual import stimulus
from lifeline.virtual.device import VirtualDevice
from lifeline.virtual.recorder import Entry, Recorder
from lifeline.virtual.site import GatewayProcess, Site, SiteError
from protocol import district as dtopics

SITE_ID = "bench"
SEED = upy.ROOT / "seeds" / "demo_site.toml"
ONLINE_TIMEOUT_S = 60.0


class TestbedError(RuntimeError):
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

    def __init__(self, recorder: Recorder, since: float) -> None:
        self.recorder = recorder
        self.since = since

    def entries(self, kind: str | None = None, dev: str | None = None) -> list[Entry]:
        return [e for e in self.recorder.entries(kind, self.since) if dev is None or _dev_of(e) == dev]

    def wait_for(self, what: str, pred: Callable[[Entry], bool], timeout: float = 20.0,
                 kind: str | None = None, dev: str | None = None) -> Entry:
        """The first matching entry, waiting for it; fails naming `what` and the last few arrivals."""
        found: list[Entry] = []

        def seen() -> bool:
            found.extend(e for e in self.entries(kind, dev) if pred(e))
            return bool(found)

        if not self.recorder.wait(seen, timeout):
            last = [(e.kind, e.body) for e in self.entries()[-6:]]
            raise AssertionError(f"the district did not see {what} within {timeout:.0f} s; last: {last}")
        return found[0]

    def birth(self, dev: str, timeout: float = ONLINE_TIMEOUT_S) -> Entry:
        return self.wait_for(f"the birth of {dev}", lambda e: e.body.get("st") == "online", timeout,
                             dtopics.UP_STATE, dev)

    def alarms(self, dev: str, rule: str) -> list[Entry]:
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
        self.recorder.send(kind, body)


def _dev_of(e: Entry) -> str | None:
    body = e.body
    if not isinstance(body, dict):
        return None
    if "dev" in body:
        return str(body["dev"])
    packs = body.get("packs") or [{}]
    dev = packs[0].get("dev")
    return None if dev is None else str(dev)


class Testbed:
    """The whole bench for one pytest session, set up on first use."""

    __test__ = False  # a fixture's object, not a class of tests for pytest to collect

    def __init__(self, specs: list[DeviceSpec], count: int, profiles: Iterable[str], workdir: Path | None = None,
                 bench_host: str | None = None, wifi: tuple[str, str] = ("", ""),
                 say: Callable[[str], None] = lambda line: None) -> None:
        """`say`: each step of the setup as a line, as it comes (a real board takes about 20 s to flash)."""
        self.say = say
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
            raise TestbedError("real boards need --bench-host: the address they reach this machine's site "
                             "broker at over the bench Wi-Fi")
        # The site (virtual site kit): logins by password, a second site-broker listener for real boards.
        self.site = Site(self.dir / "site", SITE_ID, tls=False, extra_toml="[uplink]\nbatch_max_delay_ms = 100\n",
                         metrics=True, device_host=bench_host)
        for dut in self.devices:
            self.site.add(dut.id, dut.profile, dut.key)
        self.gateway = GatewayProcess(self.site)
        self.recorder: Recorder | None = None

    @property
    def all_virtual(self) -> bool:
        return all(s.kind == "virtual" for s in self.specs)

    def start(self) -> Testbed:
        try:
            self.site.start()
            self.recorder = self.site.recorder(ack_alarms=True)
            if not self.recorder.subscribed.wait(10):
                raise TestbedError("the district recorder could not subscribe on the district broker")
            asyncio.run(self.gateway.start().ready())
        except SiteError as exc:
            raise TestbedError(str(exc)) from None
        for dut in self.devices:
            dut.password = self.site.devices[dut.id].password
        district = self.district(since=0.0)
        started = time.time()
        n = len(self.devices)
        self.say(f"bench: site brokers and gateway up; flashing {n} board(s)")
        for i, dut in enumerate(self.devices, 1):
            self._flash(dut)
            self.say(f"bench: {dut.id} flashed ({i}/{n}) on {dut.port}")
        for i, dut in enumerate(self.devices, 1):
            district.birth(dut.id, ONLINE_TIMEOUT_S - (time.time() - started))
            self.say(f"bench: {dut.id} online at the district ({i}/{n})")
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
                raise TestbedError(f"flashing {dut.id} on {dut.port}: {exc}") from None

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

    def district(self, since: float | None = None) -> District:
        assert self.recorder is not None
        return District(self.recorder, time.time() if since is None else since)

    def for_profile(self, profile: str, hardware: bool = False) -> list[Dut]:
        return [d for d in self.devices if d.profile == profile and (not hardware or not d.virtual)]

    def close(self) -> None:
        for dut in self.devices:
            if dut.board is not None:
                dut.board.close()
            if dut.stimulus is not None:
                dut.stimulus.close()
        self.gateway.stop()
        if self.recorder is not None:
            self.recorder.close()
            self.recorder.save(self.site.dir / "district.jsonl")  # everything the district got, for later
        self.site.stop()
