"""Fixtures the virtual-device suites share: the firmware built once per module, and a fresh broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.firmware import build_firmware


@pytest.fixture(scope="module")
def mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_firmware(tmp_path_factory.mktemp("mpy"))


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b
