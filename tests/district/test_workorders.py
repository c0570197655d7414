"""Accounts and the work-order lifecycle, on both engines: the server refuses what a role may not do, a
step from the wrong state, and bad input, and changes nothing when it refuses."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, select

from district import accounts, store, workorders
from district.accounts import AccountError, Session
from district.schema import alarms, audit, work_order_steps, work_orders
from district.workorders import WorkOrderError

ALARM = "b" * 32


def raise_red(engine: Engine) -> int:
    body = {"id": ALARM, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4",
            "level": "red", "prev": None, "value": 60.0, "reading": 60.0, "rule": "gas.ch4", "rver": 1,
            "t_dev": 9.5, "t_gw": 10.0, "resend": 0}
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", body, received=10.2)
        return int(conn.execute(select(work_orders.c.id)).scalar_one())


def login(engine: Engine, name: str, role: str) -> Session:
    with engine.begin() as conn:
        accounts.add_user(conn, name, role, f"{name}-password-1")
        s = accounts.log_in(conn, name, f"{name}-password-1")
    assert s is not None and s.role == role
    return s


def steps(engine: Engine, order: int) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.step, r.actor) for r in conn.execute(select(work_order_steps)
                                                         .where(work_order_steps.c.order_id == order)
                                                         .order_by(work_order_steps.c.id))]


def do(engine: Engine, order: int, action: str, who: Session, **kw: Any) -> str:
    with engine.begin() as conn:
        return workorders.act(conn, order, action, who, **kw)


def test_the_whole_loop_with_a_send_back(engine: Engine) -> None:
    order = raise_red(engine)
    op, sup = login(engine, "li.wei", "operator"), login(engine, "chen", "supervisor")
    with engine.begin() as conn:
        assert workorders.ack_alarm(conn, ALARM, op, now=20.0) == "s1"
        assert workorders.ack_alarm(conn, ALARM, sup, now=21.0) == "s1"  # a second ack changes nothing
    assert do(engine, order, "dispatch", op, team="pipe team 3", now=30.0) == "dispatched"
    assert do(engine, order, "report", op, note="valve seal leaking", action_taken="seal replaced",
              now=40.0) == "reported"
    assert do(engine, order, "send-back", sup, note="no gas reading after repair was given", now=50.0) == "returned"
    assert do(engine, order, "dispatch", op, team="pipe team 3", now=60.0) == "dispatched"
    assert do(engine, order, "report", op, note="0 %LEL after repair", now=70.0) == "reported"
    assert do(engine, order, "close", sup, now=80.0) == "closed"
    assert steps(engine, order) == [("opened", "system"), ("ack", "li.wei"), ("dispatch", "li.wei"),
                                    ("report", "li.wei"), ("send-back", "chen"), ("dispatch", "li.wei"),
                                    ("report", "li.wei"), ("close", "chen")]
    with engine.connect() as conn:
        row = conn.execute(select(work_orders)).one()
        assert (row.state, row.round, row.team) == ("closed", 2, "pipe team 3")
        assert conn.execute(select(alarms.c.acked)).scalar_one() == 20.0
        assert len(conn.execute(select(audit)).all()) == 7  # the second ack is not an action


@pytest.mark.parametrize(("role", "action", "kw"), [
    ("viewer", "dispatch", {"team": "t"}), ("viewer", "report", {"note": "x"}), ("operator", "close", {}),
    ("operator", "send-back", {"note": "x"})])
def test_a_role_may_not_do_more_than_it_may(engine: Engine, role: str, action: str, kw: dict[str, Any]) -> None:
    order = raise_red(engine)
    who = login(engine, "someone", role)
    with pytest.raises(WorkOrderError) as refused:
        do(engine, order, action, who, **kw)
    assert refused.value.status == 403
    assert steps(engine, order) == [("opened", "system")]


def test_a_viewer_cannot_ack(engine: Engine) -> None:
    raise_red(engine)
    who = login(engine, "watcher", "viewer")
    with pytest.raises(WorkOrderError, match="viewer may not ack"), engine.begin() as conn:
        workorders.ack_alarm(conn, ALARM, who)
    with engine.connect() as conn:
        assert conn.execute(select(alarms.c.acked)).scalar_one() is None


@pytest.mark.parametrize(("action", "kw", "status", "message"), [
    ("close", {}, 409, "is acknowledged: it cannot be closed$"),
    ("send-back", {"note": "x"}, 409, "is acknowledged: it cannot be sent back$"),
    ("report", {"note": "x"}, 409, "is acknowledged"),
    ("dispatch", {}, 400, "team: required"),
    ("dispatch", {"team": "x" * 65}, 400, "team: text of at most 64"),
    ("dispatch", {"team": 7}, 400, "team: text"),
    ("dispatch", {"team": "a\x00b"}, 400, "team: text"),
    ("launch", {}, 400, "action: one of"),
])
def test_bad_steps_are_refused_and_change_nothing(engine: Engine, action: str, kw: dict[str, Any], status: int,
                                                   message: str) -> None:
    order = raise_red(engine)
    sup = login(engine, "chen", "supervisor")
    with engine.begin() as conn:
        workorders.ack_alarm(conn, ALARM, sup)
    with pytest.raises(WorkOrderError, match=message) as refused:
        do(engine, order, action, sup, **kw)
    assert refused.value.status == status
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state)).scalar_one() == "acknowledged"
    assert steps(engine, order) == [("opened", "system"), ("ack", "chen")]


HIDDEN = {"DEL": "\x7f", "NEL (C1)": "\x85", "CSI (C1)": "\x9b", "LRE": "\u202a", "RLO": "\u202e", "LRI": "\u2066",
          "PDI": "\u2069"}


@pytest.mark.parametrize("char", list(HIDDEN))
@pytest.mark.parametrize(("action", "field", "what"), [
    ("dispatch", "team", "team"), ("report", "note", "findings"), ("report", "action_taken", "action taken"),
    ("send-back", "note", "correction")])
def test_text_that_reads_other_than_it_was_written_is_refused(engine: Engine, char: str, action: str, field: str,
                                                                what: str) -> None:
    """A direction override makes a dispatched order read differently to the team than to the officer; DEL and
    the C1 controls are no text either."""
    order = raise_red(engine)
    sup = login(engine, "chen", "supervisor")
    with engine.begin() as conn:
        workorders.ack_alarm(conn, ALARM, sup)
    before = {"dispatch": [], "report": ["dispatch"], "send-back": ["dispatch", "report"]}[action]
    for i, step in enumerate(before):
        do(engine, order, step, sup, team="pipe team 3", note="leak", now=30.0 + i)
    kw = {"team": "pipe team 3", "note": "leak", field: f"pipe {HIDDEN[char]}3"}
    with pytest.raises(WorkOrderError, match=f"^{what}: ") as refused:
        do(engine, order, action, sup, **kw)
    assert refused.value.status == 400
    assert [s for s, _ in steps(engine, order)] == ["opened", "ack", *before]


def test_no_such_order_or_alarm(engine: Engine) -> None:
    sup = login(engine, "chen", "supervisor")
    with pytest.raises(WorkOrderError) as refused:
        do(engine, 99, "close", sup)
    assert refused.value.status == 404
    with pytest.raises(WorkOrderError) as refused, engine.begin() as conn:
        workorders.ack_alarm(conn, "f" * 32, sup)
    assert refused.value.status == 404


def test_passwords_are_hashed_and_sessions_end(engine: Engine) -> None:
    s = login(engine, "li.wei", "operator")
    with engine.begin() as conn:
        stored = conn.execute(select(accounts.users.c.pw_hash)).scalar_one()
        assert stored.startswith("$argon2id$") and "li.wei-password-1" not in stored
        assert accounts.log_in(conn, "li.wei", "wrong-password") is None
        assert accounts.log_in(conn, "nobody", "li.wei-password-1") is None
        assert accounts.session(conn, s.token) == s
        assert accounts.session(conn, s.token, now=10**12) is None  # expired
        accounts.log_out(conn, s.token)
        assert accounts.session(conn, s.token) is None


def test_a_password_hashed_at_another_cost_is_rehashed_at_its_next_login(engine: Engine) -> None:
    """[accounts] in district.toml may change between two starts of the desk: a hash of the old cost still
    checks, and the login stores one of the new."""
    login(engine, "li.wei", "operator")
    accounts.set_cost(accounts.LEAST_MEMORY_KIB + 1024, accounts.LEAST_TIME_COST + 1)
    with engine.begin() as conn:
        assert accounts.log_in(conn, "li.wei", "li.wei-password-1") is not None
        stored = conn.execute(select(accounts.users.c.pw_hash)).scalar_one()
    assert f"$m={accounts.LEAST_MEMORY_KIB + 1024},t={accounts.LEAST_TIME_COST + 1}," in stored
    for memory_kib, time_cost in ((accounts.LEAST_MEMORY_KIB - 1, 2), (19456, 1), (1 << 21, 2), (19456, 11)):
        with pytest.raises(ValueError, match="out of range"):
            accounts.set_cost(memory_kib, time_cost)


@pytest.mark.parametrize(("name", "role", "password", "message"), [
    ("Li Wei", "operator", "long-enough-pw", "user name"), ("li", "admin", "long-enough-pw", "role"),
    ("li", "operator", "short", "password")])
def test_bad_accounts_are_refused(engine: Engine, name: str, role: str, password: str, message: str) -> None:
    with pytest.raises(AccountError, match=message), engine.begin() as conn:
        accounts.add_user(conn, name, role, password)


def test_two_acks_of_one_alarm_at_once_write_one_audit_row(engine: Engine) -> None:
    """Both read the alarm unacknowledged before either commits (PostgreSQL; SQLite's writers queue): the
    second's UPDATE then changes nothing, and each wrote its own audit row of the acknowledgement."""
    order = raise_red(engine)
    op, sup = login(engine, "li.wei", "operator"), login(engine, "chen", "supervisor")
    first = engine.connect()
    first.begin()
    assert workorders.ack_alarm(first, ALARM, op, now=20.0) == "s1"
    outcome: list[Any] = []

    def second() -> None:
        with engine.begin() as conn:
            outcome.append(workorders.ack_alarm(conn, ALARM, sup, now=21.0))

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)  # on PostgreSQL it waits on the first's locked alarm row; on SQLite, on the write lock
    first.commit()
    first.close()
    thread.join(30)
    assert outcome == ["s1"]
    with engine.connect() as conn:
        assert conn.execute(select(audit.c.actor, audit.c.what, audit.c.target)).all() == [("li.wei", "ack", ALARM)]
        assert conn.execute(select(alarms.c.acked)).scalar_one() == 20.0
    assert steps(engine, order) == [("opened", "system"), ("ack", "li.wei")]


def test_acknowledging_an_order_whose_alarm_was_acknowledged_before_is_audited(engine: Engine) -> None:
    """A yellow alarm acknowledged, then red: that opens its order, which a second ack moves on. Only the ack
    that found the alarm unacknowledged wrote an audit row, so the order's ack step, a person's act, had none."""
    yellow = {"id": ALARM, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4",
              "level": "yellow", "prev": None, "value": 21.0, "t_gw": 10.0, "resend": 0}
    op, sup = login(engine, "li.wei", "operator"), login(engine, "chen", "supervisor")
    with engine.begin() as conn:
        store.apply_alarm(conn, "s1", yellow, received=10.2)
        workorders.ack_alarm(conn, ALARM, op, now=20.0)
        store.apply_alarm(conn, "s1", {**yellow, "ev": "escalated", "level": "red", "prev": "yellow", "t_gw": 30.0},
                          received=30.2)
        order = int(conn.execute(select(work_orders.c.id)).scalar_one())
        workorders.ack_alarm(conn, ALARM, sup, now=40.0)
        workorders.ack_alarm(conn, ALARM, op, now=41.0)  # changes nothing
    assert steps(engine, order) == [("opened", "system"), ("ack", "chen")]
    with engine.connect() as conn:
        assert conn.execute(select(work_orders.c.state)).scalar_one() == "acknowledged"
        assert conn.execute(select(audit.c.actor, audit.c.what, audit.c.target, audit.c.at)
                            .order_by(audit.c.id)).all() == [("li.wei", "ack", ALARM, 20.0),
                                                             ("chen", "ack", ALARM, 40.0)]


@pytest.mark.parametrize("invisible", ["\u200b", " \u2060 ", "\ufeff", "\u200d\u200c", "\u200e\u200f", "\u061c",
                                       "\u3164", "\u115f\u1160", "\uffa0", "\u2800 \u2800", "\u034f", "\ufe0f"],
                         ids=["ZWSP", "word joiner", "BOM", "ZWJ ZWNJ", "LRM RLM", "ALM", "Hangul filler",
                              "Hangul choseong and jungseong fillers", "halfwidth Hangul filler", "Braille blank",
                              "combining grapheme joiner", "variation selector"])
@pytest.mark.parametrize(("action", "field", "what"), [
    ("dispatch", "team", "team"), ("report", "note", "findings"), ("send-back", "note", "correction")])
def test_a_required_text_of_invisible_characters_alone_is_refused(engine: Engine, invisible: str, action: str,
                                                                  field: str, what: str) -> None:
    """A team, findings or correction is required, and blank text was refused; one of zero-width characters
    alone was taken, and the order read as dispatched to no one the officer or the team could see. So was one
    of fillers that draw nothing (Hangul's, Braille's blank) or of marks with nothing to mark."""
    order = raise_red(engine)
    sup = login(engine, "chen", "supervisor")
    with engine.begin() as conn:
        workorders.ack_alarm(conn, ALARM, sup)
    before = {"dispatch": [], "report": ["dispatch"], "send-back": ["dispatch", "report"]}[action]
    for i, step in enumerate(before):
        do(engine, order, step, sup, team="pipe team 3", note="leak", now=30.0 + i)
    kw = {"team": "pipe team 3", "note": "leak", field: invisible}
    with pytest.raises(WorkOrderError, match=f"^{what}: required") as refused:
        do(engine, order, action, sup, **kw)
    assert refused.value.status == 400
    assert [s for s, _ in steps(engine, order)] == ["opened", "ack", *before]
