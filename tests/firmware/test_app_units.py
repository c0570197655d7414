"""The firmware's pure-logic pieces (filters, pre-alarm levels, config checks), exercised directly. The
modules are MicroPython-clean and import unchanged under CPython; the virtual-device tests run them on
MicroPython end to end."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lifeline import upy

sys.path.insert(0, str(upy.FIRMWARE / "lib"))
from app import config
from app.checks import check_filters, check_level
from app.filters import Filter, Level

PROFILES = ("gas", "water", "drainage", "bridge", "rain", "drone")


def run(f: Filter, values: list[Any], step_ms: int = 1000) -> list[Any]:
    out = []
    for i, v in enumerate(values):
        t = f.transform(v)
        out.append(t if f.send(t, i * step_ms) else None)
    return out


def test_deadband_passes_changes_of_at_least_delta() -> None:
    assert run(Filter([{"delta": 1}]), [5, 5.5, 6.0, 6.2, 4.9]) == [5, None, 6.0, None, 4.9]


def test_heartbeat_sends_the_unchanged_value_once_due() -> None:
    f = Filter([{"delta": 1}, {"heartbeat": 3}])
    assert run(f, [5, 5, 5, 5, 5, 5, 5]) == [5, None, None, 5, None, None, 5]


def test_transforms_apply_in_order_before_the_gates() -> None:
    f = Filter([{"multiply": 2}, {"offset": 1}, {"q": 0.25}])
    assert run(f, [1.1]) == [3.25]
    med = Filter([{"median": 3}])
    assert run(med, [1, 100, 2, 3]) == [1, 1, 2, 3]


def test_throttle_and_boolean_any_change() -> None:
    assert run(Filter([{"throttle": 2}]), [1, 2, 3, 4]) == [1, None, 3, None]
    assert run(Filter([{"delta": 0}]), [False, False, True, True, False]) == [False, None, True, None, False]


def test_levels_with_hysteresis() -> None:
    up = Level({"above": 10, "hyst": 2})
    assert [up.step(v) for v in (5, 10, 9, 8.5, 8, 12)] == [0, 1, 0, 0, -1, 1]
    down = Level({"below": 200, "hyst": 20})
    assert [down.step(v) for v in (300, 199, 210, 221)] == [0, 1, 0, -1]
    cover = Level({"is": True})
    assert [cover.step(v) for v in (False, True, True, False)] == [0, 1, 0, -1]


@pytest.mark.parametrize(("steps", "error"), [
    ([{"deltaa": 1}], "unknown step"), ([{"delta": 1, "q": 1}], "one-key"), ([{"median": 0}], "median"),
    ([{"clamp": [3, 1]}], "clamp"), ({"delta": 1}, "list"), ([{"heartbeat": -1}], "heartbeat"),
])
def test_bad_filters_are_named(steps: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_filters(steps)


def test_bad_levels_are_named() -> None:
    for bad in ({"above": 1, "below": 2}, {"above": "x"}, {"above": 1, "hyst": -1}, {"above": 1, "when": 2},
                {"is": True, "ev": 3}):
        with pytest.raises(ValueError, match="prealarm"):
            check_level(bad)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("steps", [[{"offset": NAN}], [{"multiply": INF}], [{"multiply": 1e308}, {"q": 0.0625}],
                                   [{"clamp": [-INF, 5]}], [{"median": INF}], [{"delta": 10**400}],
                                   [{"q": 1e-300}]])
def test_filter_values_past_what_a_profile_keeps_are_refused(steps: Any) -> None:
    """A set_filters command saved such a profile, acked ok, and the next boot could not read it (JSON has no
    inf or NaN), or the sampler's round() overflowed at every reading; {"median": inf} raised OverflowError,
    which the command handler did not catch, so there was no ack at all."""
    with pytest.raises(ValueError, match="bad argument"):
        check_filters(steps)


@pytest.mark.parametrize("level", [{"above": INF}, {"below": NAN}, {"above": 1, "fall": 1, "fall_s": 1e308},
                                   {"is": b"x"}, {"is": None}, {"is": [1]}])
def test_level_values_past_what_a_profile_keeps_are_refused(level: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="prealarm"):
        check_level(level)
    assert check_level({"is": "open"}) and check_level({"is": True}) and check_level({"is": 3})


@pytest.mark.parametrize(("key", "value"), [("report_s", 1e308), ("health_s", INF), ("report_s", 86401)])
def test_intervals_past_a_day_are_refused(key: str, value: float) -> None:
    """report_s 1e308 passed, and int(x * 1000) overflowed in App.configure at every boot, safe mode too."""
    p = json.loads((upy.FIRMWARE / "profiles" / "gas.json").read_text())
    p[key] = value
    with pytest.raises(config.ConfigError, match=key):
        config.check_profile(p)


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_pass_the_boot_check(name: str) -> None:
    p = json.loads((upy.FIRMWARE / "profiles" / f"{name}.json").read_text())
    assert config.check_profile(p)["name"] == name


@pytest.mark.parametrize(("path", "value", "error"), [
    (("report_s",), 0, "report_s"), (("batch",), 100, "batch"), (("sensors", 0, "driver"), "x", "driver"),
    (("sensors", 0, "metrics", "ch4", "filters"), [{"delta": "a"}], "metric ch4"),
    (("tag",), ["nope"], "tag"), (("sleep",), {"awake_s": 3}, "sleep"),
    # the flash queue refused it as it opened, at every boot, safe mode too
    (("queue",), {"capacity": 4096, "segment": 4096}, "queue"),
    # two sensors of one name beat the watchdog as one, so a hung sampler went unseen; two metrics of one
    # name went out as one metric, two transducers' readings the gateway could not tell apart
    (("sensors", 1, "name"), "ch4", "sensor ch4"), (("sensors", 1, "metrics"), {"ch4": {}}, "metric ch4"),
])
def test_profile_errors_name_the_field(path: tuple[Any, ...], value: Any, error: str) -> None:
    p = copy.deepcopy(json.loads((upy.FIRMWARE / "profiles" / "gas.json").read_text()))
    target = p
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(config.ConfigError, match=error):
        config.check_profile(p)


def test_device_and_secrets_checks() -> None:
    good = {"id": "gas-01", "site": "s1", "profile": "gas", "broker": {"host": "h", "port": 1883}}
    assert config.check_device(good)
    assert config.check_device({**good, "batt": {"pin": 35, "ratio": 2.0}})
    assert config.check_device({**good, "safe_wake_s": 10})
    for bad, error in (({**good, "id": "Gas 01"}, "device"), ({**good, "broker": {"host": ""}}, "broker.host"),
                       ({**good, "broker": {"host": "h", "port": 0}}, "broker.port"),
                       ({**good, "trial_s": 1}, "trial_s"),
                       ({**good, "safe_wake_s": 5}, "safe_wake_s must be 10..3600"),
                       ({**good, "safe_wake_s": 60.0}, "safe_wake_s must be 10..3600"),
                       # read at every birth and health figure: a batt that is no map raised in the birth, so the
                       # node never came online; an ADC2 pin is unusable while Wi-Fi is on; a ratio of 0 reads 0 V
                       ({**good, "batt": {"pin": 25}}, "batt"), ({**good, "batt": 34}, "batt"),
                       ({**good, "batt": {"pin": 34, "ratio": 0}}, "batt")):
        with pytest.raises(config.ConfigError, match=error):
            config.check_device(bad)
    secrets = {"wifi": {"ssid": "a", "password": "b"}, "key": "00" * 16}
    assert config.check_secrets(secrets)
    with pytest.raises(config.ConfigError, match="key"):
        config.check_secrets({**secrets, "key": "00" * 8})


def test_commands_that_must_be_refused_are_refused_and_acked(tmp_path: Path) -> None:
    """tests/firmware/upy/commands_cases.py: app/commands.py's handle() on MicroPython against a fake node."""
    from upy_support import SCRIPTS, case_outcomes

    result = upy.run("-m drivercheck", "commands_cases", heap=upy.FIRMWARE_HEAP, cwd=tmp_path, timeout=60,
                     env={"MICROPYPATH": f"{upy.upy_path()}:{SCRIPTS}"})
    assert result.returncode == 0, case_outcomes(result)


def test_a_command_of_many_small_items_is_refused_as_malformed_without_its_heap(tmp_path: Path) -> None:
    """tests/firmware/upy/command_items.py: the command path's decoder on MicroPython at the node's heap, 12 KB of
    it free (the drone's whole config needs more than 10). A 2 KB envelope of 1,952 one-byte ints decoded to a
    16 KB list before its MAC was checked (commit d59d9c3's report), and a node without that heap refused it as
    "no memory" after 3 tries, not as malformed at once. The envelope (a COSE_Mac0 holds 5 items) and the payload
    (an item per 3 bytes; real commands take 5.8 or more) have item budgets: such an envelope, and a sealed
    payload as dense, are malformed, and so is a protected header of ints (16 entries at most); the largest real
    command (the drone's whole config) decodes."""
    from upy_support import SCRIPTS

    from lifeline.virtual.profiles import load_profile
    from protocol import cbor, message

    key = b"\x01" * 32
    device = {"id": "drone-01", "site": "site-a", "profile": "drone", "broker": {"host": "10.0.0.2", "port": 1883}}
    cases = [cbor.dumps([0] * 1952),
             cbor.dumps(cbor.Tag(17, [cbor.dumps([0] * 1940), {4: b"drone-01"}, b"", bytes(8)])),
             message.encode(message.command("drone-01", 1, "set_filters", {"x": [0] * 600}, 2**32), key),
             message.encode(message.command("drone-01", 2, "config", {"device": device,
                                                                     "profile": load_profile("drone")}, 2**32), key)]
    assert len(cases[0]) == 1955
    (tmp_path / "cases").write_text("".join(c.hex() + "\n" for c in cases))
    result = upy.run(str(SCRIPTS / "command_items.py"), "12288", str(tmp_path / "cases"), heap=upy.FIRMWARE_HEAP,
                     timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "malformed: malformed: not one CBOR item: more array items and map entries than 8",
        "malformed: malformed: protected header: more array items and map entries than 16",
        "malformed: payload is not CBOR: more array items and map entries than 216",
        "OK"], result.stdout
