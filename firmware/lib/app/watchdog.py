"""Boot accounting and the watchdog.

state.json holds the boot count and a crash-loop counter: every boot adds one to both, and the
counter goes back to zero once the node has run cleanly for a while (or resets on purpose). A counter
above _CRASH_LIMIT at boot means the last boots all died young: the node starts in safe mode, which
only connects and takes commands, so a bad profile or a sensor that hangs the bus cannot lock it out.
A boot the power ended did not crash: a power-on start takes its count back, so a few power cuts in a
row (a flooded chamber, a site's supply failing) do not put a healthy node in safe mode.

The hardware watchdog is fed by the app's main loop only while every watched task keeps beating
(app/runtime.py), so a stuck sampler or a hung loop ends in a WDT reset, reported as "wdt" in the next
birth.
"""

from micropython import const

import persist

STATE = "state.json"
_CRASH_LIMIT = const(3)
_QUICK = const(3)  # errors in a row that main.py answers with a reset at once; past them it deep-sleeps
_BACKOFF_MS = const(60000)  # the first such sleep, doubled at each error after it, up to _BACKOFF_MAX_MS
_BACKOFF_MAX_MS = const(3600000)


def boot(rst):
    """Count this boot, and as a crash until stable(); `rst` is this start's reset cause (hal). After a
    power-on (an ESP32's reset button and brownouts are one too) the boot before was cut, not crashed: its
    count is taken back. Watchdog and error resets keep theirs, and so does "hard": MicroPython on an ESP32
    says so after a panic, as after machine.reset() (ports/esp32/modmachine.c)."""
    st = persist.load(STATE) or {}
    st["boot"] = st.get("boot", 0) + 1
    n = st.get("crash", 0)
    if n and rst == "power-on":
        n -= 1
    st["crash"] = n + 1
    persist.save(STATE, st)
    return st


def safe_mode(st):
    return st["crash"] > _CRASH_LIMIT


def backoff():
    """An error reached main.py: count it (stable() clears the count) and return how long to deep-sleep before
    the next try, 0 for a reset at once. A config error with nothing to roll back to fails every boot before the
    boot is counted; reset at once for ever, a battery node spent itself in hours. Named as mqtt.py's argument is,
    so that "err" is the one name this adds: the drone is at the name line (docs/firmware.md, Memory)."""
    st = persist.load(STATE) or {}
    n = st.get("err", 0) + 1
    st["err"] = n
    persist.save(STATE, st)
    return 0 if n <= _QUICK else min(_BACKOFF_MS << min(n - _QUICK - 1, 6), _BACKOFF_MAX_MS)


def stable(st):
    """This boot did its job: clear the crash-loop counter and main.py's count of errors in a row."""
    if st["crash"] or st.get("err"):
        st["crash"] = 0
        st.pop("err", None)
        persist.save(STATE, st)
