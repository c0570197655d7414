"""`lifeline hil`: run the bench suite (hil_tests/) and keep its reports.

    lifeline hil                                       # virtual devices, as in CI
    lifeline hil --device serial:/dev/ttyUSB0,profile=gas,stim=/dev/ttyACM0,rig=rig.json \
        --bench-host 192.168.4.2 --wifi-ssid bench --wifi-password secret

Writes OUT/junit.xml, OUT/report.json (outcomes, durations, latencies) and OUT/bench/ (broker and gateway
directories, site.toml, device consoles, district.jsonl), then prints the latency summary.
Arguments after `--` go to pytest unchanged (e.g. `-- -k ramp -x`).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lifeline.upy import ROOT

SUITE = ROOT / "hil_tests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="SPEC",
                   help="virtual (default) or serial:PORT[,profile=P][,id=ID][,stim=PORT,rig=FILE]; repeatable")
    p.add_argument("--count", type=int, default=1, help="virtual devices per profile")
    p.add_argument("--bench-host", default=None, help="address real boards reach the site broker at")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-password", default="")
    p.add_argument("--out", type=Path, default=Path("out/hil"), help="reports and bench files (default out/hil)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")


def run(args: argparse.Namespace) -> int:
    import pytest
    from rich.console import Console
    from rich.table import Table

    out: Path = args.out
    bench = out / "bench"
    if bench.exists():
        shutil.rmtree(bench)  # a bench starts from blank boards every run
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(SUITE), "--junitxml", str(out / "junit.xml"), "--hil-json", str(out / "report.json"),
            "--bench-dir", str(bench), "--count", str(args.count), "-p", "no:cacheprovider"]
    for spec in args.device:
        argv += ["--device", spec]
    for flag, value in (("--bench-host", args.bench_host), ("--wifi-ssid", args.wifi_ssid),
                        ("--wifi-password", args.wifi_password)):
        if value:
            argv += [flag, value]
    argv += [a for a in args.pytest_args if a != "--"]
    code = int(pytest.main(argv))
    console = Console()
    report = out / "report.json"
    if report.exists():
        summary = json.loads(report.read_text())["summary"]
        table = Table(title="bench latencies (s)")
        for col in ("measure", "n", "min", "median", "max"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        for name, s in summary["latency_s"].items():
            table.add_row(name, str(s["n"]), f"{s['min']:.3f}", f"{s['median']:.3f}", f"{s['max']:.3f}")
        console.print(table)
        console.print(f"outcomes: {summary['outcomes']}; reports in {out}/ (junit.xml, report.json, bench/)")
    return code
