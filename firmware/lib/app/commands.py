"""Downlink commands on the device's cmd topic. Each must verify with the device key (COSE_Mac0) and
name this device; each gets one ack on the ack topic carrying its result. A redelivered id is
answered from a short memory of recent results instead of running twice.

Ops (args in docs/firmware.md): set_intervals, set_filters, set_prealarm, birth, sync_time, reboot,
config. Settings changed by the set_* ops are written to profile.json, so they outlive a reset.
This module (and app.config) is imported for one command and dropped after it, to keep the heap free.
"""

import persist
from app import config
from protocol import message, topics

RECENT = 8
SAFE_OPS = ("birth", "sync_time", "reboot", "config")


async def handle(app, payload):
    def key_for(kid):
        return app.key if kid == app.dev.encode() else None

    try:
        body = message.decode(payload, key_for, topics.CMD)
    except message.MessageError as e:
        app.reject(e.reason)
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
    elif app.safe and name not in SAFE_OPS:
        ok, res = False, "safe mode"
    else:
        try:
            ok, res = True, await op(app, body["args"], cid)
            if isinstance(res, tuple):
                res, action = res
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            ok, res = False, str(e)
    if action != "defer":
        app.recent.append((cid, ok, res))
        del app.recent[:-RECENT]
        await app.ack(cid, ok, res)
    if action:
        app.reboot()


def _copy(app):
    """The profile to change, from flash: the running one changes only once the result checks."""
    return persist.load(config.PROFILE)


def _commit(app, p):
    try:
        config.save_profile(p)
    except config.ConfigError as e:
        raise ValueError(str(e))
    _apply(app, p)


def _apply(app, p):
    """Put a changed profile into effect without a restart."""
    app.configure(p)
    for sensor in app.sensors:
        for spec in p["sensors"]:
            if spec["name"] == sensor.name:
                sensor.configure(spec)


def _find(p, key, name):
    for s in p["sensors"]:
        if key is None and s["name"] == name:
            return s
        if key is not None and name in s[key]:
            return s[key][name]
    raise ValueError("no such %s %r" % ("sensor" if key is None else "metric", name))


async def set_intervals(app, args, cid):
    p = _copy(app)
    for k in ("report_s", "health_s", "batch"):
        if k in args:
            p[k] = args[k]
    sensors = args.get("sensors", {})
    for name in sensors:
        s = _find(p, None, name)
        for k in ("sample_s", "fast_s", "poll_s"):
            if k in sensors[name]:
                s[k] = sensors[name][k]
    _commit(app, p)
    return {"report_s": p["report_s"], "health_s": p.get("health_s"), "batch": p.get("batch")}


async def set_filters(app, args, cid):
    p = _copy(app)
    for name in args:
        _find(p, "metrics", name)["filters"] = args[name]
    _commit(app, p)


async def set_prealarm(app, args, cid):
    p = _copy(app)
    for name in args:
        m = _find(p, "metrics", name)
        if args[name] is None:
            m.pop("prealarm", None)
        else:
            m["prealarm"] = args[name]
    _commit(app, p)


async def birth(app, args, cid):
    await app.birth(app.mqtt)


async def sync_time(app, args, cid):
    ok = app.sync_clock()
    return {"clk": app.clock.clk, "t": app.clock.now(), "ntp": ok}


async def reboot(app, args, cid):
    return "rebooting", "reboot"


async def replace_config(app, args, cid):
    try:
        config.stage(cid, args.get("device"), args.get("profile"))
    except config.ConfigError as e:
        raise ValueError(str(e))
    return None, "defer"


_OPS = {"set_intervals": set_intervals, "set_filters": set_filters, "set_prealarm": set_prealarm,
        "birth": birth, "sync_time": sync_time, "reboot": reboot, "config": replace_config}
