"""Which code a boot runs: A/B on files. The code flashed by cable (lib/) is the factory slot; a release
goes into ota/a or ota/b, whichever is not running, and one atomic write of slot.json (persist.py: temp
file and rename) makes it the code of the next boot. main.py calls select() before it imports anything
else, so every module of the app then comes from one slot: never a mix of old and new code.

The first boots on new code are a trial. select() counts them; app/runtime.py confirms the trial once the
node has connected and published under the new code, and rolls it back when trial_s passes without a
connection. A trial still unconfirmed at its _TRIES+1-th boot (a crash at import, a crash loop, watchdog
resets) is rolled back here, before the new code runs again. This module and main.py are never replaced
by a release, so a broken release cannot break its own rollback.
"""

import os
import sys

import persist
from ota import RESULT, SLOT, STATE, VERSION

_TRIES = 2  # trial boots before a rollback: fewer than app/watchdog.py's safe-mode limit


def state():
    return persist.load(SLOT) or {"run": "", "v": VERSION}


def running():
    """(the version running, whether it is on trial), for app/runtime.py."""
    s = state()
    return s["v"], "try" in s


def report(pub, up):
    """An update's outcome (running, refused, rolled back) goes upstream as an "ota" event: sealed into the
    flash queue (app/publisher.py), it is delivered like a reading, so the file can go."""
    r = persist.load(RESULT)
    if r is not None:
        pub.seal([("ota.v", r["v"], None, up), ("ota.ok", r["ok"], None, up), ("ota.res", r["res"], None, up)],
                 ev="ota")
    os.remove(RESULT)


def _holds_code(d):
    """A sys.path entry with the firmware's packages in it: the factory lib (on the unix port, the two
    directories of the compiled tree)."""
    for pkg in ("/app", "/protocol"):
        try:
            os.stat((d or ".") + pkg)
            return True
        except OSError:
            pass
    return False


def select():
    """Count a trial boot (rolling back one that has had its tries), put the running slot's directory first
    on sys.path and take the factory lib off it; forget the modules imported from lib to get here. Returns
    True when an update is pending (the boot then runs the updater, ota/fetch.py)."""
    s = state()
    if "try" in s:
        s["try"] += 1
        if s["try"] > _TRIES:
            s = rollback("%d boots without a confirmed connection" % _TRIES)
        else:
            persist.save(SLOT, s)
    pending = persist.load(STATE) is not None
    if s["run"]:
        sys.path[:] = [s["run"]] + [p for p in sys.path if not _holds_code(p)]
    for name in ("ota.slot", "ota", "persist"):
        sys.modules.pop(name, None)
    return pending


def switch(new, version):
    """Make `new` the code of the next boot, on trial. This one write is the switch."""
    s = state()
    persist.save(SLOT, {"run": new, "v": version, "prev": s["run"], "pv": s["v"], "try": 0})


def rollback(reason):
    """Back to the code that ran before the trial; the outcome waits in RESULT for the next connect."""
    s = state()
    persist.save(RESULT, {"v": s["v"], "ok": False, "res": "rolled back: " + reason})
    back = {"run": s.get("prev", ""), "v": s.get("pv", VERSION)}
    persist.save(SLOT, back)
    return back


def confirm():
    """Connected and published on the new code: it stays."""
    s = state()
    if "try" in s:
        persist.save(RESULT, {"v": s["v"], "ok": True, "res": "running"})
        del s["try"]
        persist.save(SLOT, s)
