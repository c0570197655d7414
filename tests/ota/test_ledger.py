"""gateway/ota_relay.py on CPython: what the gateway keeps of each node's update, and its releases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway import ota_relay
from gateway.ota_relay import Ledger, Releases
from protocol import topics


def release_dir(base: Path, version: str, data: bytes) -> Path:
    d = base / version
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"version": version}))
    (d / "release.bin").write_bytes(data)
    return d


def test_the_ledger_keeps_what_was_committed_and_drops_what_was_rolled_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "gw.sqlite")
    releases = Releases("s1")
    releases.add("0.2.0", bytes(range(256)) * 10)
    ledger = Ledger(conn)
    ledger.birth("gas-1", "0.1.0", 100.0)
    chunk = releases.answer(topics.device("s1", "gas-1", topics.OTA_REQ), b"0.2.0 1024 1024")
    assert chunk is not None and (chunk.end, chunk.total, chunk.version) == (2048, 2560, "0.2.0")
    ledger.progress(chunk, 101.0)
    ledger.flush()
    conn.commit()
    ledger.outcome("gas-1", "0.2.0", False, "refused: bad signature", 102.0)
    ledger.rollback()  # the daemon's batch failed before its commit
    ledger.flush()
    conn.commit()
    n = ota_relay.read(sqlite3.connect(tmp_path / "gw.sqlite"))["gas-1"]
    assert (n.running, n.target, n.done, n.total, n.outcome_v) == ("0.1.0", "0.2.0", 2048, 2560, "")
    ledger.outcome("gas-1", "0.2.0", True, "running", 103.0)
    ledger.flush()
    conn.commit()
    n = ota_relay.read(conn)["gas-1"]
    assert (n.ok, n.res, n.done) == (True, "running", 2560)  # a landed update reads as a full bar
    assert ota_relay.read(sqlite3.connect(":memory:")) == {}


def test_releases_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    a = release_dir(tmp_path, "0.2.0", b"a" * 100)
    b = release_dir(tmp_path, "0.3.0", b"b" * 100)
    releases = Releases("s1")
    releases.replace((a,))
    (b / "release.bin").unlink()
    with pytest.raises(FileNotFoundError):
        releases.replace((a, b))
    assert releases.versions() == ["0.2.0"]
    (b / "release.bin").write_bytes(b"b" * 100)
    releases.replace((b,))
    assert releases.versions() == ["0.3.0"]
    assert releases.answer(topics.device("s2", "gas-1", topics.OTA_REQ), b"0.3.0 0 10") is None  # another site
    assert releases.refused == {"topic": 1}
