"""A test site: certificates, the site and district brokers started from deploy/mosquitto's configs, a
site.toml, simulated devices that seal real messages with protocol.message, and a district listener.

Brokers are lifeline.broker.Mosquitto instances whose extra configuration is the deploy file itself, with
only its listener ports and file paths changed (see `adapt`), so the ACLs and limits under test are the
shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from lifeline import site_auth
from lifeline.virtual.broker import Mosquitto, free_port
from protocol import district as dtopics
from protocol import message, senml, topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"

_PATH_KEYS = ("password_file", "acl_file", "certfile", "keyfile", "cafile")


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
    """A deploy config for a test: the loopback listener is left to Mosquitto() (its free port), the others
    get ports from `ports` (keyed by the deployed port), file paths come from `paths` (keyed by file name),
    and logging/persistence paths are dropped for the broker's own."""
    out = []
    for line in conf.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0]
        if key == "listener":
            if len(words) > 2 and words[2] == "127.0.0.1":
                continue  # Mosquitto() writes this listener itself, on a free port
            out.append(f"listener {ports[words[1]]} 127.0.0.1")
        elif key in _PATH_KEYS:
            out.append(f"{key} {paths[Path(words[1]).name]}")
        elif key in ("persistence_location", "log_dest", "log_type", "persistence", "allow_anonymous"):
            continue  # Mosquitto() sets these for its own directory (anonymous access: by its argument)
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Device:
    id: str
    cls: str
    key: bytes
    password: str = ""
    boot: int = 1
    seq: int = 0


@dataclass
class Site:
    """Everything a gateway test needs; `start()` brings both brokers up."""

    dir: Path
    site: str = "s1"
    devices: dict[str, Device] = field(default_factory=dict)
    tls: bool = True
    extra_toml: str = ""
    site_broker: Mosquitto | None = None
    district_broker: Mosquitto | None = None
    pki: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    district_password: str = ""

    def add(self, dev: str, cls: str) -> Device:
        d = self.devices[dev] = Device(dev, cls, secrets.token_bytes(32))
        return d

    @property
    def config_path(self) -> Path:
        return self.dir / "site.toml"

    def write_config(self, metrics_port: int = 0) -> Path:
        ports = self.ports
        devices = "".join(f'[[devices]]\nid = "{d.id}"\nclass = "{d.cls}"\nkey = "{d.key.hex()}"\n\n'
                          for d in self.devices.values())
        district = (f'host = "127.0.0.1"\nport = {ports["district_tls"]}\n\n[district_broker.tls]\n'
                    f'ca_file = "{self.pki["ca"]}"\ncert_file = "{self.pki[self.site + ".crt"]}"\n'
                    f'key_file = "{self.pki[self.site + ".key"]}"\n') if self.tls else (
            f'host = "127.0.0.1"\nport = {ports["district"]}\nusername = "district"\n'
            f'password = "{self.district_password}"\n')
        text = (f'[site]\nid = "{self.site}"\n\n'
                f'[site_broker]\nhost = "127.0.0.1"\nport = {ports["site"]}\nusername = "gateway"\n'
                f'password_file = "{self.dir / "auth" / "gateway.password"}"\n\n'
                f"[district_broker]\n{district}\n"
                f'[store]\npath = "{self.dir / "gateway.sqlite"}"\n\n'
                f"[metrics]\nport = {metrics_port}\n\n"
                + self.extra_toml + "\n" + devices)
        self.config_path.write_text(text)
        return self.config_path

    def start(self) -> Site:
        self.ports = {name: free_port() for name in ("site", "site_tls", "district", "district_tls")}
        self.pki = make_pki(self.dir / "pki", [self.site])
        # The site broker's password file and ACL come from the shipped generator, run on this site.toml.
        self.write_config()
        auth = self.dir / "auth"
        self.passwords = site_auth.generate(self.config_path, auth)
        for dev, d in self.devices.items():
            d.password = self.passwords[dev]
        files = {"passwd": auth / "passwd", "acl": auth / "acl", "server.crt": self.pki["server.crt"],
                 "server.key": self.pki["server.key"], "ca.crt": self.pki["ca"]}
        site_conf = adapt((DEPLOY / "site.conf").read_text(), {"8883": self.ports["site_tls"]}, files)
        self.site_broker = Mosquitto(site_conf, port=self.ports["site"], workdir=self.dir / "site-broker",
                                     anonymous=False).start()
        # District: one application user ("district") with a password; gateways by certificate.
        dauth = self.dir / "district-auth"
        dauth.mkdir()
        self.district_password = secrets.token_urlsafe(16)
        (dauth / "district-passwd").write_text(f"district:{self.district_password}\n")
        subprocess.run([site_auth.mosquitto_passwd(), "-U", str(dauth / "district-passwd")], check=True)
        (dauth / "district.acl").write_text((DEPLOY / "district.acl").read_text())
        dfiles = {"district-passwd": dauth / "district-passwd", "district.acl": dauth / "district.acl",
                  "server.crt": self.pki["server.crt"], "server.key": self.pki["server.key"],
                  "ca.crt": self.pki["ca"]}
        district_conf = adapt((DEPLOY / "district.conf").read_text(), {"8883": self.ports["district_tls"]}, dfiles)
        self.district_broker = Mosquitto(district_conf, port=self.ports["district"],
                                         workdir=self.dir / "district-broker", anonymous=False).start()
        self.write_config()
        return self

    def stop(self) -> None:
        for b in (self.site_broker, self.district_broker):
            if b is not None:
                b.stop()

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki["ca"]))

    # ------------------------------------------------------------------------------- device side

    def device_client(self, dev: str, *, tls: bool = False, password: str | None = None,
                      will: bool = True) -> aiomqtt.Client:
        """A device's MQTT connection as the firmware makes it: its id as user name, its will retained."""
        d = self.devices[dev]
        will_msg = aiomqtt.Will(topics.device(self.site, dev, topics.STATE),
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
        return topics.device(self.site, dev, topics.DATA), message.encode(body, d.key), seq

    def birth(self, dev: str, t: float | None = None, clk: int = message.CLK_EPOCH) -> tuple[str, bytes]:
        d = self.devices[dev]
        body = message.birth(dev, d.boot, d.seq, "1.0.0", d.cls, "power-on", time.time() if t is None else t,
                             clk, rssi=-61, batt=3.9)
        return topics.device(self.site, dev, topics.STATE), message.encode(body, d.key)


def reading(name: str, value: float | bool, unit: str | None = None, t: float | None = None) -> dict[int, Any]:
    rec: dict[int, Any] = senml.record(name, value, unit, time.time() if t is None else t)
    return rec


class District:
    """The district side: an application subscribed to the site's uplink, collecting decoded messages."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.items: list[tuple[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def _run(self) -> None:
        s = self.site
        assert s.district_broker is not None
        async with aiomqtt.Client("127.0.0.1", s.district_broker.port, identifier="district-app",
                                  username="district", password=s.district_password) as client:
            self.client = client
            await client.subscribe(f"district/v1/{s.site}/up/#", qos=1)
            self.ready.set()
            async for m in client.messages:
                _, kind = dtopics.parse_up(m.topic.value)
                assert isinstance(m.payload, bytes)
                self.items.append((kind, cbor2.loads(m.payload)))

    async def __aenter__(self) -> District:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def of(self, kind: str) -> list[Any]:
        return [body for k, body in self.items if k == kind]

    async def send(self, kind: str, body: Any) -> None:
        assert self.client is not None
        await self.client.publish(dtopics.down(self.site.site, kind), cbor2.dumps(body), qos=1)

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"district did not see what was expected within {timeout}s; "
                                     f"got {len(self.items)} items: {self.items[-5:]!r}")
            await asyncio.sleep(0.05)


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # rich wraps tables at 80 columns when writing to a pipe
    return env


def lifeline_cmd() -> list[str]:
    return [sys.executable, "-m", "lifeline.cli"]


class GatewayProcess:
    """`lifeline gateway --config site.toml` as a subprocess, its log lines collected from stderr."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.log_path = site.dir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> GatewayProcess:
        self._log = self.log_path.open("ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen([*lifeline_cmd(), "gateway", "--config", str(self.site.config_path)],
                                     stdout=self._log, stderr=self._log, env=gateway_env(), cwd=ROOT)
        return self

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace")[self._offset:].splitlines()

    async def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while sum(needle in line for line in self.lines()) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n" + "\n".join(self.lines()[-30:]))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in the gateway log within {timeout}s:\n"
                                     + "\n".join(self.lines()[-30:]))
            await asyncio.sleep(0.05)

    async def ready(self) -> None:
        await self.wait_log("event=connected link=site")
        await self.wait_log("event=\"uplink connected\"")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("gateway did not exit in time:\n" + "\n".join(self.lines()[-30:]))
            await asyncio.sleep(0.05)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lifeline_cmd(), *args], capture_output=True, text=True, env=gateway_env(), cwd=ROOT,
                          timeout=60)
