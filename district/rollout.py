"""Staged OTA rollouts from the district desk (docs/ota.md, "From the district desk").

A supervisor picks a site, a release the site's gateway serves (its OTA report offers it, with the signed
manifest's length and signature: all an `ota` command carries) and the stages; the driver then does what
`lifeline ota rollout` does at a site, with the rules of gateway/ota_plan.py: the `ota` command to the
canary group through the normal command downlink (the gateway re-seals it with each device's key), then the
rest in waves, each stage judged from what the district can trust. A node has landed when its birth names
the new version (it ran an older one when the rollout was planned, so that birth came after), failed when
its own sealed "ota" event says so or it refused the command, and is downloading while its site reports
progress. A command the gateway timed out (a node that did not answer) is sent again, up to SENDS times.
The rollout halts by itself when a stage ends with more than the halt share of the nodes sent it failed.

Everything is in the database, so a desk restart or a second desk picks a rollout up where it was: the
desk process that drives a rollout holds a lease on its row and renews it as a pass goes; another takes over
once the lease has run out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Executable, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from district import store
from district.accounts import Session
from district.downlink import Downlink, DownlinkError
from district.refusal import Refusal, utc
from district.schema import (
    audit,
    commands,
    devices,
    messages,
    ota_progress,
    ota_releases,
    ota_rollout_nodes,
    ota_rollouts,
    readings,
    sites,
)
from gateway import ota_plan
from gateway.logs import event
from gateway.ota_relay import NodeOta

log = logging.getLogger("lifeline.district.rollout")

LEASE_S = 15.0
FAIL_LOG_S = 60.0  # while passes keep failing, one line a minute
OUTCOME = ("ota.v", "ota.ok", "ota.res")


class RolloutError(Refusal):
    """A refused request: `status` as the desk answers it (400, 403, 404, 409)."""


def start(conn: Connection, who: Session, site: Any, version: Any, *, canary: Any = "1", wave: Any = 0,
          halt_share: Any = 0.25, stage_timeout: Any = 900.0, only: Any = None, retry_rolled_back: Any = False,
          now: float) -> int:
    """Plan a rollout and record it; the driver sends it. Returns its id. A node whose trial of this release rolled
    back (its last "ota" event) is left out unless `retry_rolled_back` (ota_plan.hold_back)."""
    if not who.may("rollout"):
        raise RolloutError(403, f"a {who.role} may not roll out releases")
    if not isinstance(site, str) or conn.execute(select(sites.c.site).where(sites.c.site == site)).first() is None:
        raise RolloutError(404, f"no site {site!r}")
    if not isinstance(version, str):
        raise RolloutError(400, "version: text")
    offer = conn.execute(select(ota_releases).where(ota_releases.c.site == site, ota_releases.c.v == version)).first()
    if offer is None:
        raise RolloutError(404, f"{site} does not serve release {version}: add it to the gateway's [ota] releases")
    if not isinstance(canary, (str, int)) or isinstance(canary, bool):
        raise RolloutError(400, "canary: a number of nodes or a share like 10%")
    try:  # before the site's nodes are looked at: a bad canary is refused with or without a node to update
        ota_plan.canary_size(str(canary), 1)
    except ota_plan.PlanError as exc:
        raise RolloutError(400, str(exc)) from None
    if isinstance(wave, bool) or not isinstance(wave, int) or not 0 <= wave <= 100_000:
        raise RolloutError(400, "wave: nodes a stage after the canary (0: all the rest)")
    if isinstance(halt_share, bool) or not isinstance(halt_share, (int, float)) or not 0 <= halt_share < 1:
        raise RolloutError(400, "halt_share: a share from 0 up to (not including) 1")
    if (isinstance(stage_timeout, bool) or not isinstance(stage_timeout, (int, float))
            or not 10 <= stage_timeout <= ota_plan.MAX_STAGE_S):
        raise RolloutError(400, f"stage_timeout: seconds, 10 to {ota_plan.MAX_STAGE_S:g}")
    # a release names profiles; a node's birth names the one it runs
    known = {r.dev: (r.prof or r.cls or "", r.fw or "") for r in conn.execute(
        select(devices.c.dev, devices.c.prof, devices.c.cls, devices.c.fw).where(devices.c.site == site))}
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(d, str) for d in only):
            raise RolloutError(400, "devices: a list of device ids")
        unknown = sorted(set(only) - set(known))
        if unknown:
            raise RolloutError(404, f"not devices of {site}: {', '.join(unknown)}")
        known = {d: known[d] for d in only}
    if not isinstance(retry_rolled_back, bool):
        raise RolloutError(400, "retry_rolled_back: true or false")
    chosen, skipped = ota_plan.targets(known, json.loads(offer.profiles), version)
    if not retry_rolled_back:
        last = {dev: NodeOta(dev, outcome_v=v, ok=ok, res=res)
                for dev, (v, ok, res, _) in _outcomes(conn, site).items()}
        chosen, _, held = ota_plan.hold_back(chosen, last, version)
        skipped += held
    if not chosen:
        raise RolloutError(409, f"nothing to update at {site}: " + ("; ".join(skipped) or "no devices"))
    running = _already_running(conn, site)
    if running is not None:
        raise running
    try:
        plan = ota_plan.stages(chosen, str(canary), wave)
    except ota_plan.PlanError as exc:
        raise RolloutError(400, str(exc)) from None
    try:
        with conn.begin_nested():  # a failed insert aborts a PostgreSQL transaction: kept readable for the answer
            rid = conn.execute(ota_rollouts.insert().values(
                site=site, v=version, actor=who.user, created=now, halt_share=float(halt_share),
                stage_timeout=float(stage_timeout), state="running", stage=0).returning(ota_rollouts.c.id)
            ).scalar_one()
    except IntegrityError:  # another desk's start committed since the check above (schema.ONE_RUNNING_ROLLOUT)
        raise _already_running(conn, site) or RolloutError(
            409, f"a rollout started at {site} at another desk just now has ended since; start again") from None
    conn.execute(ota_rollout_nodes.insert(), [{"rollout": rid, "dev": d, "stage": i, "stage_name": s.name,
                                               "sends": 0, "state": "waiting"}
                                              for i, s in enumerate(plan) for d in s.devices])
    conn.execute(audit.insert().values(actor=who.user, at=now, what="rollout", target=f"{site} {version}",
                                       detail=f"stages {[len(s.devices) for s in plan]}, skipped: {skipped}"))
    return int(rid)


def _already_running(conn: Connection, site: str) -> RolloutError | None:
    """The site's running rollout refused as a conflict that names who started it, and when: the one to ask
    before halting it."""
    row = conn.execute(select(ota_rollouts.c.id, ota_rollouts.c.v, ota_rollouts.c.actor, ota_rollouts.c.created)
                       .where(ota_rollouts.c.site == site, ota_rollouts.c.state == "running")).first()
    if row is None:
        return None
    return RolloutError(409, f"a rollout is already running at {site}: #{row.id} of {row.v}, started by "
                             f"{row.actor} at {utc(row.created)}; halt it first", (row.created,))


def halt(conn: Connection, who: Session, rollout_id: int, *, now: float) -> str:
    """Stop a running rollout before its next stage; nodes already sent the release go on. Returns its site."""
    if not who.may("rollout"):
        raise RolloutError(403, f"a {who.role} may not halt rollouts")
    row = conn.execute(select(ota_rollouts.c.site, ota_rollouts.c.state, ota_rollouts.c.reason,
                              ota_rollouts.c.finished).where(ota_rollouts.c.id == rollout_id)).first()
    if row is None:
        raise RolloutError(404, f"no rollout {rollout_id}")
    done = conn.execute(update(ota_rollouts).where(ota_rollouts.c.id == rollout_id, ota_rollouts.c.state == "running")
                        .values(state="halted", reason=f"halted by {who.user}", finished=now)).rowcount
    if not done:  # read again: it ended since the read above (another's halt, the driver's end)
        row = conn.execute(select(ota_rollouts.c.site, ota_rollouts.c.state, ota_rollouts.c.reason,
                                  ota_rollouts.c.finished).where(ota_rollouts.c.id == rollout_id)).one()
        why = f" ({row.reason})" if row.reason else ""
        if row.finished is None:
            raise RolloutError(409, f"rollout {rollout_id} is {row.state}{why}")
        raise RolloutError(409, f"rollout {rollout_id} is {row.state}{why}, since {utc(row.finished)}",
                           (row.finished,))
    conn.execute(audit.insert().values(actor=who.user, at=now, what="rollout-halt", target=str(rollout_id)))
    return str(row.site)


def view(conn: Connection, site: str) -> dict[str, Any] | None:
    """A site's updates for the desk: the releases it serves, each node (running, download, last outcome) and
    its rollouts, newest first, with their nodes."""
    if conn.execute(select(sites.c.site).where(sites.c.site == site)).first() is None:
        return None
    offers = [{"v": r.v, "profiles": json.loads(r.profiles), "size": r.size, "offered": r.offered}
              for r in conn.execute(select(ota_releases).where(ota_releases.c.site == site))]
    offers.sort(key=lambda o: ota_plan.version_key(o["v"]))
    progress = {r.dev: r for r in conn.execute(select(ota_progress).where(ota_progress.c.site == site))}
    outcomes = _outcomes(conn, site)
    nodes = []
    for d in conn.execute(select(devices).where(devices.c.site == site).order_by(devices.c.dev)):
        p = progress.get(d.dev)
        out = outcomes.get(d.dev)
        nodes.append({"dev": d.dev, "prof": d.prof or d.cls, "state": d.state, "running": d.fw,
                      "target": p.v if p else None, "done": p.done if p else 0, "total": p.total if p else 0,
                      "at": p.received if p else None,
                      "outcome": None if out is None else {"v": out[0], "ok": out[1], "res": out[2], "at": out[3]}})
    rollouts = []
    for r in conn.execute(select(ota_rollouts).where(ota_rollouts.c.site == site)
                          .order_by(ota_rollouts.c.id.desc()).limit(20)):
        members = conn.execute(select(ota_rollout_nodes).where(ota_rollout_nodes.c.rollout == r.id)
                               .order_by(ota_rollout_nodes.c.stage, ota_rollout_nodes.c.dev)).all()
        rollouts.append({"id": r.id, "v": r.v, "actor": r.actor, "created": r.created, "state": r.state,
                         "stage": r.stage, "reason": r.reason, "finished": r.finished, "halt_share": r.halt_share,
                         "nodes": [{"dev": m.dev, "stage": m.stage_name, "state": m.state, "detail": m.detail,
                                    "sends": m.sends} for m in members]})
    return {"site": site, "releases": offers, "nodes": nodes, "rollouts": rollouts}


Outcome = tuple[str, bool, str, float]  # (version, ok, reason, received)


def _outcome(conn: Connection, site: str, dev: str, since: float) -> Outcome | None:
    """The node's newest sealed "ota" event received since `since`: (version, ok, reason, received). Its readings
    are sought by their series (site, dev, n): through the node's messages, it read every one the node had sent."""
    got = conn.execute(select(messages.c.id, messages.c.received, readings.c.n, readings.c.vs, readings.c.vb)
                       .join(readings, readings.c.message == messages.c.id)
                       .where(readings.c.site == site, readings.c.dev == dev, readings.c.n.in_(OUTCOME),
                              messages.c.received >= since)
                       .order_by(messages.c.id.desc()).limit(len(OUTCOME))).all()
    if not got:
        return None
    return _fields({r.n: r.vs if r.vs is not None else r.vb for r in got if r.id == got[0].id}, float(got[0].received))


def _outcomes(conn: Connection, site: str) -> dict[str, Outcome]:
    """Each node's `_outcome` of all time, in one statement: asked a node at a time, the desk's update panel
    sent one a node, 1.8 s for a site of 5,000 (bench/district_reads.py). Each node's newest "ota" message is
    sought by its series, as `_outcome` seeks it, then that message's readings by the message."""
    latest = readings.alias("latest")
    newest = (select(devices.c.dev, select(func.max(latest.c.message)).where(
        latest.c.site == devices.c.site, latest.c.dev == devices.c.dev, latest.c.n.in_(OUTCOME))
        .scalar_subquery().label("message")).where(devices.c.site == site)
        .offset(0)  # kept a subquery: merged into the join, PostgreSQL looked each node's message up twice
        .subquery())
    found: dict[str, dict[str, Any]] = {}
    received: dict[str, float] = {}
    for r in conn.execute(select(newest.c.dev, messages.c.received, readings.c.n, readings.c.vs, readings.c.vb)
                          .join(messages, messages.c.id == newest.c.message)
                          .join(readings, (readings.c.message == newest.c.message) & readings.c.n.in_(OUTCOME))):
        found.setdefault(r.dev, {})[r.n] = r.vs if r.vs is not None else r.vb
        received[r.dev] = float(r.received)
    return {dev: out for dev, fields in found.items() if (out := _fields(fields, received[dev])) is not None}


def _fields(fields: dict[str, Any], received: float) -> Outcome | None:
    """One "ota" event's outcome from its readings' values by name, or None if they do not make one."""
    if not isinstance(fields.get("ota.v"), str) or not isinstance(fields.get("ota.ok"), bool):
        return None
    return fields["ota.v"], fields["ota.ok"], str(fields.get("ota.res") or ""), received


class Driver:
    """Runs every rollout in the database, one pass a `poll_s`, over the desk's downlink."""

    def __init__(self, engine: Engine, downlink: Downlink, on_change: Callable[[str], None],
                 clock: Callable[[], float] = time.time, owner: str | None = None) -> None:
        self.engine = engine
        self.downlink = downlink
        self.on_change = on_change  # told a site whose rollout moved, for the desk's live feed
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._leased: dict[int, float] = {}  # each rollout this desk drives: when its lease was last renewed
        self._send_failing: float | None = None  # when a send the broker refused was last logged, while they go on
        self._send_failed = 0

    async def run(self, poll_s: float = 1.0) -> None:
        """A pass each `poll_s`. One that fails is tried again (the state is all in the database); the first
        failure is logged, with a traceback unless the database failed it, then one a minute with the count,
        and the pass that succeeds again says so: a traceback each second filled the journal while the
        database was away."""
        failing: float | None = None  # when the last failure was logged, while passes keep failing
        failed = 0
        while True:
            try:
                await self.step()
            except Exception as exc:
                failed += 1
                if failing is None or time.monotonic() - failing >= FAIL_LOG_S:
                    ours = not isinstance(exc, store.DB_FAILED)  # a bug, not the database: its traceback, once
                    fields = {"error": store.failure(exc), "failed": failed}
                    log.error("rollout-pass-failed", exc_info=ours and failing is None, extra={"fields": fields})
                    failing = time.monotonic()
            else:
                if failing is not None:
                    event(log, "rollout-pass-recovered", logging.WARNING, failed=failed)
                failing, failed = None, 0
            await asyncio.sleep(poll_s)

    async def step(self) -> None:
        """One pass. Every database call of it off the event loop, and taking the write lock (SQLite's, for the
        whole database) only when a rollout runs: on the loop, it held up every request of the desk while an
        ingest worker held the lock, up to the busy timeout."""
        now = self.clock()

        def claim() -> list[int]:
            with store.reader(self.engine) as conn:
                if conn.execute(select(ota_rollouts.c.id).where(ota_rollouts.c.state == "running").limit(1)
                                ).first() is None:
                    return []
            with self.engine.begin() as conn:
                return [r.id for r in conn.execute(
                    update(ota_rollouts).where(ota_rollouts.c.state == "running", or_(
                        ota_rollouts.c.owner.is_(None), ota_rollouts.c.owner == self.owner,
                        ota_rollouts.c.lease < now))
                    .values(owner=self.owner, lease=now + LEASE_S).returning(ota_rollouts.c.id))]
        mine = await asyncio.to_thread(claim)
        self._leased = dict.fromkeys(mine, now)
        for rid in sorted(mine):
            await self._advance(rid)

    async def _hold(self, rid: int) -> bool:
        """Whether this desk still drives the rollout, its lease renewed once a third of it has gone. A pass can
        outlast the lease (a stage of hundreds of nodes, a command a connection to the broker), and another desk
        that took the rollout over meanwhile sent the nodes this one had not reached yet too."""
        now = self.clock()
        if now < self._leased.get(rid, 0.0) + LEASE_S / 3:
            return True

        def renew() -> bool:
            with self.engine.begin() as conn:
                return conn.execute(update(ota_rollouts).where(ota_rollouts.c.id == rid,
                                                               ota_rollouts.c.owner == self.owner)
                                    .values(lease=now + LEASE_S).returning(ota_rollouts.c.id)).first() is not None
        if not await asyncio.to_thread(renew):
            event(log, "rollout-lease-lost", logging.WARNING, id=rid, owner=self.owner)
            self._leased.pop(rid, None)
            return False
        self._leased[rid] = now
        return True

    async def _advance(self, rid: int) -> None:
        def load() -> tuple[Any, Any, Sequence[Any]]:
            with store.reader(self.engine) as conn:
                r = conn.execute(select(ota_rollouts).where(ota_rollouts.c.id == rid)).one()
                offer = conn.execute(select(ota_releases).where(ota_releases.c.site == r.site,
                                                                ota_releases.c.v == r.v)).first()
                return r, offer, conn.execute(select(ota_rollout_nodes).where(
                    ota_rollout_nodes.c.rollout == rid, ota_rollout_nodes.c.stage == r.stage)).all()
        r, offer, members = await asyncio.to_thread(load)
        if r.state != "running":
            return
        if r.stage_sent is None:
            await self._send_stage(r, offer, members)
            return
        moved = False
        for m in members:
            if m.state in ("landed", "failed"):
                continue
            if not await self._hold(rid):
                return
            moved |= await self._judge(r, offer, m)
        ended = await asyncio.to_thread(self._end_stage, r)
        if ended is None:
            if moved:
                self.on_change(r.site)
            return
        failed, sent, values, reason = ended
        event(log, "rollout-stage-ended", logging.WARNING if reason else logging.INFO, id=rid, site=r.site, v=r.v,
              stage=r.stage, failed=failed, sent=sent, next=values.get("state", "next stage"), reason=reason)
        self.on_change(r.site)

    def _end_stage(self, r: Any) -> tuple[int, int, dict[str, Any], str] | None:
        """End the stage if every node of it is judged or its time is up: (failed, sent, what the rollout's row
        became, why it halted); None while it runs."""
        with self.engine.begin() as conn:
            members = conn.execute(select(ota_rollout_nodes).where(ota_rollout_nodes.c.rollout == r.id,
                                                                   ota_rollout_nodes.c.stage == r.stage)).all()
            open_nodes = [m.dev for m in members if m.state not in ("landed", "failed")]
            now = self.clock()
            if open_nodes and now < r.stage_sent + r.stage_timeout:
                return None
            if open_nodes:
                conn.execute(update(ota_rollout_nodes).where(ota_rollout_nodes.c.rollout == r.id,
                                                             ota_rollout_nodes.c.dev.in_(open_nodes))
                             .values(state="failed", detail=f"no new birth within {r.stage_timeout:g} s"))
            sent = conn.execute(select(ota_rollout_nodes.c.state).where(ota_rollout_nodes.c.rollout == r.id,
                                                                        ota_rollout_nodes.c.stage <= r.stage)).all()
            failed = sum(1 for s in sent if s.state == "failed")
            reason = ota_plan.halt(failed, len(sent), r.halt_share, r.v)
            last = conn.execute(select(ota_rollout_nodes.c.stage).where(ota_rollout_nodes.c.rollout == r.id)
                                .order_by(ota_rollout_nodes.c.stage.desc()).limit(1)).scalar_one()
            values: dict[str, Any]
            if reason:
                values = {"state": "halted", "reason": reason, "finished": now}
            elif r.stage >= last:
                values = {"state": "done", "finished": now}
            else:
                values = {"stage": r.stage + 1, "stage_sent": None}
            conn.execute(update(ota_rollouts).where(ota_rollouts.c.id == r.id, ota_rollouts.c.state == "running")
                         .values(**values))
        return failed, len(sent), values, reason

    async def _send_stage(self, r: Any, offer: Any, members: Sequence[Any]) -> None:
        """Send the stage's commands; the stage's clock starts once every one of them has gone."""
        if offer is None:
            await self._write(update(ota_rollouts).where(ota_rollouts.c.id == r.id, ota_rollouts.c.state == "running")
                              .values(state="halted", reason=f"{r.site} no longer serves {r.v}",
                                      finished=self.clock()))
            return
        for m in members:
            if m.sends == 0 and not (await self._hold(r.id) and await self._send(r, offer, m.dev, 0)):
                return
        await self._write(update(ota_rollouts).where(ota_rollouts.c.id == r.id).values(stage_sent=self.clock()))
        event(log, "rollout-stage-sent", id=r.id, site=r.site, v=r.v, stage=r.stage, nodes=len(members))
        self.on_change(r.site)

    async def _send(self, r: Any, offer: Any, dev: str, sends: int) -> bool:
        """Send a node the ota command; False when the broker did not take it (tried again next pass). A broker
        away is logged at the first refusal, then once a minute with the count, and when a send goes through
        again: a line each pass was one a second of an outage."""
        args = {"v": r.v, "n": offer.n, "sig": bytes(offer.sig).hex()}
        try:
            cmd = await self.downlink.command(self.engine, r.actor, r.site, dev, "ota", args)
        except DownlinkError as exc:
            self._send_failed += 1
            if self._send_failing is None or time.monotonic() - self._send_failing >= FAIL_LOG_S:
                event(log, "rollout-send-failed", logging.WARNING, id=r.id, dev=dev, error=str(exc),
                      failed=self._send_failed)
                self._send_failing = time.monotonic()
            return False
        if self._send_failing is not None:
            event(log, "rollout-send-recovered", logging.WARNING, id=r.id, failed=self._send_failed)
        self._send_failing, self._send_failed = None, 0
        await self._write(update(ota_rollout_nodes).where(ota_rollout_nodes.c.rollout == r.id,
                                                          ota_rollout_nodes.c.dev == dev)
                          .values(cmd=cmd, sends=sends + 1, state="sent", detail=None))
        return True

    async def _judge(self, r: Any, offer: Any, m: Any) -> bool:
        """Bring one node's row up to date; True when it changed."""
        since = r.stage_sent

        def load() -> tuple[Any, Any, Outcome | None, Any]:
            with store.reader(self.engine) as conn:
                d = conn.execute(select(devices.c.fw).where(devices.c.site == r.site, devices.c.dev == m.dev)).first()
                p = conn.execute(select(ota_progress).where(ota_progress.c.site == r.site, ota_progress.c.dev == m.dev,
                                                            ota_progress.c.received >= since)).first()
                c = conn.execute(select(commands.c.ok, commands.c.result).where(
                    and_(commands.c.id == m.cmd, commands.c.answered.is_not(None)))).first() if m.cmd else None
                return d, p, _outcome(conn, r.site, m.dev, since), c
        d, p, out, c = await asyncio.to_thread(load)
        running = d.fw if d is not None and d.fw else ""
        n = NodeOta(m.dev, running=running, born_at=since if running == r.v else None,
                    target=p.v if p else "", done=p.done if p else 0, total=p.total if p else 0,
                    asked_at=since if p else None)
        if out is not None:
            n.outcome_v, n.ok, n.res, n.outcome_at = out
        ack = None if c is None else (bool(c.ok), str(json.loads(c.result) if c.result else ""))
        if ack is not None and not ack[0] and ack[1] == "timeout" and n.total == 0:
            if m.sends < ota_plan.SENDS and offer is not None:  # the node did not answer: again, under a new id
                return await self._send(r, offer, m.dev, m.sends)
            ack = (False, f"no answer to {m.sends} commands")
        state, detail = ota_plan.verdict(n, ack, r.v, since)
        state = "sent" if state in ("took", "waiting") else state
        if (state, detail) == (m.state, m.detail or ""):
            return False
        await self._write(update(ota_rollout_nodes).where(ota_rollout_nodes.c.rollout == r.id,
                                                          ota_rollout_nodes.c.dev == m.dev)
                          .values(state=state, detail=detail))
        return True

    async def _write(self, statement: Executable) -> None:
        """One statement in its own transaction, in a thread: on the desk's event loop, a worker holding SQLite's
        write lock held up every page's every request while the statement waited for it."""
        def run() -> None:
            with self.engine.begin() as conn:
                conn.execute(statement)
        await asyncio.to_thread(run)
