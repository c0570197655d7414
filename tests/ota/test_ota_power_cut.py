"""Power cuts (SIGKILL of the node, which its supply then boots again) while it updates: once the manifest is
in, at a quarter, half and three quarters of the download, as the last chunk arrives (the last file's check
and the switch), and on the first boot of the new code (the trial). After every cut the flash holds one
slot's code to boot, whole: the old code, or the new one with every file matching the signed manifest; the
download goes on from where it stopped; and in the end the node runs the new version. The node alone, with
the test relay (tests/ota/ota_support.py), which records every chunk it serves."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import DEV, SITE, Build, Relay, births, ota_events
from test_update import device, on_version

from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.listener import Listener

OLD, NEW = "0.1.0", "0.2.0"
CHUNK = 1024


def next_boot_runs(flash: Path, manifest: dict[str, Any]) -> str:
    """"old" or "new": what the flash says the next boot runs. slot.json is written whole or not at all
    (persist.py: temp file, then rename); when it names the new slot, every file there must be whole and
    match the manifest, or the boot would run a mix."""
    try:
        s = json.loads((flash / "slot.json").read_text())
    except FileNotFoundError:
        return "old"
    if s["run"] == "":
        return "old"
    assert (s["run"], s["v"]) == ("ota/b", NEW), s
    for f in manifest["files"]:
        data = (flash / "ota" / "b" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f"{f['path']} is not whole in the new slot"
    return "new"


def test_power_cuts_during_the_download_and_the_switch(tmp_path: Path, mpy: Path, broker: Mosquitto, relay: Relay,
                                                       make_release: Build, key: Ed25519PrivateKey) -> None:
    rel = make_release(NEW)
    relay.releases.add_dir(rel.dir)
    size = (rel.dir / "release.bin").stat().st_size
    manifest = json.loads(rel.manifest)
    listener = Listener(broker.port, SITE, DEV)
    cuts: list[tuple[str, int, int, str]] = []  # (where, highest offset served, first asked after, next boot)
    with device(tmp_path, mpy, broker, key) as dev:
        assert on_version(listener, OLD, 30), dev.console()
        # Held points: the relay stops answering at the offset, so the node is cut with exactly that much on
        # flash (a cut there lands between chunks: while it waits, or writes the one before). The last chunk is
        # not held: that cut lands wherever the node is then, in the last file's check or the switch.
        points = [("manifest in", len(rel.manifest)), ("25%", size // 4), ("50%", size // 2), ("75%", 3 * size // 4),
                  ("last chunk", None)]
        relay.hold = points[0][1]  # before the command: the node is in its updater 0.1 s after it
        dev.command(1, "ota", rel.command_args())
        for i, (where, _) in enumerate(points):
            if where != "last chunk":
                assert relay.wait(lambda s: bool(relay.held), 120), (where, dev.console()[-3000:])
            else:
                assert relay.wait(lambda s: any(o + k >= size for o, k in s), 120), (where, dev.console()[-3000:])
            served = len(relay.served)
            before = max((o + k for o, k in relay.served), default=0)  # bytes the node had been sent
            dev.kill()
            runs = next_boot_runs(dev.flash, manifest)
            after = -1
            with relay.lock:
                relay.held.clear()
                relay.hold = points[i + 1][1] if i + 1 < len(points) else None
            if where != "last chunk":  # the node boots again and asks on, from where it was
                assert relay.wait(lambda s, n=served: len(s) > n, 60), (where, dev.console()[-3000:])
                after = relay.served[served][0]
                assert after == before, f"{where}: asked for {after} after the cut, had {before}"
            cuts.append((where, before, after, runs))
        deadline = time.monotonic() + 60  # the trial: the new code's first boot, before its birth confirms it
        while time.monotonic() < deadline:
            try:
                if "try" in json.loads((dev.flash / "slot.json").read_text()):
                    dev.kill()
                    cuts.append(("trial boot", size, -1, next_boot_runs(dev.flash, manifest)))
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.005)
        assert on_version(listener, NEW, 120), dev.console()[-3000:]
        assert listener.wait(lambda m: any(e["ota.v"] == NEW for e in ota_events(listener)), 30), dev.console()
        console = dev.console()
        slot = dev.read("slot.json")
    listener.close()
    print(cuts)
    assert [c[3] for c in cuts[:4]] == ["old"] * 4, cuts  # the switch comes only after the last file
    assert "trial boot" in [c[0] for c in cuts], "the trial boot was never caught; it confirmed within 5 ms"
    assert cuts[-1][3] == "new", cuts
    fw = [b["fw"] for b in births(listener)]
    assert set(fw) == {OLD, NEW} and fw.index(NEW) > 0 and OLD not in fw[fw.index(NEW):], fw
    assert ota_events(listener)[-1] == {"ota.v": NEW, "ota.ok": True, "ota.res": "running"}
    assert slot["v"] == NEW and "try" not in slot, slot
    # Resumed, not started over: every byte was served about once (a chunk in flight at a cut, or one the node
    # asked for again after 2 s unanswered, comes twice).
    sent = sum(k for _, k in relay.served)
    assert size <= sent <= size + 8 * CHUNK, (sent, size)
    assert "MemoryError" not in console and console.count("Traceback") == 0, console[-3000:]
