"""Each district test runs on both engines: SQLite (the default) and a real PostgreSQL on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from district.schema import metadata
from district.store import open_engine
from lifeline.virtual.postgres import Postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_engine(str(tmp_path / "district.sqlite"))
    else:
        eng = open_engine(request.getfixturevalue("postgres").url)
    yield eng
    if request.param == "postgresql":
        metadata.drop_all(eng)  # the next test starts from an empty database on the same server
    eng.dispose()
