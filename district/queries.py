"""The desk's read models: what each panel shows, read straight from the district's tables.

Every function takes a connection and returns plain JSON-ready values. The alarm board never shows an
item as live unless it is: an inhibited alarm (its device silent or dead) and a historical one (sent from
a site's backlog) carry that state. Thresholds come from the gateway's own shipped rule sets
(gateway/rules.py), so the desk's lines are the levels the site judges by.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, case, func, select, union_all

from district import upstream
from district.schema import (
    alarm_events,
    alarms,
    commands,
    devices,
    messages,
    readings,
    rollups,
    seq_of,
    sites,
    work_order_steps,
    work_orders,
)
from district.store import session_began
from gateway.rules import RuleSet
from protocol.district_verify import Verifier

RiskPoints = Mapping[str, Sequence[Mapping[str, Any]]]  # {site: [{"id", "class", "lat", "lon", "radius_m"}]}
MAX_POINTS = 2000  # readings in one chart; a longer window is thinned evenly
SAMPLE_WINDOW = 20000  # newest readings the sample -> desk times are taken from
CLOSED_SHOWN = 50  # closed work orders in the list unless a page asks for more (docs/district.md)
CLOSED_MAX = 500  # and at most this many at once
RESPONSE_WINDOW_S = 30 * 86400  # the desk's response times are of the alarms and orders of the last 30 days
# A live raise goes first in its gateway's outbox and reaches the district in seconds: one whose gateway and
# reading times are not both within this before its arrival is from a clock that is not the district's
SITE_CLOCK_SLACK_S = 300.0
MESSAGES_SHOWN = 50  # device messages in one list (docs/district.md, "The device messages behind an alarm")
MESSAGES_SCANNED = 5000  # messages of a window looked through for them: a window of a year holds millions
STRADDLING = 8  # messages after a window looked through for one that began in it
VALUE_FIELDS = ("u", "v", "vs", "vb", "vd", "s")
RANK = case((alarms.c.level == "red", 4), (alarms.c.level == "orange", 3), (alarms.c.level == "yellow", 2),
            (alarms.c.level == "blue", 1), else_=0)


NOT_LIVE = case(((alarms.c.state == "open") & alarms.c.hist.is_(False), 0), else_=1)


def _point(risk_points: RiskPoints, site: str, point: str | None) -> Mapping[str, Any] | None:
    return next((p for p in risk_points.get(site, ()) if p.get("id") == point), None) if point else None


def open_alarms(conn: Connection, risk_points: RiskPoints) -> list[dict[str, Any]]:
    """Alarms not cleared: live ones first, red, then orange, yellow, blue, the oldest first within a colour;
    then the inhibited and historical ones in the same order, so neither ever sits among the live. Oldest by when
    the district first heard of it (`received`), not by its gateway's `raised`: a site's clock hours behind put its
    new red above reds the district had had for an hour, one ahead hid it below them. `site_online` false: the
    site's gateway is offline, so the alarm is as last heard (a clear could not reach the district)."""
    rows = conn.execute(
        select(alarms, devices.c.lat.label("dev_lat"), devices.c.lon.label("dev_lon"),
               work_orders.c.id.label("wo_id"), work_orders.c.state.label("wo_state"),
               work_orders.c.team.label("wo_team"), work_orders.c.round.label("wo_round"),
               sites.c.online.label("site_online"))
        .outerjoin(devices, (devices.c.site == alarms.c.site) & (devices.c.dev == alarms.c.dev))
        .outerjoin(sites, sites.c.site == alarms.c.site)
        .outerjoin(work_orders, work_orders.c.alarm == alarms.c.id)
        .where(alarms.c.state != "cleared")
        .order_by(NOT_LIVE, RANK.desc(), alarms.c.received, alarms.c.id)).all()
    out = []
    for r in rows:
        point = _point(risk_points, r.site, r.point)
        pos = ((r.lat, r.lon) if r.lat is not None else (point["lat"], point["lon"]) if point
               else (r.dev_lat, r.dev_lon) if r.dev_lat is not None else None)
        out.append({
            "id": r.id, "site": r.site, "dev": r.dev, "cls": r.cls, "kind": r.kind, "metric": r.metric,
            "level": r.level, "peak": r.peak, "value": r.value, "unit": r.unit, "point": r.point,
            "pos": list(pos) if pos else None, "raised": r.raised, "received": r.received, "step": r.step,
            "acked": r.acked_last,  # the ack that covers it as it is: none after an escalation it never saw
            "state": "historical" if r.hist else r.state, "t_last": r.t_last,
            "site_online": r.site_online is not False,  # its gateway's last word a death: nothing more comes
            "work_order": None if r.wo_id is None else
            {"id": r.wo_id, "state": r.wo_state, "team": r.wo_team, "round": r.wo_round}})
    return out


def alarm(conn: Connection, alarm_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(alarms).where(alarms.c.id == alarm_id)).first()
    return None if row is None else dict(row._mapping)


def alarm_messages(conn: Connection, alarm_id: str, now: float) -> dict[str, Any] | None:
    """The device messages behind an alarm: those with a reading of its metric from the one that raised it
    (`t_dev`) to its clear, or to `now` while it lasts (`device_messages`). A stale alarm, raised by silence,
    has none; nor has one whose raise never reached the district, the transition that names its reading."""
    a = conn.execute(select(alarms.c.site, alarms.c.dev, alarms.c.metric, alarms.c.kind, alarms.c.t_dev,
                            alarms.c.cleared).where(alarms.c.id == alarm_id)).first()
    if a is None:
        return None
    head = {"alarm": alarm_id, "site": a.site, "dev": a.dev, "metric": a.metric}
    if a.metric is None or a.t_dev is None:
        why = ("raised by the device's silence: no reading is behind it" if a.kind == "stale" else
               "the district never received the transition that raised it, which names its reading")
        return {**head, "from": None, "to": None, "messages": [], "more": False, "why": why}
    t_to = max(a.t_dev, a.cleared if a.cleared is not None else now)
    return {**head, **device_messages(conn, a.site, a.dev, a.metric, a.t_dev, t_to)}


def device_messages(conn: Connection, site: str, dev: str, metric: str, t_from: float,
                    t_to: float) -> dict[str, Any]:
    """The device messages whose readings' span (`t_first` to `t_last`) meets [t_from, t_to], in its order, so
    that they are found for as long as they are kept, their readings folded or not: at most MESSAGES_SHOWN, among
    the first MESSAGES_SCANNED that end in the window and those reaching past it, `more` if it holds others.
    While a message's readings are held it is listed only if one is of `metric`; once they are folded, what it
    carried is in its sealed bytes alone ("check again"). Each with every reading still held (none: `folded`),
    whether the device's own MAC was verified at ingest, and whether its sealed bytes are kept (the bytes
    themselves are not read)."""
    of_dev = (messages.c.site == site) & (messages.c.dev == dev)
    span = (messages.c.id, messages.c.t_first, messages.c.t_last)
    ending = (select(*span).where(of_dev, messages.c.t_last >= t_from, messages.c.t_last <= t_to)
              .order_by(messages.c.t_last).limit(MESSAGES_SCANNED + 1).subquery())
    # a message reaching past the window's end is among the device's next few: its messages follow each other
    beyond = (select(*span).where(of_dev, messages.c.t_last > t_to).order_by(messages.c.t_last)
              .limit(STRADDLING).subquery())
    near = union_all(select(ending), select(beyond)).subquery()
    # 1 if a held reading is of the metric, 0 if none is, NULL if none is held; per message by readings_message,
    # where EXISTS ... OR NOT EXISTS had PostgreSQL hash every reading of the table
    of_metric = (select(func.max(case((readings.c.n == metric, 1), else_=0)))
                 .where(readings.c.message == near.c.id).scalar_subquery())
    found = conn.execute(select(near.c.id, near.c.t_first, near.c.t_last)
                         .where(near.c.t_first <= t_to, func.coalesce(of_metric, 1) == 1)
                         .order_by(near.c.t_first, near.c.id).limit(MESSAGES_SHOWN + 1)).all()
    more = len(found) > MESSAGES_SHOWN or conn.execute(
        select(func.count()).select_from(ending)).scalar_one() > MESSAGES_SCANNED
    spans = {r.id: [r.t_first, r.t_last] for r in found[:MESSAGES_SHOWN]}
    carried: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in conn.execute(select(readings).where(readings.c.message.in_(spans))
                          .order_by(readings.c.t, readings.c.n)) if spans else ():
        carried[r.message].append(_reading(r._mapping))
    rows = {r.id: r for r in conn.execute(
        select(messages.c.id, messages.c.seq_key, messages.c.boot, messages.c.pri, messages.c.hist,
               messages.c.received, messages.c.verified, messages.c.sealed.is_not(None).label("sealed"))
        .where(messages.c.id.in_(spans)))} if spans else {}
    return {"from": t_from, "to": t_to, "more": more, "messages": [
        {"id": i, "site": site, "dev": dev, "seq": str(seq_of(m.seq_key)), "boot": str(m.boot), "pri": m.pri,
         "hist": m.hist, "received": m.received, "verified": m.verified, "sealed": bool(m.sealed),
         "span": span, "folded": not carried[i], "readings": carried[i]}
        for i, span in spans.items() if (m := rows.get(i)) is not None]}


def check_message(conn: Connection, message_id: int, verifier: Verifier) -> dict[str, Any] | None:
    """A stored message's sealed bytes verified again now, with its device's key as the ingest has it and by
    the ingest's own check (`upstream.pack_entry`: the MAC, and the device's dev, seq, boot and pri against the
    row's), and what they decode to held against the stored readings. Reads only. `verdict`: match, differs,
    mac-fails, no-key, folded (no stored readings left to compare: the retention rolled them up), unsealed
    (its site forwarded no sealed bytes), gone (an id below the newest with no row: the retention deleted it, or
    it was never used, PostgreSQL's ids having gaps); None: an id past the newest."""
    row = conn.execute(select(messages).where(messages.c.id == message_id)).first()
    if row is None:
        newest = conn.execute(select(func.max(messages.c.id))).scalar()
        if newest is None or message_id > newest:
            return None
        return {"id": message_id, "verdict": "gone", "says": "not held: the retention deletes a message received "
                "more than messages_days ago, sealed bytes and all"}
    seq = seq_of(row.seq_key)
    head = {"id": message_id, "site": row.site, "dev": row.dev, "seq": str(seq), "boot": str(row.boot),
            "verified": row.verified}
    stored = [_reading(r._mapping) for r in conn.execute(
        select(readings).where(readings.c.message == message_id).order_by(readings.c.t, readings.c.n))]
    if row.sealed is None:
        return {**head, "verdict": "unsealed", "stored": stored,
                "says": "never forwarded sealed: its site sent no device message to check these readings against"}
    if verifier.dev_keys.get(row.dev) is None:
        return {**head, "verdict": "no-key", "stored": stored,
                "says": f"no key for {row.dev} in the district's config: its sealed bytes cannot be checked"}
    entry = {"dev": row.dev, "seq": seq, "boot": row.boot, "pri": row.pri, "m": row.sealed}
    try:
        records = upstream.pack_entry(entry, f"message {message_id}", verifier)[4]
    except upstream.Refused as r:
        if r.reason == "device-mac":
            return {**head, "verdict": "mac-fails", "stored": stored,
                    "says": f"the device's MAC fails: the stored bytes are not what {row.dev} sealed"}
        return {**head, "verdict": "differs", "stored": stored, "says": f"the stored message differs from what "
                f"{row.dev} sealed: {r.detail}"}
    sent = [_reading(r) for r in sorted(records, key=lambda r: (r["t"], r["n"]))]
    if not stored:
        return {**head, "verdict": "folded", "sent": sent, "stored": stored,
                "says": "the device's MAC holds; its readings were folded into rollups (raw_days), so none are "
                        "stored to compare: these are what it sent"}
    sent_values, stored_values = Counter(_value(r) for r in sent), Counter(_value(r) for r in stored)
    if sent_values != stored_values:
        if not stored_values - sent_values and _folded(conn, message_id,
                                                       [r for r in sent if _value(r) not in stored_values]):
            return {**head, "verdict": "folded", "sent": sent, "stored": stored,
                    "says": f"the device's MAC holds; {len(sent) - len(stored)} of its {len(sent)} readings were "
                            "folded into rollups (raw_days), and those still stored are ones it sent"}
        return {**head, "verdict": "differs", "sent": sent, "stored": stored,
                "says": f"the device's MAC holds, but the stored readings are not the ones {row.dev} sent"}
    retimed = sum((Counter((r["n"], r["t"]) for r in stored) - Counter((r["n"], r["t"]) for r in sent)).values())
    return {**head, "verdict": "match", "sent": sent, "stored": stored, "retimed": retimed,
            "says": "verified now: the device's MAC holds and the stored readings are the ones it sent" + (
                f"; {retimed} of their times are not the device's own (the gateway's, for a clock it did not "
                "trust, or changed since), which its MAC does not cover" if retimed else "")}


def _folded(conn: Connection, message_id: int, missing: list[dict[str, Any]]) -> bool:
    """Whether the retention explains message `message_id`'s `missing` readings: it folds the oldest first, by
    (time, message), so a message whose readings straddle raw_days, or a pass's bound within their time, holds
    its newer ones until a later pass. Each missing one's (time, message) is below every reading's held now
    (readings_time), or a reading taken from the database would pass for folded."""
    oldest = conn.execute(select(readings.c.t, readings.c.message)
                          .order_by(readings.c.t, readings.c.message).limit(1)).first()
    return bool(missing) and oldest is not None and (max(r["t"] for r in missing), message_id) < tuple(oldest)


def _reading(r: Mapping[Any, Any]) -> dict[str, Any]:
    """A reading as the desk shows it, stored or decoded alike: a number as a float, bytes as hex."""
    out: dict[str, Any] = {"n": r["n"], "t": r["t"]}
    for k in VALUE_FIELDS:
        x = r.get(k)
        if x is not None:
            out[k] = x.hex() if isinstance(x, bytes) else float(x) if k in ("v", "s") else x
    return out


def _value(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (r["n"], *(r.get(k) for k in VALUE_FIELDS))


def site_states(conn: Connection) -> list[dict[str, Any]]:
    """Each gateway online or offline, its session and when it began by the site box's clock (`began`, None for
    a counter), when it was born and died, and its devices by state."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for site, state, n in conn.execute(select(devices.c.site, devices.c.state, func.count())
                                       .group_by(devices.c.site, devices.c.state)):
        counts[site][state] = n
    return [{"site": r.site, "online": r.online, "session": r.session, "began": session_began(r.session),
             "born": r.born, "died": r.died, "last_seen": r.last_seen, "devices": counts.get(r.site, {})}
            for r in conn.execute(select(sites).order_by(sites.c.site))]


def device_states(conn: Connection, site: str | None = None) -> list[dict[str, Any]]:
    """Each device's state as it last said; `site_online` false: its site's gateway is offline, so that state is
    as last heard and says nothing of now (the desk shows it as unknown)."""
    q = (select(devices, sites.c.online.label("site_online")).outerjoin(sites, sites.c.site == devices.c.site)
         .order_by(devices.c.site, devices.c.dev))
    if site is not None:
        q = q.where(devices.c.site == site)
    return [{"site": r.site, "dev": r.dev, "state": r.state, "site_online": r.site_online is not False, "cls": r.cls,
             "fw": r.fw, "batt": r.batt, "rssi": r.rssi, "last_seen": r.last_seen,
             "pos": [r.lat, r.lon] if r.lat is not None else None}
            for r in conn.execute(q)]


def map_view(conn: Connection, risk_points: RiskPoints) -> dict[str, Any]:
    """What has coordinates: risk points (from the district config), devices, and open alarms."""
    points = [{"site": site, "id": p["id"], "cls": p.get("class"), "lat": p["lat"], "lon": p["lon"],
               "radius_m": p.get("radius_m")} for site, ps in risk_points.items() for p in ps]
    devs = [d for d in device_states(conn) if d["pos"] is not None]
    live = [{"id": a["id"], "site": a["site"], "dev": a["dev"], "level": a["level"], "state": a["state"],
             "point": a["point"], "pos": a["pos"]} for a in open_alarms(conn, risk_points) if a["pos"]]
    return {"points": points, "devices": devs, "alarms": live}


def history(conn: Connection, rules: RuleSet, site: str, dev: str, metric: str, t_from: float, t_to: float,
            rollup_s: int) -> dict[str, Any]:
    """One sensor over a window: its readings (thinned evenly past MAX_POINTS; a boolean as 0 or 1, and
    `boolean` says the series is one, to be drawn in steps), its rollups (`rollup_s` wide:
    every bucket that overlaps the window, the one it starts in too), its class's thresholds, and the alarm
    transitions in the window.

    Rollups and readings are each given whole, not cut where the other begins: a reading older than the raw
    retention that arrived late waits in `readings` for the next fold beside the rollups of its span, and
    cutting the rollups at the oldest reading hid every bucket newer than it until then."""
    window = ((readings.c.site == site) & (readings.c.dev == dev) & (readings.c.n == metric)
              & (readings.c.t >= t_from) & (readings.c.t <= t_to))
    # Thinned in the database: a window of up to 400 days at 1 Hz is tens of millions of readings.
    total = conn.execute(select(func.count()).select_from(readings).where(window)).scalar() or 0
    stride = max(-(-total // MAX_POINTS), 1)
    numbered = select(readings.c.t.label("at"), readings.c.v, readings.c.s, readings.c.vb, readings.c.u,
                      func.row_number().over(order_by=readings.c.t).label("i")).where(window).subquery()
    raw = conn.execute(select(numbered.c.at, numbered.c.v, numbered.c.s, numbered.c.vb, numbered.c.u)
                       .where((numbered.c.i - 1) % stride == 0).order_by(numbered.c.at)).all()
    points = [[r.at, r.v if r.v is not None else r.s if r.s is not None else int(r.vb)]
              for r in raw if r.v is not None or r.s is not None or r.vb is not None]
    rolled = [{"t": at, "count": n, "min": lo, "max": hi, "mean": mean}
              for at, n, lo, hi, mean in conn.execute(select(
                  rollups.c.t, rollups.c.count, rollups.c.min, rollups.c.max, rollups.c.mean).where(
                  rollups.c.site == site, rollups.c.dev == dev, rollups.c.n == metric,
                  rollups.c.t > t_from - rollup_s, rollups.c.t <= t_to).order_by(rollups.c.t))]
    cls = conn.execute(select(devices.c.cls).where(devices.c.site == site, devices.c.dev == dev)).scalar()
    if cls is None:
        cls = conn.execute(select(alarms.c.cls).where(alarms.c.site == site, alarms.c.dev == dev,
                                                      alarms.c.metric == metric).limit(1)).scalar()
    # A gateway stamps a batch's transitions with one t_gw, and workers store them in any order: within a time,
    # each alarm's (the one raised first first) in their step's order (none from a gateway without numbers)
    events = [{"alarm": r.alarm, "ev": r.ev, "level": r.level, "prev": r.prev, "value": r.value, "t": r.t_gw,
               "hist": r.hist}
              for r in conn.execute(select(alarm_events).join(alarms, alarms.c.id == alarm_events.c.alarm).where(
                  alarms.c.site == site, alarms.c.dev == dev, alarms.c.metric == metric,
                  alarm_events.c.t_gw >= t_from, alarm_events.c.t_gw <= t_to).order_by(
                  alarm_events.c.t_gw, alarms.c.raised.nulls_last(), alarm_events.c.alarm,
                  alarm_events.c.step.nulls_first(), alarm_events.c.id))]
    return {"site": site, "dev": dev, "metric": metric, "cls": cls, "from": t_from, "to": t_to,
            "unit": raw[-1].u if raw else None, "boolean": bool(raw) and raw[-1].vb is not None,
            "readings": points, "rollups": rolled,
            "thresholds": thresholds(rules, cls, dev, metric), "transitions": events}


def thresholds(rules: RuleSet, cls: str | None, dev: str, metric: str) -> list[dict[str, Any]]:
    """The level rule's levels and clear levels for a device's metric, lowest level first."""
    judged = rules.metric_rules(cls, dev, metric) if cls else None
    if judged is None or judged.level is None:
        return []
    level = judged.level
    return [{"level": lv.label, "value": v, "clear": level.clear.get(lv), "direction": level.direction}
            for lv, v in sorted(level.levels.items())]


def work_order_list(conn: Connection, order_id: int | None = None, *, closed: int = CLOSED_SHOWN,
                    before: int | None = None) -> list[dict[str, Any]]:
    """Work orders, newest first, with what their alarm was about: every order not yet closed, and the newest
    `closed` closed ones. With `before` (an order id), only the closed orders older than it, the next page
    back through the history. A district makes tens of thousands of orders a year, and every open page
    fetches this list at each work-order notice: it was every order ever made."""
    q = (select(work_orders, alarms.c.dev, alarms.c.metric, alarms.c.peak, alarms.c.level, alarms.c.point)
         .join(alarms, alarms.c.id == work_orders.c.alarm).order_by(work_orders.c.id.desc()))
    if order_id is not None:
        rows = list(conn.execute(q.where(work_orders.c.id == order_id)))
    else:
        done = q.where(work_orders.c.state == "closed")
        rows = [] if before is not None else list(conn.execute(q.where(work_orders.c.state != "closed")))
        rows += conn.execute((done if before is None else done.where(work_orders.c.id < before)).limit(closed))
        rows.sort(key=lambda r: r.id, reverse=True)
    return [{"id": r.id, "alarm": r.alarm, "site": r.site, "dev": r.dev, "metric": r.metric, "peak": r.peak,
             "level": r.level, "point": r.point, "state": r.state, "team": r.team, "round": r.round,
             "opened": r.opened, "updated": r.updated} for r in rows]


def work_order(conn: Connection, order_id: int) -> dict[str, Any] | None:
    """One order with every step, oldest first."""
    found = work_order_list(conn, order_id)
    if not found:
        return None
    steps = [{"step": r.step, "actor": r.actor, "at": r.at, "team": r.team, "note": r.note, "action": r.action}
             for r in conn.execute(select(work_order_steps).where(work_order_steps.c.order_id == order_id)
                                   .order_by(work_order_steps.c.id))]
    return {**found[0], "steps": steps}


def command_state(conn: Connection, cmd_id: int) -> dict[str, Any] | None:
    """A command as sent and, once the site answered, its outcome (`state`: sent, done, failed)."""
    r = conn.execute(select(commands).where(commands.c.id == cmd_id)).first()
    if r is None:
        return None
    return {"id": str(r.id), "site": r.site, "dev": r.dev, "op": r.op, "args": json.loads(r.args),
            "actor": r.actor, "sent": r.sent, "answered": r.answered,
            "state": "sent" if r.answered is None else "done" if r.ok else "failed",
            "result": None if r.result is None else json.loads(r.result)}


def stats(values: Iterable[float]) -> dict[str, Any]:
    """p50, p90 (nearest rank), max and count of durations in seconds."""
    v = sorted(values)
    if not v:
        return {"count": 0, "p50": None, "p90": None, "max": None}
    def rank(p: int) -> float:
        return v[max(0, -(-len(v) * p // 100) - 1)]
    return {"count": len(v), "p50": rank(50), "p90": rank(90), "max": v[-1]}


def response_times(conn: Connection, since: float | None = None) -> dict[str, Any]:
    """p50, p90 and max of each of `response_values`, for the desk."""
    return {group: {key: {m: stats(vals) for m, vals in measures.items()} for key, measures in g.items()}
            for group, g in response_values(conn, since).items()}


def response_values(conn: Connection, since: float | None = None) -> dict[str, dict[str, dict[str, list[float]]]]:
    """The seeds' measures in seconds, per colour (an alarm's peak level) and per site:
    sample -> desk (when the district received a reading minus its time; by colour, for the readings that
    raised alarms), alarm -> ack (acked - received), ack -> dispatch and dispatch -> closed (from the steps).
    `since`: of the alarms the district received and the orders opened from then on only (the desk's, every
    page fetching them at each notice); None, of all it holds."""
    by: dict[str, dict[str, dict[str, list[float]]]] = {
        "colour": defaultdict(lambda: defaultdict(list)), "site": defaultdict(lambda: defaultdict(list))}
    for _, measure, colour, site, value in [*sample_measures(conn), *alarm_measures(conn, since=since)]:
        if colour:
            by["colour"][colour][measure].append(value)
        if site:
            by["site"][site][measure].append(value)
    return {group: {key: dict(measures) for key, measures in sorted(g.items())} for group, g in by.items()}


Measure = tuple[float, str, str | None, str | None, float]  # (alarm received, measure, colour, site, seconds)


def sample_measures(conn: Connection) -> list[Measure]:
    """sample -> desk by site, of the newest SAMPLE_WINDOW live readings (received 0: of no alarm)."""
    rows = conn.execute(select(readings.c.site, readings.c.t, messages.c.received)
                        .join(messages, messages.c.id == readings.c.message).where(messages.c.hist.is_(False))
                        .order_by(messages.c.id.desc()).limit(SAMPLE_WINDOW))
    return [(0.0, "sample_desk", None, site, received - t) for site, t, received in rows if received >= t]


def alarm_measures(conn: Connection, *, since: float | None = None,
                   received: tuple[float, float] | None = None) -> list[Measure]:
    """The measures of live alarms and their orders, each with when the district received its alarm. `since`
    as `response_values` takes it; `received` (from, to): of the alarms received in it and their orders only,
    which district/metrics.py keeps a day at a time. Timed by the district's clock (arrivals, the officers'
    steps); a site's only for a reading's time, which nothing else has, and only where the site's clock agrees
    with the district's (`_site_clock_agrees`): a site hours off or sending absurd times moved every colour's
    figures, which mix all sites."""
    out: list[Measure] = []

    def add(at: float, measure: str, colour: str | None, site: str | None, value: float | None) -> None:
        if value is not None and value >= 0:
            out.append((at, measure, colour, site, value))

    recent_alarms = select(alarms).where(alarms.c.hist.is_(False))
    steps = (select(work_order_steps.c.order_id, work_order_steps.c.step, work_order_steps.c.at)
             .order_by(work_order_steps.c.id))
    orders = (select(work_orders.c.id, work_orders.c.site, alarms.c.peak, alarms.c.received)
              .join(alarms, alarms.c.id == work_orders.c.alarm))
    if since is not None:
        recent_alarms = recent_alarms.where(alarms.c.received >= since)
        steps = steps.join(work_orders, work_orders.c.id == work_order_steps.c.order_id).where(
            work_orders.c.opened >= since)
        orders = orders.where(work_orders.c.opened >= since)
    if received is not None:
        within = (alarms.c.received >= received[0]) & (alarms.c.received < received[1])
        recent_alarms = recent_alarms.where(within)
        steps = (steps.join(work_orders, work_orders.c.id == work_order_steps.c.order_id)
                 .join(alarms, alarms.c.id == work_orders.c.alarm).where(within))
        orders = orders.where(within)
    for r in conn.execute(recent_alarms):
        # An alarm a live resend made live (store.revive_alarm) is timed from then (from its arrival if the officer
        # acknowledged it before): before, the desk had it only as a backlog's, and its reading came in the
        # backlog, which no sample -> desk counts.
        if r.revived is None and _site_clock_agrees(r.received, r.raised, r.t_dev):
            add(r.received, "sample_desk", r.peak, None, r.received - r.t_dev)
        live = r.received if r.revived is None else r.revived
        add(r.received, "alarm_ack", r.peak, r.site, None if r.acked is None else r.acked - live)
    firsts: dict[int, dict[str, float]] = defaultdict(dict)
    for order_id, step, at in conn.execute(steps):
        firsts[order_id].setdefault(step, at)
    for r in conn.execute(orders):
        s = firsts.get(r.id, {})
        if "ack" in s and "dispatch" in s:
            add(r.received, "ack_dispatch", r.peak, r.site, s["dispatch"] - s["ack"])
        if "dispatch" in s and "close" in s:
            add(r.received, "dispatch_closed", r.peak, r.site, s["close"] - s["dispatch"])
    return out


def _site_clock_agrees(received: float, raised: float | None, t_dev: float | None) -> bool:
    """Whether a live alarm's gateway time of its raise and its reading's time both fall within
    SITE_CLOCK_SLACK_S before the district received it. A clock behind would add its error to sample -> desk, one
    ahead would drop it as negative, a hostile site's times anything: such a reading is left out of the figure."""
    return (raised is not None and t_dev is not None
            and 0 <= received - raised <= SITE_CLOCK_SLACK_S and 0 <= received - t_dev <= SITE_CLOCK_SLACK_S)
