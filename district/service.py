"""`lifeline district`: the district service's processes, run alone or under a supervisor.

    lifeline district --config district.toml               # the supervisor: N ingest workers and the desk
    lifeline district --config district.toml --worker 2    # one ingest worker (a systemd template unit's job)
    lifeline district --config district.toml --desk        # the desk alone

Each ingest worker is its own process with its own database connection and its own MQTT session (client id
`{client_id}-w{N}`), so a district scales by starting more of them, here or on other machines against the
same broker cluster and PostgreSQL. The supervisor restarts a worker that dies, which is also what gives a
killed worker's session, and the messages the broker kept for it, back to the district.

A worker or the desk stops cleanly on SIGTERM or SIGINT, and on SIGHUP reads district.toml again (`_reloader`):
its [[sites]] taken, any other setting changed named as needing a restart. It tells systemd when it serves (a
worker once its database is open, the desk once uvicorn answers), and a SIGHUP before then is held and done then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from district import accounts, config, retention, store
from district.config import DistrictConfig
from district.desk import make_app
from district.ingest import Worker
from district.live import Hub
from district.metrics import DistrictCollector
from district.store import open_engine
from gateway import systemd
from gateway.logs import event
from gateway.site_config import BrokerConfig, ConfigError

log = logging.getLogger("lifeline.district")

RESTART_S = 1.0
RETENTION_S = 600.0  # between retention passes once caught up
DESK_GRACE_S = 5  # a stopping desk's wait for its requests to end, well within the unit's TimeoutStopSec


def worker_broker(cfg: DistrictConfig, index: int) -> BrokerConfig:
    return dataclasses.replace(cfg.broker, client_id=f"{cfg.broker.client_id}-w{index}")


def opened(cfg: DistrictConfig, role: str) -> Engine | None:
    """The district's database, or None when it cannot be opened (PostgreSQL not up yet, say), said in one
    line: it was a traceback, again at each of the supervisor's restarts."""
    try:
        return open_engine(cfg.database, cfg.base)
    except DBAPIError as exc:
        event(log, f"{role}-not-started", logging.ERROR, database=store.shown(cfg.database), error=store.failure(exc))
        return None


def run_worker(path: Path, cfg: DistrictConfig, index: int) -> int:
    """One ingest worker until SIGTERM or SIGINT; SIGHUP takes the sites' keys and registries anew."""
    engine = opened(cfg, "worker")
    if engine is None:
        return 1
    worker = Worker(engine, worker_broker(cfg, index), config.verifier(cfg), config.site_devices(cfg),
                    group=cfg.group, batch_max=cfg.batch)

    def registered(new: DistrictConfig) -> None:  # between batches: handle() runs on this loop, whole
        worker.verifier, worker.devices = config.verifier(new), config.site_devices(new)

    async def work() -> None:
        if index == 1:  # one worker of the district keeps the retention
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(worker.run())
                tasks.create_task(_retention(engine, cfg))
        else:
            await worker.run()

    asyncio.run(_until_signal(work(), _reloader(path, cfg, registered, role="worker", worker=index), "worker",
                              worker=index, database=engine.dialect.name))
    event(log, "worker-stopped", worker=index, stored=dict(worker.stored), refused=dict(worker.refused))
    engine.dispose()
    return 0


async def _retention(engine: Engine, cfg: DistrictConfig) -> None:
    """Fold old readings and delete old messages, then the old reports, refusals and sessions in a transaction
    of their own (district/retention.py), a chunk at a time, off the event loop, until caught up. A pass the
    database fails (locked past the busy timeout, read-only, its connection lost) is logged once with its reason
    and tried again at the next interval: raised, it ended the task group and the ingest beside it."""
    after = 0  # the messages up to this id are looked at; once caught up, from the first again (those held back)
    while True:
        def one_pass(after: int) -> tuple[int, int, int, dict[str, int]]:
            with engine.begin() as conn:
                now = time.time()
                folded = retention.fold(conn, now=now, raw_days=cfg.raw_days, rollup_s=cfg.rollup_s)
                pruned, scanned = retention.prune(conn, now=now, days=cfg.messages_days, after=after)
            with engine.begin() as conn:
                swept = retention.sweep(conn, now=now, reports_days=cfg.reports_days, refusals_days=cfg.refusals_days)
            return folded, pruned, scanned, swept

        try:
            folded, pruned, scanned, swept = await asyncio.to_thread(one_pass, after)
        except DBAPIError as exc:  # the pass rolled back (its transaction failed; one before it may have committed)
            event(log, "retention-failed", logging.WARNING, error=store.failure(exc), retry_s=RETENTION_S)
            await asyncio.sleep(RETENTION_S)
            continue
        done = {"folded": folded, "pruned": pruned, **swept}
        if any(done.values()):
            event(log, "retention", **{k: n for k, n in done.items() if n})
        busy = folded or scanned > after or any(swept.values())
        after = scanned if busy else 0
        await asyncio.sleep(1.0 if busy else RETENTION_S)


def _risk_points(cfg: DistrictConfig) -> dict[str, list[dict[str, Any]]]:
    return {s.id: [{"id": p.id, "class": p.cls, "lat": p.lat, "lon": p.lon, "radius_m": p.radius_m}
                   for p in s.risk_points] for s in cfg.sites.values()}


def run_desk(path: Path, cfg: DistrictConfig) -> int:
    """The desk (and its /metrics) until SIGTERM or SIGINT; SIGHUP takes the sites' risk points and device keys
    anew."""
    engine = opened(cfg, "desk")
    if engine is None:
        return 1
    accounts.set_cost(cfg.hash_memory_kib, cfg.hash_time_cost)
    broker = dataclasses.replace(cfg.broker, client_id=f"{cfg.broker.client_id}-desk")

    if cfg.metrics_port:
        registry = CollectorRegistry()
        registry.register(DistrictCollector(engine))
        try:
            start_http_server(cfg.metrics_port, cfg.metrics_host, registry)
        except OSError as exc:  # its port taken: as the desk's own, one line, not a traceback at each restart
            event(log, "desk-not-started", logging.ERROR, metrics_host=cfg.metrics_host, metrics_port=cfg.metrics_port,
                  error=str(exc))
            engine.dispose()
            return 1

    # Bound here, before `desk-started` is logged: uvicorn binds only after the app's startup, and a client
    # that took the log line at its word was refused meanwhile.
    try:
        listening = socket.create_server((cfg.desk_host, cfg.desk_port),
                                         family=socket.AF_INET6 if ":" in cfg.desk_host else socket.AF_INET)
    except OSError as exc:
        event(log, "desk-not-started", logging.ERROR, host=cfg.desk_host, port=cfg.desk_port, error=str(exc))
        engine.dispose()
        return 1

    app = make_app(engine, hub=Hub(), broker=broker, risk_points=_risk_points(cfg), rollup_s=cfg.rollup_s,
                   verifier=config.verifier(cfg))

    def mapped(new: DistrictConfig) -> None:
        app.state.risk_points = _risk_points(new)  # replaced whole: a request reading the old one keeps it
        app.state.verifier = config.verifier(new)

    # SIGTERM and SIGINT are uvicorn's: it ends the live feeds (sse-starlette follows its should_exit), closes the
    # connections and runs the lifespan's end. Cancelled instead, the desk cut every feed mid-stream and logged
    # two tracebacks.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=DESK_GRACE_S))

    def stop() -> None:
        server.should_exit = True

    port = listening.getsockname()[1]
    asyncio.run(_until_signal(server.serve(sockets=[listening]), _reloader(path, cfg, mapped, role="desk"), "desk",
                              stop=stop, serving=lambda: server.started, url=f"http://{cfg.desk_host}:{port}/"))
    event(log, "desk-stopped")
    engine.dispose()
    return 0


def _reloader(path: Path, cfg: DistrictConfig, apply: Callable[[DistrictConfig], None],
              **fields: Any) -> Callable[[], None]:
    """SIGHUP: district.toml read again and `apply`'d (its [[sites]]: keys, registries, risk points). A config
    that fails its checks is refused whole and the running one kept; other settings changed are named, as a
    restart applies them. Unhandled, a SIGHUP (systemctl reload, a closed terminal) killed the process outright:
    its MQTT session and any transaction cut, the desk's live feeds dropped."""
    running = cfg

    def reload() -> None:
        nonlocal running
        try:
            new = config.load(path)
        except ConfigError as exc:
            event(log, "reload-failed", logging.ERROR, **fields, error=str(exc))
            return
        apply(new)
        event(log, "reloaded", **fields, sites=len(new.sites),
              devices=sum(len(s.device_keys) for s in new.sites.values()))
        ignored = config.restart_needed(running, new)
        if ignored:
            event(log, "reload-needs-restart", logging.WARNING, **fields, settings=",".join(ignored))
        running = dataclasses.replace(running, sites=new.sites)
    return reload


async def _until_signal(work: Coroutine[Any, Any, None], reload: Callable[[], None], role: str,
                        stop: Callable[[], None] | None = None, serving: Callable[[], bool] = lambda: True,
                        **fields: Any) -> None:
    """`work` until SIGTERM or SIGINT, which cancel it unless `stop` is given; once `serving()`, systemd is
    told so and SIGHUP calls `reload` (gateway/systemd.py: one before is held till then)."""
    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop or task.cancel)
    event(log, f"{role}-started", **fields)
    while not serving() and not task.done():  # uvicorn tells it serves by a flag alone
        await asyncio.sleep(0.01)
    if not task.done():
        systemd.ready(reload)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def supervise(config: Path, cfg: DistrictConfig, *, desk: bool = True) -> int:
    """Start the workers (and the desk), restart any that exits, stop them all on SIGTERM, SIGINT or SIGHUP."""
    roles = [["--worker", str(i)] for i in range(1, cfg.workers + 1)] + ([["--desk"]] if desk else [])
    base = [sys.executable, "-m", "lifeline.cli", "district", "--config", str(config)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)  # a dropped SSH session: killed by it, it left its workers and desk running
    while not stopping:
        for i, role in enumerate(roles):
            proc = procs.get(i)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                event(log, "restarting", logging.WARNING, role=" ".join(role), exit=proc.returncode)
            procs[i] = subprocess.Popen([*base, *role])
        time.sleep(RESTART_S)
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0
