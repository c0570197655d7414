"""The OTA update path per profile: the updater boot's heap, its flash writes and its speed, each against a
baseline measured in the same run.

Run: .venv/bin/python -m bench.ota_bench [--profiles gas,drone]. Prints a table and writes
bench/results/ota.json. Every figure comes from a virtual device (the real firmware as .mpy on the
MicroPython unix port, lifeline/virtual/flashdir.py) updating from a relay that serves a release built by
`lifeline release` the way the gateway does (gateway/ota_relay.Releases over paho), through a real Mosquitto.
The node first runs its sped-up profile at the firmware heap until its first birth (so its config is checked
and its app has run), then ota.json is put on its flash as the ota command writes it and the power is cut:
the boots after that are the updater's.

- min heap (wK): the smallest -X heapsize, in 4wK steps, at which the updater takes the release to the switch
  (slot.json names the new slot) with no MemoryError on its console; against the firmware heap every profile
  is held to (64wK): headroom is the difference. As in bench/firmware_bench.py, "w" scales by the word size:
  64wK is 128 KB on this 64-bit port.
- flash bytes: every byte the updater's processes write under the flash directory into the new slot,
  ota.json and slot.json (strace, temp files included), from the cut to the switch; against the release's
  bytes (release.bin): the write amplification of resumable progress and the atomic switch.
- ms/KB: from the updater's first chunk request to the last chunk served, at the firmware heap, against the
  same chunks asked for one at a time by a CPython client of the same relay over the same broker: the
  transport alone, so the ratio is what the node adds (hashing, flash writes, the interpreter).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from bench import report
from gateway.ota_relay import Releases
from lifeline import release, upy
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_firmware
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import STIMULUS, sped_up
from protocol import topics

SITE, DEV, NEW = "site-a", "dev-01", "0.2.0"
HEAPS_WK = tuple(range(16, 68, 4))
FIRMWARE_WK = int(upy.FIRMWARE_HEAP.rstrip("wK"))
UPDATE_TIMEOUT_S = 120.0
_WRITE = re.compile(r'write\(\d+<([^>]*)>, .*\) = (\d+)$')


class Relay:
    """gateway/ota_relay.Releases over paho, recording when it serves each chunk."""

    def __init__(self, port: int, rel: release.Release) -> None:
        self.releases = Releases(SITE)
        self.releases.add_dir(rel.dir)
        self.served: list[float] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-{time.time_ns()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.device_filter(SITE, topics.OTA_REQ), qos=0)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        chunk = self.releases.answer(msg.topic, msg.payload)
        if chunk is not None:
            client.publish(chunk.topic, chunk.payload, qos=0)
            self.served.append(time.monotonic())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def transport_ms_per_kb(port: int, size: int) -> float:
    """The release fetched 1 KB at a time by a CPython client, one request out at a time, as the node asks."""
    got = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fetch-{time.time_ns()}")
    client.on_message = lambda c, u, m: got.set()
    client.connect("127.0.0.1", port)
    client.subscribe(topics.device(SITE, DEV, topics.OTA), qos=0)
    client.loop_start()
    time.sleep(0.5)
    t0 = time.monotonic()
    for off in range(0, size, 1024):
        got.clear()
        client.publish(topics.device(SITE, DEV, topics.OTA_REQ), f"{NEW} {off} {min(1024, size - off)}".encode())
        if not got.wait(5):
            raise RuntimeError(f"no chunk at {off}")
    ms = (time.monotonic() - t0) * 1000
    client.loop_stop()
    client.disconnect()
    return round(ms / (size / 1024), 2)


def update(mpy: Path, name: str, rel: release.Release, key: Ed25519PrivateKey, heap_wk: int, work: Path,
           trace: bool = False) -> dict[str, Any]:
    """One update of a fresh node of profile `name`, its updater boots at heap_wk."""
    flash = work / f"{name}-{heap_wk}-{time.time_ns()}"
    with Mosquitto() as broker:
        relay = Relay(broker.port, rel)
        listener = Listener(broker.port, SITE, DEV)
        dev = FlashDirDevice(flash, mpy, sped_up(name), broker.port, STIMULUS[name])
        dev._write("device.json", {**dev.read("device.json"), "ota_key": release.public_hex(key)})
        strace = flash / ".ota.strace"
        try:
            dev.start()
            if not listener.wait(lambda m: any(k == topics.STATE for k, *_ in m), 60):
                raise RuntimeError(f"{name}: no birth\n{dev.console()[-2000:]}")
            (flash / "ota.json").write_text(json.dumps({"id": 1, **rel.command_args()}))
            mark = len(dev.console())
            dev.heap = f"{heap_wk}wK"
            if trace:
                dev.wrap = ["strace", "-f", "-A", "-y", "-e", "trace=write", "-o", str(strace)]
            dev.kill()
            ok, deadline = False, time.monotonic() + UPDATE_TIMEOUT_S
            while time.monotonic() < deadline:
                console = dev.console()[mark:]
                if "MemoryError" in console or (flash / "otares.json").exists():
                    break
                try:
                    if json.loads((flash / "slot.json").read_text())["run"]:
                        ok = True
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.005)
        finally:
            dev.stop()
            relay.close()
            listener.close()
        console = dev.console()[mark:]
    written = 0
    if trace and strace.exists():
        for line in strace.read_text(errors="replace").splitlines():
            m = _WRITE.search(line)
            if m and m.group(1).startswith(str(flash) + "/"):
                rel_path = m.group(1)[len(str(flash)) + 1:]
                if rel_path.startswith(("ota/", "ota.json", "slot.json")):
                    written += int(m.group(2))
    shutil.rmtree(flash, ignore_errors=True)
    ms = (relay.served[-1] - relay.served[0]) * 1000 if len(relay.served) > 1 else None
    return {"ok": ok and "MemoryError" not in console, "flash_bytes": written, "ms": ms,
            "console": console[-1500:]}


def min_heap(mpy: Path, name: str, rel: release.Release, key: Ed25519PrivateKey, work: Path) -> int | None:
    """Smallest heap in HEAPS_WK at which the updater completes (binary search; runs are monotonic)."""
    lo, hi, best = 0, len(HEAPS_WK) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if update(mpy, name, rel, key, HEAPS_WK[mid], work)["ok"]:
            best, hi = HEAPS_WK[mid], mid - 1
        else:
            lo = mid + 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default=",".join(STIMULUS))
    ap.add_argument("--no-min-heap", action="store_true", help="skip the heap search (about 4 updates a profile)")
    ap.add_argument("--json", type=Path, default=report.RESULTS / "ota.json")
    args = ap.parse_args()
    if not shutil.which("strace"):
        raise SystemExit("strace is needed to count flash writes (apt-get install strace)")
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mpy = build_firmware(work / "mpy")
        rel = release.build(key, NEW, work / "releases")
        size = (rel.dir / "release.bin").stat().st_size
        with Mosquitto() as broker:
            relay = Relay(broker.port, rel)
            transport = transport_ms_per_kb(broker.port, size)
            relay.close()
        rows: dict[str, dict[str, Any]] = {}
        for name in args.profiles.split(","):
            print(f"{name}: update at {upy.FIRMWARE_HEAP} (traced) ...", flush=True)
            full = update(mpy, name, rel, key, FIRMWARE_WK, work, trace=True)
            if not full["ok"]:
                raise SystemExit(f"{name}: the update failed at {upy.FIRMWARE_HEAP}\n{full['console']}")
            timed = update(mpy, name, rel, key, FIRMWARE_WK, work)  # untraced: strace slows every write
            least = None
            if not args.no_min_heap:
                print(f"{name}: min heap ...", flush=True)
                least = min_heap(mpy, name, rel, key, work)
            ms_kb = round(timed["ms"] / (size / 1024), 2)
            rows[name] = {"min_heap_wk": least, "headroom_wk": None if least is None else FIRMWARE_WK - least,
                          "flash_bytes": full["flash_bytes"], "release_bytes": size,
                          "write_amp": round(full["flash_bytes"] / size, 2), "ms_per_kb": ms_kb,
                          "transport_ms_per_kb": transport, "node_vs_transport": round(ms_kb / transport, 1)}
    report.print_rows(rows, ("min_heap_wk", "headroom_wk", "flash_bytes", "release_bytes", "write_amp", "ms_per_kb",
                             "transport_ms_per_kb", "node_vs_transport"))
    result = {**report.stamp(), "profiles": rows, "release_bytes": size, "firmware_heap_wk": FIRMWARE_WK}
    print(f"written to {report.save(args.json, result)}")


if __name__ == "__main__":
    main()
