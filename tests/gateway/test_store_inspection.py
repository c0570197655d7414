"""The site's inspection commands (`lifeline status`, `quarantine`, `ota status`) given something that is no
gateway store: one line naming it and exit 2, where each ended in a traceback of its first query."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lifeline import cli

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
