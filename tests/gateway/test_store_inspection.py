"""The site's inspection commands (`lifeline status`, `quarantine`, `ota status`) given something that is no
gateway store: one line naming it and exit 2, where each ended in a traceback of its first query. And text that
came from outside (a reject's topic and detail, a node's firmware version) shown as text, never as markup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.admission import Checker
from gateway.device_list import DeviceConfig, DeviceList
from gateway.quarantine import Quarantine
from gateway.registry import Registry
from gateway.sequence import SequenceTracker
from lifeline import cli
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
