"""Prometheus metrics of the district, read from the database at each scrape.

Workers run in several processes, maybe on several machines; the database is what they share, so the
figures come from it and any desk process can serve them, all alike. Ingest rate is `rate()` of the
messages counter; response times are the desk's own measures (district/queries.py), as quantile gauges.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from district import queries
from district.schema import alarms, messages, refusals, sites


class DistrictCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(messages)).scalar_one()
            refused = conn.execute(select(refusals.c.reason, func.count()).group_by(refusals.c.reason)).all()
            online = conn.execute(select(func.count()).select_from(sites).where(sites.c.online)).scalar_one()
            known = conn.execute(select(func.count()).select_from(sites)).scalar_one()
            open_by = conn.execute(select(alarms.c.level, func.count()).where(alarms.c.state == "open",
                                                                             alarms.c.hist.is_(False))
                                   .group_by(alarms.c.level)).all()
            times = queries.response_times(conn)
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
        r = GaugeMetricFamily("lifeline_district_response_seconds",
                              "Response times (sample_desk, alarm_ack, ack_dispatch, dispatch_closed)",
                              labels=["measure", "by", "key", "quantile"])
        for by, groups in times.items():
            for key, measures in groups.items():
                for measure, s in measures.items():
                    for q, name in (("0.5", "p50"), ("0.9", "p90"), ("1", "max")):
                        if s[name] is not None:
                            r.add_metric([measure, by, key, q], s[name])
        yield r
