"""Soak: every profile at once on the node heap (upy.FIRMWARE_HEAP) for a long run, through the events a
site sees, to show that no node runs out of memory or loses a reading over time.

Run: .venv/bin/python -m bench.firmware_soak [--minutes 30] [--profiles gas,water] [--romfs] [--json F]. Prints
a line a minute and a table at the end, and writes bench/results/firmware_soak.json (firmware_soak_romfs.json
with --romfs, where every node imports the firmware from a ROMFS image: docs/firmware.md, "ROMFS"), or F: a
short run keeps the committed figures.

Each profile runs as a virtual device (the real firmware as .mpy on the MicroPython unix port, sped-up
schedule, lifeline/virtual/flashdir.py) against one real Mosquitto, on the same flash throughout, while:
- every minute each node gets a command (set_intervals; every second minute a birth request; a sleeping
  node runs it at its next wake);
- every 3 minutes its stimulus episode plays again (a pre-alarm crossing and back for every profile);
- every 10 minutes its network is cut for 20 s;
- every 7 minutes one node, in turn, loses power (SIGKILL);
- halfway, the broker is down for 15 s.

Per profile: births, exits that are neither deep sleeps nor the power cuts, MemoryError (raised, or
caught by the command path and logged as `command rejected: no memory`, once a boot) or Traceback on the
console, readings sent and whether their sequence numbers are gap-free once duplicates are dropped,
acks against commands (and the reasons the node logged for commands it dropped), and the live heap
(heap size minus the lowest `heapmin` the node reports in its births and health events: the low since
its figures before, sampled also at the command path's high points), overall and minute by minute. The
baseline is the same node's first 3 minutes, which hold commands too: a leak shows as a later peak above
it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.firmware_bench import heap_bytes, heap_reports, wk
from lifeline import upy
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_firmware, build_romfs
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import STIMULUS, sped_up
from protocol import topics

SITE = "site-a"
BASELINE_S = 180


class Node:
    def __init__(self, name: str, work: Path, mpy: Path, broker: Mosquitto, heap: str, romfs: Path | None) -> None:
        self.name = name
        self.dev_id = f"{name}-01"
        self.profile = sped_up(name)
        self.awake = not self.profile.get("sleep")
        self.listener = Listener(broker.port, SITE, self.dev_id, persistent=True)
        self.dev = FlashDirDevice(work / name, mpy, self.profile, broker.port, STIMULUS[name], dev=self.dev_id,
                                 heap=heap, romfs=romfs)
        self.commands = 0
        self.kills = 0
        self.baseline_at: int | None = None  # messages received when the baseline window ended
        self.minute_marks: list[int] = []  # messages received at the end of each minute
        self.births_before: int | None = None  # births when the node last lost its link

    def reports(self) -> list[tuple[int, int]]:
        return heap_reports(list(self.listener.messages), "heapmin")

    def births(self) -> int:
        return len([b for b in self.listener.of(topics.STATE) if b.get("st") == "online"])

    def disrupt(self) -> None:
        self.births_before = self.births()

    def command(self, minute: int) -> None:
        """After a disruption, only once the node is back: the broker keeps a command for its session, but
        a node that backs off from reconnecting for longer than the command's 30 s deadline drops it as
        out of date (the gateway would have timed it out and resent it)."""
        if self.births_before is not None:
            before = self.births_before
            self.listener.wait(lambda m: self.births() > before, 90)
            self.births_before = None
        self.commands += 1
        if minute % 2 == 0:
            self.dev.command(self.commands, "birth", {})
        else:
            self.dev.command(self.commands, "set_intervals", {"report_s": self.profile["report_s"]})

    def replay(self) -> None:
        self.dev.control(ramp=STIMULUS[self.name])

    def net(self, up: bool) -> None:
        self.dev.control(net=up)

    def result(self, heap: int) -> dict[str, Any]:
        msgs = list(self.listener.messages)
        console = self.dev.console()
        sent = [b["seq"] for k, b, _, _ in msgs if k in (topics.DATA, topics.EVENT)]
        unique = sorted(set(sent))
        gaps = (unique[-1] - unique[0] + 1 - len(unique)) if unique else 0
        acks = [b for k, b, _, _ in msgs if k == topics.ACK]
        births = [b for k, b, _, _ in msgs if k == topics.STATE and b.get("st") == "online"]
        reports = self.reports()
        baseline_peak, later_peak = peaks(heap, reports, self.baseline_at)
        series, lo = [], 0
        for hi in self.minute_marks:  # the peak live heap of each minute: a creep shows as a rising line
            window = [free for i, free in reports if lo <= i < hi]
            series.append(wk(heap - min(window)) if window else None)
            lo = hi
        sleeps = {4} if not self.awake else set()
        odd = [rc for rc in self.dev.exits if rc not in sleeps and rc != -9]
        return {
            "births": len(births),
            "power_cuts": self.kills,
            "odd_exits": odd,
            "memory_errors": console.count("MemoryError") + console.count("command rejected: no memory"),
            "tracebacks": console.count("Traceback"),
            "readings_msgs": len(unique),
            "duplicates": len(sent) - len(unique),
            "seq_gaps": gaps,
            "commands": self.commands,
            "acks_ok": sum(1 for a in acks if a["ok"]),
            "rejected": [line for line in console.splitlines() if line.startswith("command rejected")],
            "baseline_peak_wk": baseline_peak,
            "later_peak_wk": later_peak,
            "peak_wk_by_minute": series,
        }


def peaks(heap: int, reports: list[tuple[int, int]], baseline_at: int | None) -> tuple[float | None, float | None]:
    """Peak live heap (wK) in the baseline window and after it, from (message index, free heap) reports; a run
    that ended inside the window (baseline_at None) is all baseline, with nothing later to compare."""
    base = [free for i, free in reports if baseline_at is None or i < baseline_at]
    later = [free for i, free in reports if baseline_at is not None and i >= baseline_at]
    return wk(heap - min(base)) if base else None, wk(heap - min(later)) if later else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--profiles", default=",".join(STIMULUS))
    ap.add_argument("--heap", default=upy.FIRMWARE_HEAP)
    ap.add_argument("--romfs", action="store_true", help="run the nodes from a ROMFS image")
    ap.add_argument("--json", type=Path, help="default bench/results/firmware_soak[_romfs].json")
    args = ap.parse_args()
    heap = heap_bytes(args.heap)
    names = args.profiles.split(",")
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        work = Path(tmp)
        mpy = build_firmware(work / "mpy")
        romfs = build_romfs(mpy) if args.romfs else None
        nodes = [Node(name, work, mpy, broker, args.heap, romfs) for name in names]
        for node in nodes:
            node.dev.start()
        start = time.monotonic()
        try:
            for minute in range(1, args.minutes + 1):
                t = start + minute * 60
                cut, down = minute % 10 == 0, minute == args.minutes // 2
                _until(t - 40)
                if down:
                    broker.stop()
                for node in nodes if cut or down else ():
                    node.disrupt()
                for node in nodes if cut else ():
                    node.net(False)
                _until(t - 30)
                if minute % 7 == 0:
                    victim = nodes[(minute // 7 - 1) % len(nodes)]
                    victim.kills += 1
                    victim.disrupt()
                    victim.dev.kill()
                _until(t - 25)
                if down:
                    broker.start()
                _until(t - 20)
                for node in nodes if cut else ():
                    node.net(True)
                _until(t)
                for node in nodes:
                    node.minute_marks.append(len(node.listener.messages))
                    if minute * 60 == BASELINE_S:
                        node.baseline_at = node.minute_marks[-1]
                for node in nodes:
                    if minute % 3 == 0:
                        node.replay()
                    node.command(minute)
                lows = {n.name: min((f for _, f in n.reports()), default=None) for n in nodes}
                print(f"[soak] {minute}/{args.minutes} min  " + "  ".join(
                    f"{k}:{wk(heap - v) if v else '-'}wK" for k, v in lows.items()),
                      flush=True)
            time.sleep(10)  # the last acks and drains
        finally:
            for node in nodes:
                node.dev.stop()
                node.listener.close()
        rows = {node.name: node.result(heap) for node in nodes}
    cols = ("births", "power_cuts", "odd_exits", "memory_errors", "tracebacks", "readings_msgs", "duplicates",
            "seq_gaps", "commands", "acks_ok", "baseline_peak_wk", "later_peak_wk")
    report.print_rows(rows, cols, 14)
    clean = all(not r["odd_exits"] and not r["memory_errors"] and not r["tracebacks"] and not r["seq_gaps"]
                and r["acks_ok"] == r["commands"] for r in rows.values())
    deploy = "romfs" if args.romfs else "files"
    print(f"{args.minutes} min at {args.heap} from {deploy}: {'clean' if clean else 'NOT clean'}")
    name = "firmware_soak_romfs.json" if args.romfs else "firmware_soak.json"
    path = report.save(args.json or report.RESULTS / name, {**report.stamp(), "minutes": args.minutes,
                                                             "heap": args.heap, "deploy": deploy, "clean": clean,
                                                             "profiles": rows})
    print(f"wrote {path}")


def _until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


if __name__ == "__main__":
    main()
