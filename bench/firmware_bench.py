"""Per device profile: heap, code size, wire bytes, sealing time and flash wear of the whole firmware,
each against a baseline measured in the same run.

Run: .venv/bin/python -m bench.firmware_bench [--profiles gas,water] [--seconds 20] [--json F]. Prints a table
and writes bench/results/firmware.json (or F: a quick run keeps the committed figures). Every figure comes from
a virtual device (the real firmware as .mpy on the MicroPython unix port, lifeline/virtual/flashdir.py)
publishing to a real Mosquitto:

- min heap: the smallest -X heapsize=NwK (4wK steps) at which the profile runs its sped-up schedule,
  from a fresh flash (so including its config-checking first boot), without MemoryError, and answers a
  set_intervals command sent halfway through (the command path loads beside the running node; a sleeping
  profile runs it at its next wake). "w" makes the unix port scale N KB by its word size against a
  32-bit target such as the ESP32: 64wK is 128 KB here, where each object is about twice its ESP32 size.
  Peak live: heap size minus the lowest free heap the device reports (`heap`, after a collection) in its
  births and health events, in KB of this port and in wK (KB / 2 here), for the first boot from a fresh
  flash (which checks the config) and for the boot after it on the same flash (which finds the config
  checked: what a node runs for months), each with a command sent half a health period off the health
  events. Command peak: the heap size minus the lowest `heapmin` of both boots, the low the node samples
  also at its command path's high points (decoder loaded; handler loaded with the profile it changes).
  Target: peak <= 48wK of a 64wK heap.
- romfs: the same heap figures (and min heap) with the firmware imported from a ROMFS image, as a board
  built with ROMFS runs it (`lifeline flash --romfs`; docs/firmware.md, "ROMFS"), against the .mpy files
  above as the baseline.
- .mpy: mpy-cross output of what a board with the profile imports (firmware/lib, its drivers, protocol/;
  the sim modules are in firmware/sim/); all: every module a board is flashed with. Target: all <= 64 KB.
- the measuring run sends every sample (dense(): no deadband) so that it fills whole batches; the
  min-heap runs use the sped-up profile with its filters.
- wire bytes per reading: sealed SenML-CBOR messages (COSE_Mac0, as published) against the same packs
  as SenML-JSON (published uncompressed, no envelope, no MAC); once for the packs of the sped-up run,
  once with its routine readings regrouped into packs of the profile's batch size; and against the
  same message as JSON with a hex MAC (like for like: same fields, the 8-byte tag in hex); pack_only
  compares the SenML packs alone, without the envelope. Target: <= 50 % of SenML-JSON.
  bench/firmware_wire.py gives these figures alone, without the heap and flash runs.
- seal: one pack encoded and authenticated on the unix port against SenML-JSON encoding of it.
- flash bytes per reading: every byte the device's processes write into its flash directory over the
  first run (strace; the config check's boot included, and every wake of a sleeping profile; not the
  sim's reset mark, which stands for the chip's RTC domain), against the SenML-JSON of the same packs
  (what a JSON-queuing node would append, without index).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from lifeline import upy
from lifeline.virtual import firmware
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_firmware, build_romfs
from lifeline.virtual.flashdir import KEY, FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import STIMULUS, load_profile, sped_up
from protocol import cbor as cbor_codec
from protocol import message, senml, senml_resolve, topics

HERE = Path(__file__).parent

PROFILES = tuple(STIMULUS)
HEAPS_WK = (36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 80, 96, 128)
MEASURE_HEAP = "128wK"
WORD_SCALE = 2  # 8-byte words here against the ESP32's 4: 1 wK is 2 KB of this port
TARGET_PEAK_K, TARGET_WIRE, TARGET_MPY_K = 48, 0.5, 64
def heap_bytes(spec: str) -> int:
    """Bytes of this port in a -X heapsize spec: "64K", or "64wK" (scaled by the word size)."""
    return int(spec.rstrip("wK")) * 1024 * (WORD_SCALE if spec.endswith("wK") else 1)


def wk(n: float) -> float:
    """Bytes of this port as KB of a 32-bit target, to one decimal."""
    return round(n / 1024 / WORD_SCALE, 1)


_WRITE = re.compile(r'write\(\d+<([^>]*)>, .*\) = (\d+)$')


def mpy_sizes(out: Path) -> dict[str, Any]:
    """Bytes of .mpy per board module, and per profile."""
    sizes: dict[str, int] = {}
    for base in (upy.FIRMWARE / "lib", upy.ROOT / "protocol"):
        for src in sorted(base.rglob("*.py")):
            rel = src.relative_to(base.parent if base.name == "protocol" else base).as_posix()
            sizes[rel] = upy.compile_module(src, out / rel.replace(".py", ".mpy")).stat().st_size
    per: dict[str, int] = {}
    for name in PROFILES:
        drivers = {s["driver"] for s in sped_up(name)["sensors"]}  # a driver's module bears its name
        per[name] = sum(n for rel, n in sizes.items() if not rel.startswith("drivers/")
                        or rel == "drivers/__init__.py" or rel[len("drivers/"):-len(".py")] in drivers)
    return {"modules": sizes, "all": sum(sizes.values()), "profile": per}


def dense(name: str) -> dict[str, Any]:
    """The sped-up profile with every sample sent (transform steps kept, deadband and heartbeat gates
    dropped, one sample a second at most), so a short run fills whole batches."""
    p = sped_up(name)
    for s in p["sensors"]:
        s["sample_s"] = min(s["sample_s"], 1)
        for m in s["metrics"].values():
            m["filters"] = [f for f in m.get("filters", []) if next(iter(f)) not in ("delta", "throttle",
                                                                                       "heartbeat")]
    return p


def _answered(msgs: Sequence[tuple[Any, ...]], cmd_id: int, born_after: bool) -> bool:
    """The ack of command `cmd_id` has come (and, with born_after, a birth after it)."""
    at = next((i for i, (kind, body, *_) in enumerate(msgs) if kind == topics.ACK and body["id"] == cmd_id), None)
    return at is not None and (not born_after or any(m[0] == topics.STATE for m in msgs[at:]))


def run_device(mpy: Path, name: str, heap: str, seconds: float, trace: Path | None = None,
               boots: int = 1, romfs: Path | None = None) -> dict[str, Any]:
    """`boots` runs of `seconds` each on the same flash, each sent a command halfway; the messages and
    flash writes (strace) are the first boot's, `later` the messages of the boots after it. With `romfs`,
    the device imports from that image (lifeline/virtual/firmware.py, build_romfs)."""
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        flash = Path(tmp) / "flash"
        listener = Listener(broker.port, "site-a", "dev-01")
        profile = dense(name) if trace else sped_up(name)
        console = ""
        first = 0
        for boot in range(boots):
            wrap = ["strace", "-f", "-A", "-y", "-e", "trace=write", "-o", str(trace)] if trace and not boot else None
            dev = FlashDirDevice(flash, mpy, profile, broker.port, STIMULUS[name], heap=heap, wrap=wrap, romfs=romfs)
            with dev:
                # half a health period (sped_up: 5 s) off the health events, which would otherwise catch
                # the command path loaded and mix it into the figures between commands
                time.sleep(seconds / 2 + 2.5)
                dev.command(1 + boot, "set_intervals", {"report_s": profile["report_s"]})
                sent = time.time()
                # a sleeping node runs it at its next wake, and the birth of the wake after reports its low
                listener.wait(lambda m, i=1 + boot: _answered(m, i, "sleep" in profile), seconds / 2 + 10)
                time.sleep(max(seconds / 2 - 2.5 - (time.time() - sent), 1.0))
                console = dev.console()
            time.sleep(0.5)
            first = first or len(listener.messages)
        listener.close()
        everything = [(k, b, raw) for k, b, raw, _ in listener.messages]
        msgs, later = everything[:first], everything[first:]
        acked = any(k == topics.ACK and b["ok"] for k, b, _ in msgs)
        ok = "MemoryError" not in console and "Traceback" not in console and acked and any(
            k in (topics.DATA, topics.EVENT) for k, _, _ in msgs)
        flash_bytes = 0
        if trace is not None:
            for line in trace.read_text(errors="replace").splitlines():
                m = _WRITE.search(line)
                # not the sim's own files: the world's log, the console, and its reset mark (.hal.json,
                # what a chip keeps in its RTC domain: reset cause, RTC memory, the sleep's length)
                if m and m.group(1).startswith(str(flash) + "/") and not Path(m.group(1)).name.startswith(
                        (".world", "console", ".hal.json")):
                    flash_bytes += int(m.group(2))
        return {"ok": ok, "messages": msgs, "later": later, "flash_bytes": flash_bytes, "console": console[-2000:]}


def min_heap(mpy: Path, name: str, seconds: float, romfs: Path | None = None) -> int | None:
    """Smallest heap in HEAPS_WK that runs the profile cleanly (binary search; runs are monotonic)."""
    lo, hi, best = 0, len(HEAPS_WK) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if run_device(mpy, name, f"{HEAPS_WK[mid]}wK", seconds, romfs=romfs)["ok"]:
            best, hi = HEAPS_WK[mid], mid - 1
        else:
            lo = mid + 1
    return best


def hal_cost(mpy: Path) -> dict[str, int]:
    """Heap each backend takes when imported (bench/hal_cost_upy.py): the sim's share of the figures above
    that a board, importing hal/esp32.py instead, does not carry. The esp32 backend's machine and network
    are build_firmware's stand-ins (firmware/sim/esp32_machine), imported before the count starts."""
    out = {}
    for backend in ("sim", "esp32"):
        result = upy.run(HERE / "hal_cost_upy.py", backend, heap=MEASURE_HEAP,
                         env={"MICROPYPATH": firmware.import_path([mpy / "lib", mpy], mpy, "esp32")}, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(result.stdout + result.stderr)
        out[backend] = json.loads(result.stdout.strip().splitlines()[-1])["bytes"]
    return out


def seal_time(mpy: Path, pack: list[dict[int, Any]], work: Path) -> dict[str, float]:
    path = work / "pack.json"
    path.write_text(json.dumps([{str(k): v for k, v in rec.items()} for rec in pack]))
    result = upy.run(HERE / "firmware_encode_upy.py", str(path), "200", heap="256K",
                     env={"MICROPYPATH": f"{mpy}:.frozen"}, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def batched(records: list[dict[str, Any]], size: int) -> list[list[dict[int, Any]]]:
    """Routine readings regrouped into packs of the profile's real batch size, built the way the
    device builds them (integer base time, offsets, base unit), for figures at full batches."""
    packs = []
    for i in range(0, len(records), size):
        chunk = records[i:i + size]
        bt = int(chunk[0]["t"])
        bu = chunk[0].get("u")
        bn = chunk[0]["n"] if all(r["n"] == chunk[0]["n"] for r in chunk) else None
        recs = [senml.record(r["n"], r.get("v", r.get("vb")), None if r.get("u") == bu else r.get("u"),
                             round(r["t"] - bt) or None) for r in chunk]
        if bn:
            for rec in recs:
                del rec[senml.N]
        packs.append(senml.pack(recs, bn=bn, bt=bt, bu=bu))
    return packs


def sizes_of(packs: list[list[dict[int, Any]]]) -> tuple[int, int, int, int]:
    """(sealed CBOR message, bare SenML-JSON, the same message as JSON with a hex MAC, SenML-CBOR pack
    alone) bytes for these packs."""
    cbor = bare = as_json = pack_only = 0
    for seq, pack in enumerate(packs):
        cbor += len(message.encode(message.data("dev-01", 1, seq, pack), KEY))
        pack_only += len(cbor_codec.dumps(pack))
        text = senml_resolve.to_json(pack)
        bare += len(text)
        # like for like: the device named once (the CBOR message's kid), clk and pri 0 left out, the 8-byte tag
        body = {"k": "data", "dev": "dev-01", "boot": 1, "seq": seq, "e": json.loads(text), "mac": "00" * 8}
        as_json += len(json.dumps(body, separators=(",", ":")))
    return cbor, bare, as_json, pack_only


def heap_reports(msgs: Sequence[tuple[Any, ...]], field: str = "heap") -> list[tuple[int, int]]:
    """(index in msgs, free heap) of every figure the device reported in its births and health events:
    `heap`, the free heap at the figure, or `heapmin`, the lowest since the figures before (command
    path included)."""
    out: list[tuple[int, int]] = []
    for i, (kind, body, *_) in enumerate(msgs):
        if kind == topics.EVENT and body.get("ev") == "health":
            out += [(i, r["v"]) for r in senml_resolve.resolve([dict(r) for r in body["e"]]) if r["n"] == field]
        elif kind == topics.STATE and field in body:
            out.append((i, body[field]))
    return out


def heap_figures(run: dict[str, Any]) -> dict[str, float]:
    """Peak live heap of a run_device(boots=2) run: the first boot's, the later boot's, and with the
    command path (the lowest `heapmin` of both)."""
    heap = heap_bytes(MEASURE_HEAP)
    peak_first, peak = (heap - min(f for _, f in heap_reports(run[k])) for k in ("messages", "later"))
    low = min(f for _, f in heap_reports(run["messages"] + run["later"], "heapmin"))
    return {"peak_live_k": round(peak / 1024, 1), "peak_live_wk": wk(peak), "first_boot_peak_live_wk": wk(peak_first),
            "command_peak_live_wk": wk(heap - low)}


def measure_romfs(name: str, mpy: Path, image: Path, seconds: float) -> dict[str, Any]:
    """The heap figures again with the firmware imported from a ROMFS image (its bytecode and strings
    read in place, as from a board's flash) instead of from .mpy files."""
    run = run_device(mpy, name, MEASURE_HEAP, seconds, boots=2, romfs=image)
    if not run["ok"]:
        raise RuntimeError(f"{name} did not run cleanly from ROMFS:\n{run['console']}")
    return {"min_heap_wk": min_heap(mpy, name, min(seconds, 12), image), **heap_figures(run)}


def measure(name: str, mpy: Path, seconds: float, work: Path) -> dict[str, Any]:
    trace = work / f"{name}.strace"
    run = run_device(mpy, name, MEASURE_HEAP, seconds, trace, boots=2)
    if not run["ok"]:
        raise RuntimeError(f"{name} did not run cleanly:\n{run['console']}")
    packs: list[list[dict[int, Any]]] = []
    routine: list[dict[str, Any]] = []
    wire = 0
    for kind, body, raw in run["messages"]:
        if kind in (topics.DATA, topics.EVENT):
            pack = [dict(r) for r in body["e"]]
            packs.append(pack)
            wire += len(raw)
            if kind == topics.DATA and not body["pri"]:
                routine += senml_resolve.resolve(pack)
    readings = sum(len(p) for p in packs)
    _, bare, as_json, _ = sizes_of(packs)
    full = batched(routine, load_profile(name).get("batch", 16))
    full_n = sum(len(p) for p in full)
    full_cbor, full_bare, full_json, full_pack = sizes_of(full)
    seal = seal_time(mpy, max(full, key=len), work)
    return {
        "min_heap_wk": min_heap(mpy, name, min(seconds, 12)),
        **heap_figures(run),
        "readings": readings,
        "wire_per_reading": round(wire / readings, 1),
        "senml_json_per_reading": round(bare / readings, 1),
        "json_msg_per_reading": round(as_json / readings, 1),
        "wire_ratio": round(wire / bare, 3),
        "batch_wire_per_reading": round(full_cbor / full_n, 1),
        "batch_senml_json_per_reading": round(full_bare / full_n, 1),
        "batch_wire_ratio": round(full_cbor / full_bare, 3),
        "batch_json_msg_ratio": round(full_cbor / full_json, 3),
        "pack_only_ratio": round(full_pack / full_bare, 3),
        "seal_ms": round(seal["seal_us"] / 1000, 3),
        "json_encode_ms": round(seal["json_us"] / 1000, 3),
        "seal_pack_records": len(max(full, key=len)),
        "flash_per_reading": round(run["flash_bytes"] / readings, 1),
        "json_flash_per_reading": round(bare / readings, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path, default=report.RESULTS / "firmware.json")
    args = ap.parse_args()
    if not shutil.which("strace"):
        raise SystemExit("strace is needed to count flash writes (apt-get install strace)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mpy = build_firmware(work / "mpy")
        image = build_romfs(mpy)
        sizes = mpy_sizes(work / "board")
        hal = hal_cost(mpy)
        rows = {}
        for name in args.profiles.split(","):
            print(f"{name}: from .mpy files ...", flush=True)
            rows[name] = measure(name, mpy, args.seconds, work)
            rows[name]["mpy_k"] = round(sizes["profile"][name] / 1024, 1)
            print(f"{name}: from ROMFS ...", flush=True)
            rows[name]["romfs"] = measure_romfs(name, mpy, image, args.seconds)
    cols = ("min_heap_wk", "first_boot_peak_live_wk", "peak_live_wk", "command_peak_live_wk", "peak_live_k", "mpy_k",
            "wire_ratio",
            "batch_wire_per_reading", "batch_senml_json_per_reading", "batch_wire_ratio", "batch_json_msg_ratio",
            "pack_only_ratio", "seal_ms", "json_encode_ms", "flash_per_reading")
    report.print_rows(rows, cols)
    heap_cols = ("min_heap_wk", "first_boot_peak_live_wk", "peak_live_wk", "command_peak_live_wk")
    print("ROMFS      " + " ".join(f"{c:>12.12}" for c in heap_cols) + "   (wK; the .mpy files' figure in brackets)")
    for name, row in rows.items():
        print(f"{name:<9} " + " ".join(f"{row['romfs'][c]!s:>5} ({row[c]!s:>4})" for c in heap_cols))
    all_k = round(sizes["all"] / 1024, 1)
    hal_wk = {k: wk(v) for k, v in hal.items()}
    print(f"HAL backend on import: sim {hal_wk['sim']}wK, esp32 {hal_wk['esp32']}wK (machine and network: "
          f"firmware/sim/esp32_machine's): a board carries {round(hal_wk['sim'] - hal_wk['esp32'], 1)}wK less "
          "than the figures above")
    verdict = {
        "peak_heap_le_48wk": all(max(r["peak_live_wk"], r["first_boot_peak_live_wk"]) <= TARGET_PEAK_K
                                 for r in rows.values()),
        "later_boot_peak_heap_le_48wk": all(r["peak_live_wk"] <= TARGET_PEAK_K for r in rows.values()),
        "command_peak_heap_le_48wk": all(r["command_peak_live_wk"] <= TARGET_PEAK_K for r in rows.values()),
        "romfs_peak_heap_le_48wk": all(max(r["romfs"]["peak_live_wk"], r["romfs"]["first_boot_peak_live_wk"],
                                           r["romfs"]["command_peak_live_wk"]) <= TARGET_PEAK_K for r in rows.values()),
        "wire_le_50pct_at_full_batch": all(r["batch_wire_ratio"] <= TARGET_WIRE for r in rows.values()),
        "all_mpy_le_64k": all_k <= TARGET_MPY_K,
    }
    print(f"all board .mpy: {all_k} KB (target {TARGET_MPY_K}); targets met: {verdict}")
    result = {**report.stamp(), "profiles": rows, "mpy": sizes, "all_mpy_k": all_k, "hal_import_wk": hal_wk,
              "targets": verdict}
    print(f"wrote {report.save(args.json, result)}")


if __name__ == "__main__":
    main()
