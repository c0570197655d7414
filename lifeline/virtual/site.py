"""A virtual site around one gateway: its brokers, its devices' logins, its site.toml and the gateway process.

Tests, the bench (hil_tests/), the demo and bench/ need the same site, and a site built four ways drifts
from the deployed one four ways. So there is one: the site and district brokers run the shipped configs of
deploy/mosquitto with only ports and file paths changed (`adapt`), devices log in with the passwords and
ACL `lifeline site-auth` writes, and the gateway is the real `lifeline gateway` on a site.toml written from
the site's devices. With `tls` the gateway reaches the district by client certificate and both brokers
open their TLS listeners, as deployed; without it every login is a password on loopback. A device here is
its identity and key: messages it seals are real (protocol.message), whatever runs it.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lifeline import signals, site_auth, upy
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.recorder import Entry, Recorder
from protocol import district_verify, message, senml, site_seal, topics

ROOT = upy.ROOT
DEPLOY = ROOT / "deploy" / "mosquitto"
DISTRICT_USER = "district"  # the district application's login on the district broker
GATEWAY_TIMEOUT_S = 30.0  # from start to connected to both brokers
STOP_TIMEOUT_S = 20.0  # SIGTERM drains the outbox for a bounded time; SIGKILL after this

_PATH_KEYS = ("password_file", "acl_file", "certfile", "keyfile", "cafile")
_TLS_KEYS = ("certfile", "keyfile", "cafile", "tls_version", "require_certificate", "use_identity_as_username")
_OWN_KEYS = ("persistence", "persistence_location", "log_dest", "log_type", "allow_anonymous")


class SiteError(RuntimeError):
    """A part of the site could not start; the message names it."""


def make_pki(d: Path, client_cns: Iterable[str] = ()) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and client certificates, made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=lifeline-test-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    out = {"ca": d / "ca.crt"}
    for name, cn, ext in [("server", "localhost", ["-extfile", "san.ext"])] + [(cn, cn, []) for cn in client_cns]:
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *ext)
        out[f"{name}.crt"] = d / f"{name}.crt"
        out[f"{name}.key"] = d / f"{name}.key"
    return out


def adapt(conf: str, ports: Mapping[str, int], paths: Mapping[str, Path]) -> str:
    """A deploy config for a virtual site. The loopback listener is left to Mosquitto() (its free port);
    another listener gets its port from `ports` (keyed by the deployed port), or is left out with its TLS
    settings when `ports` is empty (logins by password on loopback; the shipped ACL still decides). File
    paths come from `paths` (keyed by file name); logging and persistence are the broker's own."""
    out = []
    for line in conf.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0]
        if key == "listener":
            if (len(words) > 2 and words[2] == "127.0.0.1") or words[1] not in ports:
                continue  # Mosquitto() writes the loopback listener itself, on a free port
            out.append(f"listener {ports[words[1]]} 127.0.0.1")
        elif key in _OWN_KEYS or (key in _TLS_KEYS and not ports):
            continue  # Mosquitto() sets these for its own directory (anonymous access: by its argument)
        elif key in _PATH_KEYS:
            out.append(f"{key} {paths[Path(words[1]).name]}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def hashed_passwords(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file for `users` (name -> password), hashed by mosquitto_passwd."""
    path.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
    path.chmod(0o600)
    subprocess.run([site_auth.mosquitto_passwd(), "-U", str(path)], check=True)
    return path


@dataclass
class Device:
    """A device of the site: its identity, key and broker login, and the counters of what it has sealed."""

    id: str
    cls: str
    key: bytes
    password: str = ""
    position: tuple[float, float] | None = None
    boot: int = 1
    seq: int = 0

    def toml(self) -> str:
        where = "" if self.position is None else f"position = [{self.position[0]}, {self.position[1]}]\n"
        return f'[[devices]]\nid = "{self.id}"\nclass = "{self.cls}"\nkey = "{self.key.hex()}"\n{where}\n'

    def csv(self) -> str:
        """Its row of devices.csv ([site] devices_file; columns id,class,key,latitude,longitude)."""
        where = "," if self.position is None else f"{self.position[0]},{self.position[1]}"
        return f"{self.id},{self.cls},{self.key.hex()},{where}\n"


def reading(name: str, value: float | bool, unit: str | None = None, t: float | None = None) -> dict[int, Any]:
    rec: dict[int, Any] = senml.record(name, value, unit, time.time() if t is None else t)
    return rec


class Site:
    """Brokers, logins and site.toml for one site; `start()` brings both brokers up.

    `extra_toml` holds site.toml sections beyond the brokers, store and devices (rule overrides, risk
    points, uplink or ingest settings). `metrics` gives the gateway a Prometheus port; `device_host` opens
    a second site-broker listener there for real boards on the bench's network. `district` is another site
    whose district broker this one uses instead of its own, as sites of one district do: its gateway logs
    in there by password (so both sites need tls=False), and the district ACL's pattern confines it to its
    own site's topics. `devices_csv` registers the devices in a devices.csv beside site.toml ([site]
    devices_file), as a large site does, instead of as [[devices]] tables (the district then reads that file for
    the device keys). `store_toml` holds keys added to site.toml's [store] table."""

    def __init__(self, dir: Path, id: str = "s1", *, tls: bool = True, extra_toml: str = "", metrics: bool = False,
                 device_host: str | None = None, district: Site | None = None, devices_csv: bool = False) -> None:
        if district is not None and (tls or district.tls):
            raise SiteError("a shared district broker takes gateway logins by password: tls=False on both sites")
        self.dir = dir
        self.id = id
        self.tls: bool = tls
        self.extra_toml = extra_toml
        self.store_toml = ""
        self.device_host = device_host
        self.devices_csv = devices_csv
        self.devices: dict[str, Device] = {}
        self.shared = district  # the site whose district broker this one uses, if not its own
        self.ports: dict[str, int] = {"site": free_port(),
                                      "district": district.ports["district"] if district else free_port()}
        if tls:
            self.ports.update(site_tls=free_port(), district_tls=free_port())
        if device_host:
            self.ports["devices"] = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.pki: dict[str, Path] = {}
        self.passwords: dict[str, str] = {}  # site-broker logins, from `lifeline site-auth`
        # the district application's: one per district broker
        self.district_password: str = district.district_password if district else secrets.token_urlsafe(18)
        self.gateway_password = secrets.token_urlsafe(18)  # the gateway's at the district, without TLS
        self.district_logins = {self.id: self.gateway_password}  # gateways' logins at this site's district broker
        self.site_key = secrets.token_bytes(site_seal.KEY_BYTES)  # seals the uplink; the district holds it too
        self.site_broker: Mosquitto | None = None
        self.district_broker: Mosquitto | None = None

    def add(self, dev: str, cls: str, key: bytes | None = None,
            position: tuple[float, float] | None = None) -> Device:
        d = self.devices[dev] = Device(dev, cls, key or secrets.token_bytes(32), position=position)
        return d

    @property
    def config_path(self) -> Path:
        return self.dir / "site.toml"

    @property
    def device_port(self) -> int:
        """The site-broker port devices are given."""
        return self.ports.get("devices", self.ports["site"])

    def write_config(self, metrics_port: int | None = None) -> Path:
        if metrics_port is not None:
            self.metrics_port = metrics_port
        ports = self.ports
        district = (f'host = "127.0.0.1"\nport = {ports["district_tls"]}\n\n[district_broker.tls]\n'
                    f'ca_file = "{self.pki["ca"]}"\ncert_file = "{self.pki[self.id + ".crt"]}"\n'
                    f'key_file = "{self.pki[self.id + ".key"]}"\n') if self.tls else (
            f'host = "127.0.0.1"\nport = {ports["district"]}\nusername = "{self.id}"\n'
            f'password = "{self.gateway_password}"\n')
        if self.devices_csv:
            (self.dir / "devices.csv").write_text("id,class,key,latitude,longitude\n"
                                                  + "".join(d.csv() for d in self.devices.values()))
            devices, listed = "", 'devices_file = "devices.csv"\n'
        else:
            devices, listed = "".join(d.toml() for d in self.devices.values()), ""
        text = ("# Written for one run of a virtual site (lifeline/virtual/site.py); keys are fresh each run.\n\n"
                f'[site]\nid = "{self.id}"\nkey = "{self.site_key.hex()}"\n{listed}\n'
                f'[site_broker]\nhost = "127.0.0.1"\nport = {ports["site"]}\nusername = "{site_auth.GATEWAY_USER}"\n'
                'password_file = "auth/gateway.password"\n\n'
                f"[district_broker]\n{district}\n"
                f'[store]\npath = "gateway.sqlite"\n{self.store_toml}\n'
                f'[metrics]\nhost = "127.0.0.1"\nport = {self.metrics_port}\n\n'
                + self.extra_toml + "\n" + devices)
        self.config_path.write_text(text)
        return self.config_path

    def start(self) -> Site:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.pki = make_pki(self.dir / "pki", [self.id])
        self.write_config()
        # The site broker's password file and ACL come from the shipped generator, run on this site.toml.
        auth = self.dir / "auth"
        self.passwords = site_auth.generate(self.config_path, auth)
        for dev, d in self.devices.items():
            d.password = self.passwords[dev]
        tls_files = {"server.crt": self.pki["server.crt"], "server.key": self.pki["server.key"],
                     "ca.crt": self.pki["ca"]} if self.tls else {}
        site_conf = adapt((DEPLOY / "site.conf").read_text(), self._tls_port("site_tls"),
                          {"passwd": auth / "passwd", "acl": auth / "acl", **tls_files})
        if self.device_host:
            site_conf += f"listener {self.ports['devices']} {self.device_host}\n"
        self.site_broker = self._broker(site_conf, "site")
        self._start(self.site_broker, "site")
        if self.shared is not None:
            self.district_broker = self.shared.join_district(self.id, self.gateway_password)
            return self
        # District: the district application and (without TLS) each site's gateway log in by password.
        dauth = self.dir / "district-auth"
        dauth.mkdir(exist_ok=True)
        self._district_passwords()
        shutil.copy(DEPLOY / "district.acl", dauth / "district.acl")
        district_conf = adapt((DEPLOY / "district.conf").read_text(), self._tls_port("district_tls"),
                              {"district-passwd": dauth / "district-passwd", "district.acl": dauth / "district.acl",
                               **tls_files})
        self.district_broker = self._broker(district_conf, "district")
        self._start(self.district_broker, "district")
        return self

    def _district_passwords(self) -> Path:
        return hashed_passwords(self.dir / "district-auth" / "district-passwd",
                                {DISTRICT_USER: self.district_password, **self.district_logins})

    def join_district(self, site_id: str, password: str) -> Mosquitto:
        """Give another site's gateway a login on this site's district broker (a running broker rereads its
        password file on SIGHUP); returns that broker."""
        if self.district_broker is None or self.district_broker.proc is None:
            raise SiteError(f"site {site_id}: start the district's site {self.id} first")
        self.district_logins[site_id] = password
        self._district_passwords()
        self.district_broker.proc.send_signal(signal.SIGHUP)
        return self.district_broker

    def _tls_port(self, name: str) -> dict[str, int]:
        return {"8883": self.ports[name]} if self.tls else {}

    def _broker(self, conf: str, name: str) -> Mosquitto:
        return Mosquitto(conf, port=self.ports[name], workdir=self.dir / f"{name}-broker", anonymous=False)

    @staticmethod
    def _start(broker: Mosquitto, name: str) -> None:
        """Started once the site holds it, so that stop() finds it whatever ends the start."""
        try:
            broker.start()
        except RuntimeError as exc:
            raise SiteError(f"{name} broker: {exc}") from None

    def stop(self) -> None:
        """Stop this site's brokers; a shared district broker is its own site's to stop."""
        for b in (self.site_broker, self.district_broker if self.shared is None else None):
            if b is not None:
                b.stop()

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki["ca"]))

    def recorder(self, *, ack_alarms: bool = False, on_entry: Callable[[Entry], None] | None = None,
                 raw: bool = False) -> Recorder:
        """The district application on this site's uplink (lifeline/virtual/recorder.py)."""
        assert self.district_broker is not None
        return Recorder("127.0.0.1", self.district_broker.port, self.id, (DISTRICT_USER, self.district_password),
                        ack_alarms=ack_alarms, on_entry=on_entry, raw=raw, verifier=self.verifier())

    def verifier(self) -> district_verify.Verifier:
        """The district's verifier for this site: its site key and its devices' keys."""
        return district_verify.Verifier({self.id: self.site_key}, {d.id: d.key for d in self.devices.values()})

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's Prometheus endpoint (0 when absent)."""
        for sample in metrics(self.metrics_port):
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return 0.0

    # ------------------------------------------------------------------------------- device side

    def device_client(self, dev: str, *, tls: bool = False, password: str | None = None,
                      will: bool = True) -> aiomqtt.Client:
        """A device's MQTT connection as the firmware makes it: its id as user name, its will retained."""
        d = self.devices[dev]
        will_msg = aiomqtt.Will(topics.device(self.id, dev, topics.STATE),
                                message.encode(message.death(dev, d.boot, d.seq), d.key), 1, True) if will else None
        return aiomqtt.Client("127.0.0.1", self.ports["site_tls"] if tls else self.ports["site"],
                              identifier=f"dev-{dev}", username=dev,
                              password=d.password if password is None else password,
                              tls_context=self.tls_context() if tls else None, will=will_msg)

    def data(self, dev: str, records: list[dict[int, Any]], *, clk: int = message.CLK_EPOCH,
             pri: int = message.PRI_ROUTINE, seq: int | None = None) -> tuple[str, bytes, int]:
        """(topic, sealed payload, seq) of the device's next data message."""
        d = self.devices[dev]
        if seq is None:
            seq = d.seq
            d.seq += 1
        body = message.data(dev, d.boot, seq, records, clk, pri)
        return topics.device(self.id, dev, topics.DATA), message.encode(body, d.key), seq

    def birth(self, dev: str, t: float | None = None, clk: int = message.CLK_EPOCH) -> tuple[str, bytes]:
        d = self.devices[dev]
        body = message.birth(dev, d.boot, d.seq, "1.0.0", d.cls, "power-on", time.time() if t is None else t,
                             clk, rssi=-61, batt=3.9)
        return topics.device(self.id, dev, topics.STATE), message.encode(body, d.key)


def metrics(port: int, timeout: float = 2.0) -> list[Sample]:
    """Every sample of the gateway's Prometheus endpoint on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def environment() -> dict[str, str]:
    """The environment of a `lifeline` subprocess: our MICROPYPATH, unbuffered logs, wide tables."""
    return upy.environment({"PYTHONUNBUFFERED": "1", "COLUMNS": "200"})  # rich wraps at 80 on a pipe


def lifeline_cmd() -> list[str]:
    return [sys.executable, "-m", "lifeline.cli"]


class GatewayProcess:
    """`lifeline gateway --config site.toml` as a subprocess in its own session, its output appended to a
    log. The waits are coroutines (asyncio tests run clients beside them); a thread runs them with
    asyncio.run."""

    def __init__(self, site: Site, log_path: Path | None = None, cpu: int | None = None) -> None:
        self.site = site
        self.log_path = log_path or site.dir / "gateway.log"
        self.cpu = cpu  # run on this CPU alone (taskset, so every thread the daemon starts stays on it)
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> GatewayProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        pin = [] if self.cpu is None else ["taskset", "--cpu-list", str(self.cpu)]
        with self.log_path.open("ab") as log:
            self._offset = log.tell()
            with signals.held():
                self.proc = subprocess.Popen([*pin, *lifeline_cmd(), "gateway", "--config",
                                              str(self.site.config_path)], stdout=log, stderr=log, env=environment(),
                                             cwd=ROOT, start_new_session=True)
        return self

    def lines(self) -> list[str]:
        """The log lines of this run."""
        return self.log_path.read_text(errors="replace")[self._offset:].splitlines()

    def tail(self, lines: int = 8) -> str:
        return " | ".join(self.lines()[-lines:])

    def check(self) -> None:
        """Raise SiteError if the gateway has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise SiteError(f"the gateway exited with {self.proc.returncode}: {self.tail(30)}")

    async def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while sum(needle in line for line in self.lines()) < count:
            self.check()
            if time.monotonic() > deadline:
                raise SiteError(f"no {needle!r} in the gateway log within {timeout:.0f} s: {self.tail(30)}")
            await asyncio.sleep(0.05)

    async def ready(self, timeout: float = GATEWAY_TIMEOUT_S) -> None:
        """Connected to both brokers."""
        await self.wait_log("event=connected link=site", timeout)
        await self.wait_log("event=\"uplink connected\"", timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise SiteError(f"the gateway did not exit in time: {self.tail(30)}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM (the gateway drains its outbox for a bounded time and exits), SIGKILL if it does not."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
