"""Virtual devices for the firmware tests and the bench: a flash directory with the config files,
the real firmware run by the MicroPython unix port under a 64K heap, restarted after resets and
deep sleep as a board would be, and an MQTT listener that authenticates and decodes what it sends."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lifeline import upy
from lifeline.virtual.stimulus import free_udp_pair
from protocol import message, message_check, topics

PROFILES = upy.FIRMWARE / "profiles"
KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes.fromhex(KEY_HEX)
# The heap the whole firmware is held to in these tests: upy.FIRMWARE_HEAP (docs/firmware.md, Memory).
FIRMWARE_HEAP = upy.FIRMWARE_HEAP
WORLD_HEAP = "2M"  # the unix port's own default, which the world gets when the device starts it
EXIT_RESET = 3  # firmware/lib/hal/sim.py
EXIT_DEEPSLEEP = 4
EXIT_SOFT = 5
ESP32_SIM = Path(__file__).parent / "esp32_sim"  # machine, network, esp32, ntptime over the sim world


# A scripted world per profile that crosses its pre-alarm levels within a short run.
STIMULUS: dict[str, dict[str, list[list[Any]]]] = {
    "gas": {"ch4": [[0, 1.0], [6, 14.0], [12, 3.0]], "temp": [[0, 12.0]]},
    "water": {"pressure": [[0, 420000], [8, 180000]]},
    "drainage": {"level": [[0, 0.4], [10, 2.4]], "cover": [[0, False], [6, True]]},
    "bridge": {"tilt_x": [[0, 0.001], [10, 0.03]], "tilt_y": [[0, 0.002]], "vib": [[0, 0.1], [8, 3.0]]},
    "rain": {"rain_rate": [[0, 400.0]]},
    "drone": {"lat": [[0, 31.2304], [15, 31.2404]], "lon": [[0, 121.4737]], "alt": [[0, 80.0]], "fix": [[0, 1]],
              "ch4": [[0, 1.0], [8, 14.0]]},
}


def sped_up(name: str) -> dict[str, Any]:
    """A profile with its schedule shortened so a short run sees several cycles."""
    p = load_profile(name)
    for s in p["sensors"]:
        s["sample_s"] = min(s["sample_s"], 2)
    p["report_s"] = 3
    p["health_s"] = 5
    if p.get("sleep"):
        p["sleep"]["wake_s"] = 2
    return p


def build_firmware(out: Path) -> Path:
    """firmware/lib and protocol/ as .mpy, the way `lifeline flash` ships them, and beside them (never
    flashed) the machine modules that let the ESP32 backend run here (esp32_sim/); returns their root."""
    upy.compile_package(upy.FIRMWARE / "lib", out)
    upy.compile_package(upy.ROOT / "protocol", out)
    upy.compile_package(ESP32_SIM, out)
    return out


def build_romfs(mpy: Path) -> Path:
    """The firmware of build_firmware as a ROMFS image in a board's layout (lib/, lib/protocol/): the
    partition a board built with ROMFS imports from in place (docs/firmware.md, "ROMFS"). Returns its path."""
    files = {f"lib/{p.relative_to(mpy / 'lib')}": p for p in (mpy / "lib").rglob("*.mpy")}
    files |= {f"lib/{p.relative_to(mpy)}": p for p in (mpy / "protocol").rglob("*.mpy")}
    image = mpy.parent / "firmware.romfs"
    image.write_bytes(upy.romfs_image(files))
    return image


def load_profile(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROFILES / f"{name}.json").read_text())
    return data


class VirtualDevice:
    def __init__(self, flash: Path, mpy: Path, profile: str | dict[str, Any], broker_port: int,
                 stimulus: dict[str, list[list[Any]]] | None = None, dev: str = "dev-01", site: str = "site-a",
                 heap: str = FIRMWARE_HEAP, ntp: bool = True, wrap: list[str] | None = None,
                 romfs: Path | None = None, hal: str = "sim") -> None:
        """wrap: argv put in front of the interpreter's (the bench runs it under strace). romfs: an image of
        build_romfs, which the device then imports from instead of the .mpy files (hal/simrom.py).
        hal: the backend; "esp32" runs hal/esp32.py against the esp32_sim machine modules."""
        self.flash = flash
        self.mpy = mpy
        self.dev, self.site, self.heap = dev, site, heap
        self.broker_port = broker_port
        self.wrap = wrap or []
        if hal == "esp32" and romfs is not None:  # hal/simrom.py leaves only the image on sys.path
            raise ValueError("the esp32_sim modules are not in the ROMFS image: hal='esp32' runs from files")
        self.romfs = romfs
        self.hal = hal
        self.key = KEY
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.port = free_udp_pair()
        flash.mkdir(parents=True, exist_ok=True)
        if romfs is not None:
            shutil.copyfile(romfs, flash / ".romfs")
        device = {"id": dev, "site": site, "profile": self.profile["name"],
                  "broker": {"host": "127.0.0.1", "port": broker_port}, "ntp": ["sim"]}
        if hal != "sim":  # the sim backend is the unix port's default
            device["hal"] = hal
        self._write("device.json", device)
        self._write("secrets.json", {"wifi": {"ssid": "sim", "password": "sim"}, "mqtt_password": None,
                                     "key": KEY_HEX})
        self._write("profile.json", self.profile)
        self._write("sim.json", {"control_port": self.port, "stimulus": stimulus or {}, "ntp": ntp,
                                 "start": time.time(), "idle_s": 60})
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []  # every end of the process but a soft reset
        self.soft_resets = 0
        self.log = flash / "console.log"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, name: str, obj: Any) -> None:
        (self.flash / name).write_text(json.dumps(obj))

    def read(self, name: str) -> Any:
        return json.loads((self.flash / name).read_text())

    # -- process --------------------------------------------------------------------------------------

    def _spawn(self, argv: list[str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
        env = {"MICROPYPATH": f"{self.mpy}/lib:{self.mpy}:.frozen"}  # the world's path, and the device's from files
        if self.hal == "esp32" and argv is None:
            env["MICROPYPATH"] = f"{self.mpy}/esp32_sim:{env['MICROPYPATH']}"
        if argv is None and self.romfs is not None:
            argv = self.wrap + upy.command(upy.FIRMWARE / "lib/hal/simrom.py", str(upy.FIRMWARE / "main.py"),
                                           heap=self.heap)
            env["LIFELINE_ROMFS"] = "x" * self.romfs.stat().st_size  # the block hal/simrom.py copies it into
        argv = argv or self.wrap + upy.command(upy.FIRMWARE / "main.py", heap=self.heap)
        with (log or self.log).open("ab") as out:
            return subprocess.Popen(argv, cwd=self.flash, stdout=out, stderr=subprocess.STDOUT,
                                    env=upy.environment(env))

    def _start_world(self) -> None:
        """The device starts its world itself when none answers. Under a tracer (`wrap`) that world would
        be traced too, and the tracer would wait for it after the device's exit, so the device would never
        start again: then the world is started here, untraced, before the device."""
        self._spawn(upy.command("-m hal.simworld", heap=WORLD_HEAP), self.flash / ".world.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                self.control(timeout=0.2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise

    def _supervise(self) -> None:
        """Power stays on: whatever ends the process, the board starts again (at once after a reset or
        a soft reset, after a deep sleep's duration when it asked for one)."""
        while not self._stop.is_set():
            self.proc = self._spawn()
            rc = self.proc.wait()
            if self._stop.is_set():
                break
            if rc == EXIT_SOFT:
                self.soft_resets += 1
                continue
            self.exits.append(rc)
            if rc == EXIT_DEEPSLEEP:
                ms = json.loads((self.flash / ".hal.json").read_text()).get("ms", 0)
                self._stop.wait(ms / 1000)
            elif rc != EXIT_RESET:
                self._stop.wait(0.2)

    def start(self) -> VirtualDevice:
        self._stop.clear()
        if self.wrap:
            self._start_world()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def _sigkill(self) -> None:
        assert self.proc is not None
        if self.wrap:  # a wrapper (strace) that is killed detaches its child, which would run on
            with contextlib.suppress(OSError):
                for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
        self.proc.send_signal(signal.SIGKILL)

    def kill(self) -> None:
        """Power cut: SIGKILL; the supervisor powers the board up again."""
        if self.proc is not None and self.proc.poll() is None:
            self._sigkill()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self._sigkill()
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self.control(quit=True)

    def __enter__(self) -> VirtualDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def control(self, timeout: float = 2.0, **msg: Any) -> dict[str, Any]:
        """One control datagram to the sim world (docs/firmware.md); returns its reply."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(json.dumps(msg).encode(), ("127.0.0.1", self.port))
            reply: dict[str, Any] = json.loads(s.recv(1024))
            return reply


    def command(self, cmd_id: int, op: str, args: dict[str, Any], exp: int | None = None) -> None:
        """Publish one sealed command to the device's cmd topic, as its gateway would (by default
        expiring after the gateway's default 30 s deadline)."""
        exp = int(time.time()) + 30 if exp is None else exp
        sealed = message.encode(message.command(self.dev, cmd_id, op, args, exp), self.key)
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", self.broker_port)
        client.loop_start()
        client.publish(topics.device(self.site, self.dev, topics.CMD), sealed, qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()


class Listener:
    """Subscribes to one device's topics on the site broker; keeps every message, decoded and
    verified with the device key (cbor2 for the CBOR), in arrival order."""

    def __init__(self, broker_port: int, site: str, dev: str, key: bytes = KEY, persistent: bool = False) -> None:
        """persistent: a session the broker keeps (and queues for) while this listener is away."""
        self.site, self.dev, self.key = site, dev, key
        self.messages: list[tuple[str, dict[str, Any], bytes, bool]] = []
        self.errors: list[str] = []
        self._cv = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{dev}-{time.time_ns()}",
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.subscribe(f"{topics.ROOT}/{site}/{dev}/#", qos=1)
        self.client.loop_start()

    def _key_for(self, kid: bytes) -> bytes | None:
        return self.key if kid == self.dev.encode() else None

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        _, _, kind = topics.parse_device(msg.topic)
        try:
            body = message_check.decode(msg.payload, self._key_for, kind, loads=cbor2.loads)
        except message_check.MessageError as exc:
            with self._cv:
                self.errors.append(f"{msg.topic}: {exc}")
            return
        with self._cv:
            self.messages.append((kind, dict(body), bytes(msg.payload), bool(msg.retain)))
            self._cv.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cv:
            return [b for k, b, _, _ in self.messages if k == kind]

    def wait(self, pred: Callable[[list[tuple[str, dict[str, Any], bytes, bool]]], bool],
             timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


