"""`lifeline hil`: run the bench suite (hil_tests/) and keep its reports.

    lifeline hil                                       # virtual devices, as in CI
    lifeline hil --device serial:/dev/ttyUSB0,profile=gas,stim=/dev/ttyACM0,rig=rig.json \
        --bench-host 192.168.4.2 --wifi-ssid bench --wifi-password secret

Writes OUT/junit.xml, OUT/report.json (outcomes, durations, latencies) and OUT/bench/ (broker and gateway
directories, site.toml, device consoles, district.jsonl), then prints the latency summary. A run removes only
OUT/bench/devices and OUT/bench/site (an earlier run's bench) and the last run's reports; an OUT/bench holding
anything else is refused.
Arguments after `--` go to pytest unchanged (e.g. `-- -k ramp -x`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lifeline import signals
from lifeline.flash import check_host, check_ssid, check_wifi_password
from lifeline.upy import ROOT

SUITE = ROOT / "hil_tests"
BENCH_WRITES = ("devices", "site")  # what hil_tests/testbed.py makes in --bench-dir, all a run removes there


def _count(text: str) -> int:
    """Virtual devices per profile, at least one: the bench's plugin refuses fewer, but only after this command
    has removed the last run's bench and reports."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least one device per profile")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="SPEC",
                   help="virtual (default) or serial:PORT[,profile=P][,id=ID][,stim=PORT,rig=FILE]; repeatable")
    p.add_argument("--count", type=_count, default=1, help="virtual devices per profile (at least 1)")
    # checked as `lifeline flash` checks them: each real board is flashed with them
    p.add_argument("--bench-host", type=check_host, default=None, help="address real boards reach the site broker at")
    p.add_argument("--wifi-ssid", type=check_ssid, default="")
    p.add_argument("--wifi-password", type=check_wifi_password, default="")
    p.add_argument("--out", type=Path, default=Path("out/hil"), help="reports and bench files (default out/hil)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")


def clear_bench(bench: Path) -> str | None:
    """Remove what an earlier run's bench wrote in `bench` (a bench starts from blank boards every run), and
    nothing else: a directory holding anything the bench does not write is left whole, and the reason is
    returned (a user's --out may already have a bench/ of their own)."""
    if not bench.exists() and not bench.is_symlink():
        return None
    if not bench.is_dir() or bench.is_symlink():
        return f"{bench} is not a directory the bench wrote; give --out a directory of its own"
    others = sorted(p.name for p in bench.iterdir() if p.name not in BENCH_WRITES)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        return (f"{bench} holds files the bench did not write ({shown}); nothing was removed: give --out a "
                "directory of its own, or move them")
    for name in BENCH_WRITES:
        path = bench / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return None


def run(args: argparse.Namespace) -> int:
    import pytest
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out: Path = args.out
    bench = out / "bench"
    report = out / "report.json"
    try:
        refused = clear_bench(bench)
        out.mkdir(parents=True, exist_ok=True)
        if not refused:  # the last run's reports, so that one this run did not write is never shown as its own
            report.unlink(missing_ok=True)
            (out / "junit.xml").unlink(missing_ok=True)
    except OSError as exc:
        refused = f"{exc.filename or out}: {exc.strerror or exc}"
    if refused:
        print(f"--out: {refused}", file=sys.stderr)
        return 2
    argv = [str(SUITE), "--junitxml", str(out / "junit.xml"), "--hil-json", str(report),
            "--bench-dir", str(bench), "--count", str(args.count), "-p", "no:cacheprovider"]
    for spec in args.device:
        argv += ["--device", spec]
    for flag, value in (("--bench-host", args.bench_host), ("--wifi-ssid", args.wifi_ssid),
                        ("--wifi-password", args.wifi_password)):
        if value:
            argv += [flag, value]
    argv += [a for a in args.pytest_args if a != "--"]
    with signals.as_ctrl_c():  # through the bench's teardown, which stops its brokers, gateway and boards
        code = int(pytest.main(argv))
    console = Console()
    if not report.exists():
        print(f"no report: pytest ended with exit status {code} before writing {report}", file=sys.stderr)
    else:
        summary = json.loads(report.read_text())["summary"]
        table = Table(title="bench latencies (s)")
        for col in ("measure", "n", "min", "median", "max"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        for name, s in summary["latency_s"].items():
            table.add_row(name, str(s["n"]), f"{s['min']:.3f}", f"{s['median']:.3f}", f"{s['max']:.3f}")
        console.print(table)
        console.print(f"outcomes: {summary['outcomes']}; reports in {escape(str(out))}/ (junit.xml, report.json, "
                      "bench/)")  # --out as typed, brackets and all
    return code
