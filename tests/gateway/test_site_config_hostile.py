"""Configurations that passed site.toml's checks, or escaped them, and then failed as a traceback: at start
`lifeline gateway` must stop with one line (exit 2 for the config, 1 for what it cannot open or bind), and on
SIGHUP a bad config is refused whole, logged as reload-failed, and the running one kept."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway.daemon import Gateway
from gateway.rules import RULESETS_DIR
from gateway.site_config import ConfigError, load
from lifeline import cli
from lifeline import gateway as gateway_cli

KEY = "ab" * 32
HUGE = "1" + "0" * 400  # a TOML integer past a float: math.isfinite raised OverflowError on it
POINT = '[[risk_points]]\nid = "p"\nclass = "water"\nlat = 1\nlon = 1\nradius_m = 5\n'


def site_toml(d: Path, extra: str = "", devices: str = "") -> Path:
    p = d / "site.toml"
    p.write_text(f'[site]\nid = "s1"\nkey = "{KEY}"\n\n[site_broker]\nhost = "127.0.0.1"\nport = 1\n\n'
                 f'[district_broker]\nhost = "127.0.0.1"\nport = 1\n\n[store]\npath = "gw.sqlite"\n\n'
                 f'[metrics]\nport = 0\n\n[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY}"\n{devices}\n{extra}')
    return p


def gas_rules(d: Path, version: int) -> str:
    """A rule file of the gas class alone."""
    p = d / f"gas-v{version}.toml"
    p.write_text((RULESETS_DIR / "gas.toml").read_text().replace("version = 1", f"version = {version}"))
    return p.name


@pytest.mark.parametrize("extra", [f"[uplink]\ndrain_rate = {HUGE}\n", f"[ingest]\nseq_window = {HUGE}\n",
                                   f'[[devices]]\nid = "d2"\nclass = "gas"\nkey = "{KEY}"\nposition = [{HUGE}, 0]\n',
                                   POINT.replace("radius_m = 5", f"radius_m = {HUGE}").replace("water", "gas"),
                                   "[x]\ny = " + "[" * 5000 + "]" * 5000 + "\n"],
                         ids=["a setting", "an integer setting", "a device position", "a risk point",
                              "TOML nested past the parser"])
def test_a_number_past_a_float_or_a_file_nested_past_the_parser_is_a_config_error(tmp_path: Path,
                                                                                  extra: str) -> None:
    with pytest.raises(ConfigError):
        load(site_toml(tmp_path, extra))
    assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 2


def test_a_json_rule_file_nested_past_the_parser_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text('{"version": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json"):
        load(site_toml(tmp_path, '[rules]\nfiles = ["deep.json"]\n'))


def test_a_risk_point_of_a_class_the_rules_lack_is_a_config_error(tmp_path: Path) -> None:
    """It passed the config and made the alarm engine refuse the rules inside Gateway(): a traceback."""
    with pytest.raises(ConfigError, match=r"risk_points\.p\.class"):
        load(site_toml(tmp_path, f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n\n{POINT}'))


def test_a_reload_whose_rules_drop_a_risk_points_class_is_refused_whole(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """It replaced the device list, then failed on the rules: half applied, and not logged as refused."""
    for name in ("gas.toml", "water.toml"):
        shutil.copy(RULESETS_DIR / name, tmp_path / name)
    gw = Gateway(load(site_toml(tmp_path, f'[rules]\nfiles = ["gas.toml", "water.toml"]\n\n{POINT}')))
    try:
        site_toml(tmp_path, f'[rules]\nfiles = ["{gas_rules(tmp_path, 2)}"]\n\n{POINT}',
                  devices=f'[[devices]]\nid = "d2"\nclass = "gas"\nkey = "{KEY}"\n')
        with caplog.at_level(logging.INFO):
            gw.reload()
        assert "d2" not in gw.registry.devices and gw.alarms.ruleset.version == 1
        assert any("reload-failed" in r.getMessage() for r in caplog.records)
        site_toml(tmp_path, f"[uplink]\ndrain_rate = {HUGE}\n")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            gw.reload()
        assert any("reload-failed" in r.getMessage() for r in caplog.records)
    finally:
        gw.conn.close()


def test_a_site_key_file_of_the_wrong_length_stops_start_with_a_message(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "short.key").write_text("abcd\n")
    text = site_toml(tmp_path).read_text().replace(f'key = "{KEY}"\n\n', 'key_file = "short.key"\n\n', 1)
    (tmp_path / "site.toml").write_text(text)
    assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 1
    created, failed = capsys.readouterr().err.splitlines()  # a first start: its store is new
    assert "event=store-created" in created and failed.startswith("start-up failed:")


def test_a_metrics_port_in_use_stops_the_gateway_with_a_message(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        text = site_toml(tmp_path).read_text().replace("port = 0", f"port = {taken.getsockname()[1]}")
        (tmp_path / "site.toml").write_text(text)
        assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 1
    assert "gateway stopped:" in capsys.readouterr().err


def test_a_later_tests_log_line_is_written(capfd: pytest.CaptureFixture[str]) -> None:
    """After the two tests above, which run `lifeline gateway` in this process: its logging setup left its
    handler on their captured stderr, closed when they ended, so every later log line in this pytest worker
    printed --- Logging error --- (test_check_stage's one-traceback test failed on it in CI)."""
    logging.getLogger("lifeline.gateway.test").error("after")
    assert "Logging error" not in capfd.readouterr().err


def test_a_reload_names_the_changed_settings_it_cannot_apply(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP applies the devices, rules and OTA releases; a changed drain rate or risk point was dropped
    without a word, and the operator believed it in force."""
    shutil.copy(RULESETS_DIR / "water.toml", tmp_path / "water.toml")
    rules = f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}", "water.toml"]\n'
    gw = Gateway(load(site_toml(tmp_path, rules)))
    try:
        caplog.clear()  # the first start's store-created
        with caplog.at_level(logging.INFO):
            gw.reload()  # nothing changed
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            site_toml(tmp_path, f"{rules}\n[uplink]\ndrain_rate = 50\n\n{POINT}",
                      devices=f'[[devices]]\nid = "d2"\nclass = "gas"\nkey = "{KEY}"\n')
            gw.reload()
        assert "d2" in gw.registry.devices  # what a reload applies, it applied
        warned = [r for r in caplog.records if r.getMessage() == "reload-needs-restart"]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert getattr(warned[0], "fields", {})["settings"] == "risk_points,drain_rate"
    finally:
        gw.conn.close()


def test_devices_of_a_class_without_rules_are_named_in_a_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A water main listed at a site whose rules are gas alone was taken silently: its readings went up, and
    no burst could ever raise an alarm."""
    rules = f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n'
    gw = Gateway(load(site_toml(tmp_path, rules)))
    try:
        site_toml(tmp_path, rules, devices=f'[[devices]]\nid = "w1"\nclass = "water"\nkey = "{KEY}"\n'
                                           f'[[devices]]\nid = "w2"\nclass = "water"\nkey = "{KEY}"\n')
        with caplog.at_level(logging.INFO):
            gw.reload()
        assert "w1" in gw.registry.devices
        warned = [r for r in caplog.records if r.getMessage() == "devices-without-rules"]
        assert len(warned) == 1 and getattr(warned[0], "fields", {})["classes"] == "water:2"
    finally:
        gw.conn.close()


@pytest.mark.parametrize("name", ["fifo", "nul"], ids=["a named pipe", "a NUL in the name"])
def test_a_devices_file_that_is_no_regular_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    """A named pipe was opened for reading and blocked start (or, on SIGHUP, the whole daemon) until something
    wrote to it; a NUL in the name was a ValueError traceback."""
    if name == "fifo":
        os.mkfifo(tmp_path / "devices.csv")
        given = "devices.csv"
    else:
        given = "devices\\u0000.csv"
    p = site_toml(tmp_path)
    p.write_text(p.read_text().replace('id = "s1"\n', f'id = "s1"\ndevices_file = "{given}"\n', 1))
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load(p)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # let the blocked open go, so the thread ends
        with open(tmp_path / "devices.csv", "wb"):
            pass
        reader.join(5)
        pytest.fail("reading the devices file blocked")
    assert isinstance(outcome[0], ConfigError), outcome
    assert str(outcome[0]).startswith("site.devices_file: cannot read ")


def test_a_rule_class_of_no_device_class_and_no_risk_point_is_refused(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt class ([gsa.ch4]) was taken at start and on SIGHUP: its rules judged nothing, and a gas
    section renamed so left every gas device without rules while the reload said rules_applied."""
    misspelt = tmp_path / "gas-typo.toml"
    misspelt.write_text((RULESETS_DIR / "gas.toml").read_text().replace("version = 1", "version = 2")
                        .replace("[gas.", "[gsa."))
    with pytest.raises(ConfigError, match=r"^rules: gsa: no device class"):
        load(site_toml(tmp_path, '[rules]\nfiles = ["gas-typo.toml"]\n'))
    # a class a risk point names is no device class, and is taken
    (tmp_path / "station.toml").write_text((RULESETS_DIR / "gas.toml").read_text().replace("[gas.", "[station."))
    station = load(site_toml(tmp_path, f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}", "station.toml"]\n\n'
                                       + POINT.replace("water", "station")))
    assert set(station.ruleset.classes) == {"gas", "station"}
    gw = Gateway(load(site_toml(tmp_path, f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n')))
    try:
        site_toml(tmp_path, '[rules]\nfiles = ["gas-typo.toml"]\n')
        with caplog.at_level(logging.INFO):
            gw.reload()
        failed = [r for r in caplog.records if r.getMessage() == "reload-failed"]
        assert len(failed) == 1 and "gsa" in getattr(failed[0], "fields", {})["error"]
        assert gw.snapshot().reloads_failed == 1
        assert gw.alarms.ruleset.version == 1 and "gas" in gw.alarms.ruleset.classes
        assert not [r for r in caplog.records if r.getMessage() in ("reloaded", "devices-without-rules")]
    finally:
        gw.conn.close()


def test_a_rule_edited_without_a_higher_version_is_named_on_reload(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An operator who changed a threshold (a file or [rules.overrides]) and sent SIGHUP without raising the
    set's version was told only `reloaded rules_applied=false`: the old threshold stayed, and the edit took
    effect unannounced at the next restart (which applies a set of the same version)."""
    rules = f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n'
    gw = Gateway(load(site_toml(tmp_path, rules)))
    try:
        caplog.clear()  # the first start's store-created
        with caplog.at_level(logging.INFO):
            gw.reload()  # nothing changed: nothing said
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            site_toml(tmp_path, rules + '\n[rules.overrides.gas.devices.d1.ch4]\nlevels = { yellow = 30, red = 60 }\n'
                      'clear = { yellow = 25, red = 50 }\n')
            gw.reload()
        warned = [r for r in caplog.records if r.getMessage() == "reload-rules-not-applied"]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert {k: getattr(warned[0], "fields", {})[k] for k in ("files_version", "active_version")} == {
            "files_version": 1, "active_version": 1}
        caplog.clear()
        with caplog.at_level(logging.INFO):
            gw.reload()  # the same edit again: said again, as it is still not in force
        assert [r for r in caplog.records if r.getMessage() == "reload-rules-not-applied"]
    finally:
        gw.conn.close()


@pytest.mark.parametrize("kind", ["a directory", "a text file"])
def test_a_store_it_cannot_open_is_named_at_start(tmp_path: Path, kind: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`start-up failed: unable to open database file` (or `file is not a database`) named no file: an operator
    whose [store] path pointed at the state directory, or at site.toml, was left to guess which file it meant."""
    store = tmp_path / "state"
    if kind == "a directory":
        store.mkdir()
    else:
        store.write_text('[site]\nid = "s1"\n')
    (tmp_path / "site.toml").write_text(site_toml(tmp_path).read_text().replace('"gw.sqlite"', '"state"'))
    assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"start-up failed: store.path {store}: ") and err.count("\n") == 1, err


def test_a_store_the_gateway_creates_is_named_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt [store] path (or a store moved away) started the gateway on a new, empty store without a word,
    the backlog, sequence windows, quarantine and alarms left in the real one. A store the gateway creates is
    named in a warning, which a first start gives too; a store it opens is not. `lifeline status` says when the
    store it reads was created."""

    def start() -> list[dict[str, str]]:
        caplog.clear()
        gw = Gateway(load(tmp_path / "site.toml"))
        gw.quarantine.put("malformed", "x", "lifeline/s1/d1/data", b"\x00", 1.0)
        gw.conn.commit()
        gw.conn.close()
        return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "store-created"]

    site_toml(tmp_path)
    with caplog.at_level(logging.INFO):
        first = start()
        assert [f["path"] for f in first] == [str(tmp_path / "gw.sqlite")]
        assert "first start" in first[0]["note"]
        assert start() == []  # the store it made, opened again
        (tmp_path / "site.toml").write_text(site_toml(tmp_path).read_text().replace('"gw.sqlite"', '"gw.sqlte"'))
        assert [f["path"] for f in start()] == [str(tmp_path / "gw.sqlte")]
    capsys.readouterr()
    assert cli.main(["status", "--config", str(tmp_path / "site.toml")]) == 0
    shown = capsys.readouterr().out
    assert f"store: {tmp_path / 'gw.sqlte'}, created {time.strftime('%Y-%m-%d', time.gmtime())}" in shown, shown


@pytest.mark.parametrize("failure", ["a site key file too short", "its metrics port taken"])
def test_a_first_start_that_fails_leaves_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  failure: str) -> None:
    """A first start on a misspelt [store] path that then failed left the store it had made, stamped: the next
    start, the failure put right, opened it as its own without `store-created`, and the real store's backlog,
    sequence windows and alarms were left aside unsaid. The failed start now takes away what it made."""
    (tmp_path / "short.key").write_text("abcd\n")
    right = site_toml(tmp_path).read_text().replace('"gw.sqlite"', '"state/gw.sqlte"')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        wrong = (right.replace(f'key = "{KEY}"\n\n', 'key_file = "short.key"\n\n', 1) if "key" in failure
                 else right.replace("port = 0", f"port = {taken.getsockname()[1]}"))
        (tmp_path / "site.toml").write_text(wrong)
        assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 1
    assert "event=store-created" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
    (tmp_path / "site.toml").write_text(right)
    Gateway(load(tmp_path / "site.toml")).conn.close()  # put right, started again: its log is on stderr still
    assert f"event=store-created path={tmp_path / 'state' / 'gw.sqlte'} " in capsys.readouterr().err


def test_a_failed_start_leaves_a_store_path_that_links_to_a_disk_not_mounted(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """[store] path a symbolic link to the store on a data disk, not mounted yet at boot: the start fails, and a
    link to nothing read as a path that did not exist, so the failed start took the link away. The next start,
    the disk mounted, made a new store where the link had been and ran on it, the real one left aside."""
    store = tmp_path / "gw.sqlite"
    store.symlink_to(tmp_path / "data" / "gw.sqlite")
    site_toml(tmp_path)
    assert gateway_cli.run(argparse.Namespace(config=tmp_path / "site.toml")) == 1
    assert "start-up failed: store.path" in capsys.readouterr().err
    assert store.is_symlink()
    (tmp_path / "data").mkdir()  # mounted
    Gateway(load(tmp_path / "site.toml")).conn.close()
    assert store.is_symlink() and (tmp_path / "data" / "gw.sqlite").is_file()


def test_a_reload_on_a_full_store_is_refused_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP on a full disk (stood in for by SQLite's max_page_count, SQLITE_FULL as a full disk gives): the
    reload's commit raised out of the signal handler, a traceback in the journal and no reloaded or reload-failed
    line, with the new device list and rules in force in memory while the store kept the old ones (a restart
    went back to them). It is refused whole and said so, as a config error is; with room again it applies."""
    gw = Gateway(load(site_toml(tmp_path, f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n')))
    try:
        overrides = "".join(f"[gas.devices.d{i}.ch4]\nlevels = {{ yellow = 30, red = 60 }}\n"
                            f"clear = {{ yellow = 25, red = 50 }}\n" for i in range(300))
        bigger = tmp_path / "gas-v2.toml"
        bigger.write_text((tmp_path / gas_rules(tmp_path, 2)).read_text() + overrides)
        site_toml(tmp_path, '[rules]\nfiles = ["gas-v2.toml"]\n',
                  devices=f'[[devices]]\nid = "d2"\nclass = "gas"\nkey = "{KEY}"\n')
        full = gw.conn.execute("PRAGMA page_count").fetchone()[0]
        gw.conn.execute(f"PRAGMA max_page_count = {full}")
        with caplog.at_level(logging.INFO):
            gw.reload()
        failed = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "reload-failed"]
        assert len(failed) == 1 and "full" in failed[0]["error"], failed
        assert "d2" not in gw.registry.devices and gw.alarms.ruleset.version == 1
        assert gw.snapshot().reloads_failed == 1
        gw.conn.execute("PRAGMA max_page_count = 1000000")
        gw.reload()
        assert "d2" in gw.registry.devices and gw.alarms.ruleset.version == 2
    finally:
        gw.conn.close()


def test_an_override_for_no_device_or_point_of_its_class_is_named(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A per-device override whose id is misspelt (gas-0l4 for gas-014), or names a device of another class,
    judged nothing and said nothing: the device kept the class's thresholds while the operator believed its own
    in force (a lowered level for a critical main never applied). Named at start and at each reload."""
    override = ('[rules.overrides.gas.devices.{dev}.ch4]\nlevels = {{ yellow = 30, red = 60 }}\n'
                'clear = {{ yellow = 25, red = 50 }}\n')
    rules = f'[rules]\nfiles = ["{gas_rules(tmp_path, 1)}"]\n\n'
    gw = Gateway(load(site_toml(tmp_path, rules + override.format(dev="d1"))))
    try:
        with caplog.at_level(logging.INFO):
            gw.reload()  # an override of a listed gas device: nothing said
        assert not [r for r in caplog.records if r.getMessage() == "rules-overrides-unmatched"]
        rules = f'[rules]\nfiles = ["{gas_rules(tmp_path, 2)}"]\n\n'
        site_toml(tmp_path, rules + override.format(dev="dl") + override.format(dev="d2").replace("[rules", "\n[rules"),
                  devices=f'[[devices]]\nid = "d2"\nclass = "water"\nkey = "{KEY}"\n')
        with caplog.at_level(logging.INFO):
            gw.reload()
        warned = [r for r in caplog.records if r.getMessage() == "rules-overrides-unmatched"]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert getattr(warned[0], "fields", {})["overrides"] == "gas.devices.d2,gas.devices.dl"
    finally:
        gw.conn.close()
