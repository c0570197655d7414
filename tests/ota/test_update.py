"""A node's update from end to end: virtual boards (the real firmware on the MicroPython unix port, 64wK heap,
a flash directory each) against a real Mosquitto, a release made by `lifeline release`, served the way the
gateway serves it (gateway/ota_relay.py), the ota command sealed as the gateway seals it. What the node does
is read from the outside: its births (the version it runs) and its "ota" events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import DEV, SITE, Build, Relay, births, ota_events, provision

from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import load_profile


def on_version(listener: Listener, v: str, timeout: float) -> bool:
    return listener.wait(lambda m: any(b.get("fw") == v for b in births(listener)), timeout)


def device(tmp_path: Path, mpy: Path, broker: Mosquitto, key: Ed25519PrivateKey, profile: str = "gas",
           **kw: Any) -> FlashDirDevice:
    dev = FlashDirDevice(tmp_path / "flash", mpy, load_profile(profile), broker.port, **kw)
    provision(dev, key)
    return dev


def test_update_lands_and_the_node_reports_its_new_version(tmp_path: Path, mpy: Path, broker: Mosquitto,
                                                           relay: Relay, make_release: Build,
                                                           key: Ed25519PrivateKey) -> None:
    rel = make_release("0.2.0")
    relay.releases.add_dir(rel.dir)
    listener = Listener(broker.port, SITE, DEV)
    with device(tmp_path, mpy, broker, key) as dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        dev.command(1, "ota", rel.command_args())
        assert on_version(listener, "0.2.0", 120), dev.console()
        assert listener.wait(lambda m: ota_events(listener), 30), dev.console()
        slot = dev.read("slot.json")
    listener.close()
    assert ota_events(listener)[-1] == {"ota.v": "0.2.0", "ota.ok": True, "ota.res": "running"}
    assert slot["run"] == "ota/b" and slot["v"] == "0.2.0" and "try" not in slot, slot
    man = json.loads((tmp_path / "flash" / "ota" / "b" / "manifest.json").read_text())
    for f in man["files"]:
        assert (tmp_path / "flash" / "ota" / "b" / f["path"]).stat().st_size == f["size"]
