"""What the OTA suites share: the firmware built once per module, a broker, a release key, releases built by
`lifeline release` from the firmware as it is or with one module changed, and a relay that serves them the
way the gateway does (gateway/ota_relay.py over paho)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_support import Build, Relay

from lifeline import release, upy
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_firmware


@pytest.fixture(scope="module")
def mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_firmware(tmp_path_factory.mktemp("mpy"))


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def make_release(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> Build:
    """build(version, signer=, profiles=, min_heap=, patch={module path: (old, new)}): a release of the firmware,
    with text replaced in the named modules of firmware/lib when `patch` says so."""

    def build(version: str, signer: Ed25519PrivateKey | None = None, patch: dict[str, tuple[str, str]] | None = None,
              **kw: Any) -> release.Release:
        out = tmp_path_factory.mktemp("release")
        lib = upy.FIRMWARE / "lib"
        if patch:
            lib = out / f"src-{version}"
            shutil.copytree(upy.FIRMWARE / "lib", lib)
            for rel, (old, new) in patch.items():
                text = (lib / rel).read_text()
                assert old in text, f"{rel}: {old!r} not found"
                (lib / rel).write_text(text.replace(old, new))
        return release.build(signer or key, version, out, lib=lib, **kw)

    return build


@pytest.fixture
def relay(broker: Mosquitto) -> Iterator[Relay]:
    r = Relay(broker.port)
    yield r
    r.close()
