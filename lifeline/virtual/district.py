"""The district service of a virtual site: district.toml written from the site's own keys and registry, and
`lifeline district` run as a process (the supervisor, or one worker), its output kept in a log; the desk's live
feed read to its end, and the desk run alone with a user logged in and a feed open."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from lifeline import signals
from lifeline.virtual.broker import free_port
from lifeline.virtual.site import DISTRICT_USER, ROOT, Site, SiteError, environment, lifeline_cmd

SUBSCRIBED = "event=connected link=district"  # gateway/ingest.py's Subscriber, as district/ingest.py names it
LEAST_HASH_COST = "[accounts]\nhash_memory_kib = 19456\nhash_time_cost = 2\n"  # the least district.toml allows


def write_config(site: Site | Sequence[Site], path: Path, *, database: str, workers: int = 1,
                 desk_port: int | None = None, extra: str = "", per_site: Mapping[str, str] | None = None) -> Path:
    """district.toml for one site or several on one district broker (the first's; the others made with
    Site(..., district=first)): the broker, and per site its seal key and its site.toml (or its devices.csv) as
    the registry.
    `per_site`: TOML placed after a site's table, by site id (its [[sites.risk_points]])."""
    sites = [site] if isinstance(site, Site) else list(site)
    first = sites[0]
    assert first.district_broker is not None
    if any(s.district_broker is not first.district_broker for s in sites):
        raise SiteError("write_config: every site must use the first site's district broker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[broker]\nhost = "127.0.0.1"\nport = {first.district_broker.port}\nusername = "{DISTRICT_USER}"\n'
        f'password = "{first.district_password}"\nclient_id = "district-{first.id}"\n\n'
        f'[database]\nurl = "{database}"\n\n[ingest]\nworkers = {workers}\nbatch = 200\n\n'
        f'[desk]\nport = {desk_port or free_port()}\n\n[metrics]\nport = 0\n\n'
        + "".join(f'[[sites]]\nid = "{s.id}"\nseal_key = "{s.site_key.hex()}"\ndevices = "{registry(s)}"\n\n'
                  + (per_site or {}).get(s.id, "") for s in sites)
        + extra)
    return path


def registry(site: Site) -> Path:
    """The file the district takes a site's device keys from: its site.toml, or its devices file."""
    return site.dir / "devices.csv" if site.devices_csv else site.config_path


class DistrictProcess:
    """`lifeline district --config district.toml [role...]` in its own session."""

    def __init__(self, config: Path, *role: str, log_path: Path | None = None) -> None:
        self.config = config
        self.role = list(role)
        self.log_path = log_path or config.parent / ("district" + "".join(role).replace("-", "_") + ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DistrictProcess:
        with self.log_path.open("ab") as log, signals.held():
            self.proc = subprocess.Popen([*lifeline_cmd(), "district", "--config", str(self.config), *self.role],
                                         stdout=log, stderr=log, env=environment(), cwd=ROOT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        """Until a worker has subscribed: a shared subscription takes nothing published before its first
        member joins, so "worker-started" (logged before the connect) is too early to publish after."""
        self.wait_log(SUBSCRIBED, timeout)

    def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            if self.proc is not None and self.proc.poll() is not None:
                raise SiteError(f"district exited with {self.proc.returncode}: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise SiteError(f"no {needle!r} in the district log within {timeout:.0f} s: {self.log()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, the process group with it (a supervisor's workers too)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def follow(base: str, cookies: httpx.Cookies, opened: threading.Event) -> str:
    """The desk's live feed read to its end: how it ended ("ended", or the client's error)."""
    try:
        with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c, c.stream("GET", "/api/events") as r:
            for _ in r.iter_lines():
                opened.set()
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ended"


@contextmanager
def desk_with_feed(site: Site, path: Path, port: int) -> Iterator[tuple[DistrictProcess, httpx.Client, Future[str]]]:
    """`lifeline district --desk` alone on district.toml at `path` (passwords at LEAST_HASH_COST), its user li.wei
    added first and logged in, and that user's live feed open (`follow` in a thread, its hello heard). The desk
    is killed on the way out if the test has not stopped it."""
    conf = write_config(site, path, database="district.sqlite", desk_port=port, extra=LEAST_HASH_COST)
    added = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "li.wei"],
                           input="duty-password-1\n", capture_output=True, text=True, env=environment(), cwd=ROOT,
                           timeout=60)
    assert added.returncode == 0, added.stderr
    desk = DistrictProcess(conf, "--desk").start()
    try:
        desk.wait_log("desk-started")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as web, ThreadPoolExecutor(1) as pool:
            assert web.post("/api/login", json={"user": "li.wei", "password": "duty-password-1"}).status_code == 200
            opened = threading.Event()
            feed = pool.submit(follow, base, web.cookies, opened)
            assert opened.wait(10), "the live feed's hello"
            yield desk, web, feed
    finally:
        desk.kill()
