"""`lifeline site-auth` against the real mosquitto_passwd: the files of passwords are closed to others whatever
mode an old one had, and the passwords of the last run, when unreadable, are refused rather than replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifeline import cli

KEY = bytes(range(32)).hex()
SITE = ('[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        '[store]\npath = "gw.db"\n')


def site(tmp_path: Path, *devices: str) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(SITE + "".join(f'\n[[devices]]\nid = "{d}"\nclass = "gas"\nkey = "{KEY}"\n' for d in devices))
    return config


def site_auth(config: Path, out: Path) -> int:
    return cli.main(["site-auth", "--config", str(config), "--out", str(out)])


def test_an_old_file_open_to_others_is_closed(tmp_path: Path) -> None:
    """passwords.json left 0644 (by hand, a copy) was rewritten in place and stayed readable by every user; now
    each file is made anew without the others' bits, keeping the group the deploy's tmpfiles rules give
    gateway.password (0640), and the passwords of the last run."""
    out = tmp_path / "auth"
    assert site_auth(site(tmp_path, "gas-01"), out) == 0
    before = json.loads((out / "passwords.json").read_text())
    (out / "passwords.json").chmod(0o644)
    (out / "gateway.password").chmod(0o640)
    (out / "passwd").chmod(0o644)
    assert site_auth(site(tmp_path, "gas-01", "gas-02"), out) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"passwords.json": 0o640, "gateway.password": 0o640, "passwd": 0o640, "acl": 0o644}, modes
    after = json.loads((out / "passwords.json").read_text())
    assert {u: after[u] for u in before} == before and set(after) == {"gateway", "gas-01", "gas-02"}
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()] == list(after)
    assert all(line.split(":", 1)[1].startswith("$7$") for line in (out / "passwd").read_text().splitlines())


@pytest.mark.parametrize("text", ['{"gateway": "pw1", "gas-0', '["gateway", "pw1"]', ""])
def test_passwords_of_the_last_run_it_cannot_read_are_left_alone(tmp_path: Path, text: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A passwords.json cut short (a crash while it was rewritten in place) or not of this command ended in a
    traceback; it is refused in a line, exit 2, and nothing is written: new passwords would lock out every
    device flashed with the old ones."""
    out = tmp_path / "auth"
    out.mkdir()
    (out / "passwords.json").write_text(text)
    assert site_auth(site(tmp_path, "gas-01"), out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"site-auth: {out / 'passwords.json'}: ") and "restore it" in err, err
    assert len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["passwords.json"] and (out / "passwords.json").read_text() == text
