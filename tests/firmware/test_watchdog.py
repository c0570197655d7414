"""The node's watchdog and safe mode on the real firmware: a crash loop ends in safe mode, a hung main loop is
reset, and neither a Wi-Fi outage longer than the watchdog nor a longer sample interval by command gets a
healthy node reset. Kept apart from test_device.py, whose tests run in one process of the parallel suite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_device import DEV, SITE, fast_gas, online_births
from upy_support import SCRIPTS, WrappedDevice

from lifeline import upy
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import load_profile
from protocol import topics


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_crash_loop_starts_safe_mode_which_takes_commands_only(tmp_path: Path, mpy: Path,
                                                               broker: Mosquitto, hal: str) -> None:
    p = fast_gas(report_s=0.5, batch=1)
    p["wdt_ms"] = 1000
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]}, hal=hal) as dev:
        for boot in (1, 2, 3):  # each boot dies young, hung and reset by its watchdog before a clean minute
            assert listener.wait(lambda m, b=boot: len(online_births(listener)) >= b, 20), dev.console()
            assert dev.control(hang=True)["ok"]
        assert listener.wait(lambda m: len(online_births(listener)) >= 4, 20), dev.console()
        safe = online_births(listener)[3]
        time.sleep(3)
        dev.command(7, "set_intervals", {"report_s": 5})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        dev.command(8, "reboot", {})
        assert listener.wait(lambda m: any(x[1].get("boot") == 5 and x[0] == topics.DATA for x in m), 20)
    listener.close()
    assert safe["boot"] == 4 and safe.get("safe") is True and safe["rst"] == "wdt"
    assert not [b for b in listener.of(topics.DATA) if b["boot"] == 4], "safe mode does not sample"
    acks = {a["id"]: a for a in listener.of(topics.ACK)}
    assert (acks[7]["ok"], acks[7]["res"]) == (False, "safe mode")
    assert acks[8]["ok"] is True
    normal = online_births(listener)[4]
    assert normal["rst"] == ("soft" if hal == "sim" else "hard") and "safe" not in normal  # machine.reset(): hard


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_power_cuts_in_a_row_do_not_start_safe_mode(tmp_path: Path, mpy: Path, broker: Mosquitto, hal: str) -> None:
    """A power cut was counted as a crash: four in a row, each within a boot's first minute (a flooded chamber, a
    site's supply failing), put a healthy node in safe mode, which samples nothing until it has been connected
    for ten minutes. A power-on start takes back the count of the boot before it."""
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=0.5, batch=1), broker.port,
                        {"ch4": [[0, 2.0]]}, hal=hal) as dev:
        for boot in (1, 2, 3, 4):
            assert listener.wait(lambda m, b=boot: len(online_births(listener)) >= b, 20), dev.console()
            dev.kill()
        assert listener.wait(lambda m: any(x[0] == topics.DATA and x[1]["boot"] == 5 for x in m), 20), \
            [(b["boot"], b["rst"], b.get("safe")) for b in online_births(listener)]
        crash = dev.read("state.json")["crash"]
    listener.close()
    births = [(b["boot"], b["rst"], b.get("safe")) for b in online_births(listener)]
    assert births[:5] == [(n, "power-on", None) for n in range(1, 6)], births
    assert crash == 1, "only the boot running now is counted"


def test_panics_in_a_row_start_safe_mode_on_an_esp32(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """MicroPython on an ESP32 reports a panic (and machine.reset()) as HARD_RESET, and its reset button as a
    power-on (ports/esp32/modmachine.c: ESP_RST_SW and ESP_RST_PANIC are MP_HARD_RESET). The boot count took a
    "hard" start back as a power cut's, so a node panicking in its first minute again and again never reached safe
    mode. Each panic here is the reset mark the chip leaves: a start whose reset cause is HARD_RESET."""
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=0.5, batch=1), broker.port,
                        {"ch4": [[0, 2.0]]}, hal="esp32") as dev:
        for boot in (1, 2, 3, 4):
            assert listener.wait(lambda m, b=boot: len(online_births(listener)) >= b, 20), dev.console()
            dev.power_off()
            (dev.flash / ".hal.json").write_text(json.dumps({"rst": "hard"}))
            dev.power_on()
        assert listener.wait(lambda m: len(online_births(listener)) >= 5, 20), dev.console()
    listener.close()
    births = [(b["boot"], b["rst"], b.get("safe")) for b in online_births(listener)]
    assert births[1:5] == [(2, "hard", None), (3, "hard", None), (4, "hard", True), (5, "hard", True)], births


class CrashDevice(WrappedDevice):
    """A FlashDirDevice whose next `.crash` boots fail before the watchdog is armed (upy/crashboot.py)."""

    script = "crashboot.py"


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_a_boot_that_fails_before_the_watchdog_is_armed_resets_and_counts_as_a_crash(
        tmp_path: Path, mpy: Path, broker: Mosquitto, hal: str) -> None:
    """An error raised in main.py before the watchdog was armed ended main.py, and an ESP32 then sits at the REPL
    until someone comes with a cable: a node in a manhole no one could reach. (The unix port's supply starts
    again an interpreter that ended with an error; a chip does not.) The error is printed, the node resets,
    and the reset counts as a crash: three such boots, and the fourth starts in safe mode, its birth saying
    rst "crash"."""
    listener = Listener(broker.port, SITE, DEV)
    dev = CrashDevice(tmp_path / "flash", mpy, fast_gas(), broker.port, {"ch4": [[0, 2.0]]}, hal=hal)
    (dev.flash / ".crash").write_text("3")
    with dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 30), dev.console()[-3000:]
        exits = list(dev.exits)
    listener.close()
    birth = online_births(listener)[0]
    assert exits == [3, 3, 3], f"a reset after each error, not an interpreter that ended: {exits}"
    assert (birth["boot"], birth["rst"], birth.get("safe")) == (4, "crash", True), birth
    assert dev.console().count("OSError: crashboot: a boot that fails") == 3, dev.console()[-3000:]


def wait_exits(dev: FlashDirDevice, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(dev.exits) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(dev.exits)


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_a_config_error_at_every_boot_backs_off_into_a_growing_deep_sleep(tmp_path: Path, mpy: Path,
                                                                          hal: str) -> None:
    """A config error with no trial to roll back to fails every boot before the boot is counted, and main.py reset
    the node at once for ever: a boot a second, which spends a battery node in hours and leaves a cable's Ctrl-C
    little room. Three such resets stay quick; then each error deep-sleeps first, 60 s doubling to an hour, and a
    power-on start (a hand on the board: power, its reset button, esptool) stays awake 10 s for Ctrl-C first.
    A power cut takes the chip's RTC domain, the sleep's timer and the reset cause with it: the sim kept them
    (.hal.json), so a cut during the sleep did nothing until the timer ran out, and power off and on again
    started as a wake from deep sleep, with no 10 s for Ctrl-C."""
    dev = FlashDirDevice(tmp_path / "flash", mpy, fast_gas(), 1, hal=hal)  # never gets as far as the broker
    device = dev.read("device.json")
    device["profile"] = "water"  # profile.json is gas's
    (dev.flash / "device.json").write_text(json.dumps(device))
    try:
        dev.start()
        exits = wait_exits(dev, 4, 30)
        assert exits == [3, 3, 3, 4], (exits, dev.console()[-3000:])
        first = dev.read(".hal.json")
        t0 = time.monotonic()
        dev.kill()  # a power cut during the 60 s sleep: the board starts again at once, as a power-on
        again = wait_exits(dev, 5, 30)
        took = time.monotonic() - t0
        second = dev.read(".hal.json")
        dev.power_off()  # during the 120 s sleep; on again: a power-on start, 10 s for Ctrl-C once more
        dev.power_on()
        deadline = time.monotonic() + 10
        while dev.console().count("Ctrl-C within 10 s") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dev.stop()
    console = dev.console()
    assert first["ms"] == 60000, first
    assert again[4:] == [4] and second["ms"] == 120000 and took >= 10, (again, second, took)
    assert console.count("ConfigError: device.json: profile 'water'") == 6, console[-3000:]
    assert console.count("Ctrl-C within 10 s") == 2, console[-3000:]
    assert dev.read("state.json")["err"] == 6


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_hung_main_loop_is_reset_by_the_watchdog(tmp_path: Path, mpy: Path, broker: Mosquitto, hal: str) -> None:
    p = fast_gas()
    p["wdt_ms"] = 3000
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]}, hal=hal) as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        hung = time.monotonic()
        assert dev.control(hang=True)["ok"]
        assert listener.wait(lambda m: len(online_births(listener)) >= 2, 20), dev.console()
        took = time.monotonic() - hung
        exits = list(dev.exits)
    listener.close()
    assert exits[:1] == [-14], "the watchdog ends the process with SIGALRM"  # docs/firmware.md
    assert online_births(listener)[1]["rst"] == "wdt"
    assert took > 3, "not before the watchdog's timeout"


def test_wifi_outage_longer_than_the_watchdog_reconnects_without_a_reset(tmp_path: Path, mpy: Path,
                                                                          broker: Mosquitto) -> None:
    """hal/esp32.py's connect() waits up to 20 s for the access point, and the main loop (and the boot, before
    it) awaited it without feeding the watchdog: a gas or drone node (wdt_ms 20000) was reset at every Wi-Fi
    outage, again at each boot while the access point stayed down, and after three boots went into safe mode,
    which samples nothing. wdt_ms 5000 here stands for any watchdog shorter than that wait."""
    p = fast_gas(report_s=0.5, batch=2)
    p["wdt_ms"] = 5000
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]},
                        heap=upy.firmware_heap("esp32"), hal="esp32") as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        assert dev.control(net=False)["ok"]
        time.sleep(12)  # the loop looks at the link every 5 s: awaiting the join there was reset within 10 s
        dev.kill()  # a power cut while the access point is away: the boot finds no Wi-Fi
        time.sleep(8)  # awaiting the join at boot was reset 5 s after the watchdog was armed
        assert dev.control(net=True)["ok"]
        assert listener.wait(lambda m: len(online_births(listener)) >= 2, 30), dev.console()
        assert listener.wait(lambda m: any(x[0] == topics.DATA and x[1]["boot"] > 1 for x in m), 10), \
            (dev.exits, [(b["boot"], b["rst"], b.get("safe")) for b in online_births(listener)])
        exits = list(dev.exits)
    listener.close()
    births = [(b["boot"], b["rst"]) for b in online_births(listener)]
    assert exits == [-9] and births[:2] == [(1, "power-on"), (2, "power-on")], (exits, births)


def test_ntp_servers_that_do_not_answer_do_not_starve_the_watchdog(tmp_path: Path, mpy: Path,
                                                                     broker: Mosquitto) -> None:
    """ntptime blocks: a DNS lookup, then up to its 1 s socket timeout for an answer. The node asked every host in
    device.json's ntp in turn, unfed, at each connect and every minute until one answered, so three hosts that did
    not answer (the site's NTP down, or no route to the pool) outlasted a 2.5 s watchdog and reset a healthy node at
    every connect. Now one host is asked a time, the next one at the next try."""
    p = fast_gas(report_s=0.5, batch=1)
    p["wdt_ms"] = 2500
    listener = Listener(broker.port, SITE, DEV)
    dev = FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]}, ntp=False)
    device = dev.read("device.json")
    device["ntp"] = ["sim", "sim2", "sim3"]
    (dev.flash / "device.json").write_text(json.dumps(device))
    with dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        time.sleep(6)
        exits = list(dev.exits)
    listener.close()
    assert exits == [], (exits, [(b["boot"], b["rst"]) for b in online_births(listener)], dev.console()[-2000:])


def test_a_longer_sample_interval_by_command_does_not_starve_the_watchdog(tmp_path: Path, mpy: Path,
                                                                           broker: Mosquitto) -> None:
    """The main loop feeds the watchdog while each sampler beats within 3 sample periods (30 s at least); the
    limit was taken once at boot, so set_intervals raising sample_s past it (gas: 2 s to 60 s) stopped the
    feeding and the watchdog reset the node half a minute after it acked the change."""
    p = fast_gas()
    p["wdt_ms"] = 2000
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]}) as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        dev.command(7, "set_intervals", {"sensors": {"ch4": {"sample_s": 40}}})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        # The limit taken at boot (30 s) ran out 30-31 s after the ack: the loop said "stalled" then, 2 s before
        # the watchdog reset the node.
        time.sleep(34)
        exits = list(dev.exits)
        console = dev.console()
    listener.close()
    assert listener.of(topics.ACK)[0]["ok"] is True
    assert not exits and "stalled" not in console, (exits, console[-2000:])


def test_a_sleeping_node_waking_without_wifi_sleeps_again_without_a_reset(tmp_path: Path, mpy: Path,
                                                                       broker: Mosquitto) -> None:
    """A sleeping profile's wake awaited the Wi-Fi join (up to 20 s on an ESP32) without feeding the watchdog,
    and so its tries for a first frame from a level sensor that gives none (3 s). The shipped 30 s watchdog
    outlasts both, but a profile may set wdt_ms down to 1 s: such a drainage node was reset by its watchdog at
    every wake while the access point was away (or the echo lost), and never slept. wdt_ms 2000 here stands
    for any watchdog shorter than those waits."""
    p = load_profile("drainage")
    p["wdt_ms"] = 2000
    p["sleep"] = {"wake_s": 10, "awake_s": 5}
    p["sensors"] = [s for s in p["sensors"] if s["name"] == "level"]  # no wake pin: asleep, the process has ended
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"level": [[0, None]]},  # no echo: no frame
                        heap=upy.firmware_heap("esp32"), hal="esp32") as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        assert dev.control(net=False)["ok"]
        # the next wake comes within 10 s and finds no access point: it tries the level sensor for 3 s, then joins
        # for longer than the watchdog's 2 s
        time.sleep(16)
        assert dev.control(net=True)["ok"]
        assert listener.wait(lambda m: len(online_births(listener)) >= 2, 40), (dev.exits, dev.console()[-2000:])
        exits = list(dev.exits)
    listener.close()
    births = [(b["boot"], b["rst"]) for b in online_births(listener)]
    assert set(exits) == {4} and all(rst == "deepsleep" for _, rst in births[1:]), (exits, births)


def test_the_main_loop_feeds_a_short_watchdog_with_margin(tmp_path: Path) -> None:
    """tests/firmware/upy/runtime_loop_cases.py: App.loop on MicroPython against a fake node, timing its feeds.
    (On a virtual device the sim's watchdog, polled every 50 ms, rarely sees a feed a few ms late.)"""
    result = upy.run("-m drivercheck", "runtime_loop_cases", heap=upy.FIRMWARE_HEAP, cwd=tmp_path, timeout=60,
                     env={"MICROPYPATH": f"{upy.upy_path()}:{SCRIPTS}"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_sleeping_node_in_safe_mode_without_its_broker_sleeps(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """Safe mode runs the awake loop, which never deep-slept: a battery node that came into it while its broker
    was away stayed awake until it had been connected for 10 minutes, its battery draining all the while. It
    sleeps a wake interval once a minute has passed without a connection, its crash count kept, so the next
    wake is in safe mode again and takes commands once the broker is back. device.json's safe_wake_s (default
    60) is the minute, 10 s here."""
    p = load_profile("drainage")
    p["sleep"] = {"wake_s": 10, "awake_s": 5}
    p["sensors"] = [s for s in p["sensors"] if s["name"] == "level"]  # no wake pin: asleep, the process has ended
    dev = FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"level": [[0, 1.0]]})
    dev._write("device.json", {**dev.read("device.json"), "safe_wake_s": 10})
    dev._write("state.json", {"boot": 4, "crash": 4})  # the boots before died young
    broker.stop()
    with dev:
        t0 = time.monotonic()
        while 4 not in dev.exits and time.monotonic() < t0 + 40:
            time.sleep(0.1)
        awake = time.monotonic() - t0
        assert dev.exits[:1] == [4], (dev.exits, dev.console()[-2000:])
        assert awake > 10, f"asleep after {awake:.1f} s, before safe_wake_s had passed"
        broker.start()
        listener = Listener(broker.port, SITE, DEV)
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 60), dev.console()[-2000:]
    listener.close()
    birth = online_births(listener)[0]
    assert birth.get("safe") is True and birth["rst"] == "deepsleep", birth
