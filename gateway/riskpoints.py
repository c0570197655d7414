"""Risk points from the site config: a geotagged reading is judged by the nearest point in range.

A drone pod flying a patrol reports methane with its position; near a filling station the reading means
something different than over an empty field, so it is attributed to that station and judged by the rules
of the station's class (gateway/alarms.py does the judging).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.numbers import finite
from gateway.rules import DEVICE_CLASSES, RuleError, RuleSet

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius
_METRES_PER_DEGREE_LAT = math.pi * EARTH_RADIUS_M / 180.0
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_CLASS_RE = re.compile(r"[a-z0-9_-]{1,32}\Z")
_KEYS = frozenset({"id", "class", "lat", "lon", "radius_m"})


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres on a sphere of the mean Earth radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class RiskPoint:
    id: str
    cls: str
    lat: float
    lon: float
    radius_m: float


def _coordinate(value: object, path: str, limit: float) -> float:
    number = finite(value)
    if number is None:
        raise RuleError(path, "must be a finite number")
    if not -limit <= number <= limit:
        raise RuleError(path, f"must be within -{limit:g}..{limit:g} degrees")
    return number


def parse_riskpoint(data: Mapping[str, Any], path: str) -> RiskPoint:
    """One point from the site config, e.g. {id, class, lat, lon, radius_m}; errors name the field."""
    if not isinstance(data, Mapping):
        raise RuleError(path, "must be a table")
    for key in data:
        if key not in _KEYS:
            raise RuleError(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
    for key in sorted(_KEYS):
        if key not in data:
            raise RuleError(f"{path}.{key}", "missing")
    ident, cls = data["id"], data["class"]
    if not isinstance(ident, str) or not _ID_RE.match(ident):
        raise RuleError(f"{path}.id", "must be 1-64 of [A-Za-z0-9_-]")
    if not isinstance(cls, str) or not _CLASS_RE.match(cls):
        raise RuleError(f"{path}.class", "must be a rule-set class name, 1-32 of [a-z0-9_-]")
    radius = finite(data["radius_m"])
    if radius is None or radius <= 0:
        raise RuleError(f"{path}.radius_m", "must be a finite number greater than 0")
    lat = _coordinate(data["lat"], f"{path}.lat", 90.0)
    lon = _coordinate(data["lon"], f"{path}.lon", 180.0)
    return RiskPoint(ident, cls, lat, lon, radius)


class RiskPoints:
    """The site's risk points, searched for the nearest one whose radius covers a position."""

    def __init__(self, points: Iterable[RiskPoint] = ()) -> None:
        self._points: dict[str, RiskPoint] = {}
        for point in points:
            if point.id in self._points:
                raise RuleError(f"riskpoints.{point.id}", "duplicate id")
            self._points[point.id] = point

    @classmethod
    def parse(cls, items: Iterable[Mapping[str, Any]], path: str = "riskpoints") -> RiskPoints:
        return cls(parse_riskpoint(item, f"{path}[{i}]") for i, item in enumerate(items))

    def __iter__(self) -> Iterator[RiskPoint]:
        return iter(self._points.values())

    def __len__(self) -> int:
        return len(self._points)

    def get(self, ident: str) -> RiskPoint | None:
        return self._points.get(ident)

    def check_rules(self, ruleset: RuleSet, path: str = "riskpoints") -> None:
        """Every point's class has rules, and every class of the set is a device class or a point's: a
        misspelt one ([gsa.ch4]) judges nothing, and the class it was meant for is left without rules."""
        for point in self:
            if point.cls not in ruleset.classes:
                raise RuleError(f"{path}.{point.id}.class", f"the rule set has no class {point.cls!r}")
        named = {point.cls for point in self}
        for cls in ruleset.classes:
            if cls not in DEVICE_CLASSES and cls not in named:
                raise RuleError(cls, f"no device class ({', '.join(DEVICE_CLASSES)}) and no risk point's class")

    def nearest(self, lat: float, lon: float) -> tuple[RiskPoint, float] | None:
        """The closest point whose radius covers (lat, lon), with the distance in metres; ties go to the lower id."""
        best: tuple[float, str, RiskPoint] | None = None
        for point in self._points.values():
            # A latitude gap alone already rules most points out without the trigonometry.
            if abs(lat - point.lat) * _METRES_PER_DEGREE_LAT > point.radius_m:
                continue
            distance = haversine_m(lat, lon, point.lat, point.lon)
            if distance <= point.radius_m and (best is None or (distance, point.id) < best[:2]):
                best = (distance, point.id, point)
        return None if best is None else (best[2], best[0])
