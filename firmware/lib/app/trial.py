"""A config replacement on trial (staged by app/commands.py, checked by app/config.py at boot): the
files it replaced wait as <name>.prev until a broker connection confirms it, or go back on rollback.
The verdict is kept in RESULT until its ack is out."""

import os

import persist

TRIAL = "trial.json"
RESULT = "cfgack.json"


def _remove(name):
    try:
        os.remove(name)
    except OSError:
        pass


def rollback(reason):
    """Put the .prev files back; the replacing command gets ok=false with the reason."""
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
    """Connected under the trial config: keep it."""
    t = persist.load(TRIAL)
    if t is not None:
        persist.save(RESULT, {"id": t["id"], "ok": True, "res": "config applied"})
        _remove(TRIAL)
        for name in t["files"]:
            _remove(name + ".prev")


def result():
    """(id, ok, res) of the last replacement while its ack is still due, else None."""
    r = persist.load(RESULT)
    return None if r is None else (r["id"], r["ok"], r["res"])


def acked():
    _remove(RESULT)
