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


def boot(rst):
    """Count this boot, and as a crash until stable(); `rst` is this start's reset cause (hal). After a
    power-on ("hard": a reset pin, on chips that report one) the boot before was cut, not crashed: its
    count is taken back. Watchdog and error resets, and a panic (soft on an ESP32), keep theirs."""
    st = persist.load(STATE) or {}
    st["boot"] = st.get("boot", 0) + 1
    n = st.get("crash", 0)
    if n and rst in ("power-on", "hard"):
        n -= 1
    st["crash"] = n + 1
    persist.save(STATE, st)
    return st


def safe_mode(st):
    return st["crash"] > _CRASH_LIMIT


def stable(st):
    """This boot did its job: clear the crash-loop counter."""
    if st["crash"]:
        st["crash"] = 0
        persist.save(STATE, st)
