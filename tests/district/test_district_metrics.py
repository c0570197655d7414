"""The district's Prometheus metrics over a real PostgreSQL, read through prometheus_client's own exposition."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

from district import store
from district.metrics import DistrictCollector
from district.schema import metadata
from lifeline.virtual.postgres import Postgres


def test_a_scrape_the_database_fails_says_so_in_one_line_and_the_next_one_reads_it(
        postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    """The server ended the desk's pooled connections (a restart, a failover): the scrape raised, the metrics
    server printed a traceback and Prometheus saw the whole target down. The scrape now answers
    lifeline_district_database_up 0 with one metrics-db-failed line, and the next one reads the database."""
    engine = store.open_engine(postgres.url)
    registry = CollectorRegistry()
    registry.register(DistrictCollector(engine))
    caplog.set_level(logging.INFO, logger="lifeline.district")
    try:
        assert b"lifeline_district_database_up 1.0" in generate_latest(registry)
        admin = store.open_engine(postgres.url)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                              "datname = current_database() AND pid <> pg_backend_pid()"))
            conn.commit()
        admin.dispose()
        failed = generate_latest(registry).decode()
        assert "lifeline_district_database_up 0.0" in failed and "messages_total" not in failed, failed
        again = generate_latest(registry).decode()
        assert "lifeline_district_database_up 1.0" in again and "lifeline_district_messages_total 0.0" in again
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    [line] = [r for r in caplog.records if r.getMessage() == "metrics-db-failed"]
    assert "terminat" in line.fields["error"], line.fields  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info]
