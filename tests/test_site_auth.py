"""`lifeline site-auth` against the real mosquitto_passwd: the files of passwords are closed to others whatever
mode an old one had, and the passwords of the last run, when unreadable, are refused rather than replaced."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline import cli

KEY = bytes(range(32)).hex()
LIFELINE = str(Path(sys.executable).parent / "lifeline")
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


@pytest.mark.parametrize("text", ['{"gateway": "pw1", "gas-0', '["gateway", "pw1"]', "", "[" * 100_000 + "]" * 100_000,
                                  '{"gateway": ' * 100_000 + '"pw1"' + "}" * 100_000])
def test_passwords_of_the_last_run_it_cannot_read_are_left_alone(tmp_path: Path, text: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A passwords.json cut short (a crash while it was rewritten in place) or not of this command ended in a
    traceback (nested deeper than the JSON parser goes, a RecursionError one); it is refused in a line, exit 2,
    and nothing is written: new passwords would lock out every device flashed with the old ones."""
    out = tmp_path / "auth"
    out.mkdir()
    (out / "passwords.json").write_text(text)
    assert site_auth(site(tmp_path, "gas-01"), out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"site-auth: {out / 'passwords.json'}: ") and "restore it" in err, err
    assert len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["passwords.json"] and (out / "passwords.json").read_text() == text


def test_an_acl_written_short_leaves_the_last_one(tmp_path: Path) -> None:
    """The ACL was written in place: a full disk (here a file size limit below its size) left a short ACL that
    the broker's next reload read, its last lines (the gateway's) gone, and the site stopped taking data. Now
    it is written whole beside the old one and renamed over it, or not at all."""
    out = tmp_path / "auth"
    config = site(tmp_path, "gas-01")
    assert site_auth(config, out) == 0
    acl = (out / "acl").read_text()
    limit = len(acl) - 200
    assert limit > (out / "passwd").stat().st_size + 300  # only the ACL, of the files written, is over it

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as ENOSPC would be
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    full = subprocess.run([LIFELINE, "site-auth", "--config", str(config), "--out", str(out)], capture_output=True,
                          text=True, preexec_fn=small_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert full.returncode == 2 and len(full.stderr.splitlines()) == 1, full.stderr
    assert full.stderr.startswith("site-auth: ") and "File too large" in full.stderr, full.stderr
    assert (out / "acl").read_text() == acl
    assert sorted(p.name for p in out.iterdir()) == ["acl", "gateway.password", "passwd", "passwords.json"]


def test_a_device_left_out_of_site_toml_keeps_its_password(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A run with a device missing from site.toml (taken out for repair, or a site.toml pasted from one batch's
    registry) dropped its password from passwords.json, the only copy: put back, it got a new one, and the
    node flashed with the old one was locked out until flashed again by cable. The password is kept now, with
    no broker login while the device is out of site.toml."""
    out = tmp_path / "auth"
    assert site_auth(site(tmp_path, "gas-01", "gas-02"), out) == 0
    first = json.loads((out / "passwords.json").read_text())
    assert site_auth(site(tmp_path, "gas-01"), out) == 0
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()] == ["gateway", "gas-01"]
    assert "1 devices and the gateway written to" in capsys.readouterr().out
    assert site_auth(site(tmp_path, "gas-01", "gas-02"), out) == 0
    assert json.loads((out / "passwords.json").read_text()) == first
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()] == ["gateway", "gas-01",
                                                                                          "gas-02"]


def test_a_gateway_login_the_acl_does_not_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """site.toml's site_broker username is the gateway's login; site-auth writes it as "gateway", the user the
    shipped ACL gives the gateway's topics. Any other name was taken: the files written, the gateway then refused
    by its own broker at start. A config error naming the field, nothing written."""
    config = site(tmp_path, "gas-01")
    config.write_text(config.read_text().replace('[site_broker]\n', '[site_broker]\nusername = "gw"\n'))
    out = tmp_path / "auth"
    assert site_auth(config, out) == 2
    assert capsys.readouterr().err == ("config error: site_broker.username 'gw': the gateway's login is 'gateway', "
                                       "the user the site broker's ACL (deploy/mosquitto/site.acl) gives its "
                                       "topics and the one site-auth writes\n")
    assert not out.exists()
