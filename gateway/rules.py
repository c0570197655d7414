"""Threshold rules: the rule-set model, its validation, and pure evaluation.

Nothing here touches storage or clocks: every function takes the previous state and returns the next one,
so the alarm engine (gateway/alarms.py) can persist it and the property tests can drive it directly.
The file format and every key are documented in docs/rules.md.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from gateway.numbers import finite

Direction = Literal["above", "below"]
RateDirection = Literal["fall", "rise"]

RULESETS_DIR = Path(__file__).with_name("rulesets")
RATE_WINDOW_CAP = 4096
SUM_BINS_PER_WINDOW = 120
MIN_WINDOW_S = 1.0  # a rate or sum window
MAX_SUM_WINDOWS = 100  # a sum's longest window, in its shortest ones
DEVICE_CLASSES = ("gas", "water", "drainage", "bridge", "rain", "drone")

_CLASS_RE = re.compile(r"[a-z0-9_-]{1,32}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_RESERVED = ("stale", "devices")
_METRIC_KEYS = frozenset(
    {"direction", "levels", "clear", "for_s", "for_samples", "abs", "unit", "enabled", "rate", "sum"}
)
_RATE_KEYS = frozenset({"window_s", "direction", "levels", "clear", "for_s", "for_samples", "enabled"})
_SUM_KEYS = frozenset({"window_s", "levels", "clear", "for_s", "for_samples", "enabled"})
_STALE_KEYS = frozenset({"interval_s", "levels", "will", "enabled"})


class Level(IntEnum):
    """Warning levels in Chinese early-warning order; red is the highest."""

    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Level:
        return cls[name.upper()]


LEVEL_NAMES = tuple(level.label for level in Level)


class RuleError(ValueError):
    """A rule set (or risk point) failed validation; `path` names the field, `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Threshold:
    """Levels crossed in one direction, each with its clear level (hysteresis) and a pending duration."""

    direction: Direction
    levels: Mapping[Level, float]
    clear: Mapping[Level, float]
    for_s: float = 0.0
    for_samples: int = 1
    # The level a value reaches first (the lowest of an "above" rule). Most readings fall short of it, and the
    # alarm engine then skips judge(): a value short of it reaches no level.
    first: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limits = self.levels.values()
        first = min(limits, default=math.inf) if self.direction == "above" else max(limits, default=-math.inf)
        object.__setattr__(self, "first", first)

    def reached_by(self, value: float) -> bool:
        """Whether `value` reaches any level."""
        return _reaches(self.direction, value, self.first)


@dataclass(frozen=True)
class RateRule:
    """Change of a metric within a sliding window: the largest fall (or rise) ending at the newest sample."""

    window_s: float
    direction: RateDirection
    threshold: Threshold


@dataclass(frozen=True)
class SumRule:
    """Amount accumulated over a window per level (a rain gauge's mm per report, summed over hours)."""

    windows: Mapping[Level, float]
    threshold: Threshold

    @property
    def bin_s(self) -> float:
        return min(self.windows.values()) / SUM_BINS_PER_WINDOW


@dataclass(frozen=True)
class MetricRules:
    """All rules on one metric for one class (or one device / risk point, after its override)."""

    id: str
    unit: str | None
    abs: bool
    level: Threshold | None
    rate: RateRule | None
    sum: SumRule | None


@dataclass(frozen=True)
class StaleRule:
    """No reading for `factor` times the expected interval, per level; a device's will raises `will`."""

    id: str
    interval_s: float
    levels: Mapping[Level, float]
    will: Level


@dataclass(frozen=True)
class ClassRules:
    metrics: Mapping[str, MetricRules | None]
    stale: StaleRule | None
    metric_overrides: Mapping[tuple[str, str], MetricRules | None]
    stale_overrides: Mapping[str, StaleRule | None]


@dataclass(frozen=True)
class RuleSet:
    version: int
    classes: Mapping[str, ClassRules]
    source: Mapping[str, Any] = field(repr=False, compare=False)

    def metric_rules(self, cls: str, subject: str, metric: str) -> MetricRules | None:
        """Rules judging `metric` of `subject` (a device id or a risk point id) in class `cls`."""
        rules = self.classes.get(cls)
        if rules is None:
            return None
        key = (subject, metric)
        if key in rules.metric_overrides:
            return rules.metric_overrides[key]
        return rules.metrics.get(metric)

    def stale_rule(self, cls: str, device: str) -> StaleRule | None:
        rules = self.classes.get(cls)
        if rules is None:
            return None
        if device in rules.stale_overrides:
            return rules.stale_overrides[device]
        return rules.stale

    def to_json(self) -> str:
        return json.dumps(self.source, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------- validation


def _table(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleError(path, f"must be a table, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not _utf8(key):
            raise RuleError(path, f"keys must be strings, not {key!r}")
    return value


def _utf8(text: str) -> bool:
    """Whether `text` can go on the wire: JSON text may hold a lone surrogate, which UTF-8 cannot."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(path, f"must be a number, not {type(value).__name__}")
    number = finite(value)
    if number is None:
        raise RuleError(path, "must be finite")
    return number


def _window(value: object, path: str) -> float:
    """A rate or sum window: readings are stamped to 1/1024 s, and a sum's bins are its shortest window / 120."""
    number = _number(value, path)
    if number < MIN_WINDOW_S:
        raise RuleError(path, f"must be at least {MIN_WINDOW_S:g} s")
    return number


def _positive(value: object, path: str) -> float:
    number = _number(value, path)
    if number <= 0:
        raise RuleError(path, "must be greater than 0")
    return number


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(path, "must be true or false")
    return value


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RuleError(path, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    assert isinstance(value, str)
    return value


def _unknown(table: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _levels(value: object, path: str) -> dict[Level, float]:
    table = _table(value, path)
    if not table:
        raise RuleError(path, "needs at least one of " + ", ".join(LEVEL_NAMES))
    out: dict[Level, float] = {}
    for name in LEVEL_NAMES:
        if name in table:
            out[Level.parse(name)] = _number(table[name], f"{path}.{name}")
    for key in table:
        if key not in LEVEL_NAMES:
            raise RuleError(f"{path}.{key}", "not a level (use " + ", ".join(LEVEL_NAMES) + ")")
    return out


def _monotone(levels: Mapping[Level, float], direction: Direction, path: str) -> None:
    ordered = sorted(levels.items())
    for (low, low_value), (high, high_value) in itertools.pairwise(ordered):
        if direction == "above" and not high_value > low_value:
            raise RuleError(f"{path}.{high.label}", f"must be above {low.label} for an 'above' rule")
        if direction == "below" and not high_value < low_value:
            raise RuleError(f"{path}.{high.label}", f"must be below {low.label} for a 'below' rule")


def _threshold(table: Mapping[str, Any], path: str, direction: Direction, levels: dict[Level, float]) -> Threshold:
    """Clear levels and pending duration shared by level, rate and sum rules."""
    if "clear" not in table:
        raise RuleError(f"{path}.clear", "missing: every level needs a clear level")
    clear = _levels(table["clear"], f"{path}.clear")
    for level in levels:
        if level not in clear:
            raise RuleError(f"{path}.clear.{level.label}", "missing: every level needs a clear level")
    for level, value in clear.items():
        where = f"{path}.clear.{level.label}"
        if level not in levels:
            raise RuleError(where, "no such level in levels")
        if direction == "above" and value > levels[level]:
            raise RuleError(where, f"must not be above the {level.label} level for an 'above' rule")
        if direction == "below" and value < levels[level]:
            raise RuleError(where, f"must not be below the {level.label} level for a 'below' rule")
    for_s = _number(table.get("for_s", 0.0), f"{path}.for_s")
    if for_s < 0:
        raise RuleError(f"{path}.for_s", "must not be negative")
    for_samples = table.get("for_samples", 1)
    if isinstance(for_samples, bool) or not isinstance(for_samples, int) or for_samples < 1:
        raise RuleError(f"{path}.for_samples", "must be an integer of at least 1")
    return Threshold(direction, levels, clear, for_s, for_samples)


def _level_rule(table: Mapping[str, Any], path: str) -> Threshold:
    if "direction" not in table:
        raise RuleError(f"{path}.direction", "missing: 'above' or 'below'")
    choice = _choice(table["direction"], f"{path}.direction", ("above", "below"))
    direction: Direction = "above" if choice == "above" else "below"
    levels = _levels(table["levels"], f"{path}.levels")
    _monotone(levels, direction, f"{path}.levels")
    return _threshold(table, path, direction, levels)


def _enabled(value: object, path: str, known: frozenset[str], required: Iterable[str]) -> Mapping[str, Any] | None:
    """A rule's table with its known keys and required ones, or None where it says enabled = false."""
    table = _table(value, path)
    _unknown(table, known, path)
    if not _bool(table.get("enabled", True), f"{path}.enabled"):
        return None
    for key in required:
        if key not in table:
            raise RuleError(f"{path}.{key}", "missing")
    return table


def _rate_rule(value: object, path: str) -> RateRule | None:
    table = _enabled(value, path, _RATE_KEYS, ("window_s", "direction", "levels"))
    if table is None:
        return None
    window_s = _window(table["window_s"], f"{path}.window_s")
    choice = _choice(table["direction"], f"{path}.direction", ("fall", "rise"))
    direction: RateDirection = "fall" if choice == "fall" else "rise"
    levels = _levels(table["levels"], f"{path}.levels")
    for level, amount in levels.items():
        if amount <= 0:
            raise RuleError(f"{path}.levels.{level.label}", "must be greater than 0 (a magnitude of change)")
    _monotone(levels, "above", f"{path}.levels")
    threshold = _threshold(table, path, "above", levels)
    for level, amount in threshold.clear.items():
        if amount < 0:
            raise RuleError(f"{path}.clear.{level.label}", "must not be negative (a magnitude of change)")
    return RateRule(window_s, direction, threshold)


def _sum_rule(value: object, path: str) -> SumRule | None:
    table = _enabled(value, path, _SUM_KEYS, ("window_s", "levels"))
    if table is None:
        return None
    levels = _levels(table["levels"], f"{path}.levels")
    raw = table["window_s"]
    windows: dict[Level, float]
    if isinstance(raw, Mapping):
        given = _levels(raw, f"{path}.window_s")
        windows = {lv: _window(w, f"{path}.window_s.{lv.label}") for lv, w in given.items()}
        for level in levels:
            if level not in windows:
                raise RuleError(f"{path}.window_s.{level.label}", "missing: every level needs a window")
        for level in windows:
            if level not in levels:
                raise RuleError(f"{path}.window_s.{level.label}", "no such level in levels")
    else:
        window = _window(raw, f"{path}.window_s")
        windows = {level: window for level in levels}
    if max(windows.values()) > MAX_SUM_WINDOWS * min(windows.values()):
        # A sum keeps bins of the shortest window / 120 over the longest: 120 x this many at most a track.
        raise RuleError(f"{path}.window_s", f"the longest window may be at most {MAX_SUM_WINDOWS} times the shortest")
    ordered = sorted(levels)
    for low, high in itertools.pairwise(ordered):
        # A higher level must be strictly harder to reach, so reaching it implies every lower one.
        easier = levels[high] < levels[low] or windows[high] > windows[low]
        if easier or (levels[high] == levels[low] and windows[high] == windows[low]):
            raise RuleError(
                f"{path}.levels.{high.label}",
                f"must need more than {low.label}: an amount not below it in a window not longer than its",
            )
    return SumRule(windows, _threshold(table, path, "above", levels))


def _metric(table: Mapping[str, Any], path: str) -> MetricRules | None:
    _unknown(table, _METRIC_KEYS, path)
    if not _bool(table.get("enabled", True), f"{path}.enabled"):
        return None
    unit = table.get("unit")
    if unit is not None and (not isinstance(unit, str) or not _utf8(unit)):
        raise RuleError(f"{path}.unit", "must be a string")
    use_abs = _bool(table.get("abs", False), f"{path}.abs")
    level = _level_rule(table, path) if "levels" in table else None
    if level is None:
        for key in ("direction", "clear", "for_s", "for_samples", "abs"):
            if key in table:
                raise RuleError(f"{path}.{key}", "only applies with levels")
    rate = _rate_rule(table["rate"], f"{path}.rate") if "rate" in table else None
    total = _sum_rule(table["sum"], f"{path}.sum") if "sum" in table else None
    if level is None and "rate" not in table and "sum" not in table:
        raise RuleError(path, "needs levels, rate or sum (or enabled = false)")
    return MetricRules(path, unit, use_abs, level, rate, total)


def _stale(value: object, path: str) -> StaleRule | None:
    table = _enabled(value, path, _STALE_KEYS, ("interval_s", "levels"))
    if table is None:
        return None
    interval = _positive(table["interval_s"], f"{path}.interval_s")
    levels = _levels(table["levels"], f"{path}.levels")
    for level, factor in levels.items():
        if factor <= 0:
            raise RuleError(f"{path}.levels.{level.label}", "must be greater than 0 (a multiple of interval_s)")
    _monotone(levels, "above", f"{path}.levels")
    will = min(levels)
    if "will" in table:
        will = Level.parse(_choice(table["will"], f"{path}.will", LEVEL_NAMES))
    return StaleRule(path, interval, levels, will)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Override keys replace class keys; the rate and sum sub-tables merge one level deeper."""
    merged = dict(base)
    for key, value in over.items():
        if key in ("rate", "sum") and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


def _class(name: str, table: Mapping[str, Any]) -> ClassRules:
    metrics: dict[str, MetricRules | None] = {}
    raw_metrics: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        if key in _RESERVED:
            continue
        if not _NAME_RE.match(key):
            raise RuleError(f"{name}.{key}", "metric names are 1-64 of [A-Za-z0-9_-]")
        raw_metrics[key] = _table(value, f"{name}.{key}")
        metrics[key] = _metric(raw_metrics[key], f"{name}.{key}")
    raw_stale = _table(table["stale"], f"{name}.stale") if "stale" in table else None
    stale = _stale(raw_stale, f"{name}.stale") if raw_stale is not None else None
    metric_overrides: dict[tuple[str, str], MetricRules | None] = {}
    stale_overrides: dict[str, StaleRule | None] = {}
    devices = _table(table.get("devices", {}), f"{name}.devices")
    for subject, value in devices.items():
        where = f"{name}.devices.{subject}"
        if not _NAME_RE.match(subject):
            raise RuleError(where, "device and risk point ids are 1-64 of [A-Za-z0-9_-]")
        for key, over in _table(value, where).items():
            over_table = _table(over, f"{where}.{key}")
            if key == "stale":
                stale_overrides[subject] = _stale(_merge(raw_stale or {}, over_table), f"{where}.stale")
            elif key == "devices" or not _NAME_RE.match(key):
                raise RuleError(f"{where}.{key}", "not a metric name")
            else:
                merged = _merge(raw_metrics.get(key, {}), over_table)
                metric_overrides[(subject, key)] = _metric(merged, f"{where}.{key}")
    return ClassRules(metrics, stale, metric_overrides, stale_overrides)


def parse_ruleset(data: Mapping[str, Any]) -> RuleSet:
    """Validate a rule set (TOML or JSON, already decoded) or raise RuleError naming the field."""
    table = _table(data, "ruleset")
    if "version" not in table:
        raise RuleError("version", "missing: an integer, raised on every change")
    version = table["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise RuleError("version", "must be an integer from 1 to 2**63-1")
    classes: dict[str, ClassRules] = {}
    for name, value in table.items():
        if name == "version":
            continue
        if not _CLASS_RE.match(name):
            raise RuleError(name, "class names are 1-32 of [a-z0-9_-]")
        classes[name] = _class(name, _table(value, name))
    try:
        source = json.loads(json.dumps(table, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RuleError("ruleset", f"holds a value JSON cannot carry: {exc}") from None
    return RuleSet(version, classes, source)


def _read(path: Path) -> Mapping[str, Any]:
    try:
        if path.suffix == ".json":
            loaded = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as fh:
                loaded = tomllib.load(fh)
    except OSError as exc:
        raise RuleError(str(path), f"cannot read: {exc.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested past the parser
        raise RuleError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    return _table(loaded, str(path))


def load_ruleset(paths: Iterable[str | Path]) -> RuleSet:
    """One rule set from several files (TOML, or JSON by suffix); each class in one file only.

    The set's version is the highest `version` among the files, so raising any file's version above the
    active one makes the edited set newer.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    versions: list[int] = []
    for item in paths:
        path = Path(item)
        data = _read(path)
        if "version" not in data:
            raise RuleError(f"{path}: version", "missing")
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise RuleError(f"{path}: version", "must be an integer")
        versions.append(version)
        for name, value in data.items():
            if name == "version":
                continue
            if name in merged:
                raise RuleError(f"{path}: {name}", f"class already defined in {origin[name]}")
            merged[name] = value
            origin[name] = path
    if not versions:
        raise RuleError("ruleset", "no rule files given")
    merged["version"] = max(versions)
    return parse_ruleset(merged)


def default_ruleset_paths() -> list[Path]:
    return sorted(RULESETS_DIR.glob("*.toml"))


def default_ruleset() -> RuleSet:
    return load_ruleset(default_ruleset_paths())


# ----------------------------------------------------------------------------------- pure evaluation


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive samples reaching one level: device time of the first and the latest, and how many."""

    start: float
    last: float
    count: int


@dataclass(frozen=True)
class Judgement:
    level: Level | None
    runs: Mapping[Level, Run]


def _reaches(direction: Direction, value: float, limit: float) -> bool:
    """A value equal to a level reaches it ("50 mm or more within 3 h", docs/rules.md)."""
    return value >= limit if direction == "above" else value <= limit


def _holds(direction: Direction, value: float, clear: float) -> bool:
    return value > clear if direction == "above" else value < clear


_NO_RUNS: Mapping[Level, Run] = MappingProxyType({})  # no level reached: one object for every such track


def judge(
    threshold: Threshold,
    level: Level | None,
    runs: Mapping[Level, Run],
    signal: Mapping[Level, float],
    t: float,
) -> Judgement:
    """The level after one sample.

    A level is entered only once samples reaching it have run for `for_samples` samples spanning `for_s`
    seconds of device time: a condition seen in a single sample cannot prove it lasted. A level already
    held stays until its signal passes back over its clear level; then the alarm falls to the highest lower
    level still held, or clears. `signal` gives the judged value per level (one value for plain rules, one
    per window for sums). A time before a run's latest restarts it; the alarm engine passes none, since it
    takes a reading older than the newest as late (docs/rules.md).
    """
    new_runs: dict[Level, Run] = {}
    target: Level | None = None
    for lv in sorted(threshold.levels):
        if not _reaches(threshold.direction, signal[lv], threshold.levels[lv]):
            continue
        old = runs.get(lv)
        run = Run(t, t, 1) if old is None or t < old.last else Run(old.start, t, old.count + 1)
        new_runs[lv] = run
        if run.count >= threshold.for_samples and run.last - run.start >= threshold.for_s:
            target = lv
    if level is not None:
        for lv, clear in threshold.clear.items():
            if lv <= level and (target is None or lv > target) and _holds(threshold.direction, signal[lv], clear):
                target = lv
    return Judgement(target, new_runs or _NO_RUNS)


def rate_signal(
    rule: RateRule, window: tuple[tuple[float, float], ...], value: float, t: float
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """Largest fall (or rise) into `value` from any sample within `window_s` before it, and the new window.

    The window keeps only samples that can still be the maximum (for a fall) or minimum (for a rise), so it
    stays small; it restarts on a time before its newest, which the alarm engine never passes.
    """
    items = list(window)
    if items and t < items[-1][0]:
        items = []
    start = t - rule.window_s
    first = 0
    while first < len(items) and items[first][0] < start:
        first += 1
    items = items[first:]
    if rule.direction == "fall":
        while items and items[-1][1] <= value:
            items.pop()
    else:
        while items and items[-1][1] >= value:
            items.pop()
    items.append((t, value))
    if len(items) > RATE_WINDOW_CAP:
        items = items[-RATE_WINDOW_CAP:]
    extreme = items[0][1]
    change = extreme - value if rule.direction == "fall" else value - extreme
    return change, tuple(items)


@dataclass(frozen=True, slots=True)
class SumState:
    """Amounts in bins of `bin_s` seconds of device time (bin index, amount), and the newest sample time."""

    last: float
    bins: tuple[tuple[int, float], ...]


def sum_signal(rule: SumRule, state: SumState | None, value: float, t: float) -> tuple[dict[Level, float], SumState]:
    """Amount within each level's window ending at the newest sample, to one bin (shortest window / 120).

    A sample older than the newest is a late report (rain that fell during an outage, flushed after the
    fresh ones): it adds to its own bin, or to none once it is older than the longest window.
    """
    last = t if state is None else max(t, state.last)
    size = rule.bin_s
    horizon = last - max(rule.windows.values())
    bins = {} if state is None else dict(state.bins)
    index = math.floor(t / size)
    if (index + 1) * size > horizon:
        bins[index] = bins.get(index, 0.0) + value
    kept = tuple(sorted((i, a) for i, a in bins.items() if (i + 1) * size > horizon))
    signal = {
        level: math.fsum(a for i, a in kept if (i + 1) * size > last - window) for level, window in rule.windows.items()
    }
    return signal, SumState(last, kept)


def stale_level(rule: StaleRule, age_s: float, dead: bool) -> Level | None:
    """Level of a device silent for `age_s` seconds; its will (dead) raises at least `rule.will`."""
    level: Level | None = rule.will if dead else None
    for lv, factor in rule.levels.items():
        if age_s >= factor * rule.interval_s and (level is None or lv > level):
            level = lv
    return level
