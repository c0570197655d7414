"""Only the wire-size part of bench/firmware_bench.py: message bytes per reading against SenML-JSON, per
profile, with the same functions (dense run of the real firmware, packs regrouped to the profile's batch).

Run: .venv/bin/python -m bench.firmware_wire [--profiles gas,water] [--seconds 20] [--save F | --load F].
--save keeps the decoded messages of the device runs; --load re-seals those same messages with the
protocol code of this checkout instead of running the devices, so two envelope formats can be compared
on identical readings; --load F --whole-seconds re-stamps them first as the firmware did before issue 18
(whole seconds in routine packs, 1/8 s in alarm ones), for the cost of millisecond times. Prints a table;
writes nothing else. A short run may not fill a whole batch (full_max < batch); at_batch spreads the
measured per-message overhead over the profile's batch instead.
"""

from __future__ import annotations

import argparse
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.firmware_bench import MEASURE_HEAP, PROFILES, batched, run_device, sizes_of
from lifeline.virtual.firmware import build_firmware
from lifeline.virtual.flashdir import KEY
from lifeline.virtual.profiles import load_profile
from protocol import message, senml, senml_resolve, topics


def device_messages(names: list[str], seconds: float) -> dict[str, list[dict[str, Any]]]:
    """The data and event bodies each profile's dense run published, decoded."""
    out: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        progress = report.Progress("wire")
        mpy = build_firmware(work / "mpy")
        for i, name in enumerate(names):
            progress.show(i, len(names), f"profiles run, {name} now for {seconds:g} s", force=True)
            run = run_device(mpy, name, MEASURE_HEAP, seconds, work / f"{name}.strace")
            if not run["ok"]:
                raise RuntimeError(f"{name} did not run cleanly:\n{run['console']}")
            out[name] = [dict(body, e=[dict(r) for r in body["e"]], _raw=len(raw)) for kind, body, raw
                         in run["messages"] if kind in (topics.DATA, topics.EVENT)]
        progress.show(len(names), len(names), "profiles run", force=True)
    return out


def reseal(body: dict[str, Any]) -> bytes:
    """The message the node's builders make of this body, sealed with this checkout's protocol code."""
    clk, pri = body.get("clk", message.CLK_EPOCH), body.get("pri", message.PRI_ROUTINE)
    if body["k"] == topics.EVENT:
        built = message.event(body["dev"], body["boot"], body["seq"], body["ev"], body["e"], clk, pri)
    else:
        built = message.data(body["dev"], body["boot"], body["seq"], body["e"], clk, pri)
    sealed: bytes = message.encode(built, KEY)
    return sealed


def whole_seconds(body: dict[str, Any]) -> dict[str, Any]:
    """The body with its record times rounded as before issue 18: to 1/8 s with alarm priority, else to 1 s."""
    step = 8 if body.get("pri") else 1
    for r in body["e"]:
        if senml.T in r:
            e = math.floor(r[senml.T] * step + 0.5)
            t = e // step if e % step == 0 else e / step
            if t:
                r[senml.T] = t
            else:
                del r[senml.T]
    return body


def figures(name: str, bodies: list[dict[str, Any]], resealed: bool) -> dict[str, Any]:
    wire = sum(len(reseal(b)) if resealed else b["_raw"] for b in bodies)
    packs = [b["e"] for b in bodies]
    readings = sum(len(p) for p in packs)
    routine = [r for b in bodies if b["k"] == topics.DATA and not b.get("pri")
               for r in senml_resolve.resolve(b["e"])]
    _, bare, _, _ = sizes_of(packs)
    batch = load_profile(name).get("batch", 16)
    full = batched(routine, batch)
    full_n = sum(len(p) for p in full)
    full_cbor, full_bare, full_json, full_pack = sizes_of(full)
    overhead = (full_cbor - full_pack) / len(full)  # envelope and body around one pack
    pack_rd, json_rd = full_pack / full_n, full_bare / full_n
    return {"batch": batch, "msgs": len(bodies), "readings": readings, "wire_rd": round(wire / readings, 1),
            "json_rd": round(bare / readings, 1), "wire_ratio": round(wire / bare, 3),
            "full_packs": len(full), "full_max": max(len(p) for p in full),
            "b_wire_rd": round(full_cbor / full_n, 1), "b_json_rd": round(full_bare / full_n, 1),
            "b_ratio": round(full_cbor / full_bare, 3), "b_jmsg_ratio": round(full_cbor / full_json, 3),
            "pack_only": round(full_pack / full_bare, 3), "overhead": round(overhead, 1),
            # a whole batch of these readings: the envelope spread over `batch` readings, not full_max
            "at_batch": round((pack_rd + overhead / batch) / json_rd, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--load", type=Path)
    ap.add_argument("--whole-seconds", action="store_true", help="with --load: stamp as before issue 18")
    args = ap.parse_args()
    names = args.profiles.split(",")
    if args.load:
        runs: dict[str, list[dict[str, Any]]] = pickle.loads(args.load.read_bytes())
        if args.whole_seconds:
            runs = {name: [whole_seconds(b) for b in bodies] for name, bodies in runs.items()}
    else:
        runs = device_messages(names, args.seconds)
        if args.save:
            args.save.write_bytes(pickle.dumps(runs))
    rows = {name: figures(name, runs[name], bool(args.load)) for name in names}
    cols = list(next(iter(rows.values())))
    report.print_rows(rows, cols)


if __name__ == "__main__":
    main()
