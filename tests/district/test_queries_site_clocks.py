"""District-wide response times beside a site whose clock is wrong, on a real database (both engines)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine

from district import queries, store, workorders
from district.accounts import Session
from district.metrics import DistrictCollector

OPERATOR = Session("t", "li.wei", "supervisor", "c")
HONEST = ("s1", "s2", "s3")
# what each site's gateway clock reads against the district's: hours behind, an hour ahead, and a hostile site's
# absurd times (its reading in 1970, its raise in 5138)
SKEWED = {"behind": -3 * 3600.0, "ahead": 3600.0, "hostile": None}


def test_a_site_clock_hours_off_or_absurd_moves_no_district_wide_response_time(engine: Engine) -> None:
    """Four red alarms at each of three honest sites and three that are not: one whose clock is three hours
    behind, one an hour ahead, one sending absurd times. Each reaches the district half a second after its
    reading and the officer acknowledges it 20-23 s later. alarm -> ack was acked minus the gateway's raise:
    the site behind put 3 h on the red p90 and max, and the other two's came out negative and were silently
    dropped; sample -> desk counted the site behind's 3 h. Now alarm -> ack is the district's own times and
    counts every alarm, and sample -> desk (the reading's time, which only the site has) counts only where the
    site's clock agrees with the district's, on the desk and in Prometheus alike."""
    now = time.time()
    expected_ack, expected_sample = [], []
    with engine.begin() as conn:
        for k, site in enumerate((*HONEST, *SKEWED)):
            for i in range(4):
                received = now - 1000 + 50 * i + k
                t_dev, t_gw = received - 0.5 - 0.1 * i, received - 0.2
                if site in SKEWED:
                    off = SKEWED[site]
                    t_dev, t_gw = (1.0, 1e11) if off is None else (t_dev + off, t_gw + off)
                else:
                    expected_sample.append(0.5 + 0.1 * i)
                store.apply_alarm(conn, site, {"id": f"{site}-{i}", "ev": "raised", "kind": "level", "dev": "gas1",
                                               "cls": "gas", "metric": "ch4", "level": "red", "t_gw": t_gw,
                                               "t_dev": t_dev}, received=received)
                workorders.ack_alarm(conn, f"{site}-{i}", OPERATOR, now=received + 20 + i)
                expected_ack.append(20.0 + i)
    with store.reader(engine) as conn:
        red = queries.response_values(conn)["colour"]["red"]
        per_site = queries.response_values(conn)["site"]
    assert sorted(red["alarm_ack"]) == pytest.approx(sorted(expected_ack))
    assert sorted(red["sample_desk"]) == pytest.approx(sorted(expected_sample))
    assert sorted(per_site["behind"]["alarm_ack"]) == pytest.approx([20.0, 21.0, 22.0, 23.0])
    scrape = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for m in DistrictCollector(engine).collect() for s in m.samples}
    for measure, values in (("alarm_ack", expected_ack), ("sample_desk", expected_sample)):
        labels = (("by", "colour"), ("key", "red"), ("measure", measure))
        assert scrape[("lifeline_district_response_seconds_count", labels)] == len(values)
        assert scrape[("lifeline_district_response_seconds_sum", labels)] == pytest.approx(sum(values))
