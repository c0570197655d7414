"""How the benchmarks report: a run's figures are worth keeping only with the machine and commit they were
measured on, as JSON under bench/results/ for the next run to compare with, as a table on the terminal, and,
for the gateway benchmark, as the generated block of docs/performance.md. Every benchmark in bench/ writes
its results through here, so that they all read the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECTION = "## Gateway throughput"
BEGIN, END = "<!-- gateway_throughput:begin -->", "<!-- gateway_throughput:end -->"


def save(path: Path, result: Any) -> Path:
    """A run's figures as indented JSON (RESULTS / name, or where a benchmark's --json says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_rows(rows: Mapping[str, Mapping[str, Any]], cols: Sequence[str], width: int = 12) -> None:
    """A table on the terminal: a line per profile, a column per figure, at least `width` characters wide and
    as wide as its name or widest figure, since a cut figure or name reads as another one."""
    names = max([9, *map(len, rows)])
    widths = [max(width, len(c), *(len(str(row[c])) for row in rows.values())) for c in cols]
    print(f"{'profile':<{names}} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True)))
    for name, row in rows.items():
        print(f"{name:<{names}} " + " ".join(f"{row[c]!s:>{w}}" for c, w in zip(cols, widths, strict=True)))


class Progress:
    """A line on stderr at most every `every` seconds while a phase runs: a benchmark of minutes that says
    nothing cannot be told from a hung one."""

    def __init__(self, label: str, every: float = 1.0, extra: Callable[[], str] | None = None) -> None:
        self.label = label
        self.every = every
        self.extra = extra  # read only when a line is printed: it may cost more than a poll should
        self.started = time.monotonic()
        self.next = self.started + every

    def show(self, done: int, total: int, what: str, force: bool = False) -> None:
        now = time.monotonic()
        if now >= self.next or force:
            self.next = now + self.every
            more = self.extra() if self.extra else ""
            print(f"  [{self.label}] {done:,}/{total:,} {what} after {now - self.started:.1f} s{more}",
                  file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """The machine a run measured on: cores, CPU model, Python, Mosquitto and kernel."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    mosq = subprocess.run([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"], capture_output=True,
                          text=True).stdout.splitlines()
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "mosquitto": mosq[0] if mosq else "", "kernel": platform.release()}


def git_state() -> dict[str, Any]:
    """The commit a run measured, and whether gateway/, or firmware/ and protocol/ (what a node runs), differed
    from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "gateway_dirty": bool(git("status", "--porcelain", "--", "gateway")),
            "firmware_dirty": bool(git("status", "--porcelain", "--", "firmware", "protocol"))}


def stamp() -> dict[str, Any]:
    """When, by which command, on which machine and at which commit a run measured: what its figures are kept
    with."""
    command = " ".join([f".venv/bin/python -m bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command, "machine": machine(),
            "git": git_state()}


def confirmed_row(g: dict[str, Any]) -> tuple[str, str, str, str]:
    """How soon every device had the gateway's confirmation of its round (bench/gateway_throughput.Confirmed)."""
    after = g["confirmed_all_after_s"]
    return ("devices told their messages are committed: all, s after the last reached the district "
            "(confirmations sent)", f"{'not in 60 s' if after is None else after} ({g['confirmations']:,})", "", "")


def table(r: dict[str, Any]) -> str:
    """One scenario's table of the gateway benchmark, against its targets: the run's top level (loopback) or
    its "link" part."""
    targets = r["targets"]
    g, b, a = r["gateway"], r["bridge"], r["alarm"]
    bg = a["background"]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lost = (g["lost_total"], b["lost_total"], bg["lost"], a["lost"])

    def rate(x: dict[str, Any]) -> str:
        spread = f" ({min(x['rounds']):,.0f}-{max(x['rounds']):,.0f})" if len(x["rounds"]) > 1 else ""
        return f"{x['msgs_per_s']:,.0f}{spread}"

    rows = [
        ("gateway: device messages/s, end to end (median, range)", rate(g), "", ""),
        ("baseline: plain Mosquitto bridge, device messages/s (median, range)", rate(b), "", ""),
        (CPU_ROW, cpu_cell(g), f"≤ {targets['cpu_us']:.0f}", yes(r["met"]["cpu"])),
        ("bridge: both brokers' CPU per device message, µs", f"{b['brokers_cpu_us_per_msg']:.0f}", "", ""),
        ("upstream bytes per device message (topic + payload), gateway / bridge",
         f"{g['upstream_bytes_per_msg']:.0f} / {b['upstream_bytes_per_msg']:.0f}", "", ""),
    ]
    rows.append(confirmed_row(g))
    if "link_bytes_per_msg" in g:
        rows += [
            ("bytes on the link per device message, up (MQTT, TLS), gateway / bridge",
             f"{g['link_bytes_per_msg']['up']:.0f} / {b['link_bytes_per_msg']['up']:.0f}", "", ""),
            ("link use upstream, Mbit/s, gateway / bridge",
             f"{g['link_up_mbit_s']:.1f} / {b['link_up_mbit_s']:.1f}", "", ""),
        ]
    rows += [
        ("ratio gateway / bridge", f"{r['ratio']:.2f}", f"≥ {targets['ratio']:.1f}", yes(r["met"]["ratio"])),
        (f"alarm latency p50 / p99, ms ({a['received']} transitions, {bg['achieved_msgs_per_s']:,.0f} msg/s "
         "background)", f"{a['p50_ms']} / {a['p99_ms']}", f"p99 ≤ {targets['alarm_p99_ms']:.0f}",
         yes(r["met"]["alarm_p99"])),
        commits_row(a),
        light_load_row(a),
        ("gateway peak RSS (VmHWM), MB", memory_cell(r), f"≤ {targets['rss_mb']:.0f}", yes(r["met"]["rss"])),
        ("lost: gateway / bridge / background / alarms", " / ".join(map(str, lost)), "0", yes(not any(lost))),
    ]
    out = ["| measure | result | target | met |", "| --- | ---: | --- | --- |"]
    out += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in rows]
    return "\n".join(out)


def commits_row(a: dict[str, Any]) -> tuple[str, str, str, str]:
    """The alarm phase's store commits that waited on the disk: what sets the alarm latency's tail."""
    c = a["store_commits"]
    return (f"the gateway's store commits in the alarm phase: slower than {c['slow_over_s'] * 1000:.0f} ms (all)",
            f"{c['slow']:,.0f} ({c['all']:,.0f})", "", "")


def light_load_row(a: dict[str, Any]) -> tuple[str, str, str, str]:
    """What a message costs when batches are small: the alarm phase's background is a light load."""
    return ("gateway CPU per device message in the alarm phase, µs (device messages a commit)",
            f"{a['gateway_cpu_us_per_msg']:.0f} ({a['msgs_per_commit']:.1f})", "", "")


CPU_ROW = "gateway CPU per device message, µs (share of one core busy; device messages a commit)"


def cpu_cell(g: dict[str, Any]) -> str:
    """All the gateway's processes; with check processes (gateway/check_stage.py), the ingest process's part too."""
    text = f"{g['gateway_cpu_us_per_msg']:.0f} ({g['gateway_cpu_busy']:.0%}; {g['msgs_per_commit']:,.0f})"
    if "ingest_cpu_us_per_msg" in g:
        text += f", of it the ingest process {g['ingest_cpu_us_per_msg']:.0f} ({g['ingest_cpu_busy']:.0%})"
    return text


def memory_cell(r: dict[str, Any]) -> str:
    """The peak; with check processes, the sum of each process's peak (pages they share counted in each) and
    what they held at the end counted proportionally (PSS), which is what they cost the box."""
    text = f"{r['rss']['peak_mb']:.0f}"
    processes = r.get("check_processes", 0)
    if processes:
        text += f" summed over {processes + 1} processes; PSS at the end {r['rss']['end_pss_mb']:.0f}"
    return text


def link_text(r: dict[str, Any]) -> list[str]:
    """The gateway benchmark's paragraph and table for its run over the emulated link."""
    k = r["link"]
    s, spec, p, g, b = r["sizes"], k["spec"], k["pass_through"], k["gateway"], k["bridge"]
    return [
        f"**Over an emulated district link: {spec['rtt_ms']:g} ms RTT, {spec['up_mbit_s']:g} Mbit/s up, "
        f"{spec['down_mbit_s']:g} Mbit/s down** (`bench/wanlink.py`; both the bridge and the gateway reach the "
        f"district broker through it). Each round: {s['devices']} devices x {s['link_messages']} messages "
        f"({g['device_messages']:,}), {s['link_rounds']} round(s); in the median round the gateway needed "
        f"{g['seconds']:.2f} s and {g['upstream_publishes']} upstream publishes, the bridge {b['seconds']:.2f} s. "
        f"The proxy without delay or limit carried the bridge's loopback load ({p['device_messages']:,} messages) "
        f"at {p['msgs_per_s']:,.0f} msg/s (straight to the broker: {r['bridge']['msgs_per_s']:,.0f}), using "
        f"{p['wanlink_cpu_us_per_msg']:.0f} µs of CPU per message.",
        "",
        table(k),
    ]


def scale_text(r: dict[str, Any]) -> list[str]:
    """The gateway benchmark's paragraph and table for its run with many registered devices."""
    k = r["scale"]
    g, a, m, t = k["gateway"], k["alarm"], k["rss"], k["targets"]
    bg = a["background"]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lost = (g["lost"] + k["restarted"]["lost"], bg["lost"], a["lost"])
    rows = [
        ("gateway: device messages/s, end to end", f"{g['msgs_per_s']:,.0f}", "", ""),
        (CPU_ROW, cpu_cell(g), "", ""),
        confirmed_row(g),
        (f"alarm latency p50 / p99, ms ({a['received']} transitions, {bg['achieved_msgs_per_s']:,.0f} msg/s "
         "background)", f"{a['p50_ms']} / {a['p99_ms']}", f"p99 ≤ {t['alarm_p99_ms']:.0f}", yes(k["met"]["alarm_p99"])),
        commits_row(a),
        light_load_row(a),
        ("gateway RSS once started (every device registered, none heard), MB", f"{m['registered_mb']:.0f}", "", ""),
        ("gateway RSS after every device was heard, MB", f"{m['heard_mb']:.0f}", "", ""),
        ("gateway peak RSS (VmHWM), MB; of it before any message",
         f"{memory_cell(k)}; {m['registered_peak_mb']:.0f}", f"≤ {t['rss_mb']:.0f}", yes(m["peak_mb"] <= t["rss_mb"])),
        ("restarted on the same store: RSS once started, MB; peak after every device sent once more",
         f"{m['restarted_mb']:.0f}; {m['restarted_peak_mb']:.0f}", f"≤ {t['rss_mb']:.0f}",
         yes(m["restarted_peak_mb"] <= t["rss_mb"])),
        ("lost: gateway / background / alarms", " / ".join(map(str, lost)), "0", yes(not any(lost))),
    ]
    return [
        f"**With {k['devices']:,} registered devices** (a site of its own, the gateway alone on loopback, no "
        f"bridge). Every device sends {k['messages_per_device']} messages ({g['device_messages']:,}), so each has "
        f"its per-device state before the alarm phase; the gateway was connected {k['ready_s']:.1f} s after its "
        "start.",
        "",
        "| measure | result | target | met |",
        "| --- | ---: | --- | --- |",
        *(f"| {what} | {v} | {tg} | {ok} |" for what, v, tg, ok in rows),
    ]


def doc_block(r: dict[str, Any]) -> str:
    """The gateway benchmark's generated block of docs/performance.md, between its markers."""
    s, m, g, b = r["sizes"], r["machine"], r["gateway"], r["bridge"]
    return "\n".join([
        BEGIN,
        f"Measured {r['date']} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['mosquitto']}, "
        f"commit {r['git']['commit']}{' (gateway/ modified)' if r['git']['gateway_dirty'] else ''}, "
        f"1-minute load average {r['load_average_before']} before the run (other work on the machine skews it):",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"**On loopback** (nothing between the site and the district). Each round: {s['devices']} devices x "
        f"{s['messages']} messages ({g['device_messages']:,} QoS 1 data "
        f"messages of 3 readings) from {s['workers']} generator processes, through the bridge, then through the "
        f"gateway; {s['rounds']} round(s). In the median round the gateway needed {g['seconds']:.2f} s and "
        f"{g['upstream_publishes']} upstream publishes, the bridge {b['seconds']:.2f} s."
        + (f" The gateway ran with `[ingest] check_processes = {s['check_processes']}`: its CPU and memory are "
           "those of all its processes (memory summed, so pages they share count twice)."
           if s.get("check_processes") else ""),
        "",
        table(r),
        *(["", *link_text(r)] if "link" in r else []),
        *(["", *scale_text(r)] if "scale" in r else []),
        END,
    ])


def write_doc(path: Path, r: dict[str, Any]) -> None:
    """Replace the generated block inside this benchmark's section, keeping everything else in the file."""
    block = doc_block(r)
    text = path.read_text() if path.exists() else "# Performance\n\nMeasured figures; each section names the " \
        "benchmark that produced it and how to run it again.\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        text = head + SECTION + "\n\n" + block + "\n" + rest
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n`bench/gateway_throughput.py` (issue 4).\n\n{block}\n"
    path.write_text(text)
