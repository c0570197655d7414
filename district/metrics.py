"""Prometheus metrics of the district, read from the database at each scrape.

Workers run in several processes, maybe on several machines; the database is what they share, so the
figures come from it and any desk process can serve them, all alike. Ingest rate is `rate()` of the
messages counter; response times are the desk's own measures (district/queries.py), as histograms whose
buckets span the seeds' scales: seconds to the desk, minutes to an answer, hours to a closed order.

A scrape reads what changed since the last one, not the whole history: counted over every message, alarm
and order at each scrape, one took 1.8 s at 50,000 orders (bench/district_reads.py), a core busy at a 15 s
scrape interval, and growing with the years. The collector keeps counts of the messages and refusals, and
the response-time buckets of each day's alarms (by when the district received them) and their orders. Every
change to those is a new row of an append-only table (a transition in alarm_events, an ack in audit, a step in
work_order_steps, a backlog's alarm made live in alarm_revivals), so a scrape reads the rows past the last it
read, and counts again the days they touch.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Column, Connection, Engine, func, literal_column, select, union

from district import queries, store
from district.schema import (
    alarm_events,
    alarm_revivals,
    alarms,
    audit,
    messages,
    refusals,
    sites,
    work_order_steps,
    work_orders,
)
from gateway.logs import event

log = logging.getLogger("lifeline.district.metrics")

BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# A PostgreSQL transaction may commit a row after another has committed one of a higher id: rows are read again
# at each scrape until they are this old, far longer than any of the district's transactions lasts.
SETTLE_S = 300.0
DAY = 86400.0
Series = tuple[str, str, str]  # (measure, by, key)
Hist = dict[Series, list[float]]  # a count for each bucket, +Inf last, then the sum


def _add(hist: Hist, other: Hist, sign: int) -> None:
    for series, counts in other.items():
        mine = hist.setdefault(series, [0.0] * (len(BUCKETS) + 2))
        for i, n in enumerate(counts):
            mine[i] += sign * n
        if sign < 0 and not any(mine[:-1]):  # none left: not shown, as a measure no alarm has is not
            del hist[series]


def _hist(measures: list[queries.Measure], day: Callable[[float], int]) -> dict[int, Hist]:
    """The measures' bucket counts and sums, by the day of their alarm."""
    out: dict[int, Hist] = defaultdict(dict)
    for at, measure, colour, site, value in measures:
        i = bisect_left(BUCKETS, value)  # the first bound it is within, or +Inf
        for by, key in (("colour", colour), ("site", site)):
            if key:
                counts = out[day(at)].setdefault((measure, by, key), [0.0] * (len(BUCKETS) + 2))
                counts[i] += 1
                counts[-1] += value
    return out


class _Tail:
    """The rows of an append-only table past a watermark: those of the last SETTLE_S (by their time `at`) are
    read again at each scrape."""

    def __init__(self, id_col: Column[int], at: Column[float]) -> None:
        self.id, self.at = id_col, at
        self.settled = 0  # every row up to this id is in what the collector keeps

    def settle(self, conn: Connection, now: float) -> int | None:
        """An id up to which rows may now be kept for good (the newest older than SETTLE_S, found from the
        newest row back), or None; the caller keeps them and sets `settled`."""
        upto = conn.execute(select(self.id).where(self.at < now - SETTLE_S).order_by(self.id.desc()).limit(1)).scalar()
        return upto if upto is not None and upto > self.settled else None


class _Count:
    """Rows of an append-only table by a key (or all of them): those settled kept, the rest counted."""

    def __init__(self, id_col: Column[int], at: Column[float], key: Column[str] | None = None) -> None:
        self.tail = _Tail(id_col, at)
        self.key = key
        self.settled: dict[str, int] = defaultdict(int)

    def _count(self, conn: Connection, after: int, upto: int | None) -> dict[str, int]:
        col = self.tail.id
        q = (select(literal_column("''"), func.count()) if self.key is None
             else select(self.key, func.count()).group_by(self.key)).where(col > after)
        if upto is not None:
            q = q.where(col <= upto)
        return {key: n for key, n in conn.execute(q) if n}

    def read(self, conn: Connection, now: float) -> dict[str, int]:
        settle = self.tail.settle(conn, now)
        if settle is not None:
            for key, n in self._count(conn, self.tail.settled, settle).items():
                self.settled[key] += n
            self.tail.settled = settle
        out = dict(self.settled)
        for key, n in self._count(conn, self.tail.settled, None).items():
            out[key] = out.get(key, 0) + n
        return out


class _Responses:
    """The response-time histograms: each day's alarms' (by when the district received them) and the whole."""

    def __init__(self) -> None:
        self.days: dict[int, Hist] | None = None  # read whole at the first scrape
        self.total: Hist = {}
        self.changes = (_Tail(alarm_events.c.id, alarm_events.c.received), _Tail(audit.c.id, audit.c.at),
                        _Tail(work_order_steps.c.id, work_order_steps.c.at),
                        _Tail(alarm_revivals.c.id, alarm_revivals.c.received))

    def read(self, conn: Connection, now: float) -> Hist:
        settle = [tail.settle(conn, now) for tail in self.changes]
        if self.days is None:
            self.days = dict(_hist(queries.alarm_measures(conn), self._day))
            for hist in self.days.values():
                _add(self.total, hist, 1)
        else:
            events, acks, steps, revivals = self.changes
            # The changed alarms' ids from each table's rows past its watermark, then those alarms by their key:
            # as joins, SQLite with statistics (ANALYZE) read every alarm or work order to find them, each scrape.
            changed = union(
                select(alarm_events.c.alarm).where(alarm_events.c.id > events.settled),
                select(audit.c.target).where(audit.c.id > acks.settled, audit.c.what == "ack"),
                select(work_orders.c.alarm).where(work_orders.c.id.in_(
                    select(work_order_steps.c.order_id).where(work_order_steps.c.id > steps.settled))),
                select(alarm_revivals.c.alarm).where(alarm_revivals.c.id > revivals.settled))
            touched = select(alarms.c.received).where(alarms.c.id.in_(changed))
            for day in sorted({self._day(at) for at, in conn.execute(touched)}):
                fresh = _hist(queries.alarm_measures(conn, received=(day * DAY, (day + 1) * DAY)), self._day)
                _add(self.total, self.days.pop(day, {}), -1)
                if fresh.get(day):
                    self.days[day] = fresh[day]
                    _add(self.total, fresh[day], 1)
        for tail, upto in zip(self.changes, settle, strict=True):
            if upto is not None:
                tail.settled = upto
        return self.total

    @staticmethod
    def _day(at: float) -> int:
        return int(at // DAY)


class DistrictCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failing = False  # the last scrape's read failed: logged once until one succeeds
        self._messages = _Count(messages.c.id, messages.c.received)
        self._refusals = _Count(refusals.c.id, refusals.c.received, refusals.c.reason)
        self._responses = _Responses()

    def collect(self) -> Iterator[Metric]:
        """`lifeline_district_database_up` 1 and the figures, or 0 alone when the database failed the read (one
        line at the first such scrape): raised, each scrape printed a traceback and the whole target was down."""
        up = "lifeline_district_database_up"
        try:
            with store.reader(self.engine) as conn:
                now = time.time()
                stored = sum(self._messages.read(conn, now).values())
                refused = sorted(self._refusals.read(conn, now).items())
                online = conn.execute(select(func.count()).select_from(sites).where(sites.c.online)).scalar_one()
                known = conn.execute(select(func.count()).select_from(sites)).scalar_one()
                open_by = conn.execute(select(alarms.c.level, func.count()).where(alarms.c.state == "open",
                                                                                 alarms.c.hist.is_(False))
                                       .group_by(alarms.c.level)).all()
                times = {series: list(counts) for series, counts in self._responses.read(conn, now).items()}
                _add(times, _hist(queries.sample_measures(conn), lambda at: 0)[0], 1)
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
        levels: dict[str, int] = {level: n for level, n in open_by}
        for level in ("blue", "yellow", "orange", "red"):
            g.add_metric([level], levels.get(level, 0))
        yield g
        r = HistogramMetricFamily("lifeline_district_response_seconds",
                                  "Response times (sample_desk, alarm_ack, ack_dispatch, dispatch_closed)",
                                  labels=["measure", "by", "key"])
        for (measure, by, key), counts in sorted(times.items()):
            cumulative = [sum(counts[:i + 1]) for i in range(len(BUCKETS) + 1)]
            r.add_metric([measure, by, key], list(zip([*map(str, BUCKETS), "+Inf"], cumulative, strict=True)),
                         counts[-1])
        yield r
