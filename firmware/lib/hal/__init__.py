"""Hardware layer. The app talks to one Board and never imports machine or network itself, so the
same application code runs on an ESP32 and, against simulated buses, on the unix port.

Board (both backends): bus(sensor) -> machine-API object (ADC read_uv, I2C readfrom_mem/writeto_mem,
UART read/any, Pin value/irq) for a profile's sensor entry; wdt(ms) -> object with feed();
connect(secrets) (async) -> bool; online(); rssi(); ip(); ntp(hosts) -> bool; rtc_valid(); time() ->
epoch s; rtc_ms() -> ms on a clock that runs through deep sleep; reset_cause(); reset(); deepsleep(ms);
wake_on(pin, level) (the next deep sleep also ends when that bus pin is at level); woke_by_pin();
memory([bytes]) (RTC memory, kept until power is lost); uid(); battery() -> V or None; services() ->
coroutines the backend needs running. Each backend module also has soft_reset(), reset_cause(), reset(rst)
and deepsleep(ms), which main.py calls before any Board exists: soft_reset() starts main.py over, and the
next Board reports the reset cause, RTC and wake this start had; reset_cause() is the cause the Board will
report, for the boot's crash count (app/watchdog.py). MQTT opens its socket with asyncio.open_connection;
the sim backend wraps that so it can cut the network.

The sim backend is not in this package: it lives in firmware/sim/ (module hal_sim) beside the sim world,
which `lifeline flash` never ships, and is imported only when asked for, so a board never needs it.

reset_cause() is one of "power-on", "hard", "wdt", "deepsleep", "soft", "unknown", as the birth message
reports it, or "crash" after main.py's reset on an error (each backend module's reset(rst), usable before
any Board exists). They are written as literals where used, not as constants here: on a 64K heap every
module-level name is one more interned qstr (docs/firmware.md, Memory).
"""

import sys


def backend(name=None):
    """The backend module: `sim` on the unix port, `esp32` elsewhere, unless device.json names one."""
    if not name:
        name = "sim" if sys.platform in ("linux", "darwin") else "esp32"
    if name == "sim":
        import hal_sim as mod
    elif name == "esp32":
        from hal import esp32 as mod
    else:
        raise ValueError("device.json hal: unknown backend %r" % name)
    return mod


def board(device):
    return backend(device.get("hal")).Board(device)
