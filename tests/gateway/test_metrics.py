"""The commit-time histogram as a scrape shows it: the bounds the bench and an operator read, and the counts."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from gateway.metrics import COMMIT_BUCKETS, Metrics


def test_the_scrape_shows_each_commit_under_its_bound() -> None:
    metrics = Metrics()
    assert 0.025 in COMMIT_BUCKETS  # the bound bench.gateway_throughput counts slow commits by
    assert "lifeline_store_commit_seconds_count 0.0" in generate_latest(metrics.registry).decode()
    for seconds in (0.0005, 0.001, 0.11):  # two healthy fsyncs (a bound falls in its own bucket), one slow
        metrics.commit_seconds.observe(seconds)
    text = generate_latest(metrics.registry).decode()
    assert 'lifeline_store_commit_seconds_bucket{le="0.001"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.025"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.1"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.25"} 3.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="+Inf"} 3.0' in text
    assert "lifeline_store_commit_seconds_count 3.0" in text
    total = re.search(r"^lifeline_store_commit_seconds_sum (\S+)$", text, re.M)
    assert total and abs(float(total[1]) - 0.1115) < 1e-9
