"""The desk's history of one sensor (`/api/history`), on SQLite and PostgreSQL, through the desk app in process
over a real database: a boolean series charts as 0 and 1; the rollups in the window are all there, the bucket
the window starts in among them, whatever raw readings arrived late and wait for the next fold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from deskkit import PASSWORD, USERS, seed
from sqlalchemy import Engine
from starlette.testclient import TestClient

from district import retention, store
from district.desk import make_app
from district.downlink import Downlink
from district.live import Hub
from district.schema import rollups

ROLLUP_S = 300  # district.toml's default [retention] rollup_s, which the desk is made with here


async def _nowhere(topic: str, payload: bytes) -> None:
    raise AssertionError(f"nothing goes down here: {topic}")


@pytest.fixture
def viewer(engine: Engine) -> Iterator[TestClient]:
    seed(engine, time.time())
    client = TestClient(make_app(engine, hub=Hub(), downlink=Downlink(_nowhere), rollouts=False),
                        raise_server_exceptions=False)
    assert client.post("/api/login", json={"user": USERS["viewer"], "password": PASSWORD}).status_code == 200
    yield client


def history(client: TestClient, dev: str, metric: str, t_from: float, t_to: float) -> dict[str, Any]:
    r = client.get("/api/history", params={"site": "s1", "dev": dev, "metric": metric, "from": t_from, "to": t_to})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def rollup(engine: Engine, dev: str, metric: str, t: float, mean: float) -> None:
    with engine.begin() as conn:
        conn.execute(rollups.insert().values(site="s1", dev=dev, n=metric, t=t, count=10, numbers=10, min=mean - 1,
                                             max=mean + 1, mean=mean, u="m"))


def test_the_bucket_the_window_starts_in_is_in_its_history(viewer: TestClient, engine: Engine) -> None:
    """It holds readings inside the window; one that ends where the window starts does not."""
    t0 = 1_700_000_100.0 - 1_700_000_100.0 % ROLLUP_S
    for k in range(-1, 4):
        rollup(engine, "gas1", "ch4", t0 + k * ROLLUP_S, float(k))
    h = history(viewer, "gas1", "ch4", t0 + 100, t0 + 4 * ROLLUP_S)
    assert [r["t"] for r in h["rollups"]] == [t0 + k * ROLLUP_S for k in range(4)]
    h = history(viewer, "gas1", "ch4", t0, t0 + 4 * ROLLUP_S)
    assert [r["t"] for r in h["rollups"]] == [t0 + k * ROLLUP_S for k in range(4)]


def test_a_late_raw_reading_hides_no_rollups(viewer: TestClient, engine: Engine) -> None:
    """A backlog reading older than the raw retention waits in `readings` until the next fold (up to ten
    minutes, longer while the fold catches up): every rollup newer than it vanished from the chart meanwhile,
    a gap of days in a long window where the district holds the data."""
    t0 = 1_700_000_100.0 - 1_700_000_100.0 % ROLLUP_S
    for k in range(10):
        rollup(engine, "gas1", "ch4", t0 + k * ROLLUP_S, float(k))
    recent = t0 + 40 * 86_400
    with engine.begin() as conn:
        store.add_message(conn, "s1", "gas1", 1, 1, [{"n": "ch4", "t": recent, "u": "m", "v": 5.0}], received=recent)
        store.add_message(conn, "s1", "gas1", 2, 1, [{"n": "ch4", "t": t0 + 2 * ROLLUP_S + 7, "u": "m", "v": 2.5}],
                          received=recent, hist=True)
    h = history(viewer, "gas1", "ch4", t0, recent + 60)
    assert [r["t"] for r in h["rollups"]] == [t0 + k * ROLLUP_S for k in range(10)]
    assert h["readings"] == [[t0 + 2 * ROLLUP_S + 7, 2.5], [recent, 5.0]]


def test_a_boolean_series_charts_as_zero_and_one(viewer: TestClient, engine: Engine) -> None:
    """A float switch or a door contact (SenML vb): its readings were left out, an empty chart."""
    t0 = time.time() - 3600
    flips = [False, True, True, False, True]
    with engine.begin() as conn:
        for i, closed in enumerate(flips):
            store.add_message(conn, "s1", "gas1", i, 1, [{"n": "cover", "t": t0 + i * 60, "vb": closed},
                                                         {"n": "ch4", "t": t0 + i * 60, "u": "%LEL", "v": 1.5}],
                              received=t0 + i * 60)
    h = history(viewer, "gas1", "cover", t0 - 60, t0 + 600)
    assert h["readings"] == [[t0 + i * 60, int(closed)] for i, closed in enumerate(flips)]
    assert h["boolean"] is True
    h = history(viewer, "gas1", "ch4", t0 - 60, t0 + 600)
    assert h["boolean"] is False and h["readings"][0] == [t0, 1.5]


def test_a_folded_boolean_series_charts_the_share_true(viewer: TestClient, engine: Engine) -> None:
    """Folded, a boolean counts as 0 or 1, as the gateway's thinning counts it (docs/outbox.md): a bucket's
    mean is the share of its readings that were true, and min and max say whether it was ever false or true.
    It kept only its count, and a chart of its older spans had nothing to draw."""
    t0 = 1_700_000_100.0 - 1_700_000_100.0 % ROLLUP_S
    with engine.begin() as conn:
        for i, closed in enumerate([False, True, True, False, True, True]):
            store.add_message(conn, "s1", "gas1", i, 1, [{"n": "cover", "t": t0 + i * 100, "vb": closed}],
                              received=t0)
        assert retention.fold(conn, now=t0 + 40 * 86_400, raw_days=30, rollup_s=ROLLUP_S) == 6
    h = history(viewer, "gas1", "cover", t0, t0 + 2 * ROLLUP_S)
    assert [(r["t"], r["count"], r["min"], r["max"], r["mean"]) for r in h["rollups"]] == [
        (t0, 3, 0.0, 1.0, pytest.approx(2 / 3)), (t0 + ROLLUP_S, 3, 0.0, 1.0, pytest.approx(2 / 3))]
