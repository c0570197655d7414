"""`lifeline status` as a site grows: how long an operator waits for the device list.

    .venv/bin/python -m bench.status_scale                       # 200 (baseline) and 20,000 devices
    .venv/bin/python -m bench.status_scale --devices 50,500      # any sizes; the first is the baseline

For each size a gateway store is filled with that many gas devices, each seen once (gateway/registry.py,
gateway/sequence.py, as the daemon writes them), and `lifeline status --store` runs in a process of its own
`--rounds` times: wall seconds, CPU seconds and peak RSS of the best round, and the ratio to the baseline size.
rich's Table took about a millisecond a row (27 s of silence at 20,000 devices) before the device list became
aligned text. Prints a table and writes bench/results/status_scale.json. Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from gateway.device_list import DeviceConfig, DeviceList
from gateway.registry import Registry
from gateway.sequence import SequenceTracker

KEY = bytes(range(32))


def fill(store: Path, n: int) -> None:
    conn = sqlite3.connect(store)
    names = [f"gas-{i:05d}" for i in range(n)]
    registry = Registry(conn, DeviceList([DeviceConfig(d, "gas", KEY, None) for d in names]))
    for d in names:
        registry.seen(d, 1.8e9)
    registry.flush()
    SequenceTracker(conn).flush()
    conn.commit()
    conn.close()


def run_status(store: Path) -> dict[str, float]:
    """One `lifeline status` in its own process: wall and CPU seconds, peak RSS in MB, from that process's own
    rusage (RUSAGE_CHILDREN's peak is the largest of every child so far)."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", "status", "--store", str(store)],
                            stdout=subprocess.DEVNULL, cwd=report.ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lifeline status exited {os.waitstatus_to_exitcode(status)} on {store}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="200,20000", help="sizes, comma-separated; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=report.RESULTS / "status_scale.json")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.devices.split(",")]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            store = Path(tmp) / f"gw-{n}.db"
            print(f"{n} devices: filling the store ...", file=sys.stderr, flush=True)
            fill(store, n)
            runs = []
            for r in range(args.rounds):
                runs.append(run_status(store))
                print(f"{n} devices: round {r + 1}/{args.rounds} {runs[-1]['wall_s']} s", file=sys.stderr,
                      flush=True)
            best = min(runs, key=lambda x: x["wall_s"])
            rows[str(n)] = {"devices": n, **best, "rounds": runs}
    base = rows[str(sizes[0])]
    for row in rows.values():
        row["wall_vs_baseline"] = round(row["wall_s"] / base["wall_s"], 2)
    report.print_rows(rows, ["devices", "wall_s", "cpu_s", "peak_rss_mb", "wall_vs_baseline"])
    path = report.save(args.json, {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                   "command": sys.argv, "machine": report.machine(), "git": report.git_state(),
                                   "baseline_devices": sizes[0], "sizes": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
