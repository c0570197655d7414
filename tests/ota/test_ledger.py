"""gateway/ota_relay.py on CPython: what the gateway keeps of each node's update, and its releases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import ota_relay
from gateway.ota_relay import Ledger, Releases
from gateway.release_dir import ReleaseDirError
from protocol import topics


def release_dir(base: Path, version: str, data: bytes, profiles: tuple[str, ...] = ("gas",)) -> Path:
    """A release's files as `lifeline release build` lays them out (the signature is not checked here)."""
    d = base / version
    d.mkdir()
    manifest = json.dumps({"version": version, "profiles": list(profiles)}).encode()
    (d / "manifest.json").write_bytes(manifest)
    (d / "manifest.sig").write_bytes(bytes(64))
    (d / "release.bin").write_bytes(manifest + data)
    return d


def test_the_ledger_keeps_what_was_committed_and_drops_what_was_rolled_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "gw.sqlite")
    releases = Releases("s1")
    total = releases.add_dir(release_dir(tmp_path, "0.2.0", bytes(range(256)) * 10)) and releases.offers()[0]["size"]
    ledger = Ledger(conn)
    ledger.birth("gas-1", "0.1.0", 100.0)
    chunk = releases.answer(topics.device("s1", "gas-1", topics.OTA_REQ), b"0.2.0 1024 1024")
    assert chunk is not None and (chunk.end, chunk.total, chunk.version) == (2048, total, "0.2.0")
    ledger.progress(chunk, 101.0)
    ledger.flush()
    conn.commit()
    ledger.outcome("gas-1", "0.2.0", False, "refused: bad signature", 102.0)
    ledger.rollback()  # the daemon's batch failed before its commit
    ledger.flush()
    conn.commit()
    n = ota_relay.read(sqlite3.connect(tmp_path / "gw.sqlite"))["gas-1"]
    assert (n.running, n.target, n.done, n.total, n.outcome_v) == ("0.1.0", "0.2.0", 2048, total, "")
    ledger.outcome("gas-1", "0.2.0", True, "running", 103.0)
    ledger.flush()
    conn.commit()
    n = ota_relay.read(conn)["gas-1"]
    assert (n.ok, n.res, n.done) == (True, "running", total)  # a landed update reads as a full bar
    assert ota_relay.read(sqlite3.connect(":memory:")) == {}


def test_releases_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    a = release_dir(tmp_path, "0.2.0", b"a" * 100)
    b = release_dir(tmp_path, "0.3.0", b"b" * 100)
    releases = Releases("s1")
    releases.replace((a,))
    good = (b / "release.bin").read_bytes()
    (b / "release.bin").unlink()
    with pytest.raises(ReleaseDirError, match=r"release\.bin"):
        releases.replace((a, b))
    assert releases.versions() == ["0.2.0"]
    (b / "release.bin").write_bytes(good)
    releases.replace((b,))
    assert releases.versions() == ["0.3.0"]
    assert releases.answer(topics.device("s2", "gas-1", topics.OTA_REQ), b"0.3.0 0 10") is None  # another site
    assert releases.refused == {"topic": 1}


def test_the_district_is_offered_each_release_and_told_of_downloads_that_moved(tmp_path: Path) -> None:
    """What a district desk needs to roll a release out (the ota command's args) and to draw the bars."""
    d = release_dir(tmp_path, "0.2.0", b"x" * 3000, ("gas", "rain"))
    releases = Releases("s1")
    releases.replace((d,))
    manifest = (d / "manifest.json").read_bytes()
    assert releases.offers() == [{"v": "0.2.0", "profiles": ["gas", "rain"], "n": len(manifest), "sig": bytes(64),
                                  "size": len(manifest) + 3000}]
    ledger = Ledger(sqlite3.connect(":memory:"))
    assert ledger.report() == []
    for dev, off, at in (("gas-1", 0, 10.0), ("rain-1", 0, 11.0), ("gas-1", 1024, 12.0)):
        chunk = releases.answer(topics.device("s1", dev, topics.OTA_REQ), f"0.2.0 {off} 1024".encode())
        assert chunk is not None
        ledger.progress(chunk, at)
    size = len(manifest) + 3000
    assert ledger.report() == [{"dev": "gas-1", "v": "0.2.0", "done": 2048, "total": size, "t": 12.0},
                               {"dev": "rain-1", "v": "0.2.0", "done": 1024, "total": size, "t": 11.0}]
    assert ledger.report() == []  # nothing moved since
    ledger.outcome("gas-1", "0.2.0", True, "running", 13.0)  # its last requests were not reported yet
    assert ledger.report() == [{"dev": "gas-1", "v": "0.2.0", "done": size, "total": size, "t": 12.0}]
    ledger.outcome("gas-1", "0.2.0", True, "running", 14.0)
    assert ledger.report() == []


@pytest.mark.parametrize(("broken", "says"), [
    (lambda d: (d / "manifest.sig").write_bytes(b"short"), "not an Ed25519 signature"),
    (lambda d: (d / "release.bin").write_bytes(b"another manifest"), r"does not start with manifest\.json"),
    (lambda d: (d / "manifest.json").write_text("[1]"), "names no version"),
])
def test_a_release_directory_that_does_not_hang_together_is_refused(tmp_path: Path, broken: Any, says: str) -> None:
    d = release_dir(tmp_path, "0.2.0", b"x" * 10)
    broken(d)
    with pytest.raises(ReleaseDirError, match=says):
        Releases("s1").replace((d,))
