"""`lifeline ota rollout` stopped before it sends anything: a release directory that is no release (a manifest
that is not an object), one the gateway does not serve, a site broker nobody answers on, one that refuses the
gateway's login. One line each on stderr, as it is; they were a TypeError traceback, a message whose "[ota]"
rich took for markup, a ConnectionRefusedError traceback, and a RuntimeError traceback at the first send."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from lifeline import cli, ota
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.site import ROOT, environment, lifeline_cmd


def release_dir(path: Path, manifest: bytes = b'{"version":"0.2.0","profiles":["gas"],"files":[]}') -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_bytes(manifest)
    (path / "manifest.sig").write_bytes(bytes(64))
    (path / "release.bin").write_bytes(manifest)
    return path


def site(tmp_path: Path, served: Path, port: int | None = None, login: str = "") -> Path:
    store = tmp_path / "gw.db"
    sqlite3.connect(store).close()
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\nport = {port or free_port()}\n{login}'
                      f'[district_broker]\nhost = "127.0.0.1"\n[store]\npath = "{store}"\n'
                      f'[ota]\nreleases = ["{served}"]\n\n[[devices]]\nid = "gas-01"\nclass = "gas"\n'
                      f'key = "{bytes(32).hex()}"\n')
    return config


def rollout(config: Path, rel: Path) -> int:
    return cli.main(["ota", "rollout", "--config", str(config), "--release", str(rel), "--stage-timeout", "1"])


def test_a_manifest_that_is_no_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = release_dir(tmp_path / "bad", b"[]")
    assert rollout(site(tmp_path, release_dir(tmp_path / "0.2.0")), bad) == 2
    assert capsys.readouterr().err == f"{bad}: manifest.json names no version\n"


def test_a_release_the_gateway_does_not_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site(tmp_path, release_dir(tmp_path / "0.2.0"))
    other = release_dir(tmp_path / "other")
    assert rollout(config, other) == 2
    assert capsys.readouterr().err == (f"the gateway does not serve {other}: add it to [ota] releases in {config} "
                                       "and reload the gateway (SIGHUP)\n")


def test_a_site_broker_nobody_answers_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served)
    assert rollout(config, served) == 1
    err = capsys.readouterr().err
    assert err.startswith("site_broker 127.0.0.1:") and err.endswith("(Connection refused); nothing was sent\n"), err


def test_a_site_broker_nobody_answers_on_still_writes_the_summary(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable site broker ends the rollout with exit 1, as a halt does, and the --summary says so: every
    node untouched, the reason as `halted`. It was not written at all, so a script reading it after an exit 1
    (which a failed node gives too) found the last rollout's, or no file."""
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served)
    summary = tmp_path / "summary.json"
    summary.write_text('{"version": "0.1.0", "landed": ["gas-01"]}')  # the last rollout's
    assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--summary",
                     str(summary)]) == 1
    err = capsys.readouterr().err
    doc = json.loads(summary.read_text())
    assert doc["halted"] == err.strip() and "nothing was sent" in doc["halted"], (doc, err)
    assert {k: v for k, v in doc.items() if k != "halted"} == {
        "version": "0.2.0", "landed": [], "failed": {}, "pending": [], "untouched": ["gas-01"],
        "stages": [{"name": "canary", "devices": ["gas-01"]}], "rolled_back": {}}


@pytest.mark.parametrize("user, password", [("gateway", "not-the-password"), ("nobody", "right")])
def test_a_site_broker_that_refuses_the_login(tmp_path: Path, capsys: pytest.CaptureFixture[str], user: str,
                                               password: str) -> None:
    """A wrong password or user in site.toml ends the rollout before any send, in one line naming the broker
    and the broker's reason, exit 1 (as an unreachable broker); it was a RuntimeError traceback at the send."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gateway", "right"], check=True, capture_output=True)
    served = release_dir(tmp_path / "0.2.0")
    with Mosquitto(extra_conf=f"password_file {passwd}", anonymous=False) as broker:
        config = site(tmp_path, served, broker.port, f'username = "{user}"\npassword = "{password}"\n')
        assert rollout(config, served) == 1
    out, err = capsys.readouterr()
    assert err == (f"site_broker 127.0.0.1:{broker.port}: refused the login (Not authorized; user '{user}'): check "
                   f"site_broker username and password in {config}; nothing was sent\n")
    assert "sending" not in out


def test_a_summary_it_could_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--summary in a directory that is not there is refused before anything is sent: it was found only after
    the whole rollout, as a FileNotFoundError traceback, and the outcome was not written anywhere."""
    served = release_dir(tmp_path / "0.2.0")
    summary = tmp_path / "no-such-dir" / "summary.json"
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout",
                         "1", "--summary", str(summary)]) == 2
    out, err = capsys.readouterr()
    assert err == f"--summary: {summary.parent} is no directory it can write in\n" and "sending" not in out, out


def test_a_summary_that_names_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--summary out/ (a directory, not a file in it) passed the check of its parent and was found only after the
    whole rollout, when the rename onto the directory failed: exit 1 and no summary. Refused before any send."""
    served = release_dir(tmp_path / "0.2.0")
    summary = tmp_path / "out"
    summary.mkdir()
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout",
                         "1", "--summary", str(summary)]) == 2
    out, err = capsys.readouterr()
    assert err == f"--summary: {summary} is a directory; name a file in it\n" and "sending" not in out, out


@pytest.mark.parametrize("option, value", [("--poll", "-1"), ("--poll", "nan"), ("--stage-timeout", "-5"),
                                           ("--resend-s", "inf"), ("--stage-timeout", "1e300"),
                                           ("--stage-timeout", "604801"), ("--poll", "1e300"),
                                           ("--resend-s", "1e300")])
def test_a_time_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                      value: str) -> None:
    """Refused before anything is sent: --poll -1 sent the canary its command and then ended in a ValueError
    traceback at the first sleep (--poll 1e300 in an OverflowError one); a negative --stage-timeout failed every
    node it was sent to, and a huge one sent a command whose expiry no node takes (past 64 bits) and then waited
    for ever. Each is bounded as the desk bounds a stage: a week at most."""
    served = release_dir(tmp_path / "0.2.0")
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout",
                         "1", option, value]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"{option}: ") and len(err.splitlines()) == 1 and "sending" not in out, (out, err)


def test_a_negative_wave(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--wave -1 was taken as 0, all the nodes after the canary in one stage: a typo undid the staging the
    operator asked for. Refused before anything is sent, as the desk refuses it (district/rollout.py)."""
    served = release_dir(tmp_path / "0.2.0")
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout",
                         "1", "--wave", "-1"]) == 2
    out, err = capsys.readouterr()
    assert err == "--wave: a number of nodes a stage after the canary (0: all the rest), not -1\n", err
    assert "sending" not in out, out


def test_a_store_path_that_is_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """site.toml's [store] path naming something that is not the gateway's SQLite store (a copied site.toml):
    one line, exit 2, before any send; it was a sqlite3.DatabaseError traceback at the first read."""
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served)
    (tmp_path / "gw.db").write_text("not a database, but long enough that SQLite reads its header " * 4)
    assert rollout(config, served) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'gw.db'}: cannot read it as a gateway store (") and err.count("\n") == 1, err


def test_nothing_to_update_still_writes_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A release for no node of the site (another class here; or every node runs it already): "nothing to
    update", exit 0, and the summary written with nothing sent. It was not written at all, and a script reading
    it after the rollout failed on a missing file, or read the last rollout's."""
    served = release_dir(tmp_path / "0.2.0", b'{"version":"0.2.0","profiles":["water"],"files":[]}')
    summary = tmp_path / "summary.json"
    summary.write_text('{"version": "0.1.0", "landed": ["gas-01"]}')  # the last rollout's
    config = site(tmp_path, served)  # no broker: nothing is sent, so none is asked
    assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--summary",
                     str(summary)]) == 0
    assert "nothing to update" in capsys.readouterr().out
    assert json.loads(summary.read_text()) == {"version": "0.2.0", "halted": "", "landed": [], "failed": {},
                                               "pending": [], "untouched": [], "stages": [], "rolled_back": {}}


def test_a_stage_that_waits_says_how_far_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage waits up to --stage-timeout (900 s by default, to cover a sleeping node's wake): after a node's
    "waiting" nothing was printed until the stage ended, and a quarter of an hour of silence looked like a hang.
    It says how far the stage is every PROGRESS_S (60 s; 1 s here)."""
    monkeypatch.setattr(ota, "PROGRESS_S", 1.0)
    served = release_dir(tmp_path / "0.2.0")
    with Mosquitto() as broker:  # no node on it: gas-01 never answers
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout",
                         "3.5", "--poll", "0.2"]) == 1
    out = capsys.readouterr().out
    told = [line for line in out.splitlines() if line.startswith("canary: 0 landed, 0 failed, 1 waiting; ")]
    assert len(told) >= 2 and all(line.endswith(" s left of --stage-timeout") for line in told), out


def test_a_store_in_a_directory_it_may_not_enter(tmp_path: Path) -> None:
    """Run by an operator who may not enter the gateway's state directory (0750): a PermissionError traceback
    from the look for the store. One line naming it, exit 2, before anything is sent (root without the
    capabilities that let it past file modes is such an operator)."""
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served)
    locked = tmp_path / "state"
    locked.mkdir()
    (tmp_path / "gw.db").rename(locked / "gw.db")
    config.write_text(config.read_text().replace(str(tmp_path / "gw.db"), str(locked / "gw.db")))
    locked.chmod(0)
    caps = "-dac_override,-dac_read_search"
    try:
        done = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *lifeline_cmd(), "ota",
                               "rollout", "--config", str(config), "--release", str(served)],
                              capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2 and done.stderr == f"{locked / 'gw.db'}: cannot reach it (Permission denied)\n", (
        done.stderr)


def test_a_summary_in_a_directory_it_may_not_enter(tmp_path: Path) -> None:
    """--summary below a directory the operator may not enter: is_dir raised PermissionError, a traceback. The
    usage error of a summary it cannot write, before anything is sent."""
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served)
    summary = tmp_path / "locked" / "out" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.parent.parent.chmod(0)
    caps = "-dac_override,-dac_read_search"
    try:
        done = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *lifeline_cmd(), "ota",
                               "rollout", "--config", str(config), "--release", str(served), "--summary",
                               str(summary)], capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60)
    finally:
        summary.parent.parent.chmod(0o700)
    assert done.returncode == 2 and done.stderr == f"--summary: {summary.parent} is no directory it can write in\n", (
        done.stderr)


@pytest.mark.parametrize("version", ["0.2.0[/]", "0.2.0-beta"])
def test_a_release_whose_version_no_node_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               version: str) -> None:
    """A release directory whose manifest names a version that is not numbers and dots (a hand-made one; `release
    build` refuses them): every node refuses it ("not numbers and dots"), so the canary failed and the rollout
    halted, and one with "[/]" in it ended in a MarkupError traceback as the canary stage began. Refused before
    anything is sent, one line, exit 2."""
    manifest = json.dumps({"version": version, "profiles": ["gas"], "files": []}).encode()
    served = release_dir(tmp_path / "next", manifest)
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert rollout(config, served) == 2
    out, err = capsys.readouterr()
    assert err == f"{served}: version {version!r} is not numbers and dots: every node refuses it\n", err
    assert "sending" not in out, out


@pytest.mark.parametrize("canary", ["some", "-2", "-10%", "nan%"])
@pytest.mark.parametrize("profiles", [["gas"], ["rain"]])  # gas-01 to update; nothing to update
def test_a_canary_that_is_no_count_or_share(tmp_path: Path, capsys: pytest.CaptureFixture[str], canary: str,
                                            profiles: list[str]) -> None:
    """A usage error whether or not there is anything to update: with nothing to update, --canary some passed
    (exit 0, the summary written) and a script's typo was found only at the next release; and -2 or -10% was
    taken as a canary of one node, where every other option of this one refuses a negative number."""
    manifest = json.dumps({"version": "0.2.0", "profiles": profiles, "files": []}).encode()
    served = release_dir(tmp_path / "0.2.0", manifest)
    summary = tmp_path / "summary.json"
    assert cli.main(["ota", "rollout", "--config", str(site(tmp_path, served)), "--release", str(served),
                     f"--canary={canary}", "--summary", str(summary)]) == 2
    out, err = capsys.readouterr()
    assert err == f"--canary {canary!r}: a number of nodes or a share like 10%\n", err
    assert "nothing to update" not in out and not summary.exists(), out


def test_a_manifest_nested_past_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest.json of 100,000 nested arrays (hostile, or a file that is no manifest) ended in a RecursionError
    traceback, in the gateway's config check as in this command; one line, exit 2, as any manifest it cannot
    read."""
    served = release_dir(tmp_path / "0.2.0", b"[" * 100_000 + b"]" * 100_000)
    assert rollout(site(tmp_path, served), served) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{served} is not a release directory (nested too deeply" in err, err
