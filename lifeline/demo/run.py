"""`lifeline demo`: a whole virtual site playing a scripted incident, end to end, with real parts.

Two Mosquitto brokers (site and district) started from deploy/mosquitto's configs on free loopback ports,
the gateway daemon as a subprocess with a generated site.toml, and one virtual board per device of
seeds/demo_site.toml: the real firmware on the MicroPython unix port (64K heap), its flash a directory.
A small neighbouring site (plan.neighbour) with its own site broker, gateway and boards feeds the same
district broker, and `lifeline district` (workers and the desk, on SQLite) takes both sites' upstream.
The incident is played through each device's sim control port (lifeline/demo/script.py); a recorder on
the district broker keeps everything that arrives, and a terminal shows it live (lifeline/demo/live.py).
Without the live view a scripted supervisor works every work order through the desk's API
(lifeline/demo/operator.py). At the end the demo writes a timeline plot, a screenshot of the desk and a
summary (lifeline/demo/report.py) and exits 0 only if every alarm the script expects reached the district
and, with the scripted supervisor, every work order was closed. docs/demo.md explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from gateway import site_config
from gateway.rules import default_ruleset
from lifeline import flash, upy
from lifeline.demo import live, operator, script
from lifeline.demo import report as demo_report
from lifeline.virtual import plan, stimulus
from lifeline.virtual import site as virtual_site
from lifeline.virtual.broker import free_port
from lifeline.virtual.device import VirtualDevice
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.plan import Device, Site
from lifeline.virtual.recorder import DistrictLog, Entry, Recorder

PER_DEVICE = ("profile.json", "device.json", "secrets.json")  # what `lifeline flash` writes per device
ONLINE_TIMEOUT_S = 120.0  # every device's birth at the district, from the first power-on
TAIL_S = 20.0  # after the script, at most this long for the last expected alarms
FOREVER_PAUSE_S = 20.0  # between incident replays under --forever
DISTRICT_TIMEOUT_S = 30.0  # the district's workers and desk up, from their start
ORDERS_TIMEOUT_S = 30.0  # after the script, at most this long for the scripted supervisor to close every order
DESK_USER = "duty"  # the demo's supervisor at the desk; the password is fresh each run
RUN_MARK = ".lifeline-demo-run"  # in OUT/run: a run of the demo, which the next one removes


class DemoError(RuntimeError):
    """The demo could not set its site up; the message says which part failed."""


# ------------------------------------------------------------------------------------------ site.toml


def stale_intervals(site: Site, devices: list[Device]) -> dict[str, float]:
    """Per class with a stale rule: the quiet interval of the profile flashed on its devices."""
    shipped = default_ruleset()
    out = {}
    for cls in sorted({d.cls for d in devices}):
        rules = shipped.classes.get(cls)
        if rules is not None and rules.stale is not None:
            out[cls] = plan.quiet_interval(site.profile(cls, _shipped_profile(cls)))
    return out


def _shipped_profile(cls: str) -> dict[str, Any]:
    profile: dict[str, Any] = json.loads((upy.FIRMWARE / "profiles" / f"{cls}.json").read_text())
    return profile


def extra_toml(site: Site, devices: list[Device]) -> str:
    """The gateway's config beyond the brokers and devices: the shipped rule sets, whose stale intervals are
    set to the flashed profiles' (docs/rules.md: they must match), and the seed's risk points."""
    lines = ["[uplink]\nbatch_max_delay_ms = 200\n"]
    for cls, interval in stale_intervals(site, devices).items():
        lines.append(f"[rules.overrides.{cls}.stale]\ninterval_s = {interval:g}\n")
    for rp in site.risk_points.values():
        lines.append(f'[[risk_points]]\nid = "{rp.id}"\nclass = "{rp.cls}"\nlat = {rp.lat}\nlon = {rp.lon}\n'
                     f"radius_m = {rp.radius_m}\n")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ devices


def firmware_image(target: Path, site_id: str) -> Path:
    """The code part of a flash image, staged once by `lifeline flash` for all devices (main.py, boot.py,
    lib/ as .mpy); each device's copy then gets its own profile.json, device.json and secrets.json."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    placeholder = flash.Provision("image", site_id, "gas", "127.0.0.1", 1883, bytes(flash.KEY_BYTES))
    flash.stage(placeholder, target)
    for name in PER_DEVICE:
        (target / name).unlink()
    return target


@dataclass
class Node:
    """One virtual device of the demo and what the demo knows about it."""

    dev: Device
    flash: Path
    control_port: int
    board: VirtualDevice | None = None


def provision(image: Path, flash_dir: Path, dev: Device, site: Site, key: bytes, password: str,
              broker_port: int, control_port: int) -> Node:
    """A device's flash directory (docs/firmware.md), plus sim.json: its control port and quiet readings."""
    shutil.copytree(image, flash_dir)
    p = flash.Provision(dev.id, site.id, dev.cls, "127.0.0.1", broker_port, key, mqtt_user=dev.id,
                        mqtt_password=password, wifi_ssid="demo", wifi_password="demo")
    profile = site.profile(dev.cls, _shipped_profile(dev.cls))
    sim = stimulus.sim_config(control_port, {ch: [[0, v]] for ch, v in dev.baseline.items()})
    for name, content in zip(PER_DEVICE, (profile, p.device_json(), p.secrets_json()), strict=True):
        (flash_dir / name).write_text(json.dumps(content, separators=(",", ":")))
    (flash_dir / "sim.json").write_text(json.dumps(sim))
    return Node(dev, flash_dir, control_port)


# ------------------------------------------------------------------------------------------ the gateway's metrics


def scrape(port: int) -> dict[str, float]:
    """The gateway's outbox depth, uplink state and ingest counters, for the live view."""
    out: dict[str, float] = {}
    for s in virtual_site.metrics(port, timeout=0.5):
        if s.name == "lifeline_outbox_depth":
            out["outbox_" + s.labels.get("lane", "")] = s.value
        elif s.name == "lifeline_uplink_connected":
            out["uplink_connected"] = s.value
        elif s.name == "lifeline_site_connected":
            out["site_connected"] = s.value
        elif s.name == "lifeline_ingest_messages_total":
            out["accepted"] = out.get("accepted", 0) + s.value
        elif s.name == "lifeline_ingest_rejects_total":
            out["rejected"] = out.get("rejected", 0) + s.value
    return out


# ------------------------------------------------------------------------------------------ the run


class _Stop(Exception):
    """SIGTERM or SIGHUP: leave through the same clean shutdown as Ctrl-C."""


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.site = plan.load(args.seed)
        self.out: Path = args.out.resolve()  # devices run in their flash directories: no relative paths
        self.work = self.out / "run"
        self.logs = self.work / "logs"
        self.devices = self.site.select(self.quick)
        self.nodes: dict[str, Node] = {}
        self.status = live.Status(self.site, self.nodes, time.time())
        self.live = args.live if args.live is not None else sys.stdout.isatty()
        self.console: Any = None
        self.metrics_port = 0
        self.gateway: virtual_site.GatewayProcess | None = None
        self.recorder: Recorder | None = None
        self.neighbour = plan.neighbour(self.site)
        self.neighbour_nodes: dict[str, Node] = {}
        self.desk_password = secrets.token_urlsafe(12)
        self.desk: operator.Operator | None = None  # a logged-in desk session; it works orders without --live

    # progress

    def say(self, line: str) -> None:
        stamp = self.status.clock_short(time.time())
        if self.live and self.console is not None:
            self.console.log(line, markup=False)  # the seed's and the desk's words, never markup
        else:
            print(f"[{stamp}] {line}", flush=True)

    def _on_entry(self, entry: Entry) -> None:
        line = self.status.on_entry(entry)
        if line is not None and not self.live:
            self.say(line)

    def problem(self, text: str) -> None:
        with self.status.lock:
            self.status.problems.append(text)
        self.say("problem: " + text)

    # setup

    def start(self, stack: contextlib.ExitStack) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)  # an earlier run's: run() has made sure (earlier_run)
        self.logs.mkdir(parents=True)
        (self.work / RUN_MARK).write_text("a run of `lifeline demo`: the next one removes this directory\n")
        seed = self.site
        site = virtual_site.Site(self.work, seed.id, tls=False, extra_toml=extra_toml(seed, self.devices),
                                 metrics=True)
        for d in self.devices:
            site.add(d.id, d.cls, position=d.position)
        self.metrics_port = site.metrics_port
        self.say(f"site {seed.id}: {len(self.devices)} devices, {len(seed.risk_points)} risk points; "
                 f"work directory {self.work}")
        stack.callback(site.stop)
        site.start()
        nb = self.neighbour
        nb_devices = list(nb.devices.values())
        nb_site = virtual_site.Site(self.work / nb.id, nb.id, tls=False, extra_toml=extra_toml(nb, nb_devices),
                                    district=site)
        for d in nb_devices:
            nb_site.add(d.id, d.cls, position=d.position)
        stack.callback(nb_site.stop)
        nb_site.start()
        self.say(f"brokers up: site on {site.ports['site']}, {nb.id} on {nb_site.ports['site']}, district on "
                 f"{site.ports['district']}")

        # the desk acknowledges alarms (the scripted supervisor, or whoever is at it); under the live view,
        # where no one may be, the recorder stands in for the officer at the site
        self.recorder = site.recorder(ack_alarms=self.live, on_entry=self._on_entry)
        self.gateway = virtual_site.GatewayProcess(site, self.logs / "gateway.log")
        # Leaving: the gateway drains and stops first, then the recorder, then the devices (whose wills
        # would otherwise raise stale alarms on the way out), then the brokers.
        stack.callback(self._stop_devices)
        stack.callback(self.recorder.close)
        stack.callback(self.gateway.stop)
        if not self.recorder.subscribed.wait(10):
            raise DemoError("the district recorder could not subscribe on the district broker")
        asyncio.run(self.gateway.start().ready())
        assert self.gateway.proc is not None
        self.say(f"gateway up (pid {self.gateway.proc.pid}), connected to both brokers")
        nb_gateway = virtual_site.GatewayProcess(nb_site, self.logs / f"gateway-{nb.id}.log")
        stack.callback(nb_gateway.stop)
        asyncio.run(nb_gateway.start().ready())
        self.say(f"gateway of {nb.id} up, connected to its site broker and the same district broker")
        self.start_district(stack, [site, nb_site])

        image = firmware_image(self.work / "image", seed.id)
        for d in self.devices:
            login = site.devices[d.id]
            self.nodes[d.id] = provision(image, self.work / "flash" / d.id, d, seed, login.key, login.password,
                                         site.device_port, stimulus.free_udp_pair())
        for d in nb_devices:
            login = nb_site.devices[d.id]
            self.neighbour_nodes[d.id] = provision(image, self.work / "flash" / d.id, d, nb, login.key,
                                                   login.password, nb_site.device_port, stimulus.free_udp_pair())
        boards = [*self.nodes.values(), *self.neighbour_nodes.values()]
        self.say(f"powering on {len(boards)} virtual devices (MicroPython unix port, heap {self.args.heap})")
        for node in boards:
            node.board = VirtualDevice(node.flash, node.dev.id, heap=self.args.heap,
                                       console_log=self.logs / f"{node.dev.id}.console.log")
            node.board.power_on()
            time.sleep(0.15)  # a staggered start spreads the interpreters' start-up over the cores

    def start_district(self, stack: contextlib.ExitStack, sites: list[virtual_site.Site]) -> None:
        """`lifeline district` for both sites on SQLite, a supervisor account made with --add-user, and a
        desk session logged in as it."""
        desk_port = free_port()
        points = "".join(f'[[sites.risk_points]]\nid = "{rp.id}"\nclass = "{rp.cls}"\nlat = {rp.lat}\nlon = {rp.lon}\n'
                         f"radius_m = {rp.radius_m}\n\n" for rp in self.site.risk_points.values())
        conf = write_config(sites, self.work / "district.toml", database="district.sqlite", desk_port=desk_port,
                            per_site={sites[0].id: points})  # the desk's map draws them
        added = subprocess.run([*virtual_site.lifeline_cmd(), "district", "--config", str(conf), "--add-user",
                                DESK_USER, "--role", "supervisor"], input=self.desk_password + "\n",
                               capture_output=True, text=True, env=virtual_site.environment(), cwd=virtual_site.ROOT)
        if added.returncode != 0:
            raise DemoError(f"lifeline district --add-user: {added.stderr.strip()}")
        district = DistrictProcess(conf, log_path=self.logs / "district.log")
        stack.callback(district.stop)
        district.start()
        district.wait_subscribed(DISTRICT_TIMEOUT_S)
        district.wait_log("desk-started", DISTRICT_TIMEOUT_S)
        desk = operator.Operator(f"http://127.0.0.1:{desk_port}", DESK_USER, self.desk_password)
        stack.callback(desk.close)
        deadline = time.monotonic() + DISTRICT_TIMEOUT_S
        while True:
            try:
                desk.login()
                break
            except (httpx.HTTPError, operator.DeskError) as exc:
                if time.monotonic() > deadline:
                    raise DemoError(f"the district desk did not let {DESK_USER} in: {exc}") from None
                time.sleep(0.2)
        self.desk = desk
        self.say(f"district desk: {desk.base}  (log in as {DESK_USER}, password {self.desk_password})")

    def _stop_devices(self) -> None:
        boards = [*self.nodes.values(), *self.neighbour_nodes.values()]
        for node in boards:
            if node.board is not None:
                node.board.close()
        for node in boards:  # and its sim world, which would otherwise idle on for a while
            with contextlib.suppress(stimulus.StimulusError):
                stimulus.SimStimulus(node.control_port, timeout_s=0.3).send({"quit": True})

    # running

    def wait_online(self) -> None:
        self.status.phase = "devices booting"
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            missing = [d for d in self.nodes if not self.status.births.get(d)] + self._neighbour_missing()
            if not missing:
                self.say(f"all {len(self.nodes)} devices online at the district, and the {len(self.neighbour_nodes)}"
                         f" of {self.neighbour.id} on its desk")
                return
            self._tick()
        self.problem(f"not online after {ONLINE_TIMEOUT_S:.0f} s: {', '.join(missing)}")

    def _neighbour_missing(self) -> list[str]:
        """The neighbouring site's devices the district's desk does not show online yet."""
        assert self.desk is not None
        try:
            online = {d["dev"] for d in self.desk.get(f"/api/devices?site={self.neighbour.id}")
                      if d["state"] == "online"}
        except (httpx.HTTPError, operator.DeskError):
            online = set()
        return [d for d in self.neighbour_nodes if d not in online]

    def _tick(self, seconds: float = 0.25) -> None:
        with contextlib.suppress(OSError):
            m = scrape(self.metrics_port)
            m["acks"] = self.recorder.acks if self.recorder is not None else 0
            with self.status.lock:
                self.status.metrics = m
        if self.gateway is not None:
            self.gateway.check()
        if self.desk is not None and not self.live:
            try:
                for line in self.desk.round():
                    self.say(line)
            except (httpx.HTTPError, operator.DeskError) as exc:
                self.problem(f"desk: {exc}")
        time.sleep(seconds)

    def finish_orders(self) -> None:
        """Without the live view, give the scripted supervisor time to close the orders of the last alarms."""
        assert self.desk is not None
        if self.live:
            return
        self.status.phase = "closing work orders"
        deadline = time.monotonic() + ORDERS_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if all(o["state"] == "closed" for o in self.desk.get("/api/work-orders")):
                    return
            except (httpx.HTTPError, operator.DeskError) as exc:
                self.problem(f"desk: {exc}")
            self._tick()
        self.problem(f"work orders still open after {ORDERS_TIMEOUT_S:.0f} s")

    def district_report(self) -> dict[str, Any]:
        """What the district's desk shows at the end: its sites, work orders, response times and map."""
        assert self.desk is not None
        return {"desk": self.desk.base, "user": DESK_USER, "sites": self.desk.get("/api/sites"),
                "work_orders": self.desk.get("/api/work-orders"),
                "response_times": self.desk.get("/api/response-times"), "map": self.desk.get("/api/map"),
                "operator": not self.live, "acks": self.desk.acks}

    def play(self) -> demo_report.Summary:
        site, st = self.site, self.status
        t0 = time.time() + 1.0
        with st.lock:
            st.t0 = t0
            st.script_s = site.script_length(self.quick)
            st.expected = sum(len(e.levels) for inc in site.incidents for e in inc.expect)
            st.seen_expected = 0
        player = script.Player(script.schedule(site, self.quick, set(self.nodes)),
                               {d: n.control_port for d, n in self.nodes.items()}, t0, self.problem)
        player.start()
        announced: set[str] = set()
        try:
            while True:
                now = time.time() - t0
                for inc in site.incidents:
                    if inc.id not in announced and now >= inc.start(self.quick):
                        announced.add(inc.id)
                        self.say(f"incident: {inc.title}")
                playing = [i.id for i in site.incidents if i.start(self.quick) <= now <= i.start(self.quick)
                           + i.duration]
                judged = self._judge(t0)
                with st.lock:
                    st.phase = ("playing " + ", ".join(playing)) if playing else (
                        "waiting for the district" if now > st.script_s else "quiet")
                    st.seen_expected = sum(s.seen for s in judged)
                if now > st.script_s + 5 and all(s.seen for s in judged):
                    break
                if now > st.script_s + TAIL_S:
                    break
                self._tick()
        finally:
            player.stop.set()
        return self.report(t0)

    def _judge(self, t0: float) -> list[demo_report.Seen]:
        return demo_report.judge(self.site, self._since(t0))

    def _since(self, t0: float) -> DistrictLog:
        assert self.recorder is not None
        part = DistrictLog()
        part.entries = self.recorder.entries(since=t0 - 1.0)
        return part

    def report(self, t0: float) -> demo_report.Summary:
        assert self.recorder is not None and self.desk is not None
        self.finish_orders()
        self.status.phase = "writing the report"
        self.recorder.save(self.out / "district.jsonl")
        log = self._since(t0)
        notes = list(self.status.problems)
        if self.recorder.errors:
            notes.append(f"{self.recorder.errors} district messages could not be decoded")
        try:
            district = self.district_report()
        except (httpx.HTTPError, operator.DeskError) as exc:
            district = {}
            notes.append(f"desk: {exc}")
        summary = demo_report.summarise(self.site, log, t0, self.quick, self.nodes, notes, district,
                                        self.recorder.entries())
        ruleset = site_config.load(self.work / "site.toml").ruleset
        png = demo_report.plot(self.site, log, ruleset, t0, self.quick, self.out, self.desk.acks)
        desk_png = self.out / "desk.png"
        desk_png.unlink(missing_ok=True)  # not an earlier run's
        try:
            shot = f"{operator.screenshot(self.desk.base, DESK_USER, self.desk_password, desk_png)}, "
        except operator.DeskError as exc:  # the run still reports without it
            shot = ""
            summary.notes.append(f"no screenshot of the desk: {exc}")
        md, js = demo_report.write_summary(summary, self.out)
        self.say(f"wrote {png}, {shot}{md} and {js}")
        return summary


HEAP_FORM = re.compile(r"([0-9]+)(w?)([km]?)\Z", re.IGNORECASE)  # the unix port's -X heapsize=, less its hex
HEAP_RANGE = (16 << 10, 64 << 20)  # bytes as written: no profile boots below; more than any ESP32 board has


def _heap(text: str) -> str:
    """--heap as the unix port reads it, checked before any board is powered: it refuses a size it cannot read
    (64, no K; -5) and crashes on an absurd one (100000M), and a board that cannot start was only found when
    the demo gave up waiting for it, minutes into the run."""
    form = HEAP_FORM.match(text)
    size = int(form[1]) << {"": 0, "k": 10, "m": 20}[form[3].lower()] if form else 0
    if not HEAP_RANGE[0] <= size <= HEAP_RANGE[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: a heap size the unix port takes, digits then w (32-bit words) "
                                         f"and K or M, from 16K to 64M, like {upy.FIRMWARE_HEAP}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="only the devices the incident needs, with its parts overlapping (about 80 s)")
    parser.add_argument("--forever", action="store_true",
                        help="keep the site running and replay the incident until Ctrl-C")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="where the plot, summary and district record go (default out/demo)")
    parser.add_argument("--seed", type=Path, default=plan.SEED, help="site and incident (seeds/demo_site.toml)")
    parser.add_argument("--heap", default=upy.FIRMWARE_HEAP, type=_heap,
                        help=f"MicroPython heap per device (default {upy.FIRMWARE_HEAP}; docs/firmware.md, Memory)")
    live = parser.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="live terminal view (the default on a terminal)")
    live.add_argument("--plain", dest="live", action="store_false", help="progress lines instead of the live view")


def earlier_run(work: Path) -> bool:
    """Whether `work` (OUT/run) is nothing or what an earlier demo left, which the next run removes: never a
    directory of the user's that --out happened to hold. A run before the mark had logs/ and image/ there."""
    if not work.exists() and not work.is_symlink():
        return True
    if work.is_symlink() or not work.is_dir():
        return False
    return (work / RUN_MARK).is_file() or not any(work.iterdir()) or ((work / "logs").is_dir()
                                                                      and (work / "image").is_dir())


def run(args: argparse.Namespace) -> int:
    try:
        demo = Demo(args)
    except plan.SeedError as exc:
        print(f"seed error: {exc}", file=sys.stderr)
        return 2
    try:
        if not earlier_run(demo.work):
            print(f"--out: {demo.work} is not a run of the demo; nothing was removed: give --out a directory of its "
                  "own, or move it", file=sys.stderr)
            return 2
        demo.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a directory it may not enter: told as the other --out refusals
        print(f"--out: {exc.filename or demo.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _sigterm)
    # a dropped SSH session: its parts each run in a session of their own, so they would run on without it
    previous_hup = signal.signal(signal.SIGHUP, _sigterm)
    # Ctrl-C must reach the demo even where it was started with SIGINT ignored (a background job of a script).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    summary: demo_report.Summary | None = None
    try:
        with contextlib.ExitStack() as stack, live.view(demo.status, demo.live) as console:
            demo.console = console
            demo.start(stack)
            demo.wait_online()
            while True:
                summary = demo.play()
                _verdict(demo, summary)
                if not args.forever:
                    break
                demo.status.phase = f"pause, replaying in {FOREVER_PAUSE_S:.0f} s"
                end = time.monotonic() + FOREVER_PAUSE_S
                while time.monotonic() < end:
                    demo._tick()
            demo.status.phase = "shutting down"
    except (KeyboardInterrupt, _Stop):
        print("interrupted: everything the demo started is stopped", file=sys.stderr)
        return 130 if summary is None else (0 if summary.ok else 1)
    except (DemoError, OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        signal.signal(signal.SIGINT, previous_int)
    assert summary is not None
    return 0 if summary.ok else 1


def _verdict(demo: Demo, summary: demo_report.Summary) -> None:
    lat = summary.latency_s
    if summary.ok:
        demo.say(f"every expected alarm reached the district ({lat['n']} events; latency min "
                 f"{_ms(lat['min'])}, median {_ms(lat['median'])}, max {_ms(lat['max'])} ms)")
    else:
        demo.say("MISSING at the district: " + "; ".join(summary.missing))


def _ms(x: float | int | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"
