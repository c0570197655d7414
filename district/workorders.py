"""The work-order lifecycle: 任务派发回流 + 人工纠错重发 (dispatch, report back, correct and re-dispatch).

    open --ack--> acknowledged --dispatch--> dispatched --report--> reported --close--> closed
                                                 ^    |                 |
                                                 |    +--send-back--+   |
                                                 +--dispatch-- returned <--send-back--+

An orange or red live alarm opens its order, and its escalation reopens it if it was closed (district/store.py).
Every step is a new row naming who and when; nothing is updated in place but the order's current state, and that
only from the state the step expects, so two people acting on one order at once cannot both succeed. The server
checks the actor's role here, whatever the page showed them.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, func, select, update

from district.accounts import Session
from district.refusal import Refusal, utc
from district.schema import alarm_events, alarms, audit, work_order_steps, work_orders
from district.store import LEVELS
from district.text import ILLEGIBLE, readable, storable

# action -> (the states it may start from, the state it leads to)
STEPS = {
    "dispatch": (("acknowledged", "returned"), "dispatched"),
    "report": (("dispatched",), "reported"),
    "close": (("reported",), "closed"),
    "send-back": (("dispatched", "reported"), "returned"),  # dispatched: to the wrong team, or with wrong details
}
STEP_DONE = {"dispatch": "dispatched", "report": "reported", "close": "closed", "send-back": "sent back",
             "ack": "acknowledged", "opened": "opened", "reopened": "reopened"}  # and the steps store.py writes
MAX_TEXT = 2000
MAX_TEAM = 64


class WorkOrderError(Refusal):
    """A refused step: `status` is the HTTP status the desk answers with (400 bad input, 403 role, 404 no
    such thing, 409 the order is not in a state that allows the step)."""


def _text(value: Any, what: str, limit: int, required: bool) -> str | None:
    """A text a person reads, stripped; None when it has nothing to read (blank, or characters that draw nothing
    alone, which would make an order read as dispatched to no one)."""
    if value is None or (isinstance(value, str) and not readable(value)):
        if required:
            raise WorkOrderError(400, f"{what}: required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise WorkOrderError(400, f"{what}: text of at most {limit} characters")
    if not storable(value, ILLEGIBLE):
        raise WorkOrderError(400, f"{what}: text without control characters or direction overrides "
                                  "(U+202A-U+202E, U+2066-U+2069), which make it read differently to the team")
    return value.strip()


def _allowed(who: Session, action: str) -> None:
    if not who.may(action):
        raise WorkOrderError(403, f"a {who.role} may not {action}")


def _audit(conn: Connection, who: Session, what: str, target: str, detail: str | None, now: float) -> None:
    conn.execute(audit.insert().values(actor=who.user, at=now, what=what, target=target, detail=detail))


def _rose_since(level: str, at: float) -> WorkOrderError:
    """The refusal of an ack whose alarm rose (to `level`, at gateway time `at`) since the page showed it."""
    return WorkOrderError(409, f"it went {level} at {utc(at)} since you looked; look again and acknowledge", (at,))


def _done(step: Any) -> str:
    """A step of an order as a refusal names it: what, by whom (the district's own steps name no one) and when."""
    who = "" if step.actor == "system" else f" by {step.actor}"
    return f"{STEP_DONE.get(step.step, step.step)}{who}{f' to {step.team}' if step.team else ''} at {utc(step.at)}"


def ack_alarm(conn: Connection, alarm_id: str, who: Session, *, seen_level: Any = None, seen_step: Any = None,
              now: float | None = None) -> str:
    """Acknowledge an alarm as it stands, at its latest rise's step (and move its order, if any, to acknowledged);
    returns the alarm's site, to which the desk sends the ack down so the gateway stops re-sending. An alarm
    acknowledged before and escalated since (`acked_last` null) is acknowledged again; `acked` keeps the first.
    Acknowledging twice changes nothing: only the UPDATEs that found the alarm unacknowledged or its order open
    audit (a second ack at once waits on the first's lock of the alarm's row, then finds neither). The order's
    may be the only one: an alarm acknowledged at yellow opens its order when it goes red.
    `seen_level`: the level the officer's page showed. An alarm escalated past it since is refused 409 (the click
    acknowledged a red the officer never saw); a fall since is acknowledged. None (an older page): as it stands.
    `seen_step`, the step it showed: an alarm that rose after it is refused too, also once it has come down to the
    level shown (the red that came and went before the click was acknowledged, here and at the site, unseen).
    The row is locked before the check, so no escalation commits between the check and the ack."""
    now = time.time() if now is None else now
    _allowed(who, "ack")
    if seen_level is not None and (not isinstance(seen_level, str) or seen_level not in LEVELS):
        raise WorkOrderError(400, f"level: the level the page showed, one of {', '.join(LEVELS)}")
    if seen_step is not None and (type(seen_step) is not int or not 0 <= seen_step < 2**63):
        raise WorkOrderError(400, "step: the step the page showed, an unsigned integer")
    row = conn.execute(select(alarms.c.site, alarms.c.level, alarms.c.t_last, alarms.c.step, alarms.c.rose_step,
                              alarms.c.raised).where(alarms.c.id == alarm_id).with_for_update()).first()
    if row is None:
        raise WorkOrderError(404, f"no alarm {alarm_id}")
    if seen_level is not None and row.level in LEVELS and LEVELS.index(row.level) > LEVELS.index(seen_level):
        went = conn.execute(select(func.max(alarm_events.c.t_gw)).where(
            alarm_events.c.alarm == alarm_id, alarm_events.c.ev == "escalated", alarm_events.c.level == row.level)
            ).scalar()
        raise _rose_since(row.level, row.t_last if went is None else went)
    if seen_step is not None and row.rose_step is not None and row.rose_step > seen_step:
        went = conn.execute(select(alarm_events.c.level, alarm_events.c.t_gw).where(
            alarm_events.c.alarm == alarm_id, alarm_events.c.ev == "escalated")
            .order_by(alarm_events.c.t_gw.desc(), alarm_events.c.step.desc().nulls_last(), alarm_events.c.id.desc())
            .limit(1)).first()
        raise _rose_since(row.level, row.t_last) if went is None else _rose_since(went.level, went.t_gw)
    if row.step is not None and row.rose_step is None and row.raised is None:
        raise WorkOrderError(409, "its raise has not reached the district yet; look again in a moment")
    site = row.site
    # At the latest rise the district holds, not at its step: workers share a backlog, and a rise stored after a
    # later fall was covered at the site by an ack of the fall's step, unseen. Without rose_step: the step (a
    # database from before the column), or none (a gateway without numbers).
    step = row.step if row.rose_step is None else row.rose_step
    acked = conn.execute(update(alarms).where(alarms.c.id == alarm_id, alarms.c.acked_last.is_(None))
                         .values(acked=func.coalesce(alarms.c.acked, now), acked_last=now, acked_step=step)
                         .returning(alarms.c.id)).first() is not None
    order = conn.execute(update(work_orders).where(work_orders.c.alarm == alarm_id, work_orders.c.state == "open")
                         .values(state="acknowledged", updated=now).returning(work_orders.c.id)).first()
    if order is not None:
        conn.execute(work_order_steps.insert().values(order_id=order.id, step="ack", actor=who.user, at=now))
    if acked or order is not None:
        _audit(conn, who, "ack", alarm_id, None, now)
    return str(site)


def act(conn: Connection, order_id: int, action: str, who: Session, *, team: Any = None, note: Any = None,
        action_taken: Any = None, seen_round: Any = None, now: float | None = None) -> str:
    """One step of an order; returns its new state. `note` is the findings of a report or the correction of
    a send-back; `action_taken` what the team did. The same step again, by the same person with the same
    text, finding the order already where it leads (a double click, a request sent again), is done: it
    returns that state and writes nothing. Another's, or other text, is refused 409 naming who did it.
    `seen_round`: the round the officer's page showed; a step of another round is refused 409 (round 1's
    findings reported after the order was sent back and dispatched again were taken as round 2's)."""
    now = time.time() if now is None else now
    if action not in STEPS:
        raise WorkOrderError(400, f"action: one of {', '.join(STEPS)}")
    _allowed(who, action)
    sources, target = STEPS[action]
    team = _text(team, "team", MAX_TEAM, required=action == "dispatch")
    note = _text(note, "findings" if action == "report" else "correction", MAX_TEXT,
                 required=action in ("report", "send-back"))
    action_taken = _text(action_taken, "action taken", MAX_TEXT, required=False)
    if seen_round is not None and (type(seen_round) is not int or not 0 < seen_round < 2**31):
        raise WorkOrderError(400, "round: the order's round, a whole number from 1")
    row = conn.execute(select(work_orders.c.state).where(work_orders.c.id == order_id)).first()
    if row is None:
        raise WorkOrderError(404, f"no work order {order_id}")
    values: dict[str, Any] = {"state": target, "updated": now}
    if team is not None:
        values["team"] = team
    if action == "dispatch" and row.state == "returned":
        values["round"] = work_orders.c.round + 1
    where = [work_orders.c.id == order_id, work_orders.c.state.in_(sources)]
    if seen_round is not None:
        where.append(work_orders.c.round == seen_round)
    done = conn.execute(update(work_orders).where(*where).values(**values).returning(work_orders.c.state)).first()
    if done is None:
        state, now_round = conn.execute(select(work_orders.c.state, work_orders.c.round)
                                        .where(work_orders.c.id == order_id)).one()
        steps = work_order_steps.c
        last = conn.execute(select(work_order_steps).where(steps.order_id == order_id)
                            .order_by(steps.id.desc()).limit(1)).first()
        if state == target and last is not None and last.step == action:
            if (last.actor, last.team, last.note, last.action) == (who.user, team, note, action_taken):
                return target  # the same request again (a double click): done already, and written once
            raise WorkOrderError(409, f"work order {order_id} is already {_done(last)}", (last.at,))
        # Each refusal names who took the step in the way, and when: "it is returned" left the officer asking whom to
        # call about it
        if seen_round is not None and seen_round != now_round:
            back = conn.execute(select(work_order_steps).where(steps.order_id == order_id, steps.step == "send-back")
                                .order_by(steps.id.desc()).limit(1)).first()
            after = None if last is None or (back is not None and back.id == last.id) else last
            raise WorkOrderError(409, f"work order {order_id} was {'sent back since' if back is None else _done(back)}"
                                      f", and is in round {now_round} ({state if after is None else _done(after)}): "
                                      "look at it again", tuple(x.at for x in (back, after) if x is not None))
        was = "" if last is None else f"was {_done(last)} and "
        raise WorkOrderError(409, f"work order {order_id} {was}is {state}: it cannot be {STEP_DONE[action]}",
                             () if last is None else (last.at,))
    conn.execute(work_order_steps.insert().values(order_id=order_id, step=action, actor=who.user, at=now, team=team,
                                                  note=note, action=action_taken))
    _audit(conn, who, action, f"work-order {order_id}", note, now)
    return target
