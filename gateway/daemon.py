"""`lifeline gateway --config site.toml`: the site daemon, wiring ingest -> checks -> alarms -> outbox -> uplink.

One asyncio loop and one SQLite connection. Everything that touches the store runs on the loop without an
await between its first write and its commit (the ingest batch handler, the downlink handler, the periodic
tick), so no task ever commits another's half-written batch. Site messages are acknowledged to the site
broker only after their batch is committed (gateway/ingest.py).

Signals: SIGTERM (and SIGINT) stop taking input, commit, let the uplink drain for a bounded time and exit 0.
SIGHUP re-reads site.toml: the device registry is replaced, and a rule set with a higher version is applied
through the alarm engine (a config error is logged and the running configuration kept); other settings
changed in the file are named in a warning, as they need a restart. A SIGHUP before the daemon serves is held
and done once it does (gateway/systemd.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from gateway import district_wire, site_config, systemd
from gateway.admission import TRUSTED, Checked, Checker, Reading
from gateway.alarms import AlarmEngine, Transition, ack_steps
from gateway.check_stage import CheckStage
from gateway.clock_step import ClockWatch
from gateway.command_relay import Commands, Outgoing
from gateway.commit_watermark import Confirmations
from gateway.district_wire import DownlinkError
from gateway.ingest import Incoming, Subscriber
from gateway.logs import event
from gateway.metrics import Metrics, Snapshot
from gateway.numbers import finite
from gateway.ota_relay import Ledger, Releases
from gateway.outbox import Outbox
from gateway.quarantine import Quarantine
from gateway.registry import Registry
from gateway.release_dir import ReleaseDirError
from gateway.rules import RuleError, parse_ruleset
from gateway.sequence import Gap, SequenceTracker
from gateway.site_config import ConfigError, GatewayConfig
from gateway.store import open_store, stamp_if_new
from gateway.uplink import BACKOFF_MAX_S, Uplink, site_key
from protocol import district, message, topics

log = logging.getLogger("lifeline.gateway")

TICK_S = 1.0
OTA_REPORT_S = 2.0  # download progress upstream at most this often: a rollout's bars, not a chunk count
OTA_OFFER_S = 600.0  # releases offered again this often: a district that started after the gateway learns them
DRAIN_ON_STOP_S = 10.0
TICK_FAIL_LOG_S = 60.0  # while ticks keep failing, one line this often (the first with its traceback)
# The collector's full pass looks at every object in memory: about 100 ms at 50,000 devices, during which no
# message is taken. Python starts one whenever the old objects have grown by a quarter, as the per-device
# state's objects do under load; the daemon runs it itself, at this interval, instead (docs/performance.md).
FULL_GC_S = 3600.0
_POSITION = ("lat", "lon")


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.conn = open_store(cfg.store_path)
        if stamp_if_new(self.conn, time.time()):
            event(log, "store-created", logging.WARNING, path=str(cfg.store_path),
                  note="a new, empty store: expected on a first start only; otherwise check [store] path, as the "
                       "backlog, sequence windows, quarantine and alarms of the store used before are not in it")
        self.conn.commit()  # stamped even if the start fails further on
        self.quarantine = Quarantine(self.conn, cfg.quarantine_rows, cfg.quarantine_log_interval_s,
                                     int(cfg.quarantine_max_mb * 1024 * 1024))
        self.sequence = SequenceTracker(self.conn, cfg.seq_window, cfg.gap_grace_s, cfg.devices_in_memory)
        self.registry = Registry(self.conn, cfg.devices, cfg.devices_in_memory)
        self.checker = Checker(cfg.site, self.registry, self.sequence, self.quarantine, cfg.clock_future_s,
                               cfg.clock_past_s)
        self.alarms = self._alarm_engine()
        self.commands = Commands(self.conn, cfg.site, self.registry, cfg.command_timeout_s)
        self.confirmations = Confirmations(self.conn, cfg.site, cfg.devices_in_memory)
        self.outbox = Outbox(self.conn, int(cfg.disk_budget_mb * 1024 * 1024))
        self.uplink = Uplink(self.outbox, cfg.district_broker, cfg.site, max_items=cfg.batch_max_items,
                             max_delay_s=cfg.batch_max_delay_s, drain_rate=cfg.drain_rate,
                             site_key=cfg.site_key or site_key(cfg.site_key_file))
        for t in self.alarms.forget_unlisted(self.registry.devices, time.time()):  # taken off while stopped
            self._up_alarm(t)
        self.conn.commit()
        site_topics = [topics.device_filter(cfg.site, k) for k in (topics.DATA, topics.EVENT, topics.STATE,
                                                                      topics.ACK)]
        self.stage = CheckStage(cfg.check_processes, self.registry.devices) if cfg.check_processes else None
        self.site = Subscriber("site", cfg.site_broker, site_topics, self.handle_site, cfg.ingest_batch,
                               prepare=self.stage.prepare if self.stage else None, clock=self.stamp)
        down = replace(cfg.district_broker, client_id=cfg.district_broker.client_id + "-down")
        # After a district outage the downlink must be back as soon as the uplink is: the same backoff cap.
        self.down = Subscriber("downlink", down, [district.down(cfg.site, k) for k in district.DOWN_KINDS],
                               self.handle_down, 50, BACKOFF_MAX_S, clock=self.stamp)
        self.accepted: Counter[str] = Counter()
        self.batches_redone = 0  # batches that failed whole and were redone one message at a time
        # (device, number) of the last data or event message admitted: when a batch of that one message fails, its
        # device's own number, confirmed once the message is kept as `internal`
        self._admitted: tuple[str, int] | None = None
        self._redone_logged: float | None = None  # monotonic time of the last line saying so
        self.gaps = 0
        self.reloads_failed = 0
        self.serving = False  # told systemd it serves (READY=1); until then SIGHUP is held (gateway/systemd.py)
        self._counted()
        self.to_devices: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.metrics = Metrics()
        # OTA (docs/ota.md): nodes' chunk requests on a connection of their own, so that a download never
        # waits behind an ingest batch's commit, nor a batch behind a download.
        self.releases = Releases(cfg.site)
        self.releases.replace(cfg.ota_releases)
        # the district learns what this site serves at start (when it serves any), on each reload, and every
        # OTA_OFFER_S while it serves any
        self.offer_releases = bool(self.releases.versions())
        self.ota_reported = self.ota_offered = 0.0
        self.clock = ClockWatch()
        self.ota = Ledger(self.conn)
        self.conn.commit()
        ota_broker = replace(cfg.site_broker, client_id=cfg.site_broker.client_id + "-ota")
        self.ota_link = Subscriber("ota", ota_broker, [topics.device_filter(cfg.site, topics.OTA_REQ)],
                                   self.handle_ota, 100, clock=self.stamp)
        self.chunks: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()  # a node has one request out at a time

    def _alarm_engine(self) -> AlarmEngine:
        return AlarmEngine(self.conn, self.cfg.ruleset, self.cfg.risk_points,
                           resend_first_s=self.cfg.alarm_resend_first_s, resend_max_s=self.cfg.alarm_resend_max_s,
                           capacity=self.cfg.devices_in_memory, devices=self.registry.devices)

    # ------------------------------------------------------------------------------ site messages

    def handle_site(self, batch: list[Incoming]) -> None:
        """Check, judge and queue a batch, then commit it once."""
        self._isolated(batch, self._site_batch)

    def _isolated(self, batch: list[Incoming], handle: Callable[[list[Incoming]], None]) -> None:
        """`handle` a batch of one connection. A message that makes it fail (a bug, not bad input: checks
        never raise) is isolated by redoing the batch one message at a time, and kept in the quarantine as
        "internal", so that it cannot block its connection's queue (its batch, unacknowledged, would come again
        and fail again); one that had passed every check is confirmed to its device, which would otherwise send it
        again at every resend (docs/gateway.md, "Checks"). A store that refuses writes (a full disk) is no
        message's fault: the error goes to the caller with nothing kept, the batch unacknowledged, and the broker
        delivers it again."""
        try:
            handle(batch)
            return
        except Exception as exc:
            self._rollback()
            if _store_failed(exc):
                raise
            failed = exc
        # Logged once per interval, as the quarantine logs the message that fails again (its traceback on that
        # line): a device that keeps sending such a message must not put two tracebacks a message in the log.
        self.batches_redone += 1
        now = time.monotonic()
        if self._redone_logged is None or now - self._redone_logged >= self.cfg.quarantine_log_interval_s:
            event(log, "batch failed; retrying its messages one at a time", logging.ERROR,
                  error=f"{type(failed).__name__}: {failed}", messages=len(batch), total=self.batches_redone)
            self._redone_logged = now
        for m in batch:
            self._admitted = None
            try:
                handle([m])
            except Exception as exc:
                self._rollback()
                if _store_failed(exc):  # the disk filled meanwhile: those done are committed, the rest come again
                    raise
                self.quarantine.put("internal", f"{type(exc).__name__}: {exc}", m.topic, m.payload, m.received,
                                    exc=exc)
                if self._admitted is not None:  # its device's own number: confirmed, as a refused one is (_heard)
                    self.confirmations.committed(*self._admitted)
                    self.confirmations.flush()
                self.conn.commit()
                self._counted()
                self.confirmations.committed_now()

    def _rollback(self) -> None:
        self.conn.rollback()
        self.outbox.rollback()
        self.sequence.rollback()
        self.registry.rollback()
        self.confirmations.rollback()
        self.ota.rollback()
        self.alarms = self._alarm_engine()
        self.quarantine.rollback()
        self.checker.kept = None  # noted for a row that went back: confirmed by the next refusal, it was nowhere
        accepted, dropped, flagged, self.gaps = self._counts
        for live, saved in ((self.accepted, accepted), (self.checker.dropped, dropped),
                            (self.checker.flagged, flagged)):
            live.clear()
            live.update(saved)

    def _counted(self) -> None:
        """What the store has committed was counted once: a rollback goes back to these counts, or a batch redone
        a message at a time, or delivered again, would count its messages twice."""
        self._counts = (dict(self.accepted), dict(self.checker.dropped), dict(self.checker.flagged), self.gaps)
        self.quarantine.committed()

    def _site_batch(self, batch: Sequence[Incoming]) -> None:
        self._prefetch(batch)
        for m in batch:
            checked = self.checker.check(m.topic, m.payload, m.retained, m.received, m.decoded)
            if checked is None:
                self._heard(m.topic)
                continue
            self.accepted[checked.kind] += 1
            if checked.kind in (topics.DATA, topics.EVENT):
                self._admitted = (checked.device.id, checked.body["seq"])
                self._data(checked, m.received)
            elif checked.kind == topics.STATE:
                self._state(checked, m.received)
            elif checked.kind == topics.ACK:
                result = self.commands.on_ack(checked.device.id, checked.body, m.received)
                if result is not None:
                    self._up_state(district.UP_ACK, result)
        self._commit()
        self.confirmations.committed_now()

    def _prefetch(self, batch: Sequence[Incoming]) -> None:
        """The state of the batch's registered devices read from the store at once, rather than a lookup per
        device and module for each device that was let go (gateway/device_states.py). A site with no more devices
        than it holds lets none go: nothing to do (2 µs a message otherwise)."""
        if len(self.registry.devices) <= self.cfg.devices_in_memory:
            return
        devs = set()
        for m in batch:
            with contextlib.suppress(topics.TopicError):
                dev = topics.parse_device(m.topic)[1]
                if dev in self.registry.devices:
                    devs.add(dev)
        self.sequence.prefetch(devs)
        self.registry.prefetch(devs)
        self.confirmations.prefetch(devs)
        self.alarms.prefetch(devs)

    def _heard(self, topic: str) -> None:
        """A device message not admitted (a re-sent duplicate, say): its device is confirmed again. A duplicate
        goes back into the confirmation, which may have given its number up (commit_watermark): the device holds
        it still, or it would not have sent it again. So does a message of the device's own MAC and number that was
        refused as schema: kept in the quarantine by this batch's commit, it is confirmed, or the node would hold it,
        its queue pinned behind it, and send it again at every connect and resend. A message whose MAC or number is
        not the device's moves no confirmation: a forger could make a node forget real readings. Nor does a replay
        (docs/gateway.md, "Checks")."""
        kept, self.checker.kept = self.checker.kept, None
        if kept is not None:
            self.confirmations.committed(*kept)
            return
        with contextlib.suppress(topics.TopicError):
            _, dev, kind = topics.parse_device(topic)
            if kind in (topics.DATA, topics.EVENT):
                self.confirmations.heard(dev)

    def _commit(self) -> None:
        self.outbox.flush()
        self.sequence.flush()
        self.registry.flush()
        self.alarms.flush()
        self.confirmations.flush()
        self.ota.flush()
        began = time.perf_counter()
        self.conn.commit()
        self.metrics.commit_seconds.observe(time.perf_counter() - began)  # a slow fsync delays every alarm behind it
        self._counted()

    def _data(self, c: Checked, now: float) -> None:
        dev = c.device
        judged = []
        # Found in this one walk rather than by walks of their own: the pack carries a position; a reading is
        # judged at a time other than the device's own (relative, boot clock, untrusted); readings whose clock
        # is not trusted.
        placed = retimed = False
        flagged = []
        for r in c.readings:
            if r.t != r.t_device:
                retimed = True
            if r.clock not in TRUSTED:
                flagged.append(r)
            value = r.value
            if isinstance(value, bool):
                value = float(value)
            if r.metric in _POSITION:
                placed = True
                continue
            try:
                if not isinstance(value, int | float) or not math.isfinite(value):
                    continue
            except OverflowError:  # an integer past a float's range (CBOR carries any): no number to judge
                continue
            judged.append((r.metric, float(value), r.t))
        if judged:
            for t in self.alarms.observe_pack(dev.id, dev.cls, judged, now, _position(c.readings) if placed else None):
                self._up_alarm(t)
        body = c.body
        if dev.id in self.sequence.restarted:  # a newer boot's count started over: the old confirmations go
            self.sequence.restarted.discard(dev.id)
            self.confirmations.started_over(dev.id, body["seq"])
        self.confirmations.committed(dev.id, body["seq"])
        if c.readings:
            # The sealed message goes up as received; records are read only for the times of a retimed one.
            records = [_record(r) for r in c.readings] if retimed else []
            self.outbox.put_telemetry(dev.id, body["seq"], body["boot"], records, now, body["pri"], c.raw, retimed)
        if flagged:  # judged and sent with the arrival time; the device's own time goes upstream here
            self._up_state(district.DQ, district_wire.clock_report(
                dev.id, body["seq"], body["boot"], body["clk"], now, ((r.name, r.clock, r.t_device) for r in flagged)))
        if c.kind == topics.EVENT and body["ev"] == "ota":
            self._ota_outcome(dev.id, c.readings, now)
        if c.kind == topics.EVENT:
            self._up_state(district.UP_EVENT, district_wire.device_event(dev.id, body["ev"], body["seq"], body["boot"],
                                                                         body["pri"], now))

    def _state(self, c: Checked, now: float) -> None:
        dev, body = c.device, c.body
        event(log, "device", dev=dev.id, st=body["st"], boot=body["boot"], fw=body.get("fw"),
              retained=c.retained)
        if body["st"] == message.ONLINE:
            self.registry.birth(dev.id, body, now, live=not c.retained)
            self.ota.birth(dev.id, str(body["fw"]), now)
            self.confirmations.started_over(dev.id, body["seq"])
        else:
            self.registry.death(dev.id)
            for t in self.alarms.device_dead(dev.id, now, dev.cls):
                self._up_alarm(t)
        self._up_state(district.UP_STATE, district_wire.device_state(dev.id, body, now, c.retained, dev.position))

    # ------------------------------------------------------------------------------ OTA

    def handle_ota(self, batch: list[Incoming]) -> None:
        """Answer nodes' chunk requests. Progress goes into the ledger, which the next commit writes."""
        for m in batch:
            chunk = self.releases.answer(m.topic, m.payload, self.registry.devices)
            if chunk is not None:
                self.ota.progress(chunk, m.received)
                self.chunks.put_nowait((chunk.topic, chunk.payload))

    def _ota_outcome(self, dev: str, readings: Sequence[Reading], now: float) -> None:
        """A node's sealed "ota" event (ota.v, ota.ok, ota.res): it still goes upstream as every event does."""
        got = {r.metric: r.value for r in readings}
        version, ok, res = got.get("ota.v"), got.get("ota.ok"), got.get("ota.res")
        if isinstance(version, str) and isinstance(ok, bool):
            self.ota.outcome(dev, version, ok, str(res or ""), now)
            event(log, "ota-outcome", logging.INFO if ok else logging.WARNING, dev=dev, v=version, ok=ok, res=res)

    async def _send_chunks(self) -> None:
        while True:
            topic, payload = await self.chunks.get()
            with contextlib.suppress(Exception):  # not connected: the node asks again in 2 s
                await self.ota_link.publish(topic, payload, qos=0)

    # ------------------------------------------------------------------------------ downlink

    def handle_down(self, batch: list[Incoming]) -> None:
        """The district's commands, rule sets and alarm acknowledgements, committed once; a message that fails
        is isolated as a site message is."""
        self._isolated(batch, self._down_batch)

    def _down_batch(self, batch: list[Incoming]) -> None:
        outgoing: list[Outgoing] = []
        for m in batch:
            try:
                _, kind = district.parse_down(m.topic)
                district_wire.downlink(m.payload)
            except topics.TopicError:
                continue
            except DownlinkError as exc:  # kept and counted here; its handler below refuses it upstream
                self.quarantine.put("malformed", f"downlink: {exc}", m.topic, m.payload, m.received)
            if kind == district.DOWN_CMD:
                cmd, rejection = self.commands.command(m.payload, m.received, m.retained)
                if cmd is not None:
                    outgoing.append(cmd)
                if rejection is not None:
                    self._up_state(district.UP_ACK, rejection)
            elif kind == district.ALARM_ACK:
                self._alarm_acks(m.payload, m.received)
            elif kind == district.RULES:
                self._rules(m.payload, m.received)
        self._commit()
        for cmd in outgoing:
            self.to_devices.put_nowait(cmd)

    def _alarm_acks(self, payload: bytes, now: float) -> None:
        try:
            acks = district_wire.alarm_acks(payload)
        except DownlinkError as exc:
            event(log, "alarm-ack-rejected", logging.WARNING, error=str(exc))
            return
        known = self.alarms.acknowledge(acks, now)
        for alarm_id, step in ack_steps(acks).items():  # the step the engine took, not the last one listed
            if alarm_id in known and not known[alarm_id]:  # the alarm moved past what the district acknowledged
                event(log, "alarm-ack", id=alarm_id, known=True, behind=step)
            else:
                event(log, "alarm-ack", id=alarm_id, known=alarm_id in known)

    def _rules(self, payload: bytes, now: float) -> None:
        version = None
        try:
            ruleset = parse_ruleset(district_wire.ruleset_data(payload))
            version = ruleset.version
            for t in self.alarms.replace_rules(ruleset, now):
                self._up_alarm(t)
        except (DownlinkError, RuleError) as exc:
            result = district_wire.rules_result(now, version, str(exc), self.alarms.ruleset.version)
            event(log, "rules-rejected", logging.WARNING, error=str(exc))
        else:
            result = district_wire.rules_result(now, version)
            event(log, "rules-applied", version=ruleset.version, source="district")
            self._warn_unruled()
        self._up_state(district.UP_ACK, result)

    async def _send_commands(self) -> None:
        while True:
            cmd = await self.to_devices.get()
            try:
                await self.site.publish(cmd.topic, cmd.payload, qos=1)
            except Exception as exc:  # not connected: the pending command times out and is reported
                event(log, "command-not-sent", logging.WARNING, dev=cmd.dev, id=cmd.id, error=str(exc))

    # ------------------------------------------------------------------------------ upstream

    def _up_alarm(self, t: Transition) -> None:
        self.outbox.put_alarm(t.body(), t.gateway_time)
        event(log, "alarm", logging.DEBUG if t.resend else logging.WARNING, ev=t.event, id=t.alarm_id,
              dev=t.device, metric=t.metric, alarm_level=t.level.label if t.level else None, value=t.value,
              point=t.point, rule=t.rule, rver=t.rule_version, cause=t.cause, resend=t.resend)

    def _up_state(self, kind: str, body: Mapping[str, Any]) -> None:
        self.outbox.put_state(kind, body)

    def _up_ota(self, now: float) -> None:
        """Download progress (and the releases served, when due) for the district's desk."""
        nodes = self.ota.report()
        offer = self.offer_releases or (bool(self.releases.versions()) and now - self.ota_offered >= OTA_OFFER_S)
        if nodes or offer:
            releases = self.releases.offers() if offer else None
            n = district_wire.OTA_REPORT_NODES  # what the district takes in one report; the releases go once
            for at in range(0, max(len(nodes), 1), n):
                self._up_state(district.UP_OTA, district_wire.ota_report(now, nodes[at:at + n],
                                                                         releases if at == 0 else None))
        if offer:
            self.offer_releases, self.ota_offered = False, now
        self.ota_reported = now

    def _up_gap(self, gap: Gap) -> None:
        self.gaps += gap.kind == "gap"
        event(log, "sequence", logging.WARNING if gap.kind == "gap" else logging.INFO, kind=gap.kind,
              dev=gap.dev, first=gap.first, last=gap.last)
        self._up_state(district.DQ, district_wire.sequence_report(gap.dev, gap.kind, gap.first, gap.last, gap.since))

    # ------------------------------------------------------------------------------ time

    def tick(self, now: float, mono: float | None = None) -> None:
        """Time-driven work at wall time `now`; `mono`, the monotonic clock read beside it, lets a step of the
        wall clock since the last look be found and taken out of every span first."""
        if mono is not None:
            self._look(now, mono)
        for t in self.alarms.tick(now) + self.alarms.due_resends(now):
            self._up_alarm(t)
        for gap in self.sequence.due(now):
            self._up_gap(gap)
        for result in self.commands.expire(now):
            self._up_state(district.UP_ACK, result)
        if now - self.ota_reported >= OTA_REPORT_S:
            self._up_ota(now)
        self.quarantine.tick(now)
        self._commit()
        self.metrics.update(self.snapshot())

    def stamp(self, now: float | None = None, mono: float | None = None) -> float:
        """The wall time a batch of messages is stamped with as it arrives (`now` and `mono` as read, when not
        read here). A step of the wall clock is looked for first: found only by the next tick, up to a second
        later, the step moved what had arrived meanwhile, stamped on the clock as set, with the spans of
        before: set back an hour, a device just heard looked silent for an hour, a stale alarm at once."""
        now = time.time() if now is None else now
        self._look(now, time.monotonic() if mono is None else mono)
        return now

    def _look(self, now: float, mono: float) -> None:
        step = self.clock.step(now, mono)
        if step:
            self.clock_stepped(step)
            self._commit()  # at once: a batch rolled back after it must not take the moved spans with it

    def clock_stepped(self, step: float) -> None:
        event(log, "clock-step", logging.WARNING, seconds=round(step, 3))
        self.alarms.clock_stepped(step)
        self.commands.clock_stepped(step)
        self.sequence.clock_stepped(step)
        self.quarantine.clock_stepped(step)
        self.ota_reported += step
        self.ota_offered += step

    def snapshot(self) -> Snapshot:
        alarms: Counter[str] = Counter(a.level.label for a in self.alarms.active())
        ages = {lane: age for lane, age in self.outbox.oldest_age().items() if age is not None}
        held, read = self.sequence.held()
        return Snapshot(accepted=dict(self.accepted), rejected=dict(self.quarantine.counts),
                        dropped=dict(self.checker.dropped), clock_flags=dict(self.checker.flagged),
                        gaps=self.gaps, outbox_depth=self.outbox.depth(), outbox_oldest_age_s=ages,
                        outbox_bytes=self.outbox.bytes_used(), outbox_thinned=self.outbox.thinned_msgs,
                        outbox_evicted=self.outbox.evicted_msgs, outbox_set_aside=self.outbox.corrupt_rows,
                        uplink_connected=self.uplink.connected,
                        site_connected=self.site.connected.is_set(), alarms=dict(alarms),
                        batches=self.site.batches, ota_refused=dict(self.releases.refused),
                        ota_served=self.releases.served, confirmations_sent=self.confirmations.published,
                        confirmations_not_sent=self.confirmations.not_sent,
                        confirmations_due=self.confirmations.due_count(), devices_in_memory=held,
                        device_states_read=read, check_processes=len(self.stage.pids()) if self.stage else 0,
                        check_processes_lost=self.stage.lost if self.stage else 0,
                        checked_in_ingest=self.stage.in_process if self.stage else 0,
                        clock_steps=self.clock.steps, reloads_failed=self.reloads_failed,
                        link_not_utf8={(sub.name, packet): n for sub in (self.site, self.down, self.ota_link)
                                       for packet, n in sub.not_utf8.items()})

    async def _ticker(self) -> None:
        next_gc = time.monotonic() + FULL_GC_S
        failing: float | None = None  # monotonic time of the last logged failure while ticks keep failing
        failed = 0
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.time(), time.monotonic())
            except Exception as exc:  # a store that cannot write (a full disk), a bug: the next tick tries again
                failed += 1
                with contextlib.suppress(Exception):  # its half-written work must not go with the next commit
                    self._rollback()
                if failing is None or time.monotonic() - failing >= TICK_FAIL_LOG_S:
                    fields = {"error": f"{type(exc).__name__}: {exc}", "failed": failed}
                    log.error("tick-failed", exc_info=failing is None, extra={"fields": fields})  # traceback once
                    failing = time.monotonic()
                continue
            if failing is not None:
                event(log, "tick-recovered", logging.WARNING, failed=failed)
                failing, failed = None, 0
            if time.monotonic() >= next_gc:
                began = time.perf_counter()
                found = gc.collect()
                event(log, "gc", found=found, ms=round((time.perf_counter() - began) * 1000, 1))
                next_gc = time.monotonic() + FULL_GC_S

    # ------------------------------------------------------------------------------ reload, run

    def reload(self) -> None:
        """SIGHUP: the devices, rules and OTA releases read again. A config that fails its checks is refused
        whole and the running one kept; the rules, which the alarm engine checks once more against the risk
        points, go first, so that nothing else is applied before a refusal."""
        running = self.registry.devices
        try:
            cfg = site_config.load(self.cfg.path)
            applied = False
            if cfg.ruleset.version > self.alarms.ruleset.version:
                for t in self.alarms.replace_rules(cfg.ruleset, time.time()):
                    self._up_alarm(t)
                applied = True
            self.registry.replace(cfg.devices)
            for t in self.alarms.forget_unlisted(self.registry.devices, time.time()):
                self._up_alarm(t)
            self._commit()
        except (ConfigError, RuleError) as exc:
            self._reload_failed(str(exc))
            return
        except sqlite3.Error as exc:
            if not _store_failed(exc):
                raise
            # a full disk: what the reload wrote goes back, and the running rules and devices with it
            self.registry.replace(running)
            self._rollback()
            self._reload_failed(f"store: {exc}")
            return
        if self.stage:
            self.stage.replace(self.registry.devices)
        try:
            self.releases.replace(cfg.ota_releases)
            self.offer_releases = True
        except ReleaseDirError as exc:  # changed on disk since the config check
            self._reload_failed(f"ota.releases: {exc}")
        self.cfg = replace(self.cfg, devices=cfg.devices, ruleset=cfg.ruleset, ota_releases=cfg.ota_releases)
        _settle_memory()
        event(log, "reloaded", devices=len(cfg.devices), rules_version=self.alarms.ruleset.version,
              rules_applied=applied, ota_releases=",".join(self.releases.versions()))
        self._warn_unruled()
        if not applied and cfg.ruleset.to_json() != self.alarms.ruleset.to_json():
            # an edit at the active version (or below a set the district pushed) is not applied; a restart
            # would apply one at the same version
            event(log, "reload-rules-not-applied", logging.WARNING, files_version=cfg.ruleset.version,
                  active_version=self.alarms.ruleset.version,
                  why=f"the rules read differ from the active set: give them a version above "
                      f"{self.alarms.ruleset.version} to apply them")
        ignored = site_config.restart_needed(self.cfg, cfg)
        if ignored:
            event(log, "reload-needs-restart", logging.WARNING, settings=",".join(ignored))

    def _reload_failed(self, error: str) -> None:
        self.reloads_failed += 1
        event(log, "reload-failed", logging.ERROR, error=error)

    def _warn_unruled(self) -> None:
        """Devices of a class the active rules lack are taken and forwarded, but nothing they send can raise
        an alarm: a site that listed a class and forgot its rule file, or took a set from the district that
        lacks it, would not know it. Nor would it know of an override that names no device of its class."""
        counts = self.registry.devices.class_counts()
        missing = sorted(cls for cls in counts if cls not in self.alarms.ruleset.classes)
        if missing:
            event(log, "devices-without-rules", logging.WARNING,
                  classes=",".join(f"{cls}:{counts[cls]}" for cls in missing))
        # An override judges only a device or risk point of its class: a misspelt id judges nothing, and the
        # device it was meant for keeps the class's thresholds.
        devices, points = self.registry.devices, self.cfg.risk_points
        unmatched = sorted(
            f"{cls}.devices.{subject}" for cls, rules in self.alarms.ruleset.classes.items()
            for subject in {s for s, _ in rules.metric_overrides} | set(rules.stale_overrides)
            if not (subject in devices and devices[subject].cls == cls)
            and not ((point := points.get(subject)) is not None and point.cls == cls))
        if unmatched:
            event(log, "rules-overrides-unmatched", logging.WARNING, overrides=",".join(unmatched))

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; the collector makes no full pass of its own meanwhile (_ticker does)."""
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], 1_000_000_000)
        try:
            return await self._run()
        finally:
            gc.set_threshold(*thresholds)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        self.metrics.serve(self.cfg.metrics_host, self.cfg.metrics_port)
        _settle_memory()
        event(log, "started", site=self.cfg.site, devices=len(self.cfg.devices), store=str(self.cfg.store_path),
              rules_version=self.alarms.ruleset.version, ota_releases=",".join(self.releases.versions()))
        self._warn_unruled()
        if self.stage:
            await self.stage.start()
        uplink = asyncio.create_task(self.uplink.run(), name="uplink")
        tasks = [asyncio.create_task(c, name=name) for name, c in (
            ("site", self.site.run()), ("downlink", self.down.run()), ("ticker", self._ticker()),
            ("commands", self._send_commands()), ("ota", self.ota_link.run()), ("chunks", self._send_chunks()),
            ("confirmations", self.confirmations.run(self.site.publish)))]
        failed: list[asyncio.Task[None]] = []

        def ended(task: asyncio.Task[None]) -> None:
            """Each task runs until the stop: one that ended before it (a bug) stops the daemon, which exits 1 and
            is started again (systemd's Restart=always). Unwatched, a dead uplink left the site taking readings
            while it sent none and kept no disk budget, with nothing said until the next restart."""
            if not stop.is_set():
                failed.append(task)
                stop.set()

        for t in (uplink, *tasks):
            t.add_done_callback(ended)
        # serving: its store open, its endpoint bound, its tasks taking what comes (the brokers need not be up)
        systemd.ready(self.reload)
        self.serving = True
        await stop.wait()
        for t in failed:
            exc = None if t.cancelled() else t.exception()
            log.critical("task ended", exc_info=exc, extra={"fields": {"task": t.get_name(), "error": repr(exc)}})
        event(log, "stopping")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.stage:
            await self.stage.close()
        self.tick(time.time())
        deadline = time.monotonic() + DRAIN_ON_STOP_S
        while self.uplink.connected and any(self.outbox.depth().values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.uplink.stop()
        await asyncio.gather(uplink, return_exceptions=True)
        left = self.outbox.depth()
        self.conn.close()
        event(log, "stopped", outbox_left=left)
        return 1 if failed else 0


def _settle_memory() -> None:
    """After start-up or a reload: collect, then hand the heap's free pages back to the system. Parsing a
    site.toml of 50,000 devices peaks about 40 MB above what is kept, and glibc keeps freed pages otherwise
    (10 MB of them at 50,000 devices). Elsewhere than glibc there is no malloc_trim, and nothing to do."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


# SQLite's primary result codes of a store that cannot take a write now, whatever is written: full, failing,
# locked by another process, read-only, out of memory.
_STORE_ERRORS = frozenset((sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
                           sqlite3.SQLITE_READONLY, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_CANTOPEN))


def _store_failed(exc: BaseException) -> bool:
    """Whether `exc` is the store refusing any write (a full disk), not a fault of what was written."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code is not None and (code & 0xFF) in _STORE_ERRORS


def _record(r: Reading) -> dict[str, Any]:
    """A reading as the outbox takes it: every value field the device sent, so each kind goes up as itself."""
    rec: dict[str, Any] = {"n": r.name, **dict(r.fields), "t": r.t}
    if r.unit is not None:
        rec["u"] = r.unit
    return rec


def _position(readings: Sequence[Reading]) -> tuple[float, float] | None:
    """A drone pack's own position: its lat/lon readings, unless the GNSS reports no fix or one is no number."""
    found = {r.metric: r.value for r in readings if r.metric in ("lat", "lon", "fix")}
    lat, lon = finite(found.get("lat")), finite(found.get("lon"))
    if lat is None or lon is None or found.get("fix") == 0:
        return None
    return lat, lon
