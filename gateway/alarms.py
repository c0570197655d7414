"""The alarm engine: judges readings by the rule set and runs each alarm's lifecycle.

Lifecycle: raised -> escalated / de-escalated -> cleared; while the device is silent or dead its sensor
alarms are unknown, so they are inhibited until a fresh reading resumes, moves or clears them (as
Alertmanager's inhibit rules mute alerts). Every transition is returned to the caller as a Transition whose
body() goes upstream. State lives in SQLite tables on the caller's connection and is written, never
committed, here: the daemon calls flush() and commits it in the same transaction as the outbox rows
carrying the transitions, so after a crash either both exist or neither does, and a restart neither
re-raises an alarm nor forgets one.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from gateway import device_states, district_wire
from gateway.device_list import DeviceConfig
from gateway.riskpoints import RiskPoints
from gateway.rules import (
    Level,
    RateRule,
    RuleError,
    RuleSet,
    Run,
    StaleRule,
    SumRule,
    SumState,
    Threshold,
    judge,
    parse_ruleset,
    rate_signal,
    stale_level,
    sum_signal,
)
from gateway.store import from_json, to_json

Event = Literal["raised", "escalated", "de-escalated", "cleared", "inhibited", "resumed"]
RuleKind = Literal["level", "rate", "sum", "stale"]
Key = tuple[str, str, str, str]  # scope ("device" | "point"), subject id, metric ("" for stale), rule kind

SWITCH_PAGE = 1000  # stored tracks looked at a time when the rule set changes (and at start)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarm_ruleset (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, body TEXT NOT NULL, applied_at REAL);
CREATE TABLE IF NOT EXISTS alarm_device (
    device TEXT PRIMARY KEY, device_class TEXT NOT NULL, dead_at REAL);
CREATE TABLE IF NOT EXISTS alarm_track (
    scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (scope, subject, metric, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarm_active (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL,
    level INTEGER NOT NULL, raised_at REAL NOT NULL, acked_at REAL, resends INTEGER NOT NULL, next_resend REAL,
    last TEXT NOT NULL, rose_step INTEGER, UNIQUE (scope, subject, metric, kind));
"""




def _label(level: Level | None) -> str | None:
    return None if level is None else level.label


def _level(label: object) -> Level | None:
    return None if label is None else Level.parse(str(label))


@dataclass(frozen=True)
class Transition:
    """One step of an alarm's lifecycle; body() is the upstream event."""

    event: Event
    alarm_id: str
    rule_kind: RuleKind
    device: str
    device_class: str
    metric: str | None
    level: Level | None
    prev: Level | None
    value: float | None
    reading: float | None
    rule: str
    rule_version: int
    device_time: float | None
    gateway_time: float
    point: str | None = None
    position: tuple[float, float] | None = None
    unit: str | None = None
    cause: str | None = None
    resend: int = 0
    # The transition's number in its alarm's life (the raise is 0; a re-send repeats it). The district orders
    # an alarm's transitions by it, as gateway times cannot: one batch stamps several with one time, and the
    # gateway's clock may be set back between two.
    step: int = 0

    def body(self) -> district_wire.AlarmTransition:
        """The upstream event. `value` is what the rule judged (the reading, its size, the change within the
        window, the accumulated amount, or seconds of silence); `reading` is the raw one."""
        return district_wire.alarm_transition(
            id=self.alarm_id, ev=self.event, kind=self.rule_kind, dev=self.device, cls=self.device_class,
            metric=self.metric, level=_label(self.level), prev=_label(self.prev), value=self.value,
            reading=self.reading, rule=self.rule, rver=self.rule_version, t_dev=self.device_time,
            t_gw=self.gateway_time, resend=self.resend, step=self.step, point=self.point, pos=self.position,
            unit=self.unit, cause=self.cause)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Transition:
        pos = body.get("pos")
        return cls(
            event=body["ev"],
            alarm_id=body["id"],
            rule_kind=body["kind"],
            device=body["dev"],
            device_class=body["cls"],
            metric=body["metric"],
            level=_level(body["level"]),
            prev=_level(body["prev"]),
            value=body["value"],
            reading=body["reading"],
            rule=body["rule"],
            rule_version=body["rver"],
            device_time=body["t_dev"],
            gateway_time=body["t_gw"],
            point=body.get("point"),
            position=None if pos is None else (float(pos[0]), float(pos[1])),
            unit=body.get("unit"),
            cause=body.get("cause"),
            resend=body.get("resend", 0),
            step=body.get("step", 0),  # a transition stored by a gateway from before the numbers
        )


@dataclass(frozen=True)
class Alarm:
    """An active alarm: its current level, acknowledgement and re-send schedule, and its latest transition."""

    id: str
    key: Key
    level: Level
    raised_at: float
    acked_at: float | None
    resends: int
    next_resend: float | None
    last: Transition
    # The step of its raise or latest escalation: an ack of it or later covers the alarm, since falling or an
    # inhibition asks for no fresh one (an ack of the orange in flight while the gas fell to yellow).
    rose_step: int

    @property
    def device(self) -> str:
        return self.last.device

    @property
    def inhibited(self) -> bool:
        """Its device is stale or dead, so its level is unknown until a fresh reading judges it again."""
        return self.last.event == "inhibited"

    @property
    def metric(self) -> str | None:
        return self.last.metric

    @property
    def point(self) -> str | None:
        return self.last.point


@dataclass(frozen=True, slots=True)
class Track:
    """Evaluation state of one rule on one subject, between samples."""

    runs: Mapping[Level, Run] = field(default_factory=dict)
    window: tuple[tuple[float, float], ...] = ()
    sums: SumState | None = None
    # Device time of the newest reading judged. A node sends fresh alarm packs ahead of its routine backlog,
    # so older readings arrive after newer ones; judging them would clear or lower an alarm on stale values.
    latest: float | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"runs": {str(int(lv)): [r.start, r.last, r.count] for lv, r in self.runs.items()}}
        if self.latest is not None:
            data["latest"] = self.latest
        if self.window:
            data["window"] = [list(item) for item in self.window]
        if self.sums is not None:
            data["sums"] = {"last": self.sums.last, "bins": [list(item) for item in self.sums.bins]}
        return to_json(data)

    @classmethod
    def from_json(cls, text: str) -> Track:
        data = from_json(text)
        runs = {Level(int(lv)): Run(float(s), float(last), int(n)) for lv, (s, last, n) in data["runs"].items()}
        window = tuple((float(t), float(v)) for t, v in data.get("window", ()))
        sums = data.get("sums")
        state = None
        if sums is not None:
            state = SumState(float(sums["last"]), tuple((int(i), float(a)) for i, a in sums["bins"]))
        latest = data.get("latest")
        return cls(runs, window, state, None if latest is None else float(latest))

    def is_older(self, device_time: float) -> bool:
        return self.latest is not None and device_time < self.latest

    def empty(self) -> bool:
        return not self.runs and not self.window and self.sums is None and self.latest is None

    def same_but_latest(self, other: Track) -> bool:
        """Equal but perhaps for `latest`: field by field, not through dataclasses.replace (every reading)."""
        return self.runs == other.runs and self.window == other.window and self.sums == other.sums


_NO_TRACK = Track()  # never changed (frozen, and its runs are only read): the state of a rule not yet judged


class _Reading(NamedTuple):
    """A reading as the rules see it; a NamedTuple because one is built for every judged reading."""

    device: str
    cls: str
    metric: str
    reading: float
    device_time: float
    now: float
    point: str | None
    position: tuple[float, float] | None
    unit: str | None


def _finite(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return number


def ack_steps(acks: Iterable[tuple[str, int | None]]) -> dict[str, int | None]:
    """The step an ack takes for each id: of the same id twice the newer step, None (what covers everything)
    first among them. The daemon logs these, so its log says what `AlarmEngine.acknowledge` took."""
    wanted: dict[str, int | None] = {}
    for alarm_id, step in acks:
        had = wanted.get(alarm_id, -1)
        wanted[alarm_id] = None if step is None or had is None else max(had, step)
    return wanted


class AlarmEngine:
    """Judges readings and runs the alarm lifecycle; see docs/rules.md.

    Times are seconds: `device_time` on the device's clock (pending durations, rate and sum windows),
    `now` on the gateway's (staleness, re-sends). The engine reads no clock itself.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        ruleset: RuleSet,
        riskpoints: RiskPoints | None = None,
        *,
        resend_first_s: float = 60.0,
        resend_max_s: float = 3600.0,
        capacity: int = device_states.CAPACITY,
        devices: Mapping[str, DeviceConfig] | None = None,
    ) -> None:
        if not 0 < resend_first_s <= resend_max_s:
            raise ValueError("need 0 < resend_first_s <= resend_max_s")
        self._conn = conn
        self._points = riskpoints if riskpoints is not None else RiskPoints()
        self._first = resend_first_s
        self._max = resend_max_s
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)  # not executescript(): that would commit the caller's transaction
        if "rose_step" not in {row[1] for row in conn.execute("PRAGMA table_info(alarm_active)")}:
            conn.execute("ALTER TABLE alarm_active ADD COLUMN rose_step INTEGER")  # a store made before it
        stored, newer = self._stored_ruleset(ruleset.version)
        active = stored if newer and stored is not None else ruleset
        self._check_points(active)
        # When each device was last heard (gateway time; None until its first reading or tick after a restart),
        # by class: a float and a dict entry a device, about half of what an object a device cost (50,000
        # devices, docs/performance.md). Dead devices (a will) and since when, apart: few.
        self._heard: dict[str, dict[str, float | None]] = {}
        self._dead: dict[str, float] = {}
        # A stored id is swapped for the registry's string (`devices`): a string of its own for every device
        # would cost 3 MB at 50,000 devices after each restart.
        registered = devices or {}
        for dev, cls, dead in conn.execute("SELECT device, device_class, dead_at FROM alarm_device"):
            known = registered.get(dev)
            if known is not None:
                dev = known.id
            self._heard.setdefault(cls, {})[dev] = None
            if dead is not None:
                self._dead[dev] = dead
        # Tracks by subject, only of the `capacity` subjects judged most recently (least recent first); the
        # others stay in alarm_track until their next reading (gateway/device_states.py says why).
        self._tracks: dict[tuple[str, str], dict[tuple[str, str], Track]] = {}
        self._capacity = capacity
        self.track_reads = 0  # subjects whose tracks were read back from the store
        self._unsaved: set[Key] = set()  # tracks whose newest judged time moved since the last flush()
        self._quiet: dict[int, float] = {}  # by id() of a StaleRule of the active rule set (_switch clears it)
        self._alarms: dict[Key, Alarm] = {}
        for row in conn.execute(
            "SELECT id, scope, subject, metric, kind, level, raised_at, acked_at, resends, next_resend, last, "
            "rose_step FROM alarm_active"
        ):
            key: Key = (row[1], row[2], row[3], row[4])
            last = Transition.from_body(json.loads(row[10]))
            # stored before rose_step: its rise unknown, an ack must name its latest step, as it had to then
            rose = last.step if row[11] is None else row[11]
            self._alarms[key] = Alarm(row[0], key, Level(row[5]), row[6], row[7], row[8], row[9], last, rose)
        # Compare against the rules the stored state was judged under; unknown rules reset every track.
        self._rules = stored if stored is not None else active
        if stored is None:
            conn.execute("DELETE FROM alarm_track")
        if stored is None or not newer:
            self._switch(active, None)

    # ------------------------------------------------------------------------------------ public API

    @property
    def ruleset(self) -> RuleSet:
        return self._rules

    def observe(
        self,
        device: str,
        device_class: str,
        metric: str,
        value: float,
        device_time: float,
        now: float,
        position: tuple[float, float] | None = None,
    ) -> list[Transition]:
        """Judge one reading. A position (lat, lon) attributes it to the nearest risk point in range.

        Raises ValueError for a non-finite value or time: the caller quarantines such a reading.
        """
        return self.observe_pack(device, device_class, ((metric, value, device_time),), now, position)

    def observe_pack(
        self,
        device: str,
        device_class: str,
        readings: Sequence[tuple[str, float, float]],
        now: float,
        position: tuple[float, float] | None = None,
    ) -> list[Transition]:
        """Judge one message's readings, (metric, value, device time) each, as `observe` judges each in turn.

        What is the same for every reading of a message (the device heard, the risk point its position falls
        in) is done once, and a metric without rules costs a dictionary lookup: this runs for every reading.
        Raises ValueError for a non-finite value or time before anything is judged.
        """
        checked = [(metric, _finite(value, "value"), _finite(device_time, "device_time"))
                   for metric, value, device_time in readings]
        now = _finite(now, "now")
        if position is not None:
            position = (_finite(position[0], "latitude"), _finite(position[1], "longitude"))
        if not checked:
            return []
        out = self._seen(device, device_class, now)
        hit = self._points.nearest(*position) if position is not None else None
        for metric, reading, device_time in checked:
            scope, subject, cls, point = "device", device, device_class, None
            rules = None
            if hit is not None:
                rules = self._rules.metric_rules(hit[0].cls, hit[0].id, metric)
                if rules is not None:
                    scope, subject, cls, point = "point", hit[0].id, hit[0].cls, hit[0].id
            if rules is None:
                rules = self._rules.metric_rules(device_class, device, metric)
            if rules is None:
                continue
            ctx = _Reading(device, cls, metric, reading, device_time, now, point, position, rules.unit)
            if rules.level is not None:
                judged = abs(reading) if rules.abs else reading
                out += self._judge((scope, subject, metric, "level"), rules.id, rules.level, ctx, judged)
            if rules.rate is not None:
                out += self._judge_rate((scope, subject, metric, "rate"), rules.id + ".rate", rules.rate, ctx)
            if rules.sum is not None:
                out += self._judge_sum((scope, subject, metric, "sum"), rules.id + ".sum", rules.sum, ctx)
        return out

    def tick(self, now: float) -> list[Transition]:
        """Time-driven work: raise or escalate stale alarms, and clear alarms whose rule is gone.

        Pending durations are measured between samples, not here: a condition is only known to hold while
        samples show it, so a lone spike followed by silence never raises an alarm.
        """
        out = self._sweep(now)
        quiet = self._quiet  # per stale rule, the silence below which it raises nothing
        for cls, heard in self._heard.items():
            for device, last in heard.items():
                if last is None:
                    heard[device] = last = now  # after a restart, silence is counted from here, not from the outage
                rule = self._rules.stale_rule(cls, device)
                if rule is None:
                    continue
                dead = device in self._dead
                if not dead:
                    # Every device is looked at every second, and nearly all have been heard lately: what _stale
                    # would find (no level), without its work. 35 -> 8 ms a tick at 50,000 devices.
                    least = quiet.get(id(rule))
                    if least is None:
                        least = quiet[id(rule)] = min((f * rule.interval_s for f in rule.levels.values()),
                                                      default=math.inf)
                    if now - last < least:
                        continue
                out += self._stale(device, cls, last, dead, rule, now, "will" if dead else "silence")
        return out

    def device_dead(self, device: str, now: float, device_class: str | None = None) -> list[Transition]:
        """The device's will (or a death message) arrived: stale at once, at the rule's `will` level, and its
        sensor alarms inhibited (also where its class has no stale rule)."""
        cls = self._device_class(device)
        if cls is None:
            if device_class is None:
                return []
            cls = device_class
            self._heard.setdefault(cls, {})[device] = None
        if device not in self._dead:
            self._dead[device] = now
            self._save_device(device, cls, now)
        rule = self._rules.stale_rule(cls, device)
        if rule is None:
            return self._inhibit(device, now, "will")
        return self._stale(device, cls, self._heard[cls][device], True, rule, now, "will")

    def acknowledge(self, acks: Iterable[tuple[str, int | None]], now: float) -> dict[str, bool]:
        """The district acknowledged these (alarm id, step): stop re-sending them. An ack with a step covers the
        alarm unless it escalated after that transition: an officer's ack of the orange the district held,
        arriving after the gas went red here, left the red escalation acknowledged unseen; one arriving after
        it fell to yellow or was inhibited covers it. One without a step (a district from before the steps)
        covers the alarm as it is. Returns each active alarm among them and whether it is acknowledged now. One
        pass over the active alarms for the whole list: a storm's page of acknowledgements against a storm's
        alarms would otherwise cost their product."""
        wanted = ack_steps(acks)
        known: dict[str, bool] = {}
        for alarm in list(self._alarms.values()):
            if alarm.id in wanted:
                step = wanted[alarm.id]
                if alarm.acked_at is None and (step is None or step >= alarm.rose_step):
                    alarm = replace(alarm, acked_at=now, next_resend=None)
                    self._save_alarm(alarm)
                known[alarm.id] = alarm.acked_at is not None
        return known

    def clock_stepped(self, step: float) -> None:
        """The wall clock was set by `step` seconds (gateway/clock_step.py): silences and re-sends are spans,
        so their starts and deadlines move with it."""
        for heard in self._heard.values():
            for device, last in heard.items():
                if last is not None:
                    heard[device] = last + step
        for alarm in list(self._alarms.values()):
            if alarm.next_resend is not None:
                self._save_alarm(replace(alarm, next_resend=alarm.next_resend + step))

    def due_resends(self, now: float) -> list[Transition]:
        """The latest transition of each unacknowledged alarm whose re-send is due, with backoff doubling
        from resend_first_s up to resend_max_s."""
        out = []
        for alarm in sorted(self._alarms.values(), key=lambda a: (-a.level, a.raised_at)):
            if alarm.acked_at is None and alarm.next_resend is not None and alarm.next_resend <= now:
                count = alarm.resends + 1
                # 2.0**, not 2**: past 1,024 re-sends the int's product with a float raised OverflowError
                delay = min(self._first * 2.0 ** min(count, 1023), self._max)
                self._save_alarm(replace(alarm, resends=count, next_resend=now + delay))
                out.append(replace(alarm.last, resend=count))
        return out

    def active(self) -> list[Alarm]:
        """Active alarms, highest level first, then oldest first."""
        return sorted(self._alarms.values(), key=lambda a: (-a.level, a.raised_at, a.id))

    def replace_rules(self, ruleset: RuleSet, now: float) -> list[Transition]:
        """Apply a newer rule set at run time. Active alarms keep their id and level until the next reading
        is judged by the new rules; alarms whose rule is gone are cleared now (returned).

        Raises RuleError if the version is not newer, a risk point's class has no rules, or a class is no
        device's and no risk point's.
        """
        if ruleset.version <= self._rules.version:
            raise RuleError("version", f"must be greater than the active version {self._rules.version}")
        self._points.check_rules(ruleset)
        self._switch(ruleset, now)
        return self._sweep(now)

    def flush(self) -> None:
        """Write the newest judged times that moved into the current transaction (the caller commits).

        Every reading moves one, so they are written once per batch rather than once per reading; a restart
        then judges no reading older than one judged before it (a backlog split by a restart)."""
        if self._unsaved:
            self._conn.executemany(
                "INSERT OR REPLACE INTO alarm_track (scope, subject, metric, kind, state) VALUES (?, ?, ?, ?, ?)",
                [(*key, self._tracks[key[0], key[1]][key[2], key[3]].to_json()) for key in self._unsaved],
            )
            self._unsaved.clear()
        excess = len(self._tracks) - self._capacity
        if excess > 0:
            for subject in list(self._tracks)[:excess]:
                del self._tracks[subject]

    # ------------------------------------------------------------------------------------- internals

    def _stored_ruleset(self, given: int) -> tuple[RuleSet | None, bool]:
        """The rule set applied before a restart, and whether it is newer than the given one (then it wins:
        the district may have pushed it). An older one that no longer validates is dropped."""
        row = self._conn.execute("SELECT version, body FROM alarm_ruleset WHERE id = 1").fetchone()
        if row is None:
            return None, False
        newer = bool(row[0] > given)
        try:
            return parse_ruleset(json.loads(row[1])), newer
        except (RuleError, ValueError):
            if newer:
                raise
            return None, False

    def _check_points(self, ruleset: RuleSet) -> None:
        for point in self._points:
            if point.cls not in ruleset.classes:
                raise RuleError(f"riskpoints.{point.id}.class", f"the rule set has no class {point.cls!r}")

    def _switch(self, ruleset: RuleSet, now: float | None) -> None:
        """Make `ruleset` active; pending runs and windows judged under a changed rule start again. The stored
        tracks are walked a page at a time, in key order: every key at once was a transient of 14 MB at 50,000
        devices, at every start."""
        after: Key = ("", "", "", "")
        while page := self._conn.execute(
                "SELECT scope, subject, metric, kind FROM alarm_track WHERE (scope, subject, metric, kind) > "
                "(?, ?, ?, ?) ORDER BY scope, subject, metric, kind LIMIT ?", (*after, SWITCH_PAGE)).fetchall():
            for key in page:
                if self._part(self._rules, key) != self._part(ruleset, key):
                    self._save_track(key, Track())
            after = page[-1]
        self._rules = ruleset
        self._quiet.clear()
        self._conn.execute(
            "INSERT INTO alarm_ruleset (id, version, body, applied_at) VALUES (1, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body, "
            "applied_at = excluded.applied_at",
            (ruleset.version, ruleset.to_json(), now),
        )

    def _class_of(self, scope: str, subject: str) -> str | None:
        if scope == "point":
            point = self._points.get(subject)
            return None if point is None else point.cls
        return self._device_class(subject)

    def _device_class(self, device: str) -> str | None:
        for cls, heard in self._heard.items():
            if device in heard:
                return cls
        return None

    def _part(self, ruleset: RuleSet, key: Key) -> Threshold | RateRule | SumRule | StaleRule | None:
        cls = self._class_of(key[0], key[1])
        return None if cls is None else self._rule_part(ruleset, cls, key)

    @staticmethod
    def _rule_part(ruleset: RuleSet, cls: str, key: Key) -> Threshold | RateRule | SumRule | StaleRule | None:
        """The rule a track follows when its subject is of class `cls`."""
        _, subject, metric, kind = key
        if kind == "stale":
            return ruleset.stale_rule(cls, subject)
        rules = ruleset.metric_rules(cls, subject, metric)
        if rules is None:
            return None
        part: Threshold | RateRule | SumRule | None = getattr(rules, kind)
        return part

    def _sweep(self, now: float) -> list[Transition]:
        out = []
        for key, alarm in list(self._alarms.items()):
            if self._part(self._rules, key) is None:
                out += self._withdraw(key, alarm, now, "rule-removed")
        return out

    def _withdraw(self, key: Key, alarm: Alarm, now: float, cause: str) -> list[Transition]:
        """Clear an alarm that nothing will judge again (its rule or its device is gone), and its track."""
        last = alarm.last
        moved = self._move(key, None, last.rule, last.rule_kind, now, value=last.value, reading=last.reading,
                           device=last.device, cls=last.device_class, metric=last.metric, device_time=None,
                           point=last.point, position=last.position, unit=last.unit, cause=cause)
        self._save_track(key, Track())
        return [] if moved is None else [moved]

    def forget_unlisted(self, listed: Container[str], now: float) -> list[Transition]:
        """Devices no longer on the site's list (a reload, or a restart with a new list): their own alarms are
        cleared (`device-removed`) and their silence no longer counted. The gateway takes no message from
        them, so nothing else would ever clear those alarms. Risk-point alarms are left to their points."""
        gone = {dev for heard in self._heard.values() for dev in heard if dev not in listed}
        out = []
        for key, alarm in list(self._alarms.items()):
            if key[0] == "device" and key[1] in gone:
                out += self._withdraw(key, alarm, now, "device-removed")
        for dev in gone:
            for heard in self._heard.values():
                heard.pop(dev, None)
            self._dead.pop(dev, None)
            self._tracks.pop(("device", dev), None)
        self._unsaved = {key for key in self._unsaved if key[0] != "device" or key[1] not in gone}
        self._conn.executemany("DELETE FROM alarm_device WHERE device = ?", [(dev,) for dev in gone])
        self._conn.executemany("DELETE FROM alarm_track WHERE scope = 'device' AND subject = ?",
                               [(dev,) for dev in gone])
        return out

    def _seen(self, device: str, cls: str, now: float) -> list[Transition]:
        out = []
        heard = self._heard.get(cls)
        if heard is None or device not in heard or device in self._dead:  # new, of another class, or back alive
            before = self._device_class(device)
            if before is not None and before != cls:
                out += self._reclassed(device, before, cls, now)
            for other in self._heard.values():
                other.pop(device, None)
            self._dead.pop(device, None)
            self._heard.setdefault(cls, {})[device] = now
            self._save_device(device, cls, None)
        else:
            heard[device] = now
        key: Key = ("device", device, "", "stale")
        alarm = self._alarms.get(key)
        if alarm is None:
            return out
        moved = self._move(key, None, alarm.last.rule, "stale", now, value=None, reading=None, device=device,
                           cls=cls, metric=None, device_time=None, cause="reading")
        return out if moved is None else [*out, moved]

    def _reclassed(self, device: str, before: str, cls: str, now: float) -> list[Transition]:
        """The device list gave a device another class: what a rule-set switch does for a changed rule, for this
        device's tracks. A run or window judged under the old class's rule starts again, and an alarm whose
        rule the new class lacks is cleared now, as a removed rule's is; the rest are judged by the new class's
        rules from the next reading on."""
        out = []
        for metric, kind in list(self._held("device", device)):
            if kind == "stale":
                continue
            key: Key = ("device", device, metric, kind)
            if self._rule_part(self._rules, before, key) != self._rule_part(self._rules, cls, key):
                self._save_track(key, Track())
        for key, alarm in list(self._alarms.items()):
            if key[:2] != ("device", device) or key[3] == "stale" or self._rule_part(self._rules, cls, key) is not None:
                continue
            out += self._withdraw(key, alarm, now, "rule-removed")
        return out

    def _stale(self, device: str, cls: str, last_seen: float | None, dead: bool, rule: StaleRule, now: float,
               cause: str) -> list[Transition]:
        """Stale alarms only rise with silence; the next reading clears them."""
        age = 0.0 if last_seen is None else max(0.0, now - last_seen)
        level = stale_level(rule, age, dead)
        key: Key = ("device", device, "", "stale")
        current = self._alarms.get(key)
        if level is None or (current is not None and level <= current.level):
            return []
        moved = self._move(key, level, rule.id, "stale", now, value=age, reading=None, device=device,
                           cls=cls, metric=None, device_time=None, cause=cause)
        return [] if moved is None else [moved, *self._inhibit(device, now, cause)]

    def _inhibit(self, device: str, now: float, cause: str) -> list[Transition]:
        """The device went silent or died: its own sensor alarms are unknown until it reports again. Each says
        so once (`inhibited`, at its last known level) and is not re-sent as if live meanwhile. Risk-point
        alarms are left alone: other devices may still report there."""
        out = []
        for key, alarm in list(self._alarms.items()):
            if key[0] == "device" and key[1] == device and key[3] != "stale" and not alarm.inhibited:
                moved = replace(alarm.last, event="inhibited", prev=alarm.level, gateway_time=float(now),
                                rule_version=self._rules.version, cause=cause, resend=0, step=alarm.last.step + 1)
                self._save_alarm(replace(alarm, next_resend=None, last=moved))
                out.append(moved)
        return out

    def _judge(self, key: Key, rule_id: str, threshold: Threshold, ctx: _Reading, judged: float) -> list[Transition]:
        tracks = self._held(key[0], key[1])
        part = key[2], key[3]
        track = tracks.get(part, _NO_TRACK)
        if track.is_older(ctx.device_time):
            return []
        if (track is not _NO_TRACK and not track.runs and not threshold.reached_by(judged)
                and key not in self._alarms):
            # Short of every level, with no run to end and no alarm to clear: judge() would find nothing, and only
            # `latest` moves, which flush() writes (as _save_track does). Most readings take this way.
            if track.latest != ctx.device_time:
                tracks[part] = Track(track.runs, track.window, track.sums, ctx.device_time)
                self._unsaved.add(key)
            return []
        signal = dict.fromkeys(threshold.levels, judged)
        verdict = judge(threshold, self._level_of(key), track.runs, signal, ctx.device_time)
        self._save_track(key, Track(verdict.runs, track.window, track.sums, ctx.device_time))
        if verdict.level is None and key not in self._alarms:
            return []  # no alarm before and none now: what _move would find, without building its arguments
        return self._emit(key, verdict.level, rule_id, "level", ctx, signal)

    def _judge_rate(self, key: Key, rule_id: str, rule: RateRule, ctx: _Reading) -> list[Transition]:
        track = self._held(key[0], key[1]).get((key[2], key[3]), _NO_TRACK)
        if track.is_older(ctx.device_time):
            return []
        change, window = rate_signal(rule, track.window, ctx.reading, ctx.device_time)
        signal = dict.fromkeys(rule.threshold.levels, change)
        verdict = judge(rule.threshold, self._level_of(key), track.runs, signal, ctx.device_time)
        self._save_track(key, Track(verdict.runs, window, None, ctx.device_time))
        return self._emit(key, verdict.level, rule_id, "rate", ctx, signal)

    def _judge_sum(self, key: Key, rule_id: str, rule: SumRule, ctx: _Reading) -> list[Transition]:
        track = self._held(key[0], key[1]).get((key[2], key[3]), _NO_TRACK)
        signal, sums = sum_signal(rule, track.sums, ctx.reading, ctx.device_time)
        # A late report changes the amounts in the windows ending at the newest one: judged as of that time.
        verdict = judge(rule.threshold, self._level_of(key), track.runs, signal, sums.last)
        self._save_track(key, Track(verdict.runs, (), sums))
        return self._emit(key, verdict.level, rule_id, "sum", ctx, signal)

    def _level_of(self, key: Key) -> Level | None:
        alarm = self._alarms.get(key)
        return None if alarm is None else alarm.level

    def _emit(
        self, key: Key, level: Level | None, rule_id: str, kind: RuleKind, ctx: _Reading, signal: Mapping[Level, float]
    ) -> list[Transition]:
        basis = level if level is not None else self._level_of(key)
        value = signal[basis] if basis is not None and basis in signal else next(iter(signal.values()))
        moved = self._move(key, level, rule_id, kind, ctx.now, value=value, reading=ctx.reading, device=ctx.device,
                           cls=ctx.cls, metric=ctx.metric, device_time=ctx.device_time, point=ctx.point,
                           position=ctx.position, unit=ctx.unit)
        return [] if moved is None else [moved]

    def _move(
        self,
        key: Key,
        level: Level | None,
        rule_id: str,
        kind: RuleKind,
        now: float,
        *,
        value: float | None,
        reading: float | None,
        device: str,
        cls: str,
        metric: str | None,
        device_time: float | None,
        point: str | None = None,
        position: tuple[float, float] | None = None,
        unit: str | None = None,
        cause: str | None = None,
    ) -> Transition | None:
        """Record the change of one alarm's level, if any, and return its transition."""
        alarm = self._alarms.get(key)
        prev = None if alarm is None else alarm.level
        inhibited = alarm is not None and alarm.inhibited
        if level == prev and not inhibited:
            return None
        event: Event
        if level == prev:
            event = "resumed"  # a fresh reading after an inhibition holds the level
        elif prev is None:
            event = "raised"
        elif level is None:
            event = "cleared"
        elif level > prev:
            event = "escalated"
        else:
            event = "de-escalated"
        alarm_id = uuid.uuid4().hex if alarm is None else alarm.id
        moved = Transition(event, alarm_id, kind, device, cls, metric, level, prev, value, reading, rule_id,
                           self._rules.version, device_time, float(now), point, position, unit, cause,
                           step=0 if alarm is None else alarm.last.step + 1)
        if level is None:
            del self._alarms[key]
            self._conn.execute("DELETE FROM alarm_active WHERE id = ?", (alarm_id,))
        elif alarm is None or event == "escalated":
            # A new or higher level needs a fresh acknowledgement.
            raised_at = now if alarm is None else alarm.raised_at
            self._save_alarm(Alarm(alarm_id, key, level, raised_at, None, 0, now + self._first, moved, moved.step))
        else:
            if inhibited and alarm.acked_at is None:  # live again: re-sends start over
                alarm = replace(alarm, resends=0, next_resend=now + self._first)
            self._save_alarm(replace(alarm, level=level, last=moved))
        return moved

    def _save_alarm(self, alarm: Alarm) -> None:
        self._alarms[alarm.key] = alarm
        self._conn.execute(
            "INSERT OR REPLACE INTO alarm_active (id, scope, subject, metric, kind, level, raised_at, acked_at, "
            "resends, next_resend, last, rose_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (alarm.id, *alarm.key, int(alarm.level), alarm.raised_at, alarm.acked_at, alarm.resends,
             alarm.next_resend, json.dumps(alarm.last.body(), separators=(",", ":")), alarm.rose_step),
        )

    def prefetch(self, devices: Iterable[str]) -> None:
        """Read the tracks of those of `devices` not held, a query for up to PREFETCH of them (as
        DeviceStates.prefetch does; a device with none is held with none)."""
        missing = [dev for dev in devices if ("device", dev) not in self._tracks]
        for part, marks in device_states.chunks(missing):
            got: dict[str, dict[tuple[str, str], Track]] = {dev: {} for dev in part}
            for subject, metric, kind, state in self._conn.execute(
                    "SELECT subject, metric, kind, state FROM alarm_track WHERE scope = 'device' AND subject IN "
                    f"({marks})", part):
                got[subject][metric, kind] = Track.from_json(state)
            for dev, tracks in got.items():
                self._tracks["device", dev] = tracks
            self.track_reads += len(part)

    def _held(self, scope: str, subject: str) -> dict[tuple[str, str], Track]:
        """The tracks of one subject by (metric, kind), read from the store if they were let go."""
        tracks = self._tracks.pop((scope, subject), None)
        if tracks is None:
            tracks = {(metric, kind): Track.from_json(state) for metric, kind, state in self._conn.execute(
                "SELECT metric, kind, state FROM alarm_track WHERE scope = ? AND subject = ?", (scope, subject))}
            self.track_reads += 1
        self._tracks[scope, subject] = tracks
        return tracks

    def _save_track(self, key: Key, track: Track) -> None:
        tracks = self._held(key[0], key[1])
        part = key[2], key[3]
        old = tracks.get(part)
        if old == track or (old is None and track.empty()):
            return
        if track.empty():
            del tracks[part]
            self._unsaved.discard(key)
            self._conn.execute(
                "DELETE FROM alarm_track WHERE scope = ? AND subject = ? AND metric = ? AND kind = ?", key
            )
        else:
            tracks[part] = track
            if old is not None and old.same_but_latest(track):
                self._unsaved.add(key)  # only `latest` moved, as it does with every reading: flush() writes it
                return
            self._unsaved.discard(key)
            self._conn.execute(
                "INSERT OR REPLACE INTO alarm_track (scope, subject, metric, kind, state) VALUES (?, ?, ?, ?, ?)",
                (*key, track.to_json()),
            )

    def _save_device(self, device: str, cls: str, dead_at: float | None) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO alarm_device (device, device_class, dead_at) VALUES (?, ?, ?)",
            (device, cls, dead_at),
        )
