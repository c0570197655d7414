"""Prometheus metrics of the district, read from the database at each scrape.

Workers run in several processes, maybe on several machines; the database is what they share, so the
figures come from it and any desk process can serve them, all alike. Ingest rate is `rate()` of the
messages counter; response times are the desk's own measures (district/queries.py), as histograms whose
buckets span the seeds' scales: seconds to the desk, minutes to an answer, hours to a closed order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from district import queries, store
from district.schema import alarms, messages, refusals, sites
from gateway.logs import event

log = logging.getLogger("lifeline.district.metrics")

BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def _buckets(values: list[float]) -> list[tuple[str, float]]:
    """Cumulative counts per upper bound, +Inf last, as the exposition format wants them."""
    ordered = sorted(values)
    out, i = [], 0
    for bound in BUCKETS:
        while i < len(ordered) and ordered[i] <= bound:
            i += 1
        out.append((str(bound), float(i)))
    out.append(("+Inf", float(len(ordered))))
    return out


class DistrictCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failing = False  # the last scrape's read failed: logged once until one succeeds

    def collect(self) -> Iterator[Metric]:
        """`lifeline_district_database_up` 1 and the figures, or 0 alone when the database failed the read (one
        line at the first such scrape): raised, each scrape printed a traceback and the whole target was down."""
        up = "lifeline_district_database_up"
        try:
            with store.reader(self.engine) as conn:
                stored = conn.execute(select(func.count()).select_from(messages)).scalar_one()
                refused = conn.execute(select(refusals.c.reason, func.count()).group_by(refusals.c.reason)).all()
                online = conn.execute(select(func.count()).select_from(sites).where(sites.c.online)).scalar_one()
                known = conn.execute(select(func.count()).select_from(sites)).scalar_one()
                open_by = conn.execute(select(alarms.c.level, func.count()).where(alarms.c.state == "open",
                                                                                 alarms.c.hist.is_(False))
                                       .group_by(alarms.c.level)).all()
                times = queries.response_values(conn)
        except store.DB_FAILED as exc:
            if not self.failing:
                event(log, "metrics-db-failed", logging.WARNING, error=store.failure(exc))
            self.failing = True
            yield GaugeMetricFamily(up, "Whether the last scrape read the district's database", value=0)
            return
        if self.failing:
            event(log, "metrics-db-recovered")
        self.failing = False
        yield GaugeMetricFamily(up, "Whether the last scrape read the district's database", value=1)
        yield CounterMetricFamily("lifeline_district_messages", "Device messages stored (once each)", value=stored)
        c = CounterMetricFamily("lifeline_district_refusals", "Upstream items refused, by reason", labels=["reason"])
        for reason, n in refused:
            c.add_metric([reason], n)
        yield c
        yield GaugeMetricFamily("lifeline_district_sites_online", "Site gateways whose last word was a birth",
                                value=online)
        yield GaugeMetricFamily("lifeline_district_sites", "Site gateways heard of", value=known)
        g = GaugeMetricFamily("lifeline_district_alarms_open", "Live alarms open, by level", labels=["level"])
        counts: dict[str, int] = {level: n for level, n in open_by}
        for level in ("blue", "yellow", "orange", "red"):
            g.add_metric([level], counts.get(level, 0))
        yield g
        r = HistogramMetricFamily("lifeline_district_response_seconds",
                                  "Response times (sample_desk, alarm_ack, ack_dispatch, dispatch_closed)",
                                  labels=["measure", "by", "key"])
        for by, groups in times.items():
            for key, measures in groups.items():
                for measure, values in measures.items():
                    r.add_metric([measure, by, key], _buckets(values), sum(values))
        yield r
