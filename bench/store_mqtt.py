"""Heap, code size and flash wear of the firmware's flash queue and MQTT client, on the unix port.

Run: .venv/bin/python -m bench.store_mqtt [--json F]. Prints a table and writes bench/results/store_mqtt.json
(or F). The baseline is the interpreter's own heap use (with asyncio imported) measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import report
from lifeline import upy
from lifeline.virtual.broker import Mosquitto

HERE = Path(__file__).parent
MODULES = ("flashq", "persist", "mqtt")


def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        out = Path(tmp)
        for name in MODULES:
            upy.compile_module(upy.FIRMWARE / "lib" / f"{name}.py", out / f"{name}.mpy")
        upy.compile_module(HERE / "store_mqtt_upy.py", out / "store_mqtt_upy.mpy")
        result = upy.run("-m store_mqtt_upy", str(broker.port), str(out / "flash.img"),
                         env={"MICROPYPATH": f"{out}:.frozen"}, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(result.stdout + result.stderr)
        figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        for name in MODULES:
            figures[f"{name}_mpy_bytes"] = (out / f"{name}.mpy").stat().st_size
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=report.RESULTS / "store_mqtt.json")
    args = ap.parse_args()
    figures = measure()
    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value")
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    base = figures["baseline_heap"]
    print(f"{'queue + connected client over baseline':<{width}}  {figures['heap_in_use_end'] - base}")
    print(f"wrote {report.save(args.json, {**report.stamp(), **figures})}")


if __name__ == "__main__":
    main()
