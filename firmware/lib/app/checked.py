"""Which config files the last boot checked. Checking them (app/config.py, app/checks.py) costs the heap
its code and, for good, the names that code interns; a boot that finds the same bytes as the last checked
ones (and no trial running) reads them without loading the checks. A changed file, a trial or a missing
stamp sends the boot through app.config.boot() again. The broker's CA (broker_ca.der, app.tls) is in the stamp
when on flash: one truncated or worn after the check crashed every boot in app.tls, safe mode's too."""

import binascii

import persist

STAMP = "checked.json"
FILES = ("device.json", "secrets.json", "profile.json")


def _crc(blobs):
    c = 0
    for b in blobs:
        c = binascii.crc32(b, c)
    try:  # lifeline.flash.BROKER_CA; a literal, not a module global: no new name on the path every boot takes
        with open("broker_ca.der", "rb") as f:
            c = binascii.crc32(f.read(), c)
    except OSError:
        pass
    return c


def _blobs():
    out = []
    for name in FILES:
        with open(name, "rb") as f:
            out.append(f.read())
    return out


def fresh():
    """True when the files on flash are the ones last checked (and no trial is running)."""
    if persist.load("trial.json") is not None:  # app/trial.py: new files on trial are checked every boot
        return False
    try:
        return persist.load(STAMP) == {"crc": _crc(_blobs())}
    except OSError:
        return False


def load():
    """(device, secrets, profile) parsed: the files as they are, so the caller checks fresh() first."""
    import json

    return tuple(json.loads(b) for b in _blobs())


def stamp():
    """Mark the files on flash as checked (config.boot calls this once they have loaded cleanly)."""
    persist.save(STAMP, {"crc": _crc(_blobs())})
