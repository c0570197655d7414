"""A node's update from end to end: virtual boards (the real firmware on the MicroPython unix port, 64wK heap,
a flash directory each) against a real Mosquitto, a release made by `lifeline release`, served the way the
gateway serves it (gateway/ota_relay.py), the ota command sealed as the gateway seals it. What the node does
is read from the outside: its births (the version it runs) and its "ota" events."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import DEV, SITE, Build, Relay, births, ota_events, provision

from lifeline import release, upy
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_romfs
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import load_profile
from protocol import topics


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


def refused_on_old_code(tmp_path: Path, mpy: Path, broker: Mosquitto, key: Ed25519PrivateKey, args: dict[str, Any],
                        profile: str = "gas") -> tuple[dict[str, Any], FlashDirDevice, Listener]:
    """Send the ota command; return the "ota" event and a device that has booted its old code again."""
    listener = Listener(broker.port, SITE, DEV)
    dev = device(tmp_path, mpy, broker, key, profile)
    with dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        first = len(births(listener))
        dev.command(1, "ota", args)
        assert listener.wait(lambda m: ota_events(listener), 120), dev.console()
        assert listener.wait(lambda m: len(births(listener)) > first, 30), dev.console()
    listener.close()
    return ota_events(listener)[-1], dev, listener


@pytest.mark.parametrize("case", ["tampered file", "tampered manifest", "wrong key", "downgrade", "wrong profile",
                                  "too little heap", "another .mpy version"])
def test_a_bad_release_is_refused_with_its_reason_and_the_old_code_runs_on(
        case: str, tmp_path: Path, mpy: Path, broker: Mosquitto, relay: Relay, make_release: Build,
        key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """"another .mpy version": built by an mpy-cross past a .mpy version bump. The node took it whole, switched,
    failed to import it at each trial boot and rolled back, "2 boots without a confirmed connection", the cause
    never named; its manifest now says which version its files are."""
    version = {"downgrade": "0.0.9"}.get(case, "0.2.0")
    if case == "another .mpy version":
        compile_module = upy.compile_module

        def newer(source: Path, target: Path, module: str | None = None) -> Path:
            out = compile_module(source, target, module)
            out.write_bytes(out.read_bytes()[:1] + bytes([out.read_bytes()[1] + 1]) + out.read_bytes()[2:])
            return out

        monkeypatch.setattr(upy, "compile_module", newer)
    kw: dict[str, Any] = {"wrong key": {"signer": Ed25519PrivateKey.generate()},
                          "wrong profile": {"profiles": ("water", "rain")},
                          "too little heap": {"min_heap": 1 << 24}}.get(case, {})
    rel = make_release(version, **kw)
    relay.releases.add_dir(rel.dir)
    if case == "tampered file":
        relay.tamper = len(rel.manifest) + 3000
    elif case == "tampered manifest":
        relay.tamper = 40
    ev, dev, listener = refused_on_old_code(tmp_path, mpy, broker, key, rel.command_args())
    reason = {"tampered file": "SHA-256 does not match the manifest", "tampered manifest": "bad signature",
              "wrong key": "bad signature", "downgrade": "version 0.0.9 is not above 0.1.0, the one running",
              "wrong profile": "release is not for the gas profile", "too little heap": "release needs 16777216",
              "another .mpy version": "release is .mpy version 7, this MicroPython loads 6"}[case]
    assert ev["ota.v"] == version and ev["ota.ok"] is False, ev
    assert ev["ota.res"].startswith("refused: ") and reason in ev["ota.res"], ev
    assert all(b["fw"] == "0.1.0" for b in births(listener)), "the old code runs on"
    assert (dev.read("slot.json") if (dev.flash / "slot.json").exists() else {"run": ""})["run"] == ""
    assert not (dev.flash / "ota.json").exists()


def padded(rel: release.Release, key: Ed25519PrivateKey, out: Path, size: int) -> release.Release:
    """The release with its manifest grown to `size` bytes by empty files (held through the download as a
    real file list is), signed again: a release of many more modules."""
    m = json.loads(rel.manifest)
    empty = hashlib.sha256(b"").hexdigest()
    while True:
        raw = json.dumps(m, separators=(",", ":"), sort_keys=True).encode()
        entry = {"path": f"pad/{len(m['files']):05d}.mpy", "sha256": empty, "size": 0}
        if len(raw) + len(json.dumps(entry, separators=(",", ":"))) + 1 > size:
            break
        m["files"].append(entry)
    raw = raw.replace(b',"profiles"', b"," + b" " * (size - len(raw)) + b'"profiles"', 1)  # JSON's whitespace
    sig = key.sign(raw)
    d = out / rel.version
    d.mkdir(parents=True)
    (d / "manifest.json").write_bytes(raw)
    (d / "manifest.sig").write_bytes(sig)
    (d / "release.bin").write_bytes(raw + (rel.dir / "release.bin").read_bytes()[len(rel.manifest):])
    return release.Release(d, rel.version, raw, sig)


def test_a_manifest_larger_than_the_updater_holds_is_refused_by_the_command(
        tmp_path: Path, mpy: Path, broker: Mosquitto, relay: Relay, make_release: Build,
        key: Ed25519PrivateKey) -> None:
    """The updater reads the manifest whole into its 64 KB heap, and the command took n up to 65,536: a
    14 KB manifest failed for memory at each of the updater's 5 boots and the update "did not finish", no
    reason given. A size past 8 KB (13 KB fit; a release's is 5 KB) is refused in the command's ack, the
    node staying on its version; a manifest of 8 KB lands."""
    rel = padded(make_release("0.2.0"), key, tmp_path / "rel", 8192)
    relay.releases.add_dir(rel.dir)
    listener = Listener(broker.port, SITE, DEV)
    with device(tmp_path, mpy, broker, key) as dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        dev.command(1, "ota", {**rel.command_args(), "n": 8193})
        assert listener.wait(lambda m: listener.of(topics.ACK), 30), dev.console()
        assert not (dev.flash / "ota.json").exists()
        dev.command(2, "ota", rel.command_args())
        assert on_version(listener, "0.2.0", 120), dev.console()
        # The new release's birth goes out at its connect, its "ota" event from the queue after it.
        assert listener.wait(lambda m: ota_events(listener), 30), dev.console()
        console = dev.console()
    listener.close()
    ack = listener.of(topics.ACK)[0]
    assert (ack["id"], ack["ok"]) == (1, False), ack
    assert ack["res"] == "ota needs v (text) and n (manifest bytes, 1..8192: what the updater's heap holds)", ack
    assert len(rel.manifest) == 8192
    assert ota_events(listener) == [{"ota.v": "0.2.0", "ota.ok": True, "ota.res": "running"}]
    assert "MemoryError" not in console, console


@pytest.mark.parametrize("case", ["crashes on boot", "never connects"])
def test_a_release_that_fails_its_trial_rolls_back_by_itself(case: str, tmp_path: Path, mpy: Path,
                                                             broker: Mosquitto, relay: Relay, make_release: Build,
                                                             key: Ed25519PrivateKey) -> None:
    """The new code is in, switched to and booted, and fails: at import (every boot dies before the app runs),
    or with an MQTT client that never reaches the broker (the app runs, so its trial_s ends the trial). The node
    goes back to its old code by itself and says which version failed and why."""
    patch = {"crashes on boot": {"app/runtime.py": ("import asyncio\n", "raise RuntimeError('broken release')\n")},
             "never connects": {"mqtt.py": ("    async def _connect(self):\n",
                                            "    async def _connect(self):\n        raise OSError('no route')\n")}}
    rel = make_release("0.3.0", patch=patch[case])
    relay.releases.add_dir(rel.dir)
    listener = Listener(broker.port, SITE, DEV)
    dev = device(tmp_path, mpy, broker, key)
    d = dev.read("device.json")
    d["trial_s"] = 10
    dev._write("device.json", d)
    with dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        first = len(births(listener))
        dev.command(1, "ota", rel.command_args())
        assert listener.wait(lambda m: ota_events(listener), 120), dev.console()
        assert listener.wait(lambda m: len(births(listener)) > first, 30), dev.console()
        console = dev.console()
    listener.close()
    ev = ota_events(listener)[-1]
    reason = {"crashes on boot": "rolled back: 2 boots without a confirmed connection",
              "never connects": "rolled back: no broker connection within 10 s"}[case]
    assert (ev["ota.v"], ev["ota.ok"], ev["ota.res"]) == ("0.3.0", False, reason), ev
    assert all(b["fw"] == "0.1.0" for b in births(listener)), "0.3.0 never reached the broker"
    assert dev.read("slot.json")["run"] == "" and "try" not in dev.read("slot.json")
    if case == "crashes on boot":
        assert console.count("broken release") == 2, console


def test_a_node_that_runs_from_romfs_updates_into_its_file_slot(tmp_path: Path, mpy: Path, broker: Mosquitto,
                                                                relay: Relay, make_release: Build,
                                                                key: Ed25519PrivateKey) -> None:
    """A node deployed with `lifeline flash --romfs` imports its code from the ROM image; the release lands in
    the file slot, and after the switch every module comes from the slot, none from the image: the new code's
    own line is printed, and the node runs on it in 64wK."""
    rel = make_release("0.2.0", patch={"app/runtime.py": ("def run(st, cfg):\n",
                                                          "def run(st, cfg):\n    print('runs release 0.2.0')\n")})
    relay.releases.add_dir(rel.dir)
    listener = Listener(broker.port, SITE, DEV)
    with device(tmp_path, mpy, broker, key, romfs=build_romfs(mpy)) as dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        assert "runs release" not in dev.console()
        dev.command(1, "ota", rel.command_args())
        assert on_version(listener, "0.2.0", 120), dev.console()
        assert listener.wait(lambda m: ota_events(listener), 30), dev.console()
        console = dev.console()
    listener.close()
    assert ota_events(listener)[-1] == {"ota.v": "0.2.0", "ota.ok": True, "ota.res": "running"}
    assert "runs release 0.2.0" in console, console
    assert "MemoryError" not in console, console
    assert dev.read("slot.json")["run"] == "ota/b"


def test_an_update_whose_link_stays_down_gives_up_and_the_node_samples_again(tmp_path: Path, mpy: Path,
                                                                             broker: Mosquitto, relay: Relay,
                                                                             make_release: Build,
                                                                             key: Ed25519PrivateKey) -> None:
    """The updater stops sampling for the download. A broker that went away mid-download (or a link that never
    came up) left it waiting for the link with no limit: a node blind, storing nothing, for as long as the broker
    was away. Two minutes without a chunk end the update whatever the cause: refused with the reason, the old
    code runs on and samples, and the refusal goes upstream once the broker is back."""
    rel = make_release("0.2.0")
    relay.releases.add_dir(rel.dir)
    relay.hold = len(rel.manifest) + 2048  # the download stops there; the node is mid-file when the broker goes
    listener = Listener(broker.port, SITE, DEV)
    dev = device(tmp_path, mpy, broker, key)
    # The default 120 s, shortened; its clock starts at the held request, so it outlasts the broker's stop below.
    dev._write("device.json", {**dev.read("device.json"), "ota_idle_s": 8})
    with dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        dev.command(1, "ota", rel.command_args())
        with relay.lock:
            assert relay.lock.wait_for(lambda: relay.held, 60), dev.console()
        listener.close()
        broker.stop()
        deadline = time.monotonic() + 60  # the updater prints its refusal ota_idle_s after the chunk's request
        while "\nota: " not in dev.console() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "\nota: " in dev.console(), dev.console()[-2000:]
        broker.start()
        listener = Listener(broker.port, SITE, DEV)
        assert listener.wait(lambda m: ota_events(listener) and births(listener), 90), dev.console()
        console = dev.console()
    listener.close()
    ev = ota_events(listener)[-1]
    assert (ev["ota.v"], ev["ota.ok"]) == ("0.2.0", False), ev
    assert ev["ota.res"] == "refused: no link to the broker for 8 s", ev
    assert births(listener)[-1]["fw"] == "0.1.0"
    assert not (dev.flash / "ota.json").exists()
    assert "Traceback" not in console, console


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("ota_key", "zz" * 32, "ota_key in device.json is not 32 bytes of hex"),
    ("ota_idle_s", 0, "ota_idle_s in device.json is not 5..3600"),
    ("ota_idle_s", "60", "ota_idle_s in device.json is not 5..3600"),
])
def test_a_device_json_field_only_the_updater_reads_that_is_wrong_is_refused_with_its_reason(
        tmp_path: Path, mpy: Path, broker: Mosquitto, relay: Relay, make_release: Build, key: Ed25519PrivateKey,
        field: str, value: object, reason: str) -> None:
    """device.json's ota_key and ota_idle_s (written by hand, or by a config command) are read by the updater
    alone. An ota_key that is not hex failed the updater at each of its 5 boots, a traceback each, and the
    outcome said only that it did not finish; either field wrong is refused with its reason."""
    rel = make_release("0.2.0")
    relay.releases.add_dir(rel.dir)
    listener = Listener(broker.port, SITE, DEV)
    dev = device(tmp_path, mpy, broker, key)
    dev._write("device.json", {**dev.read("device.json"), field: value})
    with dev:
        assert on_version(listener, "0.1.0", 30), dev.console()
        dev.command(1, "ota", rel.command_args())
        assert listener.wait(lambda m: ota_events(listener), 120), dev.console()
        console = dev.console()
    listener.close()
    ev = ota_events(listener)[-1]
    assert (ev["ota.v"], ev["ota.ok"]) == ("0.2.0", False), ev
    assert ev["ota.res"] == "refused: " + reason, ev
    assert "Traceback" not in console, console
