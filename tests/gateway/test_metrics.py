"""The commit-time histogram: counted on the event loop, exposed as a Prometheus histogram from a snapshot."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from gateway.metrics import Durations, Metrics, Snapshot


def test_durations_count_each_commit_under_its_bound_and_cumulate() -> None:
    d = Durations((0.001, 0.05, 1.0))
    for seconds in (0.0004, 0.001, 0.02, 0.05, 0.11, 3.0):  # a bound itself falls in its own bucket (le)
        d.observe(seconds)
    assert d.buckets() == [("0.001", 2.0), ("0.05", 4.0), ("1.0", 5.0), ("+Inf", 6.0)]
    assert abs(d.total - 3.1814) < 1e-9


def test_the_scrape_shows_the_commit_histogram_of_the_last_snapshot() -> None:
    metrics = Metrics()
    assert b"lifeline_store_commit_seconds" not in generate_latest(metrics.registry)  # no commit yet
    d = Durations()
    for seconds in (0.0005, 0.0007, 0.11):  # two healthy fsyncs and one that would hold up an alarm
        d.observe(seconds)
    metrics.update(Snapshot(commit_buckets=tuple(d.buckets()), commit_seconds=d.total))
    text = generate_latest(metrics.registry).decode()
    assert 'lifeline_store_commit_seconds_bucket{le="0.001"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.1"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.25"} 3.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="+Inf"} 3.0' in text
    assert "lifeline_store_commit_seconds_count 3.0" in text
    total = re.search(r"^lifeline_store_commit_seconds_sum (\S+)$", text, re.M)
    assert total and abs(float(total[1]) - 0.1112) < 1e-9
