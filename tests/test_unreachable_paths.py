"""A path the operator names inside a directory they may not enter (the gateway's state directory is 0750, a
colleague's home): each tool says so in one line, exit 2, as for any usage error. Path.exists, is_file and
is_dir raise PermissionError there, and each was a traceback. Run as root without the capabilities that let
root past file modes, which is what such an operator has."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.virtual.site import ROOT, environment, lifeline_cmd

CAPS = "-dac_override,-dac_read_search"


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "district-release.key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key


FLASH = ["flash", "--port", "/dev/null", "--profile", "gas", "--device-id", "gas-01", "--site", "site-a",
         "--broker", "127.0.0.1:1883"]
CASES: dict[str, Callable[[Path, Path], list[str]]] = {
    "flash --registry": lambda tmp, locked: [*FLASH, "--registry", str(locked / "registry.toml")],
    "flash --image": lambda tmp, locked: [*FLASH, "--no-registry", "--image", str(locked / "micropython.bin")],
    "release keygen --out": lambda tmp, locked: ["release", "keygen", "--out", str(locked / "release.key")],
    "release build --out": lambda tmp, locked: ["release", "build", "--key", str(_key(tmp)), "--version", "0.2.0",
                                                "--out", str(locked / "releases")],
    "demo --out": lambda tmp, locked: ["demo", "--plain", "--out", str(locked / "demo")],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_path_in_a_directory_it_may_not_enter(tmp_path: Path, case: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = CASES[case](tmp_path, locked)
    locked.chmod(0)
    try:
        done = subprocess.run(["setpriv", f"--inh-caps={CAPS}", f"--bounding-set={CAPS}", *lifeline_cmd(), *argv],
                              capture_output=True, text=True, env={**environment(), "COLUMNS": "300"}, cwd=ROOT,
                              timeout=120)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2, done.stderr
    assert "Permission denied" in done.stderr and done.stderr.count("\n") == 1, done.stderr
