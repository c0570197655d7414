"""The three config files on flash (device.json, secrets.json, profile.json; fields in
docs/firmware.md): loading with per-field errors, and replacement that cannot brick a node.

A replacement is checked, the current files are kept as <name>.prev, the new ones are swapped in
atomically, and trial.json marks the trial. The next boot counts itself against the trial; a connect
under the new config confirms it (removes the .prev copies); a second boot without that, or a config
that does not even load, rolls back to the .prev copies.
"""

import os

import persist
from protocol import topics

DEVICE = "device.json"
SECRETS = "secrets.json"
PROFILE = "profile.json"
TRIAL = "trial.json"
RESULT = "cfgack.json"  # outcome of a replacement, acked to its command once online
PROFILES = ("gas", "water", "drainage", "bridge", "rain", "drone")
DRIVERS = ("loop420", "adxl345", "level", "cover", "nmea", "rain")


_TRANSFORMS = ("offset", "multiply", "round", "q", "clamp", "median", "avg")
_GATES = ("delta", "throttle", "heartbeat")
MAX_WINDOW = 32


class ConfigError(ValueError):
    pass


def _need(cond, where, what):
    if not cond:
        raise ConfigError("%s: %s" % (where, what))


def _pos(x):
    return not isinstance(x, bool) and isinstance(x, (int, float)) and x > 0


def _int(x, lo, hi):
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _num(x):
    return not isinstance(x, bool) and isinstance(x, (int, float))


def check_filters(steps):
    """Raise ValueError naming the bad step unless `steps` is a valid filter list."""
    if not isinstance(steps, list):
        raise ValueError("filters must be a list of one-key maps")
    for i in range(len(steps)):
        s = steps[i]
        if not isinstance(s, dict) or len(s) != 1:
            raise ValueError("filter %d: must be a one-key map" % i)
        op, arg = next(iter(s.items()))
        if op not in _TRANSFORMS and op not in _GATES:
            raise ValueError("filter %d: unknown step %r" % (i, op))
        if op == "clamp":
            ok = isinstance(arg, list) and len(arg) == 2 and _num(arg[0]) and _num(arg[1]) and arg[0] <= arg[1]
        elif op in ("median", "avg", "round"):
            ok = _num(arg) and int(arg) == arg and 0 <= arg <= MAX_WINDOW and (op == "round" or arg >= 1)
        elif op in ("offset", "multiply"):
            ok = _num(arg)
        else:
            ok = _num(arg) and arg > 0 or op == "delta" and arg == 0
        if not ok:
            raise ValueError("filter %d: bad argument for %s: %r" % (i, op, arg))
    return steps


def check_level(spec):
    if not isinstance(spec, dict):
        raise ValueError("prealarm must be a map")
    kinds = [k for k in ("above", "below", "is") if k in spec]
    if len(kinds) != 1:
        raise ValueError("prealarm needs exactly one of above, below, is")
    k = kinds[0]
    if k != "is" and not _num(spec[k]) or not _num(spec.get("hyst", 0)) or spec.get("hyst", 0) < 0:
        raise ValueError("prealarm %s and hyst must be numbers, hyst >= 0" % k)
    for name in spec:
        if name not in ("above", "below", "is", "hyst", "ev"):
            raise ValueError("prealarm: unknown field %r" % name)
    if not isinstance(spec.get("ev", ""), str):
        raise ValueError("prealarm ev must be an event name")
    return spec


def check_device(d):
    w = DEVICE
    _need(isinstance(d, dict), w, "must be a map")
    for name in ("id", "site"):
        try:
            topics.check_id(d.get(name), name)
        except topics.TopicError as e:
            raise ConfigError("%s: %s" % (w, e))
    _need(d.get("profile") in PROFILES, w, "profile must be one of " + ", ".join(PROFILES))
    b = d.get("broker")
    _need(isinstance(b, dict), w, "broker must be a map")
    _need(isinstance(b.get("host"), str) and b["host"], w, "broker.host must be a host name")
    _need(_int(b.get("port", 1883), 1, 65535), w, "broker.port must be 1..65535")
    _need(b.get("user") is None or isinstance(b["user"], str), w, "broker.user must be text")
    _need(isinstance(b.get("tls", False), bool), w, "broker.tls must be true or false")
    ntp = d.get("ntp", [])
    _need(isinstance(ntp, list) and all(isinstance(h, str) for h in ntp), w, "ntp must be a list of hosts")
    _need(d.get("hal") in (None, "sim", "esp32"), w, "hal must be sim or esp32")
    return d


def check_secrets(s):
    w = SECRETS
    _need(isinstance(s, dict), w, "must be a map")
    wifi = s.get("wifi")
    _need(isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str) and isinstance(wifi.get("password"), str),
          w, "wifi must have ssid and password")
    _need(s.get("mqtt_password") is None or isinstance(s["mqtt_password"], str), w, "mqtt_password must be text")
    k = s.get("key")
    try:
        ok = isinstance(k, str) and len(bytes.fromhex(k)) >= 16
    except ValueError:
        ok = False
    _need(ok, w, "key must be at least 16 bytes in hex")
    return s


def check_sensor(s, i):
    w = "%s: sensors[%d]" % (PROFILE, i)
    _need(isinstance(s, dict), w, "must be a map")
    _need(isinstance(s.get("name"), str) and s["name"], w, "name must be text")
    w = "%s: sensor %s" % (PROFILE, s["name"])
    _need(s.get("driver") in DRIVERS, w, "driver must be one of " + ", ".join(DRIVERS))
    _need(isinstance(s.get("bus"), dict) and isinstance(s["bus"].get("type"), str), w, "bus needs a type")
    _need(isinstance(s.get("args", {}), dict), w, "args must be a map")
    check_intervals(s, w)
    burst = s.get("burst")
    if burst is not None:
        _need(isinstance(burst, dict) and _pos(burst.get("every_s")) and _pos(burst.get("for_s"))
              and _pos(burst.get("s")), w, "burst needs every_s, for_s and s > 0")
    m = s.get("metrics")
    _need(isinstance(m, dict) and m, w, "metrics must be a non-empty map")
    for name in m:
        spec = m[name]
        _need(isinstance(spec, dict) and isinstance(spec.get("u", ""), str), w, "metric %s: u must be text" % name)
        try:
            check_filters(spec.get("filters", []))
            if spec.get("prealarm") is not None:
                check_level(spec["prealarm"])
        except ValueError as e:
            raise ConfigError("%s: metric %s: %s" % (w, name, e))


def check_intervals(s, w):
    _need(_pos(s.get("sample_s")), w, "sample_s must be > 0")
    _need(s.get("fast_s") is None or _pos(s["fast_s"]), w, "fast_s must be > 0")
    _need(s.get("poll_s") is None or _pos(s["poll_s"]), w, "poll_s must be > 0")


def check_profile(p):
    w = PROFILE
    _need(isinstance(p, dict), w, "must be a map")
    _need(p.get("name") in PROFILES, w, "name must be one of " + ", ".join(PROFILES))
    _need(_pos(p.get("report_s")), w, "report_s must be > 0")
    _need(_int(p.get("batch", 16), 1, 64), w, "batch must be 1..64")
    _need(_pos(p.get("health_s", 3600)), w, "health_s must be > 0")
    _need(_int(p.get("keepalive", 60), 5, 3600), w, "keepalive must be 5..3600")
    _need(_int(p.get("wdt_ms", 30000), 1000, 600000), w, "wdt_ms must be 1000..600000")
    q = p.get("queue", {})
    _need(isinstance(q, dict) and _int(q.get("capacity", 65536), 4096, 1 << 24)
          and _int(q.get("segment", 4096), 512, 1 << 20), w, "queue needs capacity and segment in bytes")
    sl = p.get("sleep")
    _need(sl is None or isinstance(sl, dict) and _pos(sl.get("wake_s")) and _pos(sl.get("awake_s", 30)),
          w, "sleep needs wake_s (and awake_s) > 0")
    tag = p.get("tag", [])
    _need(isinstance(tag, list), w, "tag must be a list of metric names")
    sensors = p.get("sensors")
    _need(isinstance(sensors, list) and sensors, w, "sensors must be a non-empty list")
    names = []
    for i in range(len(sensors)):
        check_sensor(sensors[i], i)
        names.extend(sensors[i]["metrics"])
    for t in tag:
        _need(t in names, w, "tag %r is not a metric" % t)
    return p


def _read(name, check):
    cfg = persist.load(name)
    if cfg is None:
        raise ConfigError("%s: missing or not JSON" % name)
    return check(cfg)


def load():
    """(device, secrets, profile), each checked, or ConfigError naming the file and field."""
    d = _read(DEVICE, check_device)
    s = _read(SECRETS, check_secrets)
    p = _read(PROFILE, check_profile)
    _need(p["name"] == d["profile"], DEVICE, "profile %r but profile.json is %r" % (d["profile"], p["name"]))
    return d, s, p


def _remove(name):
    try:
        os.remove(name)
    except OSError:
        pass


def stage(cmd_id, device=None, profile=None):
    """Check and swap in a new device and/or profile config for a trial boot. Raises ConfigError.
    A cut at any point leaves either the old files, or a trial that the next boot rolls back."""
    d, s, p = load()
    d = check_device(device) if device is not None else d
    p = check_profile(profile) if profile is not None else p
    _need(p["name"] == d["profile"], DEVICE, "profile %r but profile.json is %r" % (d["profile"], p["name"]))
    persist.save(DEVICE + ".new", d)
    persist.save(PROFILE + ".new", p)
    persist.save(TRIAL, {"id": cmd_id, "boots": 0, "files": [DEVICE, PROFILE]})
    for name in (DEVICE, PROFILE):
        os.rename(name, name + ".prev")
        os.rename(name + ".new", name)


def boot():
    """The config to run: a trial booted twice without confirming, or one that does not load, is
    rolled back to the files it replaced."""
    t = persist.load(TRIAL)
    if t is not None:
        t["boots"] += 1
        if t["boots"] > 1:
            rollback("not confirmed after a boot")
        else:
            persist.save(TRIAL, t)
    try:
        return load()
    except ConfigError as e:
        print("config:", e)
        if not rollback(str(e)):
            raise
        return load()


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
    """Called once connected under the config: keep it, and record the result for the ack."""
    t = persist.load(TRIAL)
    if t is None:
        return
    persist.save(RESULT, {"id": t["id"], "ok": True, "res": "config applied"})
    _remove(TRIAL)
    for name in t["files"]:
        _remove(name + ".prev")


def take_result():
    """The pending result of a replacement: (id, ok, res) or None. The caller removes RESULT once
    the ack is out."""
    r = persist.load(RESULT)
    return None if r is None else (r["id"], r["ok"], r["res"])


def save_profile(p):
    persist.save(PROFILE, check_profile(p))
