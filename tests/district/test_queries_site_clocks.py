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


def test_the_board_orders_alarms_by_when_the_district_heard_of_them_not_by_a_site_clock(engine: Engine) -> None:
    """Red alarms of two honest sites, of a site whose clock is three hours behind (its red brand new) and of one
    an hour ahead (its red heard 45 min ago), with an honest orange older than all, and a historical and an
    inhibited red older still. Ordered by the gateway's `raised` within a colour, the new red of the site behind
    went to the top of the board, above reds the district had had for an hour, and the site ahead's below reds
    heard after it. Now the district's own time of first hearing each (`received`) orders the live ones; the
    orange follows every red, and the historical and inhibited ones come last; the map lists them the same."""
    now = time.time()
    heard = {"s1-red": ("s1", "red", now - 3600, 0.0), "ahead-red": ("ahead", "red", now - 2700, SKEWED["ahead"]),
             "s2-red": ("s2", "red", now - 1800, 0.0), "behind-red": ("behind", "red", now - 10, SKEWED["behind"]),
             "s3-orange": ("s3", "orange", now - 5000, 0.0), "s1-hist": ("s1", "red", now - 7000, 0.0),
             "s2-inhibited": ("s2", "red", now - 6000, 0.0)}
    with engine.begin() as conn:
        for alarm_id, (site, level, received, off) in heard.items():
            body = {"id": alarm_id, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4",
                    "level": level, "t_gw": received - 0.2 + off, "t_dev": received - 0.5 + off, "pos": [52.5, 13.4]}
            store.apply_alarm(conn, site, body, received=received, hist=alarm_id == "s1-hist")
        store.apply_alarm(conn, "s2", {"id": "s2-inhibited", "ev": "inhibited", "kind": "level", "dev": "gas1",
                                       "level": "red", "t_gw": now - 5999}, received=now - 5999)
    with store.reader(engine) as conn:
        board = [a["id"] for a in queries.open_alarms(conn, {})]
        mapped = [a["id"] for a in queries.map_view(conn, {})["alarms"]]
    assert board == ["s1-red", "ahead-red", "s2-red", "behind-red", "s3-orange", "s1-hist", "s2-inhibited"]
    assert mapped == board
