"""Start real Mosquitto brokers on free loopback ports, for tests, benchmarks and the demo."""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from lifeline import signals


def mosquitto_binary() -> str:
    """The broker binary; Debian installs it in /usr/sbin, which is not on every PATH."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: run scripts/bootstrap.sh (it uses apt-get)")
    return found


PORTS_FROM = 10000  # the lowest port handed out; the top is where the kernel's ephemeral range starts


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_slice() -> range | None:
    """This process's ports: below the ephemeral range, the pytest-xdist worker's own share of them (a test's
    subprocesses share its worker's), or None when the range is too small to share."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    size = (_ephemeral_low() - PORTS_FROM) // max(count, 1)
    if size < 200:
        return None
    first = PORTS_FROM + (int(worker) % count if worker.isdigit() else 0) * size
    return range(first, first + size)


_SLICE = _port_slice()
_next = random.randrange(len(_SLICE)) if _SLICE else 0  # processes of one worker start at different places
_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing holds, for a broker or server that a test, bench or the demo starts. Not one the
    kernel picks for port 0: those come from the ephemeral range, where every outgoing connection takes its
    source port, so one could hold it by the time the server binds (a district desk could not bind its port for
    seconds, once in ten full runs). Each xdist worker takes from its own share, so workers never collide."""
    global _next
    if _SLICE is None:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port
    with _lock:
        for _ in range(len(_SLICE)):
            port = _SLICE[_next % len(_SLICE)]
            _next += 1
            if _bindable(port):
                return port
    raise RuntimeError(f"no free port in {_SLICE}")


def subscribe_only(workdir: Path, patterns: Sequence[str]) -> str:
    """Config lines for a broker whose anonymous clients may publish anything but subscribe only to
    `patterns`, refusing any other filter in the SUBACK, as a broker's access rules can. Mosquitto's acl_file
    grants every subscription and filters at delivery; its dynamic-security plugin (in Debian's package)
    refuses at the subscribe, so it is the one used."""
    plugins = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")
    if not plugins:
        raise RuntimeError("Mosquitto's dynamic-security plugin is missing (Debian package mosquitto)")
    allowed = [{"acltype": "subscribePattern", "topic": p, "allow": True} for p in patterns]
    rules = {"anonymousGroup": "anonymous", "clients": [],
             "groups": [{"groupname": "anonymous", "roles": [{"rolename": "anonymous"}]}],
             "roles": [{"rolename": "anonymous", "acls": [
                 {"acltype": "publishClientSend", "topic": "#", "allow": True}, *allowed]}],
             "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                                  "unsubscribe": True}}
    path = workdir / "dynamic-security.json"
    path.write_text(json.dumps(rules))
    return f"plugin {plugins[0]}\nplugin_opt_config_file {path}"


class Mosquitto:
    """One broker process on 127.0.0.1.

    `extra_conf` is appended to a minimal config (listener, anonymous access, persistence in the broker's
    own directory), so a test can add ACLs or bridges. The port survives `restart()`, which lets a test
    take a broker down and bring it back as a link outage.
    """

    def __init__(self, extra_conf: str = "", port: int | None = None, workdir: Path | None = None,
                 persistence: bool = True, anonymous: bool = True) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="mosq-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Started as root, mosquitto would switch to the "mosquitto" user, which cannot write the log,
            # the persistence file or read a password file in our 0700 temp dir; as anyone else it is ignored.
            f"user {getpass.getuser()}",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "set_tcp_nodelay true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "max_queued_messages 100000",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log_path}",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n" + extra_conf + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        with signals.held():
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}{log}")
            with contextlib.closing(socket.socket()) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker and close its stderr pipe, which was left open (a ResourceWarning) at every stop."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def running(extra_conf: str = "") -> Iterator[Mosquitto]:
    with Mosquitto(extra_conf) as broker:
        yield broker
