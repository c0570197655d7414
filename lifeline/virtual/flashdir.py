"""A virtual device provisioned in place, for the firmware tests and the firmware bench: a flash directory
written with the config files (no flashing step), the firmware compiled once (lifeline/virtual/firmware.py)
run straight from that build by the MicroPython unix port under a 64K heap, restarted after resets and deep
sleep as a board would be (lifeline/virtual/unixport.py), and sent sealed commands as its gateway would."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lifeline import upy
from lifeline.virtual import firmware
from lifeline.virtual.profiles import load_profile
from lifeline.virtual.stimulus import free_udp_pair, sim_config
from lifeline.virtual.unixport import EXIT_SOFT, UnixPortDevice
from protocol import message, topics

KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes.fromhex(KEY_HEX)


class FlashDirDevice(UnixPortDevice):
    """One provisioned virtual device; `start()` (or `with`) powers it, `stop()` takes it off with its world."""

    def __init__(self, flash: Path, mpy: Path, profile: str | dict[str, Any], broker_port: int,
                 stimulus: dict[str, list[list[Any]]] | None = None, dev: str = "dev-01", site: str = "site-a",
                 heap: str = upy.FIRMWARE_HEAP, ntp: bool = True, wrap: list[str] | None = None,
                 romfs: Path | None = None, hal: str = "sim") -> None:
        """mpy: a build_firmware tree. wrap: argv put in front of the interpreter's (the bench runs it under
        strace). romfs: an image of build_romfs, which the device then imports from instead of the .mpy files
        (firmware/sim/simrom.py). hal: the backend; "esp32" runs hal/esp32.py against the ESP32 stand-ins."""
        super().__init__(flash, heap, wrap)
        self.flash = self.flash_dir
        self.mpy = mpy
        self.dev, self.site = dev, site
        self.broker_port = broker_port
        if hal == "esp32" and romfs is not None:  # simrom.py leaves only the images on sys.path
            raise ValueError("the ESP32 stand-ins are in no ROMFS image: hal='esp32' runs from files")
        self.romfs = romfs
        self.hal = hal
        self.key = KEY
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.port = free_udp_pair()
        if romfs is not None:
            shutil.copyfile(romfs, flash / ".romfs")
            shutil.copyfile(mpy / firmware.SIM_IMAGE, flash / ".sim.romfs")
        device = {"id": dev, "site": site, "profile": self.profile["name"],
                  "broker": {"host": "127.0.0.1", "port": broker_port}, "ntp": ["sim"]}
        if hal != "sim":  # the sim backend is the unix port's default
            device["hal"] = hal
        self._write("device.json", device)
        self._write("secrets.json", {"wifi": {"ssid": "sim", "password": "sim"}, "mqtt_password": None,
                                     "key": KEY_HEX})
        self._write("profile.json", self.profile)
        self._write("sim.json", sim_config(self.port, stimulus, ntp=ntp, start=time.time(), idle_s=60))
        self.log = flash / "console.log"

    def _write(self, name: str, obj: Any) -> None:
        (self.flash / name).write_text(json.dumps(obj))

    def read(self, name: str) -> Any:
        return json.loads((self.flash / name).read_text())

    @property
    def exits(self) -> list[int]:
        """Every end of the process but a soft reset."""
        return [code for code in self.exit_codes if code != EXIT_SOFT]

    @property
    def soft_resets(self) -> int:
        return self.exit_codes.count(EXIT_SOFT)

    # -- process --------------------------------------------------------------------------------------

    def _environment(self, hal: str) -> dict[str, str]:
        """The device's import path (and the world's, which it inherits), the ROMFS blocks it reserves."""
        env = {"MICROPYPATH": firmware.import_path([self.mpy / "lib", self.mpy], self.mpy, hal)}
        if self.romfs is not None:  # the blocks simrom.py copies the images into
            env["LIFELINE_ROMFS"] = "x" * self.romfs.stat().st_size
            env["LIFELINE_SIMROM"] = "x" * (self.mpy / firmware.SIM_IMAGE).stat().st_size
        return env

    def _spawn(self, soft: bool) -> subprocess.Popen[bytes]:
        main = str(upy.FIRMWARE / "main.py")
        argv = self.argv(str(firmware.SIMROM), main) if self.romfs is not None else self.argv(main)
        with self.log.open("ab") as out:
            return subprocess.Popen(argv, cwd=self.flash, stdout=out, stderr=subprocess.STDOUT,
                                    env=upy.environment(self._environment(self.hal)))

    def start(self) -> FlashDirDevice:
        if self.wrap:
            self.start_world(self._environment("sim"), self.flash / ".world.log")
        self.power_on()
        return self

    def kill(self) -> None:
        """Power cut: SIGKILL (a sleeping board's sleep ends), the RTC domain's mark gone; the supervisor powers
        the board up again."""
        self.cut()

    def stop(self) -> None:
        self.power_off()
        with contextlib.suppress(OSError):
            self.control(quit=True)

    def __enter__(self) -> FlashDirDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

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
