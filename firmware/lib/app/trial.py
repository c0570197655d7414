"""A config replacement on trial (staged by app/commands.py, checked by app/config.py at boot): the
files it replaced wait as <name>.prev until a broker connection confirms it, or go back on rollback.
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


def _slot():
    """ota/slot.py when this node took an update (it has slot.json, ota.SLOT), else None."""
    try:
        os.stat("slot.json")
    except OSError:
        return None
    from ota import slot

    return slot


def running():
    """(the version of the code running, whether it is on trial): ota/slot.py's, read where slot.json is."""
    r = _slot().running()
    drop("ota.slot", "ota")
    return r


def rollback(reason, code=False):
    """Put the .prev files back; the replacing command gets ok=false with the reason. With `code`, new
    code on trial goes back to the code before it too (its outcome waits in ota.RESULT)."""
    slot = _slot() if code else None
    if slot and slot.running()[1]:
        slot.rollback(reason)
    drop("ota.slot", "ota")
    t = persist.load(TRIAL)
    if t is None:
        return False
    for name in t["files"]:
        try:
            os.rename(name + ".prev", name)
        except OSError:
            pass
    persist.save(RESULT, {"id": t["id"], "ok": False, "res": "rolled back: " + reason})
    _remove(TRIAL)
    return True


def confirm():
    """Connected under what is on trial: keep it. True when that was a config, which the node then reboots
    into; new code runs on, its outcome waiting in ota.RESULT for report()."""
    slot = _slot()
    if slot:
        slot.confirm()
    drop("ota.slot", "ota")
    t = persist.load(TRIAL)
    if t is None:
        return False
    persist.save(RESULT, {"id": t["id"], "ok": True, "res": "config applied"})
    _remove(TRIAL)
    for name in t["files"]:
        _remove(name + ".prev")
    return True


def report(pub, up):
    """An update's outcome (running, refused, rolled back), if one waits in ota.RESULT, goes upstream as an
    "ota" event (ota/slot.py)."""
    try:
        os.stat("otares.json")
    except OSError:
        return
    from ota import slot

    slot.report(pub, up)
    drop("ota.slot", "ota")


def result():
    """(id, ok, res) of the last replacement while its ack is still due, else None."""
    r = persist.load(RESULT)
    return None if r is None else (r["id"], r["ok"], r["res"])


def acked():
    _remove(RESULT)
