"""Prometheus endpoint: ingest, rejects by reason, outbox depth and age, uplink state, alarms by level.

prometheus-client serves scrapes from its own thread, while the daemon's counters live on the event loop
and change under it. So the daemon hands over a finished snapshot (`Metrics.update`, once a second, on the
loop), and the collector only reads the latest one: a scrape never iterates a dict that is being written.
The commit-time histogram is prometheus-client's own, observed on the loop: it takes its own lock.
Ingest rate is `rate(lifeline_ingest_messages_total[1m])`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

# Upper bounds, in seconds, of the commit-time histogram. An fsync on a healthy disk takes under a millisecond;
# the tail above 25 ms is what delays alarms (docs/performance.md, "The alarm tail found").
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Snapshot:
    accepted: Mapping[str, int] = field(default_factory=dict)  # by message kind
    rejected: Mapping[str, int] = field(default_factory=dict)  # by quarantine reason
    dropped: Mapping[str, int] = field(default_factory=dict)  # duplicates and stale states
    clock_flags: Mapping[str, int] = field(default_factory=dict)
    gaps: int = 0
    outbox_depth: Mapping[str, int] = field(default_factory=dict)  # by lane
    outbox_oldest_age_s: Mapping[str, float] = field(default_factory=dict)
    outbox_bytes: int = 0
    outbox_thinned: int = 0  # device messages the disk budget summarised, since the start
    outbox_evicted: int = 0  # and those it dropped
    outbox_set_aside: int = 0  # rows whose bytes changed on disk, set aside unsent
    uplink_connected: bool = False
    site_connected: bool = False
    alarms: Mapping[str, int] = field(default_factory=dict)  # active, by level
    batches: int = 0
    ota_refused: Mapping[str, int] = field(default_factory=dict)  # nodes' chunk requests refused, by reason
    ota_served: int = 0
    confirmations_sent: int = 0
    confirmations_not_sent: int = 0  # the site link was down: the device re-sends, and is confirmed then
    confirmations_due: int = 0  # devices whose commit confirmation has not gone out yet
    devices_in_memory: int = 0  # devices whose per-device state is held (at most [store] devices_in_memory)
    device_states_read: int = 0  # devices whose state was read back from the store
    check_processes: int = 0  # check processes running (gateway/check_stage.py)
    check_processes_lost: int = 0
    checked_in_ingest: int = 0  # messages the ingest decoded itself because their check process was lost
    clock_steps: int = 0  # steps of the wall clock found (gateway/clock_step.py)
    reloads_failed: int = 0  # SIGHUPs whose config was refused, the running one kept
    link_not_utf8: Mapping[tuple[str, str], int] = field(default_factory=dict)  # by (link, packet): mqtt_link.Link


class _Collector:
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot

        def by(name: str, doc: str, label: str, values: Mapping[str, float], counter: bool = True) -> Metric:
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            return family

        yield by("lifeline_ingest_messages", "Device messages accepted, by kind", "kind", s.accepted)
        yield by("lifeline_ingest_rejects", "Device messages quarantined, by reason", "reason", s.rejected)
        yield by("lifeline_ingest_dropped", "Repeated device messages dropped, by why", "why", s.dropped)
        yield by("lifeline_clock_flags", "Readings whose device time was not trusted, by verdict", "clock",
                 s.clock_flags)
        yield CounterMetricFamily("lifeline_sequence_gaps", "Sequence gaps reported upstream", value=s.gaps)
        yield CounterMetricFamily("lifeline_ingest_batches", "Committed ingest batches", value=s.batches)
        yield by("lifeline_outbox_depth", "Items waiting in the outbox, by lane", "lane", s.outbox_depth, False)
        yield by("lifeline_outbox_oldest_age_seconds", "Age of the oldest waiting item, by lane", "lane",
                 s.outbox_oldest_age_s, False)
        yield GaugeMetricFamily("lifeline_outbox_bytes", "Outbox size on disk", value=s.outbox_bytes)
        yield CounterMetricFamily("lifeline_outbox_thinned_messages", "Device messages the disk budget summarised",
                                  value=s.outbox_thinned)
        yield CounterMetricFamily("lifeline_outbox_evicted_messages", "Device messages the disk budget dropped",
                                  value=s.outbox_evicted)
        yield CounterMetricFamily("lifeline_outbox_set_aside_rows", "Outbox rows whose bytes changed on disk, set "
                                  "aside unsent (table outbox_corrupt)", value=s.outbox_set_aside)
        yield GaugeMetricFamily("lifeline_uplink_connected", "1 while connected to the district broker",
                                value=int(s.uplink_connected))
        yield GaugeMetricFamily("lifeline_site_connected", "1 while connected to the site broker",
                                value=int(s.site_connected))
        not_utf8 = CounterMetricFamily("lifeline_link_not_utf8", "Packets from a broker whose topic or a text "
                                       "property was not UTF-8, by link and packet", labels=["link", "packet"])
        for (link, packet), n in sorted(s.link_not_utf8.items()):
            not_utf8.add_metric([link, packet], n)
        yield not_utf8
        yield by("lifeline_alarms_active", "Active alarms, by level", "level", s.alarms, False)
        yield CounterMetricFamily("lifeline_ota_chunks_served", "Release chunks sent to updating nodes",
                                  value=s.ota_served)
        yield CounterMetricFamily("lifeline_confirmations_sent", "Commit confirmations the site broker took",
                                  value=s.confirmations_sent)
        yield CounterMetricFamily("lifeline_confirmations_not_sent", "Commit confirmations that could not go",
                                  value=s.confirmations_not_sent)
        yield GaugeMetricFamily("lifeline_confirmations_due", "Devices whose commit confirmation is still to go",
                                value=s.confirmations_due)
        yield GaugeMetricFamily("lifeline_devices_in_memory", "Devices whose per-device state is held in memory",
                                value=s.devices_in_memory)
        yield CounterMetricFamily("lifeline_device_states_read", "Devices whose state was read back from the store",
                                  value=s.device_states_read)
        yield GaugeMetricFamily("lifeline_check_processes", "Check processes running beside the ingest",
                                value=s.check_processes)
        yield CounterMetricFamily("lifeline_check_processes_lost", "Check processes that died (each is restarted)",
                                  value=s.check_processes_lost)
        yield CounterMetricFamily("lifeline_checked_in_ingest",
                                  "Messages the ingest decoded itself because their check process was lost",
                                  value=s.checked_in_ingest)
        yield CounterMetricFamily("lifeline_clock_steps", "Steps of the site box's wall clock the gateway took out of "
                                  "its spans", value=s.clock_steps)
        yield CounterMetricFamily("lifeline_reloads_failed", "Reloads refused, the running config kept",
                                  value=s.reloads_failed)
        yield by("lifeline_ota_refused", "Nodes' chunk requests refused, by reason", "reason", s.ota_refused)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._collector = _Collector()
        self.registry.register(self._collector)
        # Observed on the loop once a commit; prometheus-client's histogram is safe to scrape meanwhile.
        self.commit_seconds = Histogram("lifeline_store_commit_seconds",
                                        "Time of each commit of the store, its fsync included",
                                        buckets=COMMIT_BUCKETS, registry=self.registry)

    def update(self, snapshot: Snapshot) -> None:
        self._collector.snapshot = snapshot

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (a daemon thread); port 0 means no endpoint."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
