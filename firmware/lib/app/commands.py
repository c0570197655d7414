"""Downlink commands on the device's cmd topic. Each must verify with the device key (COSE_Mac0) and
name this device (app/runtime.py opens it); each gets one ack on the ack topic carrying its result. A
redelivered id is answered from a short memory of recent results instead of running twice. A command past
its `exp` is dropped unanswered once the node knows the time: by then its gateway has reported it upstream
as timed out, and the district may have sent it again under a new id (a node without the time yet runs it).

Ops (args in docs/firmware.md): set_intervals, set_filters, set_prealarm, birth, sync_time, reboot,
config, ota (docs/ota.md). The set_* ops check what they change, write profile.json (so it outlives a reset) and apply
it at once. `config` stages new device/profile files for a trial boot, which puts them in place and
checks them, where the heap is empty, and its ack (ok or rolled back, with the reason) follows the connect.
This module is imported for one command and dropped after it, to keep the heap free; the decoder that
opened the command is dropped before it loads.
"""

from micropython import const

import persist
from app.checks import check_filters, check_level, num

_RECENT = const(8)
_SAFE_OPS = const(("birth", "sync_time", "reboot", "config", "ota"))
_PROFILE = const("profile.json")
# The updater reads the manifest whole, checks its signature and parses it beside its MQTT client in the 64 KB
# heap: 13 KB of manifest fit there, 14 KB failed for memory at each of its boots (gas and drone, unix port at
# 64wK). A release's is 5 KB; 8 KB leaves 5 KB of margin.
_MANIFEST_MAX = const(8192)


async def handle(app, body):
    """Run one command that app/runtime.py has already authenticated and checked."""
    if app.clock.epoch0_ms is not None and app.clock.now() > body["exp"]:
        app.reject("out of date")
        return
    cid = body["id"]
    for r in app.recent:
        if r[0] == cid:
            await app.ack(*r)
            return
    name = body["op"]
    op = _OPS.get(name)
    action = None
    if op is None:
        ok, res = False, "unknown op %r" % name
    elif app.safe and name not in _SAFE_OPS:
        ok, res = False, "safe mode"
    else:
        try:
            ok, res = True, await op(app, body["args"], cid)
            if isinstance(res, tuple):
                res, action = res
        except (ValueError, KeyError, TypeError, AttributeError, OSError, OverflowError) as e:  # OSError: flash
            ok, res = False, str(e)
    if action != "defer":
        if not ok:  # an error may quote the command (%r writes a control character as 4): short enough to ack
            res = res[:200]
        app.recent.append((cid, ok, res))
        del app.recent[:-_RECENT]
        await app.ack(cid, ok, res)
    if action:
        app.reboot()


def _positive(args, keys, name):
    """`name` (a sensor's and a dot, or nothing) goes before the key in the error."""
    for k in keys:
        if k in args and not (num(args[k]) and 0 < args[k] <= 86400):
            raise ValueError("%s%s must be a number > 0, at most a day" % (name, k))


def _find(p, key, name):
    for s in p["sensors"]:
        if key is None and s["name"] == name:
            return s
        if key is not None and name in s[key]:
            return s[key][name]
    raise ValueError("no such %s %r" % ("sensor" if key is None else "metric", name))


def _commit(app, p):
    """Write the profile, then put it into effect without a restart."""
    app.heap()  # the handler half's high point: its code, the checks and the profile being changed
    persist.save(_PROFILE, p)
    app.configure(p)
    for sensor in app.sensors:
        for spec in p["sensors"]:
            if spec["name"] == sensor.name:
                sensor.configure(spec)
                if sensor.name in app.beats:
                    app.watch(sensor)


async def set_intervals(app, args, cid):
    p = persist.load(_PROFILE)
    _positive(args, ("report_s", "health_s"), "")
    b = args.get("batch", 1)
    if not isinstance(b, int) or not 1 <= b <= 64:
        raise ValueError("batch must be 1..64")
    for k in ("report_s", "health_s", "batch"):
        if k in args:
            p[k] = args[k]
    sensors = args.get("sensors", {})
    for name in sensors:
        s = _find(p, None, name)
        _positive(sensors[name], ("sample_s", "fast_s", "poll_s"), name + ".")
        for k in ("sample_s", "fast_s", "poll_s"):
            if k in sensors[name]:
                s[k] = sensors[name][k]
    _commit(app, p)
    return {"report_s": p["report_s"], "health_s": p.get("health_s"), "batch": p.get("batch")}


async def set_filters(app, args, cid):
    p = persist.load(_PROFILE)
    for name in args:
        _find(p, "metrics", name)["filters"] = check_filters(args[name])
    _commit(app, p)


async def set_prealarm(app, args, cid):
    p = persist.load(_PROFILE)
    for name in args:
        m = _find(p, "metrics", name)
        if args[name] is None:
            m.pop("prealarm", None)
        else:
            m["prealarm"] = check_level(args[name])
    _commit(app, p)


async def birth(app, args, cid):
    await app.birth(app.mqtt)


async def sync_time(app, args, cid):
    ok = app.sync_clock()
    return {"clk": app.clock.clk, "t": app.clock.now(), "ntp": ok}


async def reboot(app, args, cid):
    return "rebooting", "reboot"


async def replace_config(app, args, cid):
    """Stage the new files as <name>.new and record the trial; the next boot puts them in place
    (app/trial.py). A cut before trial.json is written leaves the old files and no trial."""
    files = [n for n in ("device", "profile") if isinstance(args.get(n), dict)]
    if not files:
        raise ValueError("config needs a device and/or a profile map")
    for n in files:
        persist.save(n + ".json.new", args[n])
    persist.save("trial.json", {"id": cid, "boots": 0, "files": [n + ".json" for n in files]})
    return None, "defer"


async def update(app, args, cid):
    """Mark an update pending and reboot into the updater (ota/fetch.py), which checks the release against
    its signed manifest. What the command says is only checked for form here."""
    v, n, sig = args.get("v"), args.get("n"), args.get("sig")
    if not isinstance(v, str) or not isinstance(n, int) or not 0 < n <= _MANIFEST_MAX:
        raise ValueError("ota needs v (text) and n (manifest bytes, 1..%d: what the updater's heap holds)"
                         % _MANIFEST_MAX)
    try:  # not hex: the updater failed on it at each of its boots, and said only that it did not finish
        ok = isinstance(sig, str) and len(bytes.fromhex(sig)) == 64
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("ota needs sig: 64 bytes in hex")
    if v == app.fw:
        raise ValueError("version %s is running already" % v)
    # ota.STATE, named here: loading the ota package beside a command failed the drone for memory
    persist.save("ota.json", {"id": cid, "v": v, "n": n, "sig": sig})
    return "updating to " + v, "reboot"


_OPS = {"set_intervals": set_intervals, "set_filters": set_filters, "set_prealarm": set_prealarm,
        "birth": birth, "sync_time": sync_time, "reboot": reboot, "config": replace_config,
        "ota": update}
