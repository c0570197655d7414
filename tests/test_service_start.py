"""The long-running services as their systemd units start them: the gateway, a district worker and the desk.

A SIGHUP in their start-up, before the reload's handler was installed (imports, the store or the database
opened: half a second), killed them: a `systemctl reload` or a logrotate postrotate just after a start took the
site's gateway down. And the units were Type=exec, so `systemctl start` returned, and a reload went through,
before the process could take one. Each process here is real, with its brokers unreachable (it must serve
without them); $NOTIFY_SOCKET is a real unix datagram socket, as systemd's is."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from district import store
from district.schema import messages, readings
from lifeline.virtual.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "ab" * 32
ROLES = ["gateway", "worker", "desk"]


class Service:
    """One role started as its unit starts it, with a notify socket of its own."""

    def __init__(self, tmp: Path, role: str) -> None:
        self.role, self.port = role, free_port()
        if role == "gateway":
            self.store = tmp / "gw.sqlite"
            conf = tmp / "site.toml"
            conf.write_text(f'[site]\nid = "s1"\nkey = "{KEY}"\n\n[site_broker]\nhost = "127.0.0.1"\nport = 1\n\n'
                            f'[district_broker]\nhost = "127.0.0.1"\nport = 1\n\n[store]\npath = "gw.sqlite"\n\n'
                            f'[metrics]\nport = {self.port}\n\n[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY}"\n')
            self.argv = ["gateway", "--config", str(conf)]
        else:
            self.store = tmp / "district.sqlite"
            conf = tmp / "district.toml"
            conf.write_text(f'[broker]\nhost = "127.0.0.1"\nport = 1\nclient_id = "d"\n\n[database]\n'
                            f'url = "district.sqlite"\n\n[desk]\nport = {self.port}\n\n[metrics]\nport = 0\n')
            self.argv = ["district", "--config", str(conf), *(["--worker", "1"] if role == "worker" else ["--desk"])]
        self.log = tmp / f"{role}.log"
        self.dir = Path(tempfile.mkdtemp(prefix="sd", dir="/tmp"))  # a socket's path is at most 107 bytes
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.dir / "notify"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.dir / "notify"), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", *self.argv], stdout=out,
                                         stderr=out, env=env, cwd=ROOT, start_new_session=True)
        return self.proc

    def told(self, timeout: float = 30) -> str:
        """The next message to the notify socket (an AssertionError at once if the process has ended)."""
        self.socket.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None and time.monotonic() < deadline:
            try:
                return self.socket.recv(4096).decode()
            except TimeoutError:
                pass
        raise AssertionError(f"nothing told: {self.tail()}")

    def tail(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        return f"exit {code}; " + self.log.read_text(errors="replace")[-2000:]

    def reloaded(self) -> int:
        return self.log.read_text(errors="replace").count("event=reloaded")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.socket.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    s = Service(tmp_path, request.param)
    try:
        yield s
    finally:
        s.close()


def serves(s: Service) -> bool:
    """The role's service answers: the gateway's metrics, the desk's page; a worker has its database."""
    if s.role == "worker":
        return s.store.exists()
    url = f"http://127.0.0.1:{s.port}/" + ("metrics" if s.role == "gateway" else "")
    with urllib.request.urlopen(url, timeout=0.5) as answer:
        return bool(answer.status == 200)


@pytest.mark.parametrize("service", ROLES, indirect=True)
def test_ready_is_told_once_the_service_serves_and_around_a_reload(service: Service) -> None:
    service.start()
    assert service.told() == "READY=1"
    assert serves(service), service.tail()
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    reloading, done = service.told(), service.told()
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=") and done == "READY=1", (reloading, done)
    assert service.reloaded() == 1, service.tail()
    assert service.stop() == 0, service.tail()


def mapped(pid: int, marker: str) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True  # gone: the assertion below says how


@pytest.mark.parametrize("service", ROLES, indirect=True)
def test_a_sighup_during_start_up_is_held_and_done_once_it_serves(service: Service) -> None:
    """Each try sends SIGHUP at a point of the start-up, as soon as the process gets there: its first C
    extension loaded (_asyncio), SQLite's loaded, its store or database made; then one more once it serves."""
    points = [lambda pid: mapped(pid, "_asyncio"), lambda pid: mapped(pid, "_sqlite3"),
              lambda pid: service.store.exists()]
    for i, reached in enumerate(points):
        for made in service.store.parent.glob(service.store.name + "*"):  # the store, its WAL with it
            made.unlink()
        proc = service.start()
        deadline = time.monotonic() + 60
        while not reached(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGHUP)
        assert service.told() == "READY=1", f"try {i}: {service.tail()}"
        reloading, done = service.told(), service.told()  # the held one, done
        assert reloading.startswith("RELOADING=1") and done == "READY=1", (i, reloading, done)
        proc.send_signal(signal.SIGHUP)
        assert service.told().startswith("RELOADING=1") and service.told() == "READY=1"
        assert service.stop() == 0, f"try {i}: {service.tail()}"
        assert service.reloaded() == 2 * (i + 1), f"try {i}: {service.tail()}"


@pytest.mark.parametrize("service", ["worker", "desk"], indirect=True)
def test_a_start_that_upgrades_the_database_says_each_step_and_extends_its_timeout(service: Service) -> None:
    """A database made before the index readings_time gets it before READY=1, a build of minutes on a large
    one. The units' TimeoutStartSec is finite, so the step is said first: its status and an allowance past
    the timeout on the notify socket, and a log line naming it; the status is cleared once the upgrade is done."""
    engine = store.open_engine(str(service.store))
    with engine.begin() as conn:
        conn.execute(messages.insert().values(id=1, site="s1", dev="d1", seq_key=1, boot=1, received=1.0))
        conn.execute(readings.insert(), [{"message": 1, "site": "s1", "dev": "d1", "n": "ch4", "t": float(t)}
                                         for t in range(500)])
        conn.execute(text("DROP INDEX readings_time"))
    engine.dispose()
    service.start()
    said = [service.told()]
    while said[-1] != "READY=1":
        said.append(service.told())
    step = "index readings_time of readings"
    assert said == [f"STATUS=upgrading the database: {step}, 500 rows\nEXTEND_TIMEOUT_USEC=60000000", "STATUS=",
                    "READY=1"], said
    assert f'event=database-upgrade step="{step}" rows=500 allowed_s=60' in service.log.read_text(), service.tail()
    assert "event=database-upgraded steps=1" in service.log.read_text(), service.tail()
    assert service.stop() == 0, service.tail()
