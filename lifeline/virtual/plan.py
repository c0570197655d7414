"""The demo site's data (seeds/demo_site.toml): devices, risk points and the incident script, checked on load.

The seed is declarative; this module turns it into what the run needs: one ramp per device channel for each
part of the incident (a drone patrol becomes lat/lon/fix/ch4 ramps along its path), the expected alarms, and
the part start times for a full or a quick run. Errors name the field, as the gateway's config loader does.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.riskpoints import haversine_m
from gateway.rules import DEVICE_CLASSES, LEVEL_NAMES
from lifeline.upy import ROOT

SEED = ROOT / "seeds" / "demo_site.toml"
CLEAR = "clear"
# The gateway's site and device ids (topic levels; gateway/site_config.py), less the "-b" the neighbouring site
# adds to its copies, and its risk point ids (gateway/riskpoints.py): checked here, not once the brokers are up.
ID = (re.compile(r"[a-z0-9_-]{1,30}\Z"), "must be 1-30 characters of a-z 0-9 _ - (a topic level)")
POINT_ID = (re.compile(r"[A-Za-z0-9_-]{1,64}\Z"), "must be 1-64 characters of A-Z a-z 0-9 _ -")

Points = list[tuple[float, float | bool]]


class SeedError(ValueError):
    """A problem in the seed file, phrased as "<field>: <why>"."""


@dataclass(frozen=True)
class Device:
    id: str
    cls: str
    where: str
    position: tuple[float, float]
    baseline: Mapping[str, float | bool]
    quick: bool


@dataclass(frozen=True)
class RiskPoint:
    id: str
    cls: str
    what: str
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class Expect:
    """Alarm states the district must see, in this order, for one rule on one subject."""

    subject: str  # a device id, or a risk point id when `point`
    point: bool
    rule: str
    levels: tuple[str, ...]  # level names, and "clear"

    def label(self) -> str:
        return f"{'point ' if self.point else ''}{self.subject} {self.rule}"


@dataclass(frozen=True)
class Panel:
    dev: str
    metric: str
    rule: str
    point: str | None = None
    rain: str | None = None


@dataclass(frozen=True)
class Incident:
    id: str
    title: str
    at: float
    quick_at: float
    panel: Panel
    # device -> channel -> [(t_s from the part's start, value)]
    stimulus: Mapping[str, Mapping[str, Points]]
    expect: tuple[Expect, ...]

    @property
    def duration(self) -> float:
        return max((pts[-1][0] for chans in self.stimulus.values() for pts in chans.values()), default=0.0)

    def start(self, quick: bool) -> float:
        return self.quick_at if quick else self.at


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    devices: Mapping[str, Device]
    risk_points: Mapping[str, RiskPoint]
    incidents: tuple[Incident, ...]
    path: Path = field(compare=False)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # class -> time-compression changes

    def select(self, quick: bool) -> list[Device]:
        return [d for d in self.devices.values() if d.quick or not quick]

    def script_length(self, quick: bool) -> float:
        return max(i.start(quick) + i.duration for i in self.incidents)

    def profile(self, cls: str, shipped: Mapping[str, Any]) -> dict[str, Any]:
        """The shipped profile of a class with the seed's changes: keys replaced, `sensors` merged by name."""
        out: dict[str, Any] = json.loads(json.dumps(shipped))
        changes = dict(self.profiles.get(cls, {}))
        for key in changes.pop("drop", []):
            out.pop(key, None)
        by_name = changes.pop("sensors", {})
        for sensor in out.get("sensors", []):
            sensor.update(by_name.get(sensor["name"], {}))
        out.update(changes)
        return out


def _need(cond: bool, where: str, why: str) -> None:
    if not cond:
        raise SeedError(f"{where}: {why}")


def _num(value: object, where: str) -> float:
    _need(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)),
          where, "must be a finite number")
    return float(value)  # type: ignore[arg-type]


def _id(data: Mapping[str, Any], key: str, where: str, rule: tuple[re.Pattern[str], str]) -> str:
    value = _text(data, key, where)
    _need(bool(rule[0].match(value)), f"{where}.{key}", rule[1])
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    _need(isinstance(value, dict), where, "must be a table")
    return value  # type: ignore[no-any-return]


def _tables(value: Any, where: str) -> list[dict[str, Any]]:
    _need(isinstance(value, list) and all(isinstance(x, dict) for x in value), where,
          "must be an array of tables ([[...]])")
    return value  # type: ignore[no-any-return]


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    _need(isinstance(value, str) and bool(value), f"{where}.{key}", "must be a non-empty string")
    return str(value)


def _points(value: Any, where: str) -> Points:
    _need(isinstance(value, list) and len(value) >= 1, where, "must be a list of [t_s, value] pairs")
    out: Points = []
    for i, item in enumerate(value):
        _need(isinstance(item, list) and len(item) == 2, f"{where}[{i}]", "must be [t_s, value]")
        t = _num(item[0], f"{where}[{i}][0]")
        _need(not out or t > out[-1][0], f"{where}[{i}][0]", "times must rise")
        v = item[1] if isinstance(item[1], bool) else _num(item[1], f"{where}[{i}][1]")
        out.append((t, v))
    _need(out[0][0] == 0, f"{where}[0][0]", "a part's stimulus starts at t = 0")
    return out


def _channels(value: Any, where: str) -> dict[str, float | bool]:
    _need(isinstance(value, dict), where, "must be a table channel -> value")
    out: dict[str, float | bool] = {}
    for ch, v in value.items():
        out[ch] = v if isinstance(v, bool) else _num(v, f"{where}.{ch}")
    return out


def _position(value: Any, where: str) -> tuple[float, float]:
    _need(isinstance(value, list) and len(value) == 2, where, "must be [latitude, longitude]")
    lat, lon = _num(value[0], where), _num(value[1], where)
    _need(-90 <= lat <= 90 and -180 <= lon <= 180, where, "is not a position in degrees")
    return lat, lon


def quiet_interval(profile: Mapping[str, Any]) -> float:
    """The longest a healthy device of this profile stays silent with steady readings: each metric is sent
    at least every heartbeat when a delta filter holds it back, else every sample; a reading may then wait
    up to report_s in the device's batch (unless the batch is a single reading). The gateway's stale rule
    takes this as its interval."""
    silence = math.inf
    for sensor in profile.get("sensors", []):
        for spec in sensor.get("metrics", {}).values():
            filters = {k: v for f in spec.get("filters", []) for k, v in f.items()}
            bound = filters.get("heartbeat", math.inf) if "delta" in filters else sensor["sample_s"]
            silence = min(silence, float(bound))
    batched = profile.get("batch", 16) > 1  # the firmware's default batch (app/runtime.py)
    return max(silence, float(profile.get("report_s", 0)) if batched else 0.0)


def patrol_ramps(patrol: Mapping[str, Any], points: Mapping[str, RiskPoint], where: str) -> dict[str, Points]:
    """lat/lon/alt/fix/ch4 ramps of a drone flying `path` at a steady speed through a methane plume."""
    path = [_position(p, f"{where}.path[{i}]") for i, p in enumerate(patrol.get("path", []))]
    _need(len(path) >= 2, f"{where}.path", "needs at least two waypoints")
    speed = _num(patrol.get("speed_m_s"), f"{where}.speed_m_s")
    step = _num(patrol.get("step_s", 1.0), f"{where}.step_s")
    alt = _num(patrol.get("alt_m", 50.0), f"{where}.alt_m")
    _need(speed > 0 and step > 0, where, "speed_m_s and step_s must be positive")
    plume = patrol.get("plume")
    if not isinstance(plume, dict):
        raise SeedError(f"{where}.plume: must be a table {{point, peak, sigma_m}}")
    source = points.get(str(plume.get("point")))
    _need(source is not None, f"{where}.plume.point", "is not a risk point of this site")
    assert source is not None
    peak = _num(plume.get("peak"), f"{where}.plume.peak")
    sigma = _num(plume.get("sigma_m"), f"{where}.plume.sigma_m")

    out: dict[str, Points] = {"lat": [], "lon": [], "alt": [], "fix": [], "ch4": []}
    t = 0.0
    for (lat0, lon0), (lat1, lon1) in itertools.pairwise(path):
        leg = haversine_m(lat0, lon0, lat1, lon1)
        n = max(1, math.ceil(leg / speed / step))
        for k in range(n + (1 if (lat1, lon1) == path[-1] else 0)):
            f = k / n
            lat, lon = lat0 + (lat1 - lat0) * f, lon0 + (lon1 - lon0) * f
            d = haversine_m(lat, lon, source.lat, source.lon)
            for ch, v in (("lat", round(lat, 6)), ("lon", round(lon, 6)), ("alt", alt), ("fix", 1.0),
                          ("ch4", round(peak * math.exp(-((d / sigma) ** 2)), 3))):
                out[ch].append((round(t, 3), v))
            t += leg / speed / n
    # Land: no fix, nothing in the air.
    for ch in ("fix", "alt", "ch4"):
        out[ch].append((round(t + step, 3), 0.0))
    return out


def load(path: Path = SEED) -> Site:
    try:
        data = tomllib.loads(path.read_bytes().decode())
    except OSError as exc:
        raise SeedError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise SeedError(f"{path}: not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested past the parser's stack
        raise SeedError(f"{path}: {'nested deeper than it reads' if isinstance(exc, RecursionError) else exc}"
                        ) from None
    site = _table(data.get("site", {}), "site")
    site_id = _id(site, "id", "site", ID)
    baselines = {cls: _channels(v, f"baseline.{cls}") for cls, v in _table(data.get("baseline", {}),
                                                                          "baseline").items()}

    points: dict[str, RiskPoint] = {}
    for i, p in enumerate(_tables(data.get("risk_points", []), "risk_points")):
        w = f"risk_points[{i}]"
        rp = RiskPoint(_id(p, "id", w, POINT_ID), _text(p, "class", w), str(p.get("what", "")),
                       _num(p.get("lat"), w + ".lat"), _num(p.get("lon"), w + ".lon"),
                       _num(p.get("radius_m"), w + ".radius_m"))
        _need(rp.id not in points, w + ".id", "listed twice")
        points[rp.id] = rp

    devices: dict[str, Device] = {}
    for i, d in enumerate(_tables(data.get("devices", []), "devices")):
        w = f"devices[{i}]"
        cls = _text(d, "class", w)
        _need(cls in DEVICE_CLASSES, w + ".class", f"must be one of {', '.join(DEVICE_CLASSES)}")
        base = dict(baselines.get(cls, {}))
        base.update(_channels(d.get("baseline", {}), w + ".baseline"))
        dev = Device(_id(d, "id", w, ID), cls, str(d.get("where", "")), _position(d.get("position"), w + ".position"),
                     base, bool(d.get("quick", False)))
        _need(dev.id not in devices, w + ".id", "listed twice")
        devices[dev.id] = dev

    incidents = []
    for i, inc in enumerate(_tables(data.get("incidents", []), "incidents")):
        w = f"incidents[{i}]"
        stim: dict[str, dict[str, Points]] = {}
        for dev_id, chans in _table(inc.get("stimulus", {}), w + ".stimulus").items():
            _need(dev_id in devices, f"{w}.stimulus.{dev_id}", "is not a device of this site")
            stim[dev_id] = {ch: _points(pts, f"{w}.stimulus.{dev_id}.{ch}")
                            for ch, pts in _table(chans, f"{w}.stimulus.{dev_id}").items()}
        if "patrol" in inc:
            patrol = _table(inc["patrol"], w + ".patrol")
            dev_id = _text(patrol, "dev", w + ".patrol")
            _need(dev_id in devices, f"{w}.patrol.dev", "is not a device of this site")
            stim[dev_id] = patrol_ramps(patrol, points, w + ".patrol")
        expects = []
        for j, e in enumerate(_tables(inc.get("expect", []), w + ".expect")):
            we = f"{w}.expect[{j}]"
            _need(("dev" in e) != ("point" in e), we, "give dev or point, one of them")
            subject = str(e.get("dev") or e.get("point"))
            _need(subject in (devices if "dev" in e else points), we, f"{subject!r} is not on this site")
            levels: Any = e.get("levels")
            _need(isinstance(levels, list) and bool(levels)
                  and all(x in (*LEVEL_NAMES, CLEAR) for x in levels), we + ".levels",
                  f"must be a list of {', '.join(LEVEL_NAMES)} or {CLEAR}")
            expects.append(Expect(subject, "point" in e, _text(e, "rule", we), tuple(levels)))
        pan = _table(inc.get("panel", {}), w + ".panel")
        panel = Panel(_text(pan, "dev", w + ".panel"), _text(pan, "metric", w + ".panel"),
                      _text(pan, "rule", w + ".panel"), pan.get("point"), pan.get("rain"))
        _need(panel.dev in devices, w + ".panel.dev", "is not a device of this site")
        # the plot, drawn at the very end of a run, looks them up
        _need(panel.point is None or panel.point in points, w + ".panel.point", "is not a risk point of this site")
        _need(panel.rain is None or panel.rain in devices, w + ".panel.rain", "is not a device of this site")
        incidents.append(Incident(_text(inc, "id", w), _text(inc, "title", w), _num(inc.get("at", 0), w + ".at"),
                                  _num(inc.get("quick_at", inc.get("at", 0)), w + ".quick_at"), panel, stim,
                                  tuple(expects)))
    _need(bool(incidents), "incidents", "the seed has no incident")
    profiles = _table(data.get("profiles", {}), "profiles")
    for cls, changes in profiles.items():
        _need(cls in DEVICE_CLASSES and isinstance(changes, dict), f"profiles.{cls}",
              "must be a table named after a device class")
        drop = changes.get("drop", [])
        _need(isinstance(drop, list) and all(isinstance(k, str) for k in drop), f"profiles.{cls}.drop",
              "must be a list of keys")
        for name, sensor in _table(changes.get("sensors", {}), f"profiles.{cls}.sensors").items():
            _table(sensor, f"profiles.{cls}.sensors.{name}")
    for incident in incidents:  # a quick run must still be able to see every expected alarm
        for dev_id in [e.subject for e in incident.expect if not e.point] + [incident.panel.dev]:
            _need(devices[dev_id].quick, f"incident {incident.id}", f"device {dev_id} is expected but not quick")
    return Site(site_id, str(site.get("name", site_id)), devices, points, tuple(incidents), path, profiles)


NEIGHBOUR_NORTH = 0.0036  # degrees of latitude, about 400 m


def neighbour(site: Site, count: int = 2) -> Site:
    """A second, quiet site of the same district for the demo: the seed's first `count` quick devices with
    their baselines and profiles, renamed (device ids are unique across a district), without risk points or
    incident, about 400 m north of the seed's own (on the desk's map the two sites stand apart). It shows the
    district telling two sites apart and costs two more boards."""
    devices = {f"{d.id}-b": replace(d, id=f"{d.id}-b", position=(d.position[0] + NEIGHBOUR_NORTH, d.position[1]))
               for d in site.select(quick=True)[:count]}
    return replace(site, id=f"{site.id[:30]}-b", name=f"{site.name} (neighbouring site)", devices=devices,
                   risk_points={}, incidents=())
