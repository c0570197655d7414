"""The systemd unit works as shipped (issue 18): systemd-analyze accepts it, the shipped sysusers file creates
its user, and its ExecStart, run as that user, reads the files `lifeline site-auth` and the shipped tmpfiles
rules leave, and forwards a device's reading to the district. No systemd runs here (no PID 1), so the test
does what systemd would: the user, the tmpfiles rules, the StateDirectory, then ExecStart under runuser."""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from lifeline.virtual.site import Site, reading
from protocol import district as dtopics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "lifeline-gateway.service"
INSTALL = "/opt/lifeline"  # where the unit expects the checkout and its .venv


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


@pytest.mark.parametrize("name", ["lifeline-gateway.service", "lifeline-district-worker@.service",
                                  "lifeline-district-desk.service"])
def test_the_unit_verifies(tmp_path: Path, name: str) -> None:
    shipped = DEPLOY / name
    unit = tmp_path / name.replace("@.", "@1.")  # a template is verified as one of its instances
    unit.write_text(shipped.read_text().replace(INSTALL, str(ROOT)))  # the only change: where it is installed
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    users = [line.split()[1] for line in (DEPLOY / "sysusers.d" / "lifeline.conf").read_text().splitlines()
             if line.startswith("u ")]
    assert [line.split("=", 1)[1] for line in shipped.read_text().splitlines() if line.startswith("User=")] == users


@pytest.mark.parametrize("name", ["lifeline-district-worker@.service", "lifeline-district-desk.service"])
def test_a_district_start_has_a_finite_timeout(name: str) -> None:
    """Type=notify puts a start under TimeoutStartSec until READY=1, which a worker or the desk sends once its
    database is open. Without one (47f8e06's infinity, for an older database's index builds) a start that hung
    was never noticed nor restarted; each step of such a build now extends the timeout by its own allowance
    (store.open_engine; tests/test_service_start.py), so the start keeps a minute's."""
    lines = (DEPLOY / name).read_text().splitlines()
    assert "Type=notify" in lines
    assert [line for line in lines if line.startswith("TimeoutStartSec=")] == ["TimeoutStartSec=60"]


def test_sysusers_creates_the_units_user() -> None:
    sysusers = (DEPLOY / "sysusers.d" / "lifeline.conf").read_text().splitlines()
    users = [line.split()[1] for line in sysusers if line.startswith("u ")]
    assert users == unit_values("User") == unit_values("Group")


def install_as_shipped(opt: Path) -> None:
    """/opt/lifeline as the unit expects it: a venv of the system Python whose packages are this checkout's.
    This run's own venv cannot serve: its interpreter may live where the unit's user cannot reach (pyenv
    under /root)."""
    system = Path("/usr/bin/python3")
    version = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert version == str(sys.version_info[:2]), f"{system} is {version}; the packages here are for another"
    venv = opt / ".venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "lifeline-checkout.pth").write_text(
        f"{ROOT}\nimport site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    script = venv / "bin" / "lifeline"  # what pip writes for [project.scripts]
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom lifeline.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a system user and running as it needs root (CI runs as root)")


def test_exec_start_runs_as_the_unit_user_and_forwards() -> None:
    _as_root()
    subprocess.run(["systemd-sysusers", str(DEPLOY / "sysusers.d" / "lifeline.conf")], check=True)
    user = pwd.getpwnam(unit_values("User")[0])
    base = Path(tempfile.mkdtemp(prefix="lifeline-unit-", dir="/tmp"))
    base.chmod(0o755)  # pytest's tmp_path is root's alone; the user must reach the files below
    site = Site(base / "site")
    site.add("gas1", "gas")
    try:
        site.start()  # runs site-auth's generator into site/auth, as `lifeline site-auth --out` would
        etc = base / "etc" / "lifeline"
        (etc / "tls").mkdir(parents=True)
        tls = {name: etc / "tls" / site.pki[name].name for name in ("ca", f"{site.id}.crt", f"{site.id}.key")}
        for name, dest in tls.items():
            shutil.copy(site.pki[name], dest)
        state = base / "var" / "lib" / "lifeline"  # StateDirectory=lifeline, StateDirectoryMode=0750
        state.mkdir(parents=True)
        os.chown(state, user.pw_uid, user.pw_gid)
        state.chmod(0o750)
        text = site.config_path.read_text()
        for old, new in [('"auth/gateway.password"', f'"{site.dir / "auth" / "gateway.password"}"'),
                         ('path = "gateway.sqlite"', f'path = "{state / "gateway.sqlite"}"'),
                         *[(f'"{site.pki[name]}"', f'"{dest}"') for name, dest in tls.items()]]:
            assert old in text, old
            text = text.replace(old, new)
        (etc / "site.toml").write_text(text)
        install_as_shipped(base / "opt" / "lifeline")
        (exec_start,) = unit_values("ExecStart")
        argv = [arg.replace(INSTALL, str(base / "opt" / "lifeline")).replace("/etc/lifeline", str(etc))
                for arg in shlex.split(exec_start)]
        runuser = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user.pw_name, "--"]
        env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        # Before the tmpfiles rules: site-auth left gateway.password 0600 root, and the gateway says so.
        refused = subprocess.run([*runuser, *argv], capture_output=True, text=True, env=env, cwd="/", timeout=60)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "password_file: cannot read" in refused.stdout + refused.stderr
        # The shipped tmpfiles rules, aimed at this run's copies of /etc/lifeline and /etc/mosquitto/lifeline.
        rules = base / "tmpfiles.conf"
        rules.write_text((DEPLOY / "tmpfiles.d" / "lifeline.conf").read_text()
                         .replace("/etc/lifeline", str(etc))
                         .replace("/etc/mosquitto/lifeline", str(site.dir / "auth")))
        subprocess.run(["systemd-tmpfiles", "--create", str(rules)], check=True)
        assert (site.dir / "auth" / "passwords.json").stat().st_mode & 0o077 == 0  # the others' stay private

        log = base / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*runuser, *argv], stdout=out, stderr=out, cwd="/", env=env,
                                    start_new_session=True)
        rec = site.recorder()
        try:
            assert rec.wait(lambda: 'event="uplink connected"' in log.read_text() or proc.poll() is not None, 30)
            assert proc.poll() is None, log.read_text()[-3000:]
            assert rec.wait(rec.subscribed.is_set, 10)
            async def publish() -> int:
                async with site.device_client("gas1") as client:
                    topic, payload, seq = site.data("gas1", [reading("ch4", 1.5, "%LEL")])
                    await client.publish(topic, payload, qos=1)
                    return seq

            seq = asyncio.run(publish())

            def arrived() -> list[dict[str, object]]:
                return [p for e in rec.entries(dtopics.TELEMETRY) for p in e.body["packs"]]

            assert rec.wait(lambda: bool(arrived()), 20), log.read_text()[-3000:]
            assert [(p["dev"], p["seq"]) for p in arrived()] == [("gas1", seq)]
            owner = (state / "gateway.sqlite").stat()
            assert (owner.st_uid, owner.st_gid) == (user.pw_uid, user.pw_gid)  # it ran as the unit's user
        finally:
            rec.close()
            os.killpg(proc.pid, 15)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    finally:
        site.stop()
        shutil.rmtree(base, ignore_errors=True)
