"""`lifeline ota`: the site's over-the-air updates (docs/ota.md).

    lifeline ota status --config site.toml
    lifeline ota rollout --config site.toml --release releases/0.2.0 --canary 2 --halt-share 0.25

Both read the gateway's view from its store (gateway/ota_relay.Ledger): the version each node's last birth
named (sealed by the node, checked by the gateway), how far its download has got (the chunks the gateway
served it), and its last "ota" outcome (a sealed event: running, refused or rolled back, with the reason).
That is what an operator can trust: nothing in it comes from the node unchecked but the progress, which only
the node's own broker login can ask for (the site ACL).

`rollout` sends the sealed `ota` command, as the gateway's command relay seals a district command (the
device's key from site.toml), over the site broker with the gateway's login: to the canary group first, then
the rest (in waves when --wave is given). A stage ends when each of its nodes has born on the new version,
reported a failure (refused, rolled back) or run out of --stage-timeout (a sleeping node takes the command
at its next wake, so the timeout must cover its wake interval). The rollout halts by itself, before the next
stage, once more than --halt-share of the nodes sent the command have failed (judged when a stage ends, so
the count covers the whole stage); the nodes already sent it go on. A node whose trial of the release rolled
back (its last outcome, from an earlier run) is not sent it again unless --retry-rolled-back says so; the
rollout warns at start when --stage-timeout is not above a node's wake interval (from its birth).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.table import Table

from gateway import ota_plan, ota_relay
from gateway.device_list import DeviceConfig
from gateway.ota_plan import Stage
from gateway.ota_relay import NodeOta
from gateway.site_config import ConfigError, GatewayConfig, load
from lifeline import release
from lifeline.store_access import StoreError, add_store_arguments, open_readonly, shown
from protocol import message, message_check, topics

BAR = 20
CONNACK_S = 10.0  # how long the site broker may take to answer CONNECT
PROGRESS_S = 60.0  # a stage that waits says how far it is this often: a node's news may be minutes apart


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    st = sub.add_parser("status", help="per node: version running, target, download progress, outcome")
    add_store_arguments(st, "site.toml (devices and the [store] path)")
    r = sub.add_parser("rollout", help="send a release to a canary group, then the rest; halt on failures",
                       epilog="exit status: 0 every node landed; 1 a halt or a failed node, or a site broker that "
                              "cannot be reached or refuses the login (nothing sent); 2 a usage error (nothing "
                              "sent); 130 interrupted (the outcome so far is written), 143 and 129 likewise on "
                              "SIGTERM and SIGHUP")
    r.add_argument("--config", type=Path, required=True, help="site.toml (devices, keys, site broker, store)")
    r.add_argument("--release", type=Path, required=True, help="a release directory the gateway serves ([ota])")
    r.add_argument("--canary", default="1", help="canary group: a number of nodes, or a share like 10%% (default 1)")
    r.add_argument("--halt-share", type=float, default=0.25,
                   help="halt when more than this share of the nodes sent the release fail (default 0.25)")
    r.add_argument("--wave", type=int, default=0, help="after the canary, nodes a stage (default: all the rest)")
    r.add_argument("--stage-timeout", type=float, default=900.0,
                   help="seconds a stage waits for its nodes (cover a sleeping node's wake interval)")
    r.add_argument("--device", action="append", help="only these devices (default: every one the release is for)")
    r.add_argument("--retry-rolled-back", action="store_true",
                   help="also send the release to nodes whose trial of it rolled back in an earlier run (default: "
                        "skipped, and listed)")
    r.add_argument("--resend-s", type=float, default=60.0,
                   help="send the command again to a node silent this long, plus its wake interval (default 60)")
    r.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the gateway's store")
    r.add_argument("--summary", type=Path, help="write the outcome as JSON here")


def bar(done: int, total: int) -> str:
    share = done / total if total else 0.0
    full = round(share * BAR)
    return "#" * full + "." * (BAR - full) + f" {share * 100:3.0f}%"


# ---------------------------------------------------------------------------------------------- status


def status(args: argparse.Namespace, console: Console) -> int:
    try:
        cfg = load(args.config) if args.config else None
        conn = open_readonly(args, cfg=cfg)
        devices = cfg.devices if cfg else {}
    except (ConfigError, StoreError) as exc:
        print(exc, file=sys.stderr)  # one line as it is: a terminal-wide wrap would break a path
        return 2
    with conn:
        nodes = ota_relay.read(conn)
        online = _online(conn)
    now = time.time()
    table = Table("device", "class", "state", "running", "target", "download", "outcome", "when", title="ota")
    for dev in sorted(set(nodes) | set(devices)):
        n = nodes.get(dev) or NodeOta(dev)
        d = devices.get(dev)
        table.add_row(dev, d.cls if d else "", "online" if online.get(dev) else "offline", shown(n.running or "?"),
                      shown(n.target), bar(n.done, n.total) if n.total else "", _outcome(n),
                      _ago(now, n.outcome_at or n.asked_at))
    console.print(table)
    return 0


def _online(conn: sqlite3.Connection) -> dict[str, bool]:
    try:
        return {dev: bool(json.loads(doc).get("online")) for dev, doc in conn.execute("SELECT dev, health FROM "
                                                                                      "device_health")}
    except sqlite3.OperationalError:
        return {}


def _sleep_s(conn: sqlite3.Connection) -> dict[str, float]:
    """Each deep-sleeping node's wake interval, from its last birth: how late it may hear a command."""
    try:
        return {dev: float(json.loads(doc).get("sleep_s") or 0.0)
                for dev, doc in conn.execute("SELECT dev, health FROM device_health")}
    except sqlite3.OperationalError:
        return {}


def _outcome(n: NodeOta) -> str:
    if not n.outcome_v:
        return ""
    # the node's own words: text, never markup
    return f"{shown(n.outcome_v)} " + ("[green]running[/green]" if n.ok else f"[red]{shown(n.res)}[/red]")


def _ago(now: float, t: float | None) -> str:
    return "" if t is None else f"{max(0.0, now - t):.0f}s ago"


# ---------------------------------------------------------------------------------------------- rollout


class SiteBrokerError(Exception):
    pass


class Ended(Exception):
    """SIGTERM or SIGHUP (a stop, a dropped SSH session) while the rollout runs: ended as Ctrl-C ends it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ended(signum: int, frame: FrameType | None) -> None:
    raise Ended(signum)


class Sender:
    """The site broker with the gateway's login: sealed commands out, the nodes' sealed acks in (a node that
    refuses the command says so only there)."""

    def __init__(self, cfg: GatewayConfig, config: Path | str = "site.toml") -> None:
        b = cfg.site_broker
        self.devices = cfg.devices
        self.acks: dict[tuple[str, int], tuple[bool, str]] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{b.client_id}-rollout-{time.time_ns()}")
        self.client.on_message = self._on_message
        if b.username is not None:
            self.client.username_pw_set(b.username, b.password)
        if b.tls is not None:
            self.client.tls_set(ca_certs=str(b.tls.ca_file) if b.tls.ca_file else None,
                                certfile=str(b.tls.cert_file) if b.tls.cert_file else None,
                                keyfile=str(b.tls.key_file) if b.tls.key_file else None)
        self._connack = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        try:
            self.client.connect(b.host, b.port, b.keepalive)
        except OSError as exc:
            raise SiteBrokerError(f"site_broker {b.host}:{b.port}: cannot connect ({exc.strerror or exc}); "
                                  "nothing was sent") from None
        self.site = cfg.site
        self.client.loop_start()
        # The broker's answer to CONNECT before anything is sent: a refused login (a wrong username or password
        # in site.toml) would otherwise surface only at the first publish, as a traceback.
        if not self._connack.wait(CONNACK_S) or self._refused is not None:
            self.client.loop_stop()  # paho would try again and again
            self.client.disconnect()
            login = f"user {b.username!r}" if b.username is not None else "no username"
            why = (f"refused the login ({self._refused}; {login}): check site_broker username and password "
                   f"in {config}" if self._refused is not None else f"no answer to CONNECT within {CONNACK_S:g} s")
            raise SiteBrokerError(f"site_broker {b.host}:{b.port}: {why}; nothing was sent")
        self.where = f"site_broker {b.host}:{b.port}"

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if not reason.is_failure:  # each time: a broker restarted mid-rollout has forgotten the subscription
            client.subscribe(topics.device_filter(self.site, topics.ACK), qos=1)
        if not self._connack.is_set():
            self._refused = str(reason) if reason.is_failure else None
            self._connack.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            _, dev, kind = topics.parse_device(msg.topic)
            device = self.devices.get(dev)
            if device is None:
                return
            body = message_check.decode(bytes(msg.payload), lambda kid: device.key if kid == dev.encode() else None,
                                        kind, loads=cbor2.loads)
        except (topics.TopicError, message_check.MessageError):
            return
        with self._lock:
            self.acks[(dev, int(body["id"]))] = (bool(body["ok"]), str(body.get("res") or ""))

    def ack(self, dev: str, cmd_id: int) -> tuple[bool, str] | None:
        with self._lock:
            return self.acks.get((dev, cmd_id))

    def send(self, device: DeviceConfig, cmd_id: int, args: Mapping[str, object], exp: int) -> bool:
        """True once the broker has the command; False while the broker is away (restarted, say): paho keeps
        the command and sends it when it has connected again."""
        body = message.command(device.id, cmd_id, "ota", dict(args), exp)
        info = self.client.publish(topics.device(self.site, device.id, topics.CMD), message.encode(body, device.key),
                                   qos=1)
        if info.rc == paho.MQTT_ERR_NO_CONN:
            return False
        try:
            info.wait_for_publish(10)
        except RuntimeError:  # the connection lost before it went out; kept for the next one as above
            return False
        return info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Rollout:
    def __init__(self, cfg: GatewayConfig, rel: release.Release, stages: list[Stage],
                 read: Callable[[], tuple[dict[str, NodeOta], dict[str, float]]], say: Callable[[str], None],
                 sender: Sender, resend_s: float) -> None:
        self.cfg, self.rel, self.stages = cfg, rel, stages
        self.read, self.say, self.sender, self.resend_s = read, say, sender, resend_s
        self.shown: dict[str, str] = {}
        self.halted = ""
        self.cmd_id = int(time.time()) & 0x7FFFFFFF  # ids are per device; a fresh one, so no node takes it as a repeat
        self.commands: dict[str, tuple[int, float, int]] = {}  # dev -> (command id, when, sends so far)
        self.exp = 0
        self.delivered = True  # the last send reached the broker

    def failed(self) -> int:
        return sum(len(s.failed) for s in self.stages)

    def sent(self) -> int:
        return len(self.commands)

    def send(self, dev: str) -> None:
        _, _, sends = self.commands.get(dev, (0, 0.0, 0))
        cmd_id = self.cmd_id + sends
        delivered = self.sender.send(self.cfg.devices[dev], cmd_id, self.rel.command_args(), self.exp)
        self.commands[dev] = (cmd_id, time.time(), sends + 1)
        if not delivered and self.delivered:  # once an outage
            self.say(f"{self.sender.where}: not connected; the commands wait until it is back (the stage's "
                     "timeout runs on)")
        self.delivered = delivered

    def run(self, halt_share: float, timeout_s: float, poll_s: float) -> None:
        for stage in self.stages:
            if self.halted:
                break
            stage.sent_at = time.time()
            self.exp = int(stage.sent_at + timeout_s)
            # A node sent the release by an earlier, interrupted run downloads on, and may have landed since the
            # targets were read. Sent it again, it takes the command once it runs the release and reboots into
            # the updater, which refuses it as no newer and reports that upstream as a failed update. One that
            # landed is counted so; one that asked for a chunk of it within --resend-s is followed as if sent (sent
            # it only if it then goes silent).
            nodes, _ = self.read()
            for dev in stage.devices:
                n = nodes.get(dev) or NodeOta(dev)
                if n.running == self.rel.version:
                    stage.landed.add(dev)
                    self.say(f"  {dev:<16} already running {self.rel.version}")
                elif n.target == self.rel.version and stage.sent_at - (n.asked_at or 0.0) < self.resend_s:
                    self.commands[dev] = (self.cmd_id, stage.sent_at, 0)
                    self.say(f"  {dev:<16} downloading {self.rel.version} already")
            to_send = [dev for dev in stage.open() if dev not in self.commands]
            if to_send:
                self.say(f"{stage.name}: sending {self.rel.version} to {len(to_send)} node(s): {', '.join(to_send)}")
            for dev in to_send:
                self.send(dev)
            deadline = stage.sent_at + timeout_s
            told = stage.sent_at
            while stage.open() and time.time() < deadline:
                self.look(stage)
                if not stage.open():
                    break
                if time.time() - told >= PROGRESS_S:  # a sleeping node is silent till its wake: not a hang
                    told = time.time()
                    self.say(f"{stage.name}: {len(stage.landed)} landed, {len(stage.failed)} failed, "
                             f"{len(stage.open())} waiting; {deadline - told:.0f} s left of --stage-timeout")
                time.sleep(poll_s)
            self.look(stage)
            for dev in stage.open():
                stage.failed[dev] = f"no new birth within {timeout_s:g} s"
                self.say(f"  {dev}: [red]failed[/red]: {stage.failed[dev]}")
            self.say(f"{stage.name}: {len(stage.landed)} landed, {len(stage.failed)} failed")
            self.halted = ota_plan.halt(self.failed(), self.sent(), halt_share, self.rel.version)

    def look(self, stage: Stage) -> None:
        """Read the gateway's view and the acks; say what changed for each node of the stage. A node that has
        neither answered the command nor asked for a chunk within --resend-s (plus its wake interval, from
        its birth) is sent it again under a new id, up to ota_plan.SENDS sends in all: a node at the edge of its
        heap can fail to load a command and then answers nothing (app/runtime.py, "no memory")."""
        nodes, sleep_s = self.read()
        v = self.rel.version
        now = time.time()
        for dev in stage.open():
            n = nodes.get(dev) or NodeOta(dev)
            cmd_id, sent_at, sends = self.commands[dev]
            ack = self.sender.ack(dev, cmd_id)
            state, detail = ota_plan.verdict(n, ack, v, stage.sent_at)
            if state == "landed":
                stage.landed.add(dev)
                line = f"[green]{detail}[/green]"
            elif state == "failed":
                stage.failed[dev] = detail
                line = f"[red]failed[/red]: {shown(detail)}"  # a node's words (an ack's reason): text
            elif state == "download":
                line = bar(n.done, n.total) + (" switching" if n.done == n.total else "")
            elif ack is None and now - sent_at > self.resend_s + sleep_s.get(dev, 0.0) and sends < ota_plan.SENDS:
                self.send(dev)
                line = f"no answer, sent again ({sends + 1})"
            else:
                line = "took the command" if state == "took" else "waiting"
            if self.shown.get(dev) != line:
                self.shown[dev] = line
                self.say(f"  {dev:<16} {line}")


def rollout(args: argparse.Namespace, console: Console) -> int:
    try:
        cfg = load(args.config)
        rel = release.load(args.release)
        if args.release.resolve() not in {p.resolve() for p in cfg.ota_releases}:
            raise release.ReleaseError(f"the gateway does not serve {args.release}: add it to [ota] releases in "
                                       f"{args.config} and reload the gateway (SIGHUP)")
        profiles = list(json.loads(rel.manifest).get("profiles", ()))
        conn = open_readonly(argparse.Namespace(store=cfg.store_path, config=None))  # there, and SQLite
    except (ConfigError, FileNotFoundError, StoreError, release.ReleaseError) as exc:
        print(exc, file=sys.stderr)  # as it is: "[ota] releases" is no markup
        return 2
    if not 0 <= args.halt_share < 1:
        print("--halt-share: a share from 0 up to (not including) 1", file=sys.stderr)
        return 2
    try:  # before the targets: with nothing to update, a script's typo passed until the next release
        ota_plan.canary_size(args.canary, 1)
    except ota_plan.PlanError as exc:
        conn.close()
        print(f"--{exc}", file=sys.stderr)
        return 2
    if args.wave < 0:  # it was taken as 0: every node after the canary in one stage
        conn.close()
        print(f"--wave: a number of nodes a stage after the canary (0: all the rest), not {args.wave}",
              file=sys.stderr)
        return 2
    for option, seconds in (("--poll", args.poll), ("--stage-timeout", args.stage_timeout),
                            ("--resend-s", args.resend_s)):
        if not 0 < seconds <= ota_plan.MAX_STAGE_S:  # NaN too; a stage's bound, as the desk's
            conn.close()
            print(f"{option}: a number of seconds above 0, at most {ota_plan.MAX_STAGE_S:g} (a week), not "
                  f"{seconds:g}", file=sys.stderr)
            return 2
    # os.path's: False, not PermissionError, where the operator may not look
    if args.summary is not None and not (os.path.isdir(args.summary.parent) and os.access(args.summary.parent,
                                                                                         os.W_OK)):
        conn.close()  # known now, not after the whole rollout
        print(f"--summary: {args.summary.parent} is no directory it can write in", file=sys.stderr)
        return 2
    if args.summary is not None and os.path.isdir(args.summary):  # the rename onto it would fail after the rollout
        conn.close()
        print(f"--summary: {args.summary} is a directory; name a file in it", file=sys.stderr)
        return 2

    def read() -> tuple[dict[str, NodeOta], dict[str, float]]:
        with conn:
            return ota_relay.read(conn), _sleep_s(conn)

    nodes, sleep_s = read()
    chosen = args.device or sorted(cfg.devices)
    unknown = [d for d in chosen if d not in cfg.devices]
    if unknown:
        print(f"--device: {', '.join(unknown)} not in {args.config}", file=sys.stderr)
        return 2
    targets, skipped = ota_plan.targets({d: (cfg.devices[d].cls, (nodes.get(d) or NodeOta(d)).running)
                                         for d in chosen}, profiles, rel.version)
    held: dict[str, str] = {}
    if not args.retry_rolled_back:
        targets, held, lines = ota_plan.hold_back(targets, nodes, rel.version)
        skipped += lines
    for s in skipped:
        console.print(f"skipped {shown(s)}")  # a node's words (why it rolled back): text
    if held:
        console.print(f"{len(held)} node(s) not sent {rel.version} again, their trial of it having rolled back: "
                      f"{', '.join(held)} (--retry-rolled-back sends it to them too)")
    if not targets:
        conn.close()
        console.print("nothing to update")
        # the summary all the same: a script that reads it after the rollout finds this one, not the last one's
        if args.summary and not _write_summary(args.summary, rel.version, "", [], {}, [], [], [], held):
            return 1
        return 0
    _warn_asleep(targets, sleep_s, args.stage_timeout)
    stages = ota_plan.stages(targets, args.canary, args.wave)  # --canary checked above
    try:
        sender = Sender(cfg, args.config)
    except SiteBrokerError as exc:
        conn.close()
        print(exc, file=sys.stderr)
        # written as a halt's is (exit 1 is one too): a script reading it finds this rollout, not the last one's
        if args.summary:
            _write_summary(args.summary, rel.version, str(exc), [], {}, [], list(targets), stages, held)
        return 1
    ro = Rollout(cfg, rel, stages, read, console.print, sender, args.resend_s)
    interrupted = 0  # the exit status of a rollout ended early
    previous = {signum: signal.signal(signum, _ended) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        ro.run(args.halt_share, args.stage_timeout, args.poll)
    except KeyboardInterrupt:  # the outcome so far is still told and written: which nodes have the command
        interrupted = 130
        ro.halted = "interrupted (Ctrl-C); the nodes sent the release go on"
    except Ended as exc:  # killed outright, it told and wrote nothing
        interrupted = 128 + exc.signum
        ro.halted = f"ended by {exc}; the nodes sent the release go on"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sender.close()
        conn.close()
    # sent: what has a command, not every node of a stage begun (an interrupt can come between two sends)
    untouched = [d for s in stages for d in s.devices if d not in ro.commands and d not in s.landed]
    pending = [d for s in stages for d in s.devices if d in ro.commands and d not in s.landed and d not in s.failed]
    landed = sorted(d for s in stages for d in s.landed)
    failed = {d: why for s in stages for d, why in s.failed.items()}
    # written before it is told: after a hang-up the terminal is gone, and a print there fails
    written = not args.summary or _write_summary(args.summary, rel.version, ro.halted, landed, failed, pending,
                                                 untouched, stages, held)
    if ro.halted:
        console.print(f"[red]HALTED[/red]: {ro.halted}; {len(untouched)} node(s) not sent the release: "
                      f"{', '.join(untouched) or 'none'}")
    console.print(f"{rel.version}: {len(landed)} landed, {len(failed)} failed, {len(untouched)} not sent"
                  + (f", {len(pending)} sent and not yet judged: {', '.join(pending)}" if pending else "")
                  + (f", {len(held)} skipped as rolled back before: {', '.join(held)}" if held else ""))
    if not written:
        return 1
    return interrupted or (1 if ro.halted or failed else 0)


def _warn_asleep(targets: list[str], sleep_s: Mapping[str, float], timeout_s: float) -> None:
    """Say on stderr, before anything is sent, which nodes sleep at least --stage-timeout between wakes: such a
    node hears the command only at its next wake, so its stage would count it failed although it only slept."""
    asleep = {d: sleep_s[d] for d in targets if sleep_s.get(d, 0.0) >= timeout_s}
    if asleep:
        longest = max(asleep.values())
        print(f"warning: --stage-timeout {timeout_s:g} s is not above the wake interval of {len(asleep)} node(s) "
              f"({', '.join(f'{d} {s:g} s' for d, s in sorted(asleep.items()))}, from their births): each hears the "
              f"command only at its next wake and would be counted failed (no new birth within {timeout_s:g} s) "
              f"though it only sleeps; give --stage-timeout above {longest:g} s plus the download",
              file=sys.stderr, flush=True)


def _write_summary(path: Path, version: str, halted: str, landed: list[str], failed: dict[str, str],
                   pending: list[str], untouched: list[str], stages: list[Stage], rolled_back: dict[str, str]) -> bool:
    """The outcome as JSON at `path`, whole or not at all (a reader never finds half a summary); False, with the
    reason on stderr, when it cannot be written."""
    doc = json.dumps({"version": version, "halted": halted, "landed": landed, "failed": failed,
                      "pending": pending, "untouched": untouched, "rolled_back": rolled_back,
                      "stages": [{"name": s.name, "devices": s.devices} for s in stages]}, indent=1)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(doc)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"--summary: cannot write {path} ({exc.strerror or exc}); the outcome is on stdout", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    try:
        if args.action == "status":
            return status(args, console)
        return rollout(args, console)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
