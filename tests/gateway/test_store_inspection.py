"""The site's inspection commands (`lifeline status`, `quarantine`, `ota status`) given something that is no
gateway store: one line naming it and exit 2, where each ended in a traceback of its first query. And text that
came from outside (a reject's topic and detail, a node's firmware version) shown as text, never as markup."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from gateway.admission import Checker
from gateway.device_list import DeviceConfig, DeviceList
from gateway.ota_relay import Ledger
from gateway.outbox import Outbox
from gateway.quarantine import MAX_RAW, Quarantine
from gateway.registry import Registry
from gateway.sequence import SequenceTracker
from lifeline import cli
from lifeline.virtual.site import ROOT, environment, lifeline_cmd
from protocol import auth, message, topics

KEY = bytes(range(32))

COMMANDS = {"status": ["status"], "quarantine": ["quarantine", "list"], "ota status": ["ota", "status"]}


def inspect(name: str, store: Path) -> int:
    words = COMMANDS[name]
    return cli.main([*words[:1], "--store", str(store), *words[1:]] if name == "quarantine"
                    else [*words, "--store", str(store)])


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["text", "directory"])
def test_a_file_that_is_no_database(tmp_path: Path, name: str, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "site.toml"
    if kind == "text":
        store.write_text('[site]\nid = "site-a"\n')
    else:
        store.mkdir()
    assert inspect(name, store) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{store}: cannot read it as a gateway store (") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_store_in_a_directory_it_may_not_enter(tmp_path: Path, name: str) -> None:
    """An operator not in the gateway's group (its StateDirectory is 0750) ran `lifeline status` and got a
    PermissionError traceback from the first look at the path. One line naming it, exit 2. Run as root without
    the capabilities that let root past file modes, which is what such an operator has."""
    locked = tmp_path / "lifeline"
    locked.mkdir()
    _store_with_rejects(locked / "gw.db", 1)
    locked.chmod(0)
    words = COMMANDS[name]
    argv = ([*words[:1], "--store", str(locked / "gw.db"), *words[1:]] if name == "quarantine"
            else [*words, "--store", str(locked / "gw.db")])
    caps = "-dac_override,-dac_read_search"
    try:
        done = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *lifeline_cmd(), *argv],
                              capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"{locked / 'gw.db'}: cannot reach it (Permission denied)\n", done.stderr


@pytest.mark.parametrize("name, table", [("status", "device_health"), ("quarantine", "quarantine")])
def test_a_database_without_the_gateways_tables(tmp_path: Path, name: str, table: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The district's database given by mistake, or a store file a gateway made and stopped before its tables
    (`ota status` reads its tables where there are any, and lists nothing without them)."""
    store = tmp_path / "other.db"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE readings (t REAL)")
    conn.close()
    assert inspect(name, store) == 2
    err = capsys.readouterr().err
    assert err == f"{store}: no table {table}: not a gateway store, or the gateway has not started on it\n"


def _site_store(path: Path) -> tuple[sqlite3.Connection, Checker]:
    conn = sqlite3.connect(path)
    registry = Registry(conn, DeviceList([DeviceConfig("gas-01", "gas", KEY, None)]))
    return conn, Checker("site-a", registry, SequenceTracker(conn), Quarantine(conn))


def test_a_reject_whose_text_looks_like_markup_is_listed_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Whoever can publish on the site broker chooses an envelope's key id, and its reject's detail quotes it:
    rich took "[/]" in it for a closing tag, and `quarantine list` and `show` ended in a MarkupError traceback,
    at the moment an operator looked at what a hostile device sent."""
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn, checker = _site_store(store)
    topic = topics.device("site-a", "gas-01", topics.DATA)
    assert checker.check(topic, auth.seal(KEY, b"[/][bold]", b"\xa0"), False, 1_800_000_000.0) is None
    conn.commit()
    conn.close()
    assert cli.main(["quarantine", "--store", str(store), "list"]) == 0
    assert "no key for kid b'[/][bold]'" in capsys.readouterr().out
    assert cli.main(["quarantine", "--store", str(store), "show", "1"]) == 0
    assert "reason unknown-device: no key for kid b'[/][bold]'" in capsys.readouterr().out


def test_a_firmware_version_that_looks_like_markup_is_shown_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A node's birth names its firmware in any text it likes; "[/]" in it ended `lifeline status` in a
    MarkupError traceback for the whole site."""
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn, checker = _site_store(store)
    checker.registry.birth("gas-01", message.birth("gas-01", 1, 1, "0.1[/]", "gas", "po", 40.0), 1_800_000_000.0,
                           live=False)
    checker.registry.flush()
    conn.commit()
    conn.close()
    assert cli.main(["status", "--store", str(store)]) == 0
    assert "0.1[/]" in capsys.readouterr().out


def test_control_characters_from_outside_never_reach_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A topic any publisher on the site broker chooses, a node's firmware version and its OTA refusal went to the
    terminal with their control characters: ESC sequences recoloured the operator's terminal, cleared it or set
    its title (rich escapes markup, not these). Each is shown as its \\x escape."""
    monkeypatch.setenv("COLUMNS", "400")
    store = tmp_path / "gw.db"
    conn, checker = _site_store(store)
    hostile = "\x1b]0;pwned\x1b[2J\x9b31m"
    assert checker.check(f"lifeline/v1/site-a/gas-01/{hostile}", b"\xa0", False, 1_800_000_000.0) is None
    checker.registry.birth("gas-01", message.birth("gas-01", 1, 1, f"0.1{hostile}", "gas", "po", 40.0),
                           1_800_000_000.0, live=False)
    checker.registry.flush()
    ledger = Ledger(conn)  # what `ota status` reads: the version a birth named, a node's sealed outcome
    ledger.birth("gas-01", f"0.1{hostile}", 1_800_000_000.0)
    ledger.outcome("gas-01", "0.2.0", False, f"refused{hostile}", 1_800_000_000.0)
    ledger.flush()
    conn.commit()
    conn.close()
    shown = r"\x1b]0;pwned\x1b[2J\x9b31m"
    for words in (["quarantine", "--store", str(store), "list"], ["quarantine", "--store", str(store), "show", "1"],
                  ["status", "--store", str(store)], ["ota", "status", "--store", str(store)]):
        assert cli.main(words) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, (words, out)
        assert shown in out, (words, out)


def _store_with_rejects(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    quarantine = Quarantine(conn)
    for i in range(n):
        quarantine.put("malformed", f"reject {i}", "lifeline/v1/site-a/gas-01/data", b"\xff" * 16, now=1.8e9 + i)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("limit", ["-1", "0", "1001"])
def test_a_list_limit_outside_its_range_is_a_usage_error(tmp_path: Path, limit: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite takes LIMIT -1 for no limit: `--limit -1` listed every row of a store that may keep 10,000 rejects
    of 64 KiB each, read whole into memory. A limit outside 1..1000 is refused as argparse refuses an option."""
    store = tmp_path / "gw.db"
    _store_with_rejects(store, 3)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["quarantine", "--store", str(store), "list", "--limit", limit])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "argument --limit: " in captured.err and "reject" not in captured.out


def test_a_list_limit_in_range_lists_that_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    _store_with_rejects(store, 3)
    assert cli.main(["quarantine", "--store", str(store), "list", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "reject 2" in out and "reject 1" in out and "reject 0" not in out


def test_list_leaves_the_payloads_in_the_store_and_show_reads_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`list` shows a reject's size, never its payload, yet read every listed row's payload: `--limit 1000` of
    rejects of 64 KiB took 94 MB. Listing 100 of them now holds less memory than their payloads (measured with
    tracemalloc, not time); `show` still prints the payload."""
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn = sqlite3.connect(store)
    quarantine = Quarantine(conn, max_bytes=1 << 30)
    for i in range(100):
        quarantine.put("oversize", f"reject {i}", "lifeline/v1/site-a/gas-01/data", bytes([i]) * MAX_RAW,
                       now=1.8e9 + i)
    conn.commit()
    conn.close()
    listing = ["quarantine", "--store", str(store), "list", "--limit", "100"]
    assert cli.main(listing) == 0  # the modules imported, outside what is measured
    capsys.readouterr()
    tracemalloc.start()
    try:
        assert cli.main(listing) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert "reject 99" in out and "reject 0" in out and str(MAX_RAW) in out
    assert peak < 100 * MAX_RAW / 2, f"{peak / 2**20:.1f} MiB held to list 6.25 MiB of payloads"
    assert cli.main(["quarantine", "--store", str(store), "show", "8"]) == 0
    assert "hex: " + "07" * 512 + "..." in capsys.readouterr().out.replace("\n", "")


@pytest.mark.parametrize("row_id", ["7", "99999999999999999999"])
def test_show_of_an_id_not_kept_is_one_line_on_stderr(tmp_path: Path, row_id: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An id that is not in the store (evicted since it was listed, or mistyped) is the operator's input: one line
    on stderr and exit 2, as the tools' other input errors; it was printed on stdout, as if it were the message.
    One past SQLite's integers ended in an OverflowError traceback."""
    store = tmp_path / "gw.db"
    _store_with_rejects(store, 1)
    assert cli.main(["quarantine", "--store", str(store), "show", row_id]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"no quarantined message {row_id}\n"


def test_status_says_what_waits_for_the_district(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The district link down for an hour: `lifeline status` showed devices and alarms, and nothing of the
    outbox, so an operator could not tell whether anything was queued or since when without the metrics. It
    says each lane's entries (counted by the daemon, and put since), the oldest's age and the bytes held."""
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn, _checker = _site_store(store)
    out = Outbox(conn, budget_bytes=512 * 2**20)
    now = time.time()
    out.put_alarm({"ev": "raised"}, now=now - 3600)
    for seq in range(150):
        out.put_telemetry("gas-01", seq, 1, [{"n": "ch4", "v": 1.0, "t": now - 3000}], now=now - 3000)
    out.flush()
    conn.commit()
    assert out.depth()["telemetry"] == 150  # these are in the daemon's lane totals now
    conn.commit()
    for seq in range(150, 250):
        out.put_telemetry("gas-01", seq, 1, [{"n": "ch4", "v": 1.0, "t": now - 60}], now=now - 60)
    out.flush()
    conn.commit()
    conn.close()
    assert cli.main(["status", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "queued for the district: alarm 1 (oldest 60m), state 0, telemetry 250 (oldest 50m); " in shown, shown
    assert " KB in the outbox" in shown


def test_quarantine_list_says_how_many_older_rejects_its_bounds_evicted(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A flood filled the quarantine past its bounds: `list` said "kept: malformed 10", and `--reason oversize`
    an empty table, with nothing to say the oversize messages before them had been there and were evicted."""
    store = tmp_path / "gw.db"
    conn = sqlite3.connect(store)
    quarantine = Quarantine(conn, max_rows=10)
    for i in range(128):
        quarantine.put("oversize" if i < 60 else "malformed", "x", "lifeline/v1/site-a/gas-01/data", b"\xff",
                       now=1.8e9 + i)
    conn.commit()
    conn.close()
    assert cli.main(["quarantine", "--store", str(store), "list", "--reason", "oversize"]) == 0
    assert "kept: malformed 10; 118 older rejects evicted by the [quarantine] bounds" in capsys.readouterr().out


def test_status_shows_a_stale_alarms_silence_as_a_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A stale alarm's value is the device's silence in seconds when it last moved: status showed a bare '3000',
    no unit, beside gas readings in %LEL, which an operator could read as a reading."""
    from gateway.daemon import Gateway
    from gateway.ingest import Incoming
    from gateway.site_config import load
    from protocol import senml_build

    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "site-a"\nkey = "{"ab" * 32}"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\n'
        f'host = "127.0.0.1"\n[store]\npath = "gw.db"\n[metrics]\nport = 0\n'
        f'[[devices]]\nid = "gas-01"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gw = Gateway(load(tmp_path / "site.toml"))
    at = time.time() - 4000
    body = message.data("gas-01", 1, 1, senml_build.pack([senml_build.record("ch4", 0.1, t=at)]))
    gw.handle_site([Incoming(topics.device("site-a", "gas-01", topics.DATA), message.encode(body, KEY), False, at)])
    gw.tick(at + 3000)  # gas: orange after 10 intervals of 60 s
    gw.conn.close()
    assert cli.main(["status", "--store", str(tmp_path / "gw.db")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "gas.stale" in line)
    assert "silent 50m" in row, row


def test_a_retained_birth_sent_again_at_each_subscribe_is_no_duplicate_of_the_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Each time the gateway subscribes again (a restart, the site link back) the broker sends every device's
    retained birth once more: it was counted as the device's duplicate, so `status` showed dups climbing by one a
    restart on every device (seen on a virtual site: 0, 1, 2 over three restarts), indistinguishable from a
    device that re-sends. The broker's copy is dropped as `retained`; a device's own repeat is still a duplicate."""
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn, checker = _site_store(store)
    topic = topics.device("site-a", "gas-01", topics.STATE)
    birth = message.encode(message.birth("gas-01", 1, 1, "0.1", "gas", "po", 40.0), KEY)
    assert checker.check(topic, birth, False, 1_800_000_000.0) is not None
    for restart in range(3):
        assert checker.check(topic, birth, True, 1_800_000_010.0 + restart) is None
    assert checker.dropped == {"retained": 3}
    assert checker.check(topic, birth, False, 1_800_000_020.0) is None  # the device sent it again itself
    assert checker.dropped == {"retained": 3, "duplicate": 1}
    checker.sequence.flush()
    checker.registry.flush()
    conn.commit()
    conn.close()
    assert cli.main(["status", "--store", str(store)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "gas-01" in line)
    assert row.split()[-3:] == ["0", "1", "0"], row  # gaps, dups, replays


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_stopped_gateways_store_is_read_by_a_member_of_its_group(tmp_path: Path, name: str) -> None:
    """The gateway stopped (its WAL checkpointed and gone), an operator in the group `lifeline` (the state
    directory 0750, the store 0640) ran `lifeline status` and was told the store is none: "cannot read it as a
    gateway store (attempt to write a readonly database)". SQLite opens a WAL store read-only only where it may
    create the -shm beside it. Run as root without the capabilities that let root past file modes, in the
    group, not the owner (what such an operator has)."""
    state = tmp_path / "lifeline"
    state.mkdir()
    _store_with_rejects(state / "gw.db", 1)
    with sqlite3.connect(state / "gw.db") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        registry = Registry(conn, DeviceList([DeviceConfig("gas-01", "gas", KEY, None)]))
        registry.seen("gas-01", 1.8e9)
        registry.flush()
        SequenceTracker(conn).flush()
        Ledger(conn).flush()
    conn.close()
    assert not (state / "gw.db-wal").exists()
    for path, mode in ((state, 0o750), (state / "gw.db", 0o640)):
        os.chown(path, 4321, 0)
        path.chmod(mode)
    words = COMMANDS[name]
    argv = ([*words[:1], "--store", str(state / "gw.db"), *words[1:]] if name == "quarantine"
            else [*words, "--store", str(state / "gw.db")])
    caps = "-dac_override,-dac_read_search"
    done = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *lifeline_cmd(), *argv],
                          capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (state / "gw.db-shm").exists()


def test_status_of_a_large_site_lists_every_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The devices are aligned columns in one text: rich's Table took about a millisecond a row (27 s of silence
    at 20,000 devices). How long it takes is bench/status_scale.py's to measure, not this test's."""
    store = tmp_path / "gw.db"
    conn = sqlite3.connect(store)
    devices = DeviceList([DeviceConfig(f"gas-{i:05d}", "gas", KEY, None) for i in range(10_000)])
    registry = Registry(conn, devices)
    for i in range(10_000):
        registry.seen(f"gas-{i:05d}", 1.8e9)
    registry.flush()
    SequenceTracker(conn).flush()
    conn.commit()
    conn.close()
    assert cli.main(["status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "gas-00000" in out and "gas-09999" in out and "devices: 10000 (0 online, 10000 offline)" in out


def test_status_names_a_device_taken_off_site_toml_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A device decommissioned (taken off site.toml, the gateway reloaded) kept its health in the store, and
    `status --config` listed it as 'online' among the site's devices, counted with them, a class left blank."""
    from gateway.daemon import Gateway
    from gateway.ingest import Incoming
    from gateway.site_config import load

    monkeypatch.setenv("COLUMNS", "200")

    def site(*devices: str) -> Path:
        (tmp_path / "site.toml").write_text(
            f'[site]\nid = "site-a"\nkey = "{"ab" * 32}"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\n'
            f'host = "127.0.0.1"\n[store]\npath = "gw.db"\n[metrics]\nport = 0\n'
            + "".join(f'[[devices]]\nid = "{dev}"\nclass = "gas"\nkey = "{KEY.hex()}"\n' for dev in devices))
        return tmp_path / "site.toml"

    gw = Gateway(load(site("gas-01", "gas-02")))
    for dev in ("gas-01", "gas-02"):
        birth = message.encode(message.birth(dev, 1, 1, "1.0", "gas", "po", 40.0), KEY)
        gw.handle_site([Incoming(topics.device("site-a", dev, topics.STATE), birth, False, time.time())])
    site("gas-01")
    gw.reload()
    gw.conn.close()
    assert cli.main(["status", "--config", str(tmp_path / "site.toml")]) == 0
    out = capsys.readouterr().out
    assert "devices: 1 (1 online, 0 offline); 1 more in the store, not in site.toml" in out, out
    row = next(line for line in out.splitlines() if line.startswith("gas-02"))
    assert "not listed" in row and "online" not in row, row
