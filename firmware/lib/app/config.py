"""The three config files on flash (device.json, secrets.json, profile.json; fields in
docs/firmware.md): loading with per-field errors, and replacement that cannot brick a node.

A replacement (app/commands.py stages it as <name>.new and marks the trial in trial.json) is put in
place at the next boot (app/trial.py: swap), keeping the current files as <name>.prev, and checked here,
where the heap is still empty; a config that does not load, or a second boot without a broker
connection under it, is rolled back to the .prev copies, and a connect confirms it.
"""

import persist
from app import checked, tls, trial
from app.checks import check_filters, check_level
from protocol import topics

DEVICE = "device.json"
SECRETS = "secrets.json"
PROFILE = "profile.json"
PROFILES = ("gas", "water", "drainage", "bridge", "rain", "drone")
DRIVERS = ("loop420", "adxl345", "level", "cover", "nmea", "rain")


class ConfigError(ValueError):
    pass


def _need(cond, where, what):
    if not cond:
        raise ConfigError("%s: %s" % (where, what))


def _pos(x):
    """A time in seconds: up to a day, so that its milliseconds stay well inside a ticks period."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and 0 < x <= 86400


def _int(x, lo, hi):
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


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
    _need(_int(d.get("trial_s", 180), 5, 3600), w, "trial_s must be 5..3600")
    _need(_int(d.get("safe_wake_s", 60), 10, 3600), w, "safe_wake_s must be 10..3600")
    batt = d.get("batt")  # read at every birth: a bad one failed it, and the node never came online
    _need(batt is None or (isinstance(batt, dict) and _int(batt.get("pin"), 32, 39)
                           and _pos(batt.get("ratio", 2.0))), w, "batt needs pin (an ADC1 pin, 32..39) and ratio > 0")
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
    _need(_pos(s.get("sample_s")), w, "sample_s must be > 0, at most a day")
    _need(s.get("fast_s") is None or _pos(s["fast_s"]), w, "fast_s must be > 0, at most a day")
    _need(s.get("poll_s") is None or _pos(s["poll_s"]), w, "poll_s must be > 0, at most a day")


def check_profile(p):
    w = PROFILE
    _need(isinstance(p, dict), w, "must be a map")
    _need(p.get("name") in PROFILES, w, "name must be one of " + ", ".join(PROFILES))
    _need(_pos(p.get("report_s")), w, "report_s must be > 0, at most a day")
    _need(_int(p.get("batch", 16), 1, 64), w, "batch must be 1..64")
    _need(_pos(p.get("health_s", 3600)), w, "health_s must be > 0, at most a day")
    _need(_int(p.get("keepalive", 60), 5, 3600), w, "keepalive must be 5..3600")
    _need(_int(p.get("wdt_ms", 30000), 1000, 600000), w, "wdt_ms must be 1000..600000")
    q = p.get("queue", {})
    # Two segments at least: the flash queue refuses less as it opens, which crashed every boot, safe mode too
    _need(isinstance(q, dict) and _int(q.get("capacity", 65536), 4096, 1 << 24)
          and _int(q.get("segment", 4096), 512, min(1 << 20, q.get("capacity", 65536) // 2)),
          w, "queue needs capacity and segment in bytes, capacity at least two segments")
    sl = p.get("sleep")
    _need(sl is None or (isinstance(sl, dict) and _pos(sl.get("wake_s")) and _pos(sl.get("awake_s", 30))),
          w, "sleep needs wake_s (and awake_s) > 0")
    tag = p.get("tag", [])
    _need(isinstance(tag, list), w, "tag must be a list of metric names")
    sensors = p.get("sensors")
    _need(isinstance(sensors, list) and sensors, w, "sensors must be a non-empty list")
    names = []
    seen = []  # sensor names: the watchdog counts a sampler's beats by its sensor's name
    for i in range(len(sensors)):
        check_sensor(sensors[i], i)
        s = sensors[i]
        _need(s["name"] not in seen, w, "sensor %s: a second sensor of that name" % s["name"])
        seen.append(s["name"])
        for m in s["metrics"]:  # a pack names a reading by its metric alone
            _need(m not in names, w, "metric %s: in two sensors" % m)
            names.append(m)
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
    try:  # never a silent fallback to TLS that takes any certificate
        tls(d["broker"])
    except (OSError, ValueError) as e:
        raise ConfigError("%s: broker.tls needs broker_ca.der, the broker's CA certificate (DER) on flash "
                          "(`lifeline flash --tls`): %s" % (DEVICE, "missing" if isinstance(e, OSError) else e))
    s = _read(SECRETS, check_secrets)
    p = _read(PROFILE, check_profile)
    _need(p["name"] == d["profile"], DEVICE, "profile %r but profile.json is %r" % (d["profile"], p["name"]))
    return d, s, p


def boot():
    """Check the files on flash and stamp them as checked (app/checked.py). A trial that booted twice
    without confirming, or that does not load, is rolled back to the files it replaced first."""
    t = persist.load(trial.TRIAL)
    if t is not None:
        t["boots"] += 1
        if t["boots"] > 1:
            trial.rollback("not confirmed after a boot")
        else:
            persist.save(trial.TRIAL, t)  # first: a cut or an error in the swap makes the next boot roll back
            trial.swap(t)
    try:
        load()
    except ConfigError as e:
        print("config:", e)
        if not trial.rollback(str(e)):
            raise
        load()
    checked.stamp()
