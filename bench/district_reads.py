"""District reads benchmark: what the desk's periodic reads cost once the district has years of history.

    .venv/bin/python -m bench.district_reads           # full sizes, writes bench/results/district_reads.json
    .venv/bin/python -m bench.district_reads --quick   # small sizes, a few seconds

A database (SQLite, then a real PostgreSQL, lifeline/virtual/postgres.py) is filled straight through SQLAlchemy
with a history of `orders` closed work orders (each with its orange or red alarm and five steps), as many
blue and yellow alarms that opened none, `messages` device messages of a reading each, refusals, and one site of
`devices` nodes that each sent a sealed "ota" event. Then, each `rounds` times, timed on its own:

- scrape: one Prometheus scrape of district/metrics.py's collector, through prometheus_client's exposition, as
  the desk's metrics server answers it (the first of a process is timed apart: it may read what later ones keep);
- rollout_view: district/rollout.view of the large site, what the desk's update panel reads.

The baseline, on each engine in the same run: the same reads over a tenth of the history (its first five weeks:
a tenth of the messages, orders, alarms and refusals, the same site, nodes and update outcomes). The ratio, full
over tenth, is what ten times the history costs a read: about 1 for a read that stays cheap as the years go by,
about 10 for one that reads all of it. A database without history would show only the fixed cost, not how a
read grows.

Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, Table, insert

from bench import report
from district import rollout, store
from district.metrics import DistrictCollector
from district.schema import (
    alarms,
    devices,
    messages,
    metadata,
    readings,
    refusals,
    seq_key,
    sites,
    work_order_steps,
    work_orders,
)
from lifeline.virtual.postgres import Postgres

BIG = "big"  # the site of `devices` nodes
CHUNK = 5000


@dataclass(frozen=True)
class Sizes:
    orders: int
    messages: int
    devices: int
    refusals: int
    rounds: int


FULL = Sizes(orders=50_000, messages=200_000, devices=5000, refusals=5000, rounds=5)
QUICK = Sizes(orders=500, messages=2000, devices=100, refusals=50, rounds=2)
DAYS = 365.0


def tenth(sizes: Sizes) -> Sizes:
    """The baseline's history: a tenth of everything but the nodes, each of which still sent its update outcome."""
    return replace(sizes, orders=sizes.orders // 10, messages=max(sizes.messages // 10, sizes.devices),
                   refusals=sizes.refusals // 10)


def _rows(engine: Engine, table: Table, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        for i in range(0, len(rows), CHUNK):
            conn.execute(insert(table), rows[i:i + CHUNK])


def fill(engine: Engine, sizes: Sizes, now: float, days: float = DAYS) -> None:
    """The history: `days` of it, oldest first."""
    year = days * 86400.0
    _rows(engine, sites, [{"site": s, "online": True, "session": 1, "born": now - year, "last_seen": now}
                          for s in (BIG, "a", "b", "c")])
    _rows(engine, devices, [{"site": BIG, "dev": f"n{i:05d}", "state": "online", "cls": "gas", "fw": "1.0.0",
                             "prof": "gas", "last_seen": now} for i in range(sizes.devices)])
    msgs, reads = [], []
    for i in range(sizes.messages):
        dev = i % sizes.devices
        t = now - year + year * i / sizes.messages
        msgs.append({"id": i + 1, "site": BIG, "dev": f"n{dev:05d}", "seq_key": seq_key(i), "boot": 1, "pri": 0,
                     "hist": False, "verified": True, "received": t + 0.4})
        ota = i >= sizes.messages - sizes.devices  # every node's newest message: its update's outcome
        reads.append({"message": i + 1, "site": BIG, "dev": f"n{dev:05d}", "n": "ota.v" if ota else "ch4",
                      "t": t, "v": None if ota else 1.0, "vs": "1.0.0" if ota else None, "vb": None})
        if ota:
            reads.append({"message": i + 1, "site": BIG, "dev": f"n{dev:05d}", "n": "ota.ok", "t": t, "v": None,
                          "vs": None, "vb": True})
    _rows(engine, messages, msgs)
    _rows(engine, readings, reads)
    alarm_rows, orders, steps = [], [], []
    for i in range(2 * sizes.orders):
        t = now - year + year * i / (2 * sizes.orders)
        level = ("blue", "yellow", "orange", "red")[i % 4]
        site = ("a", "b", "c")[i % 3]
        alarm_rows.append({"id": f"al{i}", "site": site, "dev": "d1", "cls": "gas", "metric": "ch4", "kind": "level",
                           "level": None, "peak": level, "peak_rank": i % 4 + 1, "state": "cleared", "hist": False,
                           "raised": t, "t_dev": t - 0.2, "received": t + 0.5, "acked": t + 90, "cleared": t + 7200,
                           "t_last": t + 7200})
        if level in store.WORK_ORDER_LEVELS:
            oid = len(orders) + 1
            orders.append({"id": oid, "alarm": f"al{i}", "site": site, "state": "closed", "team": "t1",
                           "opened": t + 0.5, "updated": t + 7000})
            steps += [{"order_id": oid, "step": step, "actor": "op", "at": t + dt_s}
                      for step, dt_s in (("opened", 0.5), ("ack", 90), ("dispatch", 400), ("report", 5000),
                                         ("close", 7000))]
    _rows(engine, alarms, alarm_rows)
    _rows(engine, work_orders, orders)
    _rows(engine, work_order_steps, steps)
    _rows(engine, refusals, [{"topic": "district/v1/x/up/telemetry", "reason": ("seal", "schema", "replay")[i % 3],
                              "detail": "bench", "payload": b"x", "received": now - i} for i in range(sizes.refusals)])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")  # the planner's statistics, as PostgreSQL's autovacuum keeps them


def timed(fn: Callable[[], object], rounds: int) -> dict[str, Any]:
    """The first call's seconds, and the median and max of `rounds` more."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_s": round(first, 4), "median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4)}


def measure(engine: Engine, sizes: Sizes, label: str, days: float = DAYS) -> dict[str, Any]:
    started = time.monotonic()
    print(f"{label}: filling {days:g} days of history ({sizes.messages:,} messages, {sizes.orders:,} work orders) "
          "...", file=sys.stderr, flush=True)
    fill(engine, sizes, time.time(), days)
    print(f"{label}: filled after {time.monotonic() - started:.1f} s; timing {sizes.rounds} rounds of each read",
          file=sys.stderr, flush=True)
    registry = CollectorRegistry()
    registry.register(DistrictCollector(engine))
    scrape = timed(lambda: generate_latest(registry), sizes.rounds)
    assert b"lifeline_district_database_up 1.0" in generate_latest(registry)

    def view() -> None:
        with store.reader(engine) as conn:
            got = rollout.view(conn, BIG)
        assert got is not None and len(got["nodes"]) == sizes.devices

    return {"scrape": scrape, "rollout_view": timed(view, sizes.rounds)}


def both(urls: tuple[str, str], sizes: Sizes, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures over the whole history, then the baseline's over its tenth, each on a database made at its url."""
    got = []
    for url, s, days, what in ((urls[0], sizes, DAYS, label), (urls[1], tenth(sizes), DAYS / 10, f"{label}, baseline")):
        engine = store.open_engine(url)
        try:
            got.append(measure(engine, s, what, days))
        finally:
            metadata.drop_all(engine)
            engine.dispose()
    return got[0], got[1]


def run(sizes: Sizes, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each engine's figures, and its baseline's."""
    out: dict[str, Any] = {}
    base: dict[str, Any] = {}
    out["sqlite"], base["sqlite"] = both((str(workdir / "district.sqlite"), str(workdir / "tenth.sqlite")), sizes,
                                         "sqlite")
    with Postgres() as pg:
        out["postgresql"], base["postgresql"] = both((pg.url, pg.url), sizes, "postgresql")
    return out, base


def ratios(full: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Full over baseline, per engine, read and figure."""
    return {engine: {read: {k.removesuffix("_s"): round(x[k] / base[engine][read][k], 2) for k in x}
                     for read, x in reads.items()} for engine, reads in full.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--json", type=Path, default=report.RESULTS / "district_reads.json")
    for name, value in asdict(FULL).items():
        parser.add_argument("--" + name, type=type(value), default=None)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    sizes = Sizes(**{k: getattr(args, k) if getattr(args, k) is not None else v for k, v in asdict(preset).items()})
    with tempfile.TemporaryDirectory(prefix="district-reads-") as tmp:
        figures, base = run(sizes, Path(tmp))
    vs = ratios(figures, base)
    result = {"benchmark": "district_reads", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join([".venv/bin/python -m bench.district_reads", *(argv or sys.argv[1:])]),
              "machine": report.machine(), "git": report.git_state(), "sizes": asdict(sizes), **figures,
              "baseline": {"sizes": asdict(tenth(sizes)), "days": DAYS / 10, **base}, "vs_baseline": vs}
    reads, figs = ("scrape", "rollout_view"), ("first_s", "median_s", "max_s")
    rows = {}
    for engine in figures:
        for name, got in ((engine, figures[engine]), (f"{engine} tenth", base[engine]),
                          (f"{engine} ratio", vs[engine])):
            rows[name] = {f"{what} {k}": got[what].get(k, got[what].get(k.removesuffix("_s"))) for what in reads
                          for k in figs}
    report.print_rows(rows, [f"{what} {k}" for what in reads for k in figs])
    print("tenth: the same reads over a tenth of the history (same nodes); ratio: the whole history's over the tenth's")
    print(f"wrote {report.save(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
