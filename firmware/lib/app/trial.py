"""A config replacement on trial (staged by app/commands.py as <name>.new, put in place and checked by
app/config.py at boot): the files it replaced wait as <name>.prev until a broker connection confirms it,
or go back on rollback.
The verdict is kept in RESULT until its ack is out.

New code on trial (ota/slot.py) is confirmed and rolled back from here too, so that app/runtime.py names
no ota module: a node that never took an update loads none of them (it has no slot.json), and this module
is loaded only while something is on trial or an outcome waits to be told."""

import os

import persist
from app import drop

TRIAL = "trial.json"
RESULT = "cfgack.json"


def _remove(name):
    try:
        os.remove(name)
    except OSError:
        pass


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def running():
    """(the version of the code running, whether it is on trial): ota/slot.py's, read where slot.json is."""
    from ota import slot

    r = slot.running()
    drop("ota.slot", "ota")
    return r


def swap(t):
    """Put the files staged as <name>.new in place, keeping the ones they replace as <name>.prev. Done by the
    trial's first boot, once trial.json counts it: a cut in here makes the next boot a second one, which rolls
    back, so a trial is never confirmed over a partial set of files (a cut used to leave one to the command)."""
    for name in t["files"]:
        os.rename(name, name + ".prev")
        os.rename(name + ".new", name)


def rollback(reason, code=False):
    """Put the .prev files back; the replacing command gets ok=false with the reason. With `code`, new
    code on trial goes back to the code before it too (its outcome waits in ota.RESULT)."""
    if code and _exists("slot.json"):  # ota.SLOT
        from ota import slot

        if slot.running()[1]:
            slot.rollback(reason)
        drop("ota.slot", "ota")
    t = persist.load(TRIAL)
    if t is None:
        return False
    for name in t["files"]:
        try:
            os.rename(name + ".prev", name)
        except OSError:
            pass  # not swapped in (yet): the file in place is the old one
        _remove(name + ".new")
    persist.save(RESULT, {"id": t["id"], "ok": False, "res": "rolled back: " + reason})
    _remove(TRIAL)
    return True


def confirm(pub, up, on=True):
    """Connected: what is on trial (`on`) is kept, and an update's outcome, if one waits in ota.RESULT, goes
    upstream as an "ota" event (ota/slot.py). True when a config was confirmed, which the node then reboots
    into; new code runs on."""
    if on and _exists("slot.json"):  # ota.SLOT
        from ota import slot

        slot.confirm()  # its outcome goes in ota.RESULT, reported just below
        drop("ota.slot", "ota")
    if _exists("otares.json"):  # ota.RESULT: also an update refused, with no slot.json
        from ota import slot

        slot.report(pub, up)
        drop("ota.slot", "ota")
    t = persist.load(TRIAL) if on else None
    if t is None:
        return False
    persist.save(RESULT, {"id": t["id"], "ok": True, "res": "config applied"})
    _remove(TRIAL)
    for name in t["files"]:
        _remove(name + ".prev")
    return True


def result():
    """(id, ok, res) of the last replacement while its ack is still due, else None."""
    r = persist.load(RESULT)
    return None if r is None else (r["id"], r["ok"], r["res"])


def acked():
    _remove(RESULT)
