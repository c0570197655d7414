"""ESP32 backend: machine and network on a real board. Bus settings come from the profile's sensor
entries ("bus": {"type": "adc"|"i2c"|"uart"|"pin", ...}); see docs/firmware.md."""

import asyncio
import os
import time

import machine
import network
from micropython import const

import persist

# MicroPython builds before 1.22 on the ESP32 count time from 2000-01-01.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
_CAUSES = {machine.PWRON_RESET: "power-on", machine.HARD_RESET: "hard", machine.WDT_RESET: "wdt",
           machine.DEEPSLEEP_RESET: "deepsleep", machine.SOFT_RESET: "soft"}
_RST = const(".rst.json")  # the reset cause a soft_reset() started over from


def _cause():
    return _CAUSES.get(machine.reset_cause(), "unknown")


def reset_cause():
    """The reset cause this start had (one a soft_reset() started over from, kept in _RST), before any Board
    exists: main.py counts crashes by it. _RST speaks only for a start after a reset of the firmware's own
    (machine.reset() is a hard reset to the chip, soft_reset() a soft one): a boot that failed before any Board
    left it behind, and a power-on, a watchdog or a deep sleep after that is what the chip says."""
    c = _cause()
    return (c in ("hard", "soft") and persist.load(_RST)) or c


def reset(rst=None):
    """machine.reset(); `rst`, if given, is what the next start reports as its reset cause (main.py's reset
    after an error says "crash", which the chip would report as a soft reset)."""
    if rst and persist.load(_RST) != rst:  # a boot that fails before any Board takes _RST: written once, not each time
        persist.save(_RST, rst)
    machine.reset()


def deepsleep(ms):
    """machine.deepsleep, usable before any Board exists (main.py's wait after errors in a row)."""
    machine.deepsleep(ms)


def soft_reset():
    """Start main.py over without resetting the chip (machine.soft_reset: RTC, RTC memory and the wake
    cause stay). The next start would read "soft" as its reset cause, so the cause this start had waits
    in _RST for the next Board."""
    persist.save(_RST, reset_cause())
    machine.soft_reset()


class Board:
    name = "esp32"

    def __init__(self, device):
        self.device = device
        self._wlan = network.WLAN(network.STA_IF)
        self._batt = None

    # -- buses ----------------------------------------------------------------------------------------

    def bus(self, sensor):
        b = sensor["bus"]
        kind = b["type"]
        if kind == "adc":
            return machine.ADC(machine.Pin(b["pin"]), atten=b.get("atten", machine.ADC.ATTN_11DB))
        if kind == "i2c":
            return machine.I2C(b.get("id", 0), scl=machine.Pin(b["scl"]), sda=machine.Pin(b["sda"]),
                               freq=b.get("freq", 400000))
        if kind == "uart":
            return machine.UART(b["id"], baudrate=b.get("baud", 9600), tx=b["tx"], rx=b["rx"],
                                rxbuf=b.get("rxbuf", 512))
        if kind == "pin":
            pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(b.get("pull"))
            # None is "no pull resistor" (machine.Pin in the MicroPython docs); the stubs type pull as int only
            return machine.Pin(b["pin"], machine.Pin.IN, pull)  # type: ignore[arg-type]
        raise ValueError("unknown bus type %r" % kind)

    def battery(self):
        spec = self.device.get("batt")
        if not spec:
            return None
        if self._batt is None:
            self._batt = machine.ADC(machine.Pin(spec["pin"]), atten=machine.ADC.ATTN_11DB)
        return self._batt.read_uv() * spec.get("ratio", 2.0) / 1e6

    def wdt(self, ms):
        return machine.WDT(timeout=ms)

    # -- network --------------------------------------------------------------------------------------

    async def connect(self, secrets, timeout_s=20):
        w = self._wlan
        if w.isconnected():
            return True
        w.active(True)
        wifi = secrets["wifi"]
        w.connect(wifi["ssid"], wifi["password"])
        t0 = time.ticks_ms()
        while not w.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_s * 1000:
                w.disconnect()
                return False
            await asyncio.sleep_ms(250)
        return True

    def online(self):
        return self._wlan.isconnected()

    def rssi(self):
        try:
            return self._wlan.status("rssi")
        except Exception:
            return None

    def ip(self):
        return self._wlan.ifconfig()[0] if self._wlan.isconnected() else None

    def services(self):
        return ()

    # -- time -----------------------------------------------------------------------------------------

    def ntp(self, hosts):
        import ntptime

        for host in hosts:
            ntptime.host = host
            try:
                ntptime.settime()
                return True
            except (OSError, OverflowError):
                pass
        return False

    def rtc_valid(self):
        """The RTC keeps time through deep sleep and soft resets; after power loss it restarts near 2000."""
        return time.gmtime()[0] >= 2024

    def time(self):
        return time.time() + _EPOCH

    # -- power ----------------------------------------------------------------------------------------

    def reset_cause(self):
        rst = reset_cause()
        try:
            os.remove(_RST)
        except OSError:
            pass
        return rst

    def woke_by_pin(self):
        """The last deep sleep ended on the pin wake_on() armed (EXT0), not on its timer."""
        return machine.wake_reason() == machine.PIN_WAKE

    def rtc_ms(self):
        """ms on the RTC (gettimeofday), which keeps running through deep sleep; not through power loss,
        and NTP moves it."""
        return time.time_ns() // 1000000

    def memory(self, data=None):
        """RTC user memory (2 KB): kept through deep sleep, resets and the watchdog, lost with power."""
        if data is None:
            return machine.RTC().memory()
        machine.RTC().memory(data)

    def wake_on(self, pin, level):
        """Wake the next deep sleep when `pin` (a Pin from bus(), on an RTC GPIO: 0, 2, 4, 12-15, 25-27,
        32-39) is at `level`. Called last before deepsleep(): a later pin.irq() on the same pin drops it."""
        import esp32

        esp32.wake_on_ext0(pin, esp32.WAKEUP_ANY_HIGH if level else esp32.WAKEUP_ALL_LOW)

    def reset(self):
        reset()

    def deepsleep(self, ms):
        deepsleep(ms)

    def uid(self):
        import binascii

        return binascii.hexlify(machine.unique_id()).decode()
