"""Boot accounting and the watchdog.

state.json holds the boot count and a crash-loop counter: every boot adds one to both, and the
counter goes back to zero once the node has run cleanly for a while (or resets on purpose). A counter
above _CRASH_LIMIT at boot means the last boots all died young: the node starts in safe mode, which
only connects and takes commands, so a bad profile or a sensor that hangs the bus cannot lock it out.

The hardware watchdog is fed by the app's main loop only while every watched task keeps beating
(app/runtime.py), so a stuck sampler or a hung loop ends in a WDT reset, reported as "wdt" in the next
birth.
"""

from micropython import const

import persist

STATE = "state.json"
_CRASH_LIMIT = const(3)


def boot():
    st = persist.load(STATE) or {}
    st["boot"] = st.get("boot", 0) + 1
    st["crash"] = st.get("crash", 0) + 1
    persist.save(STATE, st)
    return st


def safe_mode(st):
    return st["crash"] > _CRASH_LIMIT


def stable(st):
    """This boot did its job: clear the crash-loop counter."""
    if st["crash"]:
        st["crash"] = 0
        persist.save(STATE, st)
