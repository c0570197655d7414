"""Each district test runs on both engines: SQLite (the default) and a real PostgreSQL on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from district import accounts
from district.schema import metadata
from district.store import open_engine
from lifeline.virtual.postgres import Postgres


@pytest.fixture(autouse=True)
def least_hash_cost() -> None:
    """Passwords hashed at the least cost district.toml allows: at argon2-cffi's default each of the tests'
    many logins took 0.17 s of a core, most of the district tests' CPU time."""
    accounts.set_cost(accounts.LEAST_MEMORY_KIB, accounts.LEAST_TIME_COST)


@pytest.fixture
def engine_url(engine: Engine) -> str:
    """What store.open_engine takes to open the test's database again, as a service started anew would."""
    if engine.dialect.name == "postgresql":
        return engine.url.render_as_string(hide_password=False)
    return str(engine.url.database)


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
