"""The alarm engine (gateway/alarms.py) on real SQLite files: lifecycle, persistence, acks, rule changes."""

from __future__ import annotations

import copy
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.alarms
from gateway.alarms import AlarmEngine, Track, Transition
from gateway.device_list import DeviceConfig, DeviceList
from gateway.riskpoints import RiskPoints
from gateway.rules import Level, RuleError, RuleSet, default_ruleset, judge, parse_ruleset

BLUE, YELLOW, ORANGE, RED = Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED

RULES: dict[str, Any] = {
    "version": 1,
    "gas": {
        "ch4": {
            "unit": "%LEL",
            "direction": "above",
            "levels": {"blue": 10, "yellow": 20, "orange": 25, "red": 50},
            "clear": {"blue": 8, "yellow": 16, "orange": 20, "red": 40},
            "for_samples": 2,
        },
        "stale": {"interval_s": 10, "levels": {"yellow": 3, "orange": 10}, "will": "orange"},
    },
    "water": {
        "pressure": {
            "unit": "kPa",
            "direction": "below",
            "levels": {"yellow": 140, "red": 50},
            "clear": {"yellow": 150, "red": 60},
            "rate": {
                "window_s": 60,
                "direction": "fall",
                "levels": {"orange": 50, "red": 100},
                "clear": {"orange": 20, "red": 40},
            },
        },
    },
    "rain": {
        "rain": {
            "unit": "mm",
            "sum": {
                "window_s": {"blue": 43200, "yellow": 21600, "orange": 10800, "red": 10800},
                "levels": {"blue": 50, "yellow": 50, "orange": 50, "red": 100},
                "clear": {"blue": 40, "yellow": 40, "orange": 40, "red": 80},
            },
        },
    },
    "bridge": {
        "tilt_x": {"direction": "above", "abs": True, "levels": {"orange": 0.004}, "clear": {"orange": 0.0035}},
    },
    "drainage": {"cover": {"direction": "above", "levels": {"orange": 0.5}, "clear": {"orange": 0.5}}},
    "drone": {
        "ch4": {"direction": "above", "levels": {"yellow": 20, "red": 50}, "clear": {"yellow": 16, "red": 40}},
    },
}

STATION = {"id": "station-7", "class": "gas", "lat": 29.5000, "lon": 106.5000, "radius_m": 200}
RESERVOIR = {"id": "reservoir-2", "class": "water", "lat": 29.6000, "lon": 106.6000, "radius_m": 500}


def rules(version: int = 1, **changes: Any) -> RuleSet:
    data = copy.deepcopy(RULES)
    data["version"] = version
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return parse_ruleset(data)


class EngineOnDisk:
    """A real SQLite file and an alarm engine on it (no brokers: the virtual site is lifeline/virtual/site.py);
    restart() closes and reopens like a daemon restart."""

    def __init__(
        self, path: Path, ruleset: RuleSet | None = None, points: RiskPoints | None = None, **engine_args: float
    ) -> None:
        self.path = path
        self.points = points
        self.engine_args = engine_args
        self.conn = self._open()
        self.engine = AlarmEngine(self.conn, ruleset or rules(), points, **engine_args)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def restart(self, ruleset: RuleSet | None = None, commit: bool = True) -> AlarmEngine:
        if commit:
            self.engine.flush()  # as the daemon does before each commit
            self.conn.commit()
        self.conn.close()
        self.conn = self._open()
        self.engine = AlarmEngine(self.conn, ruleset or rules(), self.points, **self.engine_args)
        return self.engine

    def feed(
        self,
        device: str,
        cls: str,
        metric: str,
        values: list[float],
        t0: float = 0.0,
        dt: float = 1.0,
        position: tuple[float, float] | None = None,
    ) -> list[Transition]:
        out = []
        for i, v in enumerate(values):
            t = t0 + i * dt
            out += self.engine.observe(device, cls, metric, v, t, 1000.0 + t, position)
        return out


@pytest.fixture
def site(tmp_path: Path) -> Iterator[EngineOnDisk]:
    s = EngineOnDisk(tmp_path / "gateway.db")
    yield s
    s.conn.close()


def steps(transitions: list[Transition]) -> list[tuple[str, Level | None, Level | None]]:
    return [(t.event, t.prev, t.level) for t in transitions]


# ---------------------------------------------------------------------------------------------- lifecycle


def test_lifecycle_raised_escalated_de_escalated_cleared(site: EngineOnDisk) -> None:
    out = site.feed("gas-1", "gas", "ch4", [5, 22, 23, 30, 55, 56, 30, 18, 15, 1])
    assert steps(out) == [
        ("raised", None, YELLOW),
        ("escalated", YELLOW, ORANGE),
        ("escalated", ORANGE, RED),
        ("de-escalated", RED, ORANGE),
        ("de-escalated", ORANGE, YELLOW),
        ("de-escalated", YELLOW, BLUE),
        ("cleared", BLUE, None),
    ]
    assert len({t.alarm_id for t in out}) == 1
    first = out[0].body()
    assert first == {
        "id": out[0].alarm_id,
        "ev": "raised",
        "kind": "level",
        "dev": "gas-1",
        "cls": "gas",
        "metric": "ch4",
        "level": "yellow",
        "prev": None,
        "value": 23.0,
        "reading": 23.0,
        "rule": "gas.ch4",
        "rver": 1,
        "t_dev": 2.0,
        "t_gw": 1002.0,
        "resend": 0,
        "step": 0,
        "unit": "%LEL",
    }
    assert [t.step for t in out] == list(range(len(out)))  # numbered in the alarm's life
    assert out[-1].body()["level"] is None and out[-1].body()["prev"] == "blue"
    assert Transition.from_body(first) == out[0]
    assert site.engine.active() == []


def test_a_new_episode_gets_a_new_alarm_id(site: EngineOnDisk) -> None:
    first = site.feed("gas-1", "gas", "ch4", [30, 30, 1])
    second = site.feed("gas-1", "gas", "ch4", [30, 30, 1], t0=10)
    assert steps(first) == steps(second) == [("raised", None, ORANGE), ("cleared", ORANGE, None)]
    assert first[0].alarm_id == first[1].alarm_id != second[0].alarm_id


def test_devices_and_metrics_are_separate_alarms(site: EngineOnDisk) -> None:
    out = site.feed("gas-1", "gas", "ch4", [60, 60]) + site.feed("gas-2", "gas", "ch4", [22, 22])
    assert [(t.device, t.level) for t in out] == [("gas-1", RED), ("gas-2", YELLOW)]
    assert [(a.device, a.level) for a in site.engine.active()] == [("gas-1", RED), ("gas-2", YELLOW)]
    assert site.feed("gas-1", "gas", "temp", [99, 99]) == []


def test_engine_writes_but_never_commits(site: EngineOnDisk) -> None:
    site.conn.commit()
    raised = site.feed("gas-1", "gas", "ch4", [30, 30])
    assert raised and site.conn.in_transaction
    other = sqlite3.connect(site.path)
    try:
        assert other.execute("SELECT count(*) FROM alarm_active").fetchone() == (0,)
        site.conn.commit()
        assert other.execute("SELECT id FROM alarm_active").fetchall() == [(raised[0].alarm_id,)]
    finally:
        other.close()


def test_a_crash_before_commit_forgets_the_transition_with_the_outbox(site: EngineOnDisk) -> None:
    """Uncommitted alarm state rolls back with the outbox rows, so the alarm is raised again, not lost."""
    site.conn.commit()
    lost = site.feed("gas-1", "gas", "ch4", [30, 30])
    engine = site.restart(commit=False)
    assert engine.active() == []
    again = site.feed("gas-1", "gas", "ch4", [30, 30])
    assert steps(again) == steps(lost) == [("raised", None, ORANGE)]


def test_non_finite_input_is_refused_without_state_change(site: EngineOnDisk) -> None:
    site.feed("gas-1", "gas", "ch4", [30])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="value must be finite"):
            site.engine.observe("gas-1", "gas", "ch4", bad, 5.0, 1005.0)
    with pytest.raises(ValueError, match="device_time must be finite"):
        site.engine.observe("gas-1", "gas", "ch4", 30, float("nan"), 1005.0)
    assert steps(site.feed("gas-1", "gas", "ch4", [30], t0=6)) == [("raised", None, ORANGE)]


# ----------------------------------------------------------------------------------- rule kinds in the engine


def test_burst_main_pressure_drop_raises_a_rate_alarm(site: EngineOnDisk) -> None:
    out = site.feed("w-1", "water", "pressure", [400, 402, 398, 400, 330, 290, 290, 291], dt=10)
    assert [(t.rule_kind, t.event, t.level, t.value, t.rule) for t in out] == [
        ("rate", "raised", ORANGE, 72.0, "water.pressure.rate"),  # 402 -> 330
        ("rate", "escalated", RED, 112.0, "water.pressure.rate"),
    ]
    assert out[0].reading == 330.0 and out[0].unit == "kPa"
    later = site.feed("w-1", "water", "pressure", [290, 290], t0=200, dt=10)
    assert [(t.rule_kind, t.event, t.value) for t in later] == [("rate", "cleared", 0.0)]
    low = site.feed("w-1", "water", "pressure", [130, 45], t0=300, dt=30)
    assert [(t.rule_kind, t.event, t.level, t.value) for t in low] == [
        ("level", "raised", YELLOW, 130.0),
        ("level", "escalated", RED, 45.0),
        ("rate", "raised", ORANGE, 85.0),
    ]


def test_rain_accumulation_follows_the_rainstorm_signal_windows(site: EngineOnDisk) -> None:
    # 10 mm an hour, reported every 10 minutes: 50 mm by hour 5 -> blue (12 h) and yellow (6 h) windows
    out = site.feed("r-1", "rain", "rain", [10 / 6] * 36, dt=600)
    assert [(t.event, t.level) for t in out] == [("raised", YELLOW)]
    assert out[0].rule == "rain.rain.sum" and out[0].value == pytest.approx(50, abs=0.5)
    # then a cloudburst: 50 mm in the next hour puts 3 h over 50 (orange), and 100 in under 3 h (red)
    burst = site.feed("r-1", "rain", "rain", [50 / 6] * 12, t0=36 * 600, dt=600)
    assert [(t.event, t.level) for t in burst] == [("escalated", ORANGE), ("escalated", RED)]


def test_abs_rules_judge_tilt_in_either_direction(site: EngineOnDisk) -> None:
    out = site.feed("b-1", "bridge", "tilt_x", [0.001, -0.0045, -0.0038, -0.003])
    assert [(t.event, t.value, t.reading) for t in out] == [("raised", 0.0045, -0.0045), ("cleared", 0.003, -0.003)]


def test_boolean_cover_is_judged_as_one_and_zero(site: EngineOnDisk) -> None:
    out = site.feed("m-1", "drainage", "cover", [False, True, True, False])
    assert [(t.event, t.level, t.reading) for t in out] == [("raised", ORANGE, 1.0), ("cleared", None, 0.0)]


def test_device_override_replaces_the_class_rule(tmp_path: Path) -> None:
    ruleset = rules(gas__devices={"gas-9": {"ch4": {"levels": {"red": 80}, "clear": {"red": 70}, "for_samples": 1}}})
    s = EngineOnDisk(tmp_path / "db", ruleset)
    out = s.feed("gas-9", "gas", "ch4", [60, 60, 85])
    assert [(t.level, t.rule) for t in out] == [(RED, "gas.devices.gas-9.ch4")]
    assert [(t.level, t.rule) for t in s.feed("gas-1", "gas", "ch4", [60, 60])] == [(RED, "gas.ch4")]
    s.conn.close()


# --------------------------------------------------------------------------------------------- stale data


def test_silence_raises_then_escalates_and_a_reading_clears(site: EngineOnDisk) -> None:
    site.feed("gas-1", "gas", "ch4", [1])  # seen at gateway time 1000
    engine = site.engine
    assert engine.tick(1029) == []
    raised = engine.tick(1030)
    assert [(t.event, t.level, t.rule_kind, t.cause, t.value, t.metric) for t in raised] == [
        ("raised", YELLOW, "stale", "silence", 30.0, None)
    ]
    assert engine.tick(1050) == []
    assert steps(engine.tick(1100)) == [("escalated", YELLOW, ORANGE)]
    assert engine.tick(5000) == []
    cleared = site.feed("gas-1", "gas", "ch4", [1], t0=5000)
    assert [(t.event, t.cause, t.alarm_id) for t in cleared] == [("cleared", "reading", raised[0].alarm_id)]


def test_a_will_raises_stale_at_once_and_only_once(site: EngineOnDisk) -> None:
    site.feed("gas-1", "gas", "ch4", [1])
    out = site.engine.device_dead("gas-1", 1001.0)
    assert [(t.event, t.level, t.cause, t.rule) for t in out] == [("raised", ORANGE, "will", "gas.stale")]
    assert site.engine.device_dead("gas-1", 1002.0) == []  # the retained will, delivered again
    assert site.engine.tick(1050) == []
    assert site.engine.device_dead("ghost", 1003.0) == []  # never seen, class unknown
    assert steps(site.engine.device_dead("gas-5", 1003.0, "gas")) == [("raised", None, ORANGE)]
    assert site.engine.device_dead("d-1", 1003.0, "drone") == []  # no stale rule for drones
    engine = site.restart()
    assert engine.device_dead("gas-1", 1100.0) == [] and engine.tick(1100.0) == []
    assert [a.level for a in engine.active()] == [ORANGE, ORANGE]


def test_restart_counts_silence_from_the_restart_not_the_outage(site: EngineOnDisk) -> None:
    site.feed("gas-1", "gas", "ch4", [1])
    engine = site.restart()
    assert engine.tick(9000) == []  # the gateway was down; devices' messages are still queued
    assert steps(engine.tick(9030)) == [("raised", None, YELLOW)]


def test_a_restart_keeps_the_registry_s_id_of_each_stored_device(site: EngineOnDisk) -> None:
    """Ids read from the store are new strings; the engine keeps the registry's instead (one per device)."""
    site.feed("gas-1", "gas", "ch4", [1])
    site.feed("gas-2", "gas", "ch4", [1])
    site.engine.flush()
    site.conn.commit()
    registry = DeviceList([DeviceConfig("".join("gas-1"), "gas", bytes(32), None)])
    engine = AlarmEngine(site.conn, rules(), devices=registry)
    engine.tick(9000)
    stale = {t.device: t for t in engine.tick(9030)}
    assert sorted(stale) == ["gas-1", "gas-2"]
    assert stale["gas-1"].device is registry["gas-1"].id  # gas-2 is no longer registered: its stored id stays


# -------------------------------------------------------------------------------------- ack and re-send


def test_unacknowledged_alarms_are_resent_with_backoff(tmp_path: Path) -> None:
    s = EngineOnDisk(tmp_path / "db", resend_first_s=10.0, resend_max_s=40.0)
    raised = s.feed("gas-1", "gas", "ch4", [30, 30])  # raised at gateway time 1001
    due_times: list[int] = []
    for now in range(1001, 1200):
        for t in s.engine.due_resends(float(now)):
            assert t.resend == len(due_times) + 1
            assert t.body() == {**raised[0].body(), "resend": t.resend}
            due_times.append(now)
    assert due_times == [1011, 1031, 1071, 1111, 1151, 1191]  # +10, then 20, 40, capped at 40
    assert s.engine.acknowledge([(raised[0].alarm_id, 0), ("no-such-alarm", 0)], 1195.0) == {raised[0].alarm_id: True}
    assert s.engine.due_resends(9999.0) == []
    assert s.engine.acknowledge([("no-such-alarm", None)], 1195.0) == {}
    s.conn.close()


def test_escalation_needs_a_new_acknowledgement(site: EngineOnDisk) -> None:
    raised = site.feed("gas-1", "gas", "ch4", [30, 30])
    assert site.engine.acknowledge([(raised[0].alarm_id, 0)], 1002.0) == {raised[0].alarm_id: True}
    assert site.engine.due_resends(2000.0) == []
    down = site.feed("gas-1", "gas", "ch4", [18], t0=10)  # de-escalation keeps the acknowledgement
    assert steps(down) == [("de-escalated", ORANGE, YELLOW)] and site.engine.due_resends(3000.0) == []
    up = site.feed("gas-1", "gas", "ch4", [60, 60], t0=20)  # escalated at gateway time 1021
    assert steps(up) == [("escalated", YELLOW, RED)]
    assert site.engine.due_resends(1080.0) == []
    again = site.engine.due_resends(1081.0)
    assert [(t.event, t.level, t.resend) for t in again] == [("escalated", RED, 1)]
    assert site.engine.active()[0].acked_at is None


def test_an_ack_of_a_step_the_alarm_has_moved_past_leaves_it_unacknowledged(site: EngineOnDisk) -> None:
    """The officer acknowledged the orange the district held while the gas went red here: the ack, arriving
    after the escalation, acknowledged the red no one had seen, and the gateway stopped re-sending it. An ack
    covers the step it names and no later one; one without a step (a district from before them) covers all."""
    a = site.feed("gas-1", "gas", "ch4", [30, 30])[0]
    up = site.feed("gas-1", "gas", "ch4", [60, 60], t0=20)
    assert [(t.event, t.step) for t in up] == [("escalated", 1)]
    assert site.engine.acknowledge([(a.alarm_id, 0)], 1022.0) == {a.alarm_id: False}
    assert [(t.event, t.level, t.resend) for t in site.engine.due_resends(1081.0)] == [("escalated", RED, 1)]
    assert site.engine.acknowledge([(a.alarm_id, 0), (a.alarm_id, 1)], 1090.0) == {a.alarm_id: True}
    assert site.engine.due_resends(9999.0) == []
    assert site.engine.acknowledge([(a.alarm_id, 0)], 1100.0) == {a.alarm_id: True}  # it stays acknowledged
    b = site.feed("gas-2", "gas", "ch4", [30, 30])[0]
    site.feed("gas-2", "gas", "ch4", [60, 60], t0=20)
    assert site.engine.acknowledge([(b.alarm_id, None)], 1100.0) == {b.alarm_id: True}


def test_an_ack_in_flight_while_the_alarm_goes_down_or_is_inhibited_covers_it(tmp_path: Path) -> None:
    """The officer's ack of the orange, in flight while the gas fell to yellow or the device went silent here,
    was refused (the alarm had moved past its step) and the site re-sent until the district answered a resend a
    minute later. Going down asks no fresh ack: an ack covers the alarm unless it rose since the acked step."""
    s = EngineOnDisk(tmp_path / "db", resend_first_s=10.0, resend_max_s=40.0)
    down = s.feed("gas-1", "gas", "ch4", [30, 30])[0]  # orange, step 0
    assert steps(s.feed("gas-1", "gas", "ch4", [18], t0=10)) == [("de-escalated", ORANGE, YELLOW)]
    quiet = s.feed("gas-2", "gas", "ch4", [30, 30])[0]
    assert [t.event for t in s.engine.tick(1031.0) if t.alarm_id == quiet.alarm_id] == ["inhibited"]
    assert s.engine.acknowledge([(down.alarm_id, 0), (quiet.alarm_id, 0)], 1032.0) == {
        down.alarm_id: True, quiet.alarm_id: True}
    assert [t.alarm_id for now in range(1032, 1200) for t in s.engine.due_resends(float(now))
            if t.rule_kind == "level"] == []
    assert [t.event for t in s.feed("gas-2", "gas", "ch4", [30], t0=300)] == ["cleared", "resumed"]
    assert [t.alarm_id for t in s.engine.due_resends(9999.0) if t.rule_kind == "level"] == []
    s.conn.close()


def test_an_ack_of_a_step_before_an_escalation_stays_refused_once_the_alarm_is_down_again(
        site: EngineOnDisk) -> None:
    """Red since the orange the officer saw, then orange again: the red was never acknowledged, so an ack of the
    first orange is still refused, across a restart; one of the red or later is taken."""
    a = site.feed("gas-1", "gas", "ch4", [30, 30])[0]
    site.feed("gas-1", "gas", "ch4", [60, 60], t0=10)  # red, step 1
    assert [(t.event, t.step) for t in site.feed("gas-1", "gas", "ch4", [30], t0=20)] == [("de-escalated", 2)]
    engine = site.restart()
    assert engine.acknowledge([(a.alarm_id, 0)], 1030.0) == {a.alarm_id: False}
    assert engine.acknowledge([(a.alarm_id, 1)], 1031.0) == {a.alarm_id: True}


def test_an_alarm_stored_before_its_rise_was_kept_takes_an_ack_of_its_latest_step(tmp_path: Path) -> None:
    """A store made before alarm_active.rose_step: the column is added at start, and an alarm stored then, whose
    last rise is not known, takes an ack of its latest transition or later, as it did before."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE alarm_active (
        id TEXT PRIMARY KEY, scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL,
        level INTEGER NOT NULL, raised_at REAL NOT NULL, acked_at REAL, resends INTEGER NOT NULL, next_resend REAL,
        last TEXT NOT NULL, UNIQUE (scope, subject, metric, kind))""")
    s = EngineOnDisk(tmp_path / "new.db")
    s.feed("gas-1", "gas", "ch4", [30, 30])
    s.feed("gas-1", "gas", "ch4", [18], t0=10)  # yellow, step 1
    s.engine.flush()
    s.conn.commit()
    row = s.conn.execute("SELECT id, scope, subject, metric, kind, level, raised_at, acked_at, resends, "
                         "next_resend, last FROM alarm_active").fetchone()
    s.conn.close()
    old.execute("INSERT INTO alarm_active VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    old.commit()
    old.close()
    s = EngineOnDisk(path)
    assert s.engine.acknowledge([(row[0], 0)], 1020.0) == {row[0]: False}
    assert s.engine.acknowledge([(row[0], 1)], 1021.0) == {row[0]: True}
    s.restart()
    assert [(a.id, a.acked_at) for a in s.engine.active()] == [(row[0], 1021.0)]
    s.conn.close()


def test_acknowledgement_and_schedule_survive_restart(site: EngineOnDisk) -> None:
    a = site.feed("gas-1", "gas", "ch4", [30, 30])[0]
    b = site.feed("gas-2", "gas", "ch4", [60, 60])[0]
    site.engine.acknowledge([(a.alarm_id, None)], 1005.0)
    assert [t.alarm_id for t in site.engine.due_resends(1062.0)] == [b.alarm_id]
    engine = site.restart()
    assert engine.due_resends(1100.0) == []
    assert [(t.alarm_id, t.resend) for t in engine.due_resends(1182.0)] == [(b.alarm_id, 2)]
    assert {a.id: a.acked_at for a in engine.active()} == {a.alarm_id: 1005.0, b.alarm_id: None}


def test_one_acknowledgement_names_several_alarms(site: EngineOnDisk) -> None:
    """A district message may acknowledge a page of alarms at once; each named alarm stops re-sending and
    the others go on."""
    a = site.feed("gas-1", "gas", "ch4", [30, 30])[0]
    b = site.feed("gas-2", "gas", "ch4", [60, 60])[0]
    c = site.feed("gas-3", "gas", "ch4", [30, 30])[0]
    assert (site.engine.acknowledge([(a.alarm_id, 0), (c.alarm_id, 0), (a.alarm_id, 0), ("gone", 0)], 1005.0)
            == {a.alarm_id: True, c.alarm_id: True})
    assert {x.id: x.acked_at for x in site.engine.active()} == {a.alarm_id: 1005.0, b.alarm_id: None,
                                                                c.alarm_id: 1005.0}


# ---------------------------------------------------------------------------------------------- restart


def test_restart_neither_re_raises_nor_forgets(site: EngineOnDisk) -> None:
    raised = site.feed("gas-1", "gas", "ch4", [30, 30])
    pending = site.feed("gas-2", "gas", "ch4", [60])  # one sample of two: pending
    assert pending == []
    engine = site.restart()
    assert [(a.id, a.level, a.device, a.metric) for a in engine.active()] == [
        (raised[0].alarm_id, ORANGE, "gas-1", "ch4")
    ]
    assert site.feed("gas-1", "gas", "ch4", [30, 30], t0=10) == []
    assert steps(site.feed("gas-2", "gas", "ch4", [60], t0=10)) == [("raised", None, RED)]
    cleared = site.feed("gas-1", "gas", "ch4", [1], t0=20)
    assert [(t.event, t.alarm_id) for t in cleared] == [("cleared", raised[0].alarm_id)]


def test_rate_and_sum_windows_survive_restart(site: EngineOnDisk) -> None:
    site.feed("w-1", "water", "pressure", [400, 400], dt=10)
    site.feed("r-1", "rain", "rain", [10] * 9, dt=600)
    site.restart()
    assert [(t.rule_kind, t.level) for t in site.feed("w-1", "water", "pressure", [290], t0=20)] == [("rate", RED)]
    assert [(t.rule_kind, t.level) for t in site.feed("r-1", "rain", "rain", [10], t0=5400)] == [("sum", RED)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 70), st.booleans()), min_size=1, max_size=40),
    st.sampled_from([("gas", "ch4"), ("water", "pressure"), ("rain", "rain")]),
)
def test_restarts_anywhere_change_nothing(script: list[tuple[float, bool]], target: tuple[str, str]) -> None:
    """The same readings give the same transitions whether or not the gateway restarts between them, and
    every transition is a valid step from the previous level."""
    cls, metric = target
    scale = {"gas": 1.0, "water": 5.0, "rain": 1.0}[cls]
    with tempfile.TemporaryDirectory() as tmp:
        calm, bumpy = EngineOnDisk(Path(tmp) / "calm.db"), EngineOnDisk(Path(tmp) / "bumpy.db")
        got: dict[str, list[Transition]] = {"calm": [], "bumpy": []}
        for i, (value, restart) in enumerate(script):
            if restart:
                bumpy.restart()
            for name, s in (("calm", calm), ("bumpy", bumpy)):
                got[name] += s.engine.observe("dev-1", cls, metric, value * scale, i * 600.0, 1000.0 + i)
        calm.conn.close()
        bumpy.conn.close()

    def shape(ts: list[Transition]) -> list[tuple[Any, ...]]:
        return [(t.event, t.rule_kind, t.prev, t.level, t.value) for t in ts]

    assert shape(got["calm"]) == shape(got["bumpy"])
    levels: dict[str, Level | None] = {}
    for t in got["bumpy"]:
        prev = levels.get(t.rule_kind)
        assert t.prev == prev and t.level != prev
        expected = (
            "raised"
            if prev is None
            else "cleared"
            if t.level is None
            else "escalated"
            if t.level > prev
            else "de-escalated"
        )
        assert t.event == expected
        levels[t.rule_kind] = t.level


@pytest.mark.parametrize("target", [("gas", "ch4"), ("water", "pressure")])
@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(-2, 3), st.booleans()), min_size=1, max_size=60))
def test_a_level_rule_judges_every_reading_as_judge_does(
    target: tuple[str, str], script: list[tuple[int, int, bool]]
) -> None:
    """The engine skips judge() for a reading short of every level with no run and no alarm; the transitions
    and the pending runs must be what judge() applied to every reading gives, late readings left out, across
    restarts. Values sit on, just above and just below each level and clear level, and times step back."""
    cls, metric = target
    rule = rules().metric_rules(cls, "dev-1", metric)
    threshold = rule.level if rule is not None else None
    assert threshold is not None
    edges = sorted({*threshold.levels.values(), *threshold.clear.values()})
    values = [v + d for v in edges for d in (-0.5, 0.0, 0.5)] + [0.0, edges[-1] * 2]
    level: Level | None = None
    runs: Any = {}
    latest: float | None = None
    expected: list[tuple[Level | None, Level | None]] = []
    t = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        s = EngineOnDisk(Path(tmp) / "gateway.db")
        got: list[tuple[Level | None, Level | None]] = []
        for pick, step, restart in script:
            value = values[pick % len(values)]
            t += step
            if restart:
                s.restart()
            got += [(x.prev, x.level) for x in s.engine.observe("dev-1", cls, metric, value, t, 1000.0 + t)
                    if x.rule_kind == "level"]
            if latest is not None and t < latest:
                continue  # late: the engine judges nothing older than the newest
            verdict = judge(threshold, level, runs, dict.fromkeys(threshold.levels, value), t)
            runs, latest = verdict.runs, t
            if verdict.level != level:
                expected.append((level, verdict.level))
                level = verdict.level
        s.restart()
        stored = s.conn.execute("SELECT state FROM alarm_track WHERE subject = 'dev-1' AND metric = ? AND kind = "
                                "'level'", (metric,)).fetchone()
        s.conn.close()
    assert got == expected
    held = Track.from_json(stored[0])
    assert dict(held.runs) == dict(runs) and held.latest == latest


# ------------------------------------------------------------------------------------------ rule changes


def test_replaced_rules_apply_to_the_next_reading(site: EngineOnDisk) -> None:
    raised = site.feed("gas-1", "gas", "ch4", [60, 60])
    with pytest.raises(RuleError, match=r"^version: must be greater than the active version 1$"):
        site.engine.replace_rules(rules(1), 2000.0)
    newer = rules(2, gas__ch4__levels={"orange": 40, "red": 70}, gas__ch4__clear={"orange": 30, "red": 65})
    assert site.engine.replace_rules(newer, 2000.0) == []
    assert site.engine.ruleset.version == 2
    out = site.feed("gas-1", "gas", "ch4", [60], t0=10)
    assert [(t.event, t.level, t.rule_version, t.alarm_id) for t in out] == [
        ("de-escalated", ORANGE, 2, raised[0].alarm_id)
    ]


def test_a_removed_rule_clears_its_alarms(site: EngineOnDisk) -> None:
    raised = site.feed("gas-1", "gas", "ch4", [60, 60])
    site.engine.tick(1002.0)
    out = site.engine.replace_rules(rules(2, gas__ch4=None), 2000.0)
    assert [(t.event, t.cause, t.alarm_id, t.rule_version) for t in out] == [
        ("cleared", "rule-removed", raised[0].alarm_id, 2)
    ]
    assert site.engine.active() == []
    assert site.feed("gas-1", "gas", "ch4", [60, 60], t0=10) == []


@pytest.mark.parametrize("page", [gateway.alarms.SWITCH_PAGE, 1, 2])
def test_a_changed_rule_restarts_pending(site: EngineOnDisk, page: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored track is looked at, however many pages they take (one track a page at the smallest)."""
    monkeypatch.setattr(gateway.alarms, "SWITCH_PAGE", page)
    devices = ["gas-1", "gas-2", "gas-3"]
    for dev in devices:
        site.feed(dev, "gas", "ch4", [60])
        site.feed(dev, "gas", "co", [1])
    site.engine.flush()  # into alarm_track, where the walk reads them
    site.conn.commit()
    site.engine.replace_rules(rules(2, gas__ch4__for_samples=3), 2000.0)
    for dev in devices:
        assert site.feed(dev, "gas", "ch4", [60, 60], t0=10) == []
        assert steps(site.feed(dev, "gas", "ch4", [60], t0=20)) == [("raised", None, RED)]


def test_a_device_given_another_class_clears_the_alarms_that_class_has_no_rule_for(site: EngineOnDisk) -> None:
    """The site's device list corrected a device's class (a reload, or a restart on a new file): its next
    message is judged by the new class, and an alarm of a rule the new class lacks is cleared at once, as
    when a rule is removed, rather than left active with nothing to clear it."""
    raised = site.feed("gas-1", "gas", "ch4", [60, 60])
    assert steps(raised) == [("raised", None, RED)]
    engine = site.restart()
    out = site.feed("gas-1", "water", "ch4", [60], t0=10)
    assert [(t.event, t.cause, t.alarm_id, t.device_class) for t in out] == [
        ("cleared", "rule-removed", raised[0].alarm_id, "gas")]
    assert engine.active() == []
    assert site.feed("gas-1", "water", "pressure", [40, 40], t0=20) != []  # judged as water from now on


def test_a_device_given_another_class_starts_its_pending_runs_again(tmp_path: Path) -> None:
    site = EngineOnDisk(tmp_path / "a.db", rules(drone__ch4__for_samples=2))
    assert site.feed("gas-1", "gas", "ch4", [60]) == []  # one of gas's two samples
    assert site.feed("gas-1", "drone", "ch4", [60], t0=10) == []  # the drone rule's first, not its second
    assert steps(site.feed("gas-1", "drone", "ch4", [60], t0=20)) == [("raised", None, RED)]


def test_the_newest_rule_set_survives_restart(site: EngineOnDisk) -> None:
    site.engine.replace_rules(rules(5, gas__ch4__for_samples=1), 2000.0)
    engine = site.restart(rules(4))
    assert engine.ruleset.version == 5
    assert steps(site.feed("gas-1", "gas", "ch4", [60])) == [("raised", None, RED)]
    engine = site.restart(rules(6, gas__ch4=None))  # a newer file wins; its removed rule clears at tick
    assert engine.ruleset.version == 6
    assert [(t.event, t.cause) for t in engine.tick(3000.0)] == [("cleared", "rule-removed")]


# ------------------------------------------------------------------------------------------- risk points


@pytest.fixture
def patrol(tmp_path: Path) -> Iterator[EngineOnDisk]:
    s = EngineOnDisk(tmp_path / "db", points=RiskPoints.parse([STATION, RESERVOIR]))
    yield s
    s.conn.close()


def test_a_drone_reading_near_a_risk_point_is_judged_by_its_class(patrol: EngineOnDisk) -> None:
    near = (29.5010, 106.5000)  # about 111 m from the station
    first = patrol.feed("drone-1", "drone", "ch4", [30], position=near)
    assert first == []  # gas rules want two samples; drone rules alone would have raised
    out = patrol.feed("drone-1", "drone", "ch4", [30], t0=1, position=near)
    body = out[0].body()
    assert (body["ev"], body["level"], body["cls"], body["dev"], body["rule"]) == (
        "raised",
        "orange",
        "gas",
        "drone-1",
        "gas.ch4",
    )
    assert body["point"] == "station-7" and body["pos"] == [29.501, 106.5]
    # another drone over the same station continues the same point alarm
    more = patrol.feed("drone-2", "drone", "ch4", [60, 60], t0=2, position=near)
    assert [(t.event, t.alarm_id, t.device) for t in more] == [("escalated", out[0].alarm_id, "drone-2")]


def test_a_drone_reading_out_of_range_uses_the_drone_rules(patrol: EngineOnDisk) -> None:
    far = (29.5500, 106.5000)
    out = patrol.feed("drone-1", "drone", "ch4", [30], position=far)
    body = out[0].body()
    assert (body["level"], body["cls"], body["rule"], body["pos"]) == ("yellow", "drone", "drone.ch4", [29.55, 106.5])
    assert "point" not in body
    # over a reservoir (water rules have no ch4) the drone rules judge it too, without the point
    over_water = patrol.feed("drone-3", "drone", "ch4", [30], position=(29.6001, 106.6))
    assert [(t.rule, t.point) for t in over_water] == [("drone.ch4", None)]


def test_risk_point_classes_must_have_rules(tmp_path: Path) -> None:
    points = RiskPoints.parse([STATION, {**RESERVOIR, "class": "reservoir"}])
    with pytest.raises(RuleError, match=r"^riskpoints\.reservoir-2\.class: the rule set has no class 'reservoir'$"):
        EngineOnDisk(tmp_path / "db", points=points)
    s = EngineOnDisk(tmp_path / "db2", points=RiskPoints.parse([STATION]))
    with pytest.raises(RuleError, match=r"riskpoints\.station-7\.class"):
        s.engine.replace_rules(rules(2, gas=None), 2000.0)
    assert s.engine.ruleset.version == 1
    s.conn.close()


def test_rules_from_the_district_with_a_class_of_no_device_and_no_point_are_refused(tmp_path: Path) -> None:
    """A district rule set with water's rules under "watr" was applied: every water main lost its rules and
    the district was told the set was in force."""
    s = EngineOnDisk(tmp_path / "db", points=RiskPoints.parse([STATION]))
    with pytest.raises(RuleError, match=r"^watr: "):
        s.engine.replace_rules(rules(2, watr=RULES["water"], water=None), 2000.0)
    assert s.engine.ruleset.version == 1
    s.conn.close()


def test_the_shipped_rules_run_in_the_engine(tmp_path: Path) -> None:
    s = EngineOnDisk(tmp_path / "db", default_ruleset(), RiskPoints.parse([STATION]))
    assert steps(s.feed("gas-1", "gas", "ch4", [5, 21, 22])) == [("raised", None, YELLOW)]
    assert steps(s.feed("m-1", "drainage", "cover", [True])) == [("raised", None, ORANGE)]
    burst = s.feed("w-1", "water", "pressure", [300000, 300000, 190000], dt=10)
    assert [t.rule for t in burst] == ["water.pressure.rate"]
    s.conn.close()


def test_a_late_older_reading_never_clears_or_lowers_a_newer_alarm(site: EngineOnDisk) -> None:
    # The node sends its fresh alarm pack first; routine readings taken earlier arrive after it.
    raised = site.feed("gas-1", "gas", "ch4", [55, 56], t0=100)
    assert steps(raised) == [("raised", None, RED)]
    assert site.feed("gas-1", "gas", "ch4", [2, 3, 2], t0=90) == []
    assert [a.level for a in site.engine.active()] == [RED]
    site.restart()
    assert site.engine.observe("gas-1", "gas", "ch4", 1.0, 95.0, 2000.0) == []
    # Readings newer than the alarm are judged as usual.
    assert steps(site.feed("gas-1", "gas", "ch4", [1, 1], t0=102))[-1] == ("cleared", RED, None)


def test_a_late_older_reading_does_not_disturb_a_rate_window(site: EngineOnDisk) -> None:
    out = site.feed("w-1", "water", "pressure", [400, 400, 290], dt=10)
    assert [(t.rule_kind, t.level) for t in out] == [("rate", RED)]
    assert site.feed("w-1", "water", "pressure", [400], t0=5) == []
    assert {a.level for a in site.engine.active()} == {RED}


# ------------------------------------------------------------------------------------------- late readings


def test_a_late_rain_report_counts_in_its_own_bin(site: EngineOnDisk) -> None:
    """Rain that fell during an outage still counts (docs/rules.md): a report older than the newest adds its
    amount to its own bin, and the windows still end at the newest report."""
    raised = site.feed("r-1", "rain", "rain", [30, 30], dt=600)  # 60 mm in 10 minutes: 50 mm in 3 h is orange
    assert [(t.event, t.level, t.value) for t in raised] == [("raised", ORANGE, 60.0)]
    assert site.engine.observe("r-1", "rain", "rain", 0.5, 300.0, 2000.0) == []  # late, and it counts
    assert [(a.level, a.last.value) for a in site.engine.active()] == [(ORANGE, 60.0)]
    later = site.feed("r-1", "rain", "rain", [0.0], t0=3 * 3600 + 1200)  # 3 h window empty, 6 h holds 60.5
    assert [(t.event, t.level, t.value) for t in later] == [("de-escalated", YELLOW, 60.5)]
    # the same two reports arriving newest first raise the same alarm
    backwards = site.feed("r-2", "rain", "rain", [30], t0=600) + site.feed("r-2", "rain", "rain", [30])
    assert [(t.event, t.level, t.value, t.device_time) for t in backwards] == [("raised", ORANGE, 60.0, 0.0)]
    # a report older than the longest window (12 h before the newest) counts nowhere and wipes nothing
    assert site.engine.observe("r-3", "rain", "rain", 10.0, 50000.0, 2000.0) == []
    assert site.engine.observe("r-3", "rain", "rain", 100.0, 50000.0 - 43200 - 600, 2001.0) == []
    assert steps(site.feed("r-3", "rain", "rain", [40.0], t0=50600)) == [("raised", None, ORANGE)]


def test_a_restart_keeps_the_newest_judged_time(site: EngineOnDisk) -> None:
    """Readings older than the newest judged are not judged, whether or not the gateway restarted between
    them: the newest judged time survives a restart even when no alarm is up."""
    assert site.feed("gas-1", "gas", "ch4", [3, 3], t0=100, dt=100) == []
    assert site.feed("w-1", "water", "pressure", [300, 300], t0=100, dt=100) == []
    site.restart()
    assert site.feed("gas-1", "gas", "ch4", [60, 60], t0=150, dt=10) == []
    assert site.feed("w-1", "water", "pressure", [40], t0=150) == []  # a backlog's low reading: no false alarm
    assert site.engine.active() == []
    assert steps(site.feed("gas-1", "gas", "ch4", [60, 60], t0=201)) == [("raised", None, RED)]


def test_a_reading_stamped_before_the_newest_is_late_whatever_the_clock_did(site: EngineOnDisk) -> None:
    """A device clock set back cannot be told from a late backlog reading, and the late reading wins
    (docs/rules.md): nothing starts again; level and rate rules skip it, sum rules count it."""
    assert site.feed("gas-1", "gas", "ch4", [60], t0=100) == []
    assert site.engine.observe("gas-1", "gas", "ch4", 1.0, 50.0, 1101.0) == []  # does not break the run
    assert steps(site.feed("gas-1", "gas", "ch4", [60], t0=101)) == [("raised", None, RED)]
    assert site.feed("w-1", "water", "pressure", [400], t0=100) == []
    assert site.engine.observe("w-1", "water", "pressure", 300.0, 50.0, 1101.0) == []  # does not empty the window
    assert [(t.rule_kind, t.level, t.value) for t in site.feed("w-1", "water", "pressure", [290], t0=110)] == [
        ("rate", RED, 110.0)
    ]
    assert site.feed("r-1", "rain", "rain", [30], t0=1000) == []
    assert [(t.level, t.value) for t in site.feed("r-1", "rain", "rain", [30], t0=400)] == [(ORANGE, 60.0)]


def test_a_value_equal_to_a_level_reaches_it_and_one_equal_to_its_clear_level_clears(site: EngineOnDisk) -> None:
    """Levels are reached (docs/rules.md): a value equal to a level enters it; a level is held only while
    the value is strictly beyond its clear level. The same for every kind of rule."""
    assert steps(site.feed("gas-1", "gas", "ch4", [25, 25])) == [("raised", None, ORANGE)]
    assert steps(site.feed("gas-2", "gas", "ch4", [24.999, 24.999])) == [("raised", None, YELLOW)]
    assert site.feed("gas-1", "gas", "ch4", [20.001], t0=10) == []
    assert steps(site.feed("gas-1", "gas", "ch4", [20], t0=11)) == [("de-escalated", ORANGE, YELLOW)]
    assert steps(site.feed("w-1", "water", "pressure", [140])) == [("raised", None, YELLOW)]  # below: 140 kPa
    assert steps(site.feed("w-1", "water", "pressure", [149.999, 150], t0=1000)) == [("cleared", YELLOW, None)]
    rate = site.feed("w-2", "water", "pressure", [400, 350], dt=10)  # a fall of exactly 50
    assert [(t.rule_kind, t.level, t.value) for t in rate] == [("rate", ORANGE, 50.0)]
    assert [(t.level, t.value) for t in site.feed("r-1", "rain", "rain", [25, 25], dt=600)] == [(ORANGE, 50.0)]


# -------------------------------------------------------------------------------------------- inhibition


def test_a_silent_or_dead_device_inhibits_its_sensor_alarms_until_fresh_readings_resolve_them(tmp_path: Path) -> None:
    """While a device is stale or dead its own sensor alarms are unknown: one `inhibited` transition says so
    and they are not re-sent as live. Fresh readings resolve them: `resumed` where the level holds, the
    usual transition where it does not (Alertmanager's inhibit rules are the anchor; docs/rules.md)."""
    s = EngineOnDisk(tmp_path / "db", resend_first_s=10.0, resend_max_s=40.0)
    raised = s.feed("gas-1", "gas", "ch4", [30, 30])  # orange, gateway time 1001
    assert [(t.event, t.resend) for t in s.engine.due_resends(1011.0)] == [("raised", 1)]
    out = s.engine.tick(1031.0)
    assert [(t.event, t.rule_kind, t.device, t.prev, t.level, t.cause) for t in out] == [
        ("raised", "stale", "gas-1", None, YELLOW, "silence"),
        ("inhibited", "level", "gas-1", ORANGE, ORANGE, "silence"),
    ]
    inhibited = out[1].body()
    assert inhibited == {**raised[0].body(), "ev": "inhibited", "prev": "orange", "t_gw": 1031.0, "cause": "silence",
                         "step": raised[0].step + 1}
    assert [(a.last.rule_kind, a.inhibited) for a in s.engine.active()] == [("level", True), ("stale", False)]
    assert [(t.event, t.rule_kind) for t in s.engine.tick(1101.0)] == [("escalated", "stale")]  # inhibited once
    resent = [t.rule_kind for now in range(1031, 1300) for t in s.engine.due_resends(float(now))]
    assert resent and set(resent) == {"stale"}  # the unknown level alarm is not re-sent as if live
    s.restart()
    assert [a.inhibited for a in s.engine.active() if a.metric == "ch4" and a.device == "gas-1"] == [True]
    back = s.feed("gas-1", "gas", "ch4", [25], t0=300)  # gateway time 1300; 25 %LEL still holds orange
    assert [(t.event, t.rule_kind, t.prev, t.level, t.value, t.cause) for t in back] == [
        ("cleared", "stale", ORANGE, None, None, "reading"),
        ("resumed", "level", ORANGE, ORANGE, 25.0, None),
    ]
    assert back[1].alarm_id == raised[0].alarm_id
    assert [t.resend for t in s.engine.due_resends(1310.0) if t.device == "gas-1"] == [1]  # live again
    assert s.feed("gas-1", "gas", "ch4", [25], t0=301) == []

    # a will: inhibited at once; the device's first fresh reading clears what no longer holds
    s.feed("gas-3", "gas", "ch4", [60, 60], t0=400)
    died = s.engine.device_dead("gas-3", 1402.0)
    assert [(t.event, t.level, t.cause) for t in died] == [("raised", ORANGE, "will"), ("inhibited", RED, "will")]
    assert [(t.event, t.rule_kind) for t in s.feed("gas-3", "gas", "ch4", [1], t0=500)] == [
        ("cleared", "stale"), ("cleared", "level")
    ]
    # a will inhibits a device whose class has no stale rule too
    assert steps(s.feed("d-1", "drone", "ch4", [30], t0=600)) == [("raised", None, YELLOW)]
    assert [(t.event, t.cause) for t in s.engine.device_dead("d-1", 1601.0, "drone")] == [("inhibited", "will")]
    assert [t.event for t in s.feed("d-1", "drone", "ch4", [55], t0=700)] == ["escalated"]
    assert [a.inhibited for a in s.engine.active() if a.device == "d-1"] == [False]
    s.conn.close()
