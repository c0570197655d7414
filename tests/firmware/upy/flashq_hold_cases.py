"""flashq with hold on (end-to-end delivery): `micropython -m flashq_hold_cases DIR CASE`. A record stays
on flash past its PUBACK until the gateway's confirmation names it; the helpers are flashq_cases'."""

import sys

from flashq_cases import fresh, ids, reopen, wipe

import persist


def held(q):
    q.hold = True
    return q


def sent(q):
    """Hand out (and ack, as the publisher does) every record peek gives; their ids in sending order."""
    out = []
    while True:
        page = q.peek(1)
        if not page:
            return out
        out.append(page[0][0])
        assert q.ack(page[0][0])


def case_a_pubacked_record_stays_until_confirmed():
    q = held(fresh())
    r = [q.put(b"r%d" % i) for i in range(5)]
    assert sent(q) == r
    assert len(q) == 5 and q.peek(1) == [], "acked records are held, not handed out again"
    assert q.confirm([(r[0], r[1])]) == r[2], "the oldest record still held"
    assert len(q) == 3
    q.resend()
    assert sent(q) == r[2:]
    q = held(reopen(q))  # a cut forgets what was sent: everything unconfirmed goes out again
    assert sent(q) == r[2:] and len(q) == 3


def case_alarms_ahead_of_backlog_are_confirmed_out_of_order():
    q = held(fresh(segment=256))
    r = [q.put(b"routine %d" % i + b"." * 20) for i in range(12)]
    a = q.put(b"alarm", alarm=True)
    assert sent(q)[0] == a
    assert q.confirm([(a, a)]) == r[0]
    assert q.count(0) == 0 and q.count(1) == 12
    assert q.confirm([(r[4], r[6]), (r[9], r[9])]) == r[0]  # holes: r0-r3 lost on the way, say: r0 still the oldest
    left = [x for x in r if not (r[4] <= x <= r[6] or x == r[9])]
    q.resend()
    assert ids(q) == left
    q = held(reopen(q, segment=256))
    assert ids(q) == left
    assert q.confirm([(r[0], r[11])]) is None
    assert len(q) == 0
    q = reopen(q, segment=256)
    assert len(q) == 0 and q.peek(1) == []


def case_resend_rewinds_what_was_in_flight():
    q = held(fresh())
    r = [q.put(b"r%d" % i) for i in range(4)]
    assert q.peek(1)[0][0] == r[0] and q.peek(1)[0][0] == r[1]  # two in flight, the link drops
    q.resend()
    assert q.ack(r[1])  # the in-flight one's PUBACK after the reconnect changes nothing
    assert sent(q) == r


def case_a_confirmation_from_an_earlier_queue_is_ignored():
    q = held(fresh())
    r = [q.put(b"r%d" % i) for i in range(3)]
    assert q.confirm([(1, 5000)]) == r[0], "ids this queue never issued: a wiped flash's old confirmation"
    assert len(q) == 3
    assert q.confirm([(r[2] + 1, r[2] + 1)]) == r[0]
    assert q.confirm([(r[0], r[2])]) is None and len(q) == 0
    assert q.confirm([(r[0], r[2])]) is None, "confirmed twice: nothing left to forget"


def case_the_first_confirmation_turns_hold_on_for_good():
    q = fresh()
    a = q.put(b"before")
    assert q.peek(1)[0][0] == a and q.ack(a) and len(q) == 0, "no confirmation yet: a PUBACK suffices"
    b = q.put(b"after")
    assert q.confirm([]) == b
    assert q.hold
    q = reopen(q)
    assert q.hold
    assert sent(q) == [b] and len(q) == 1
    assert q.waiting() is False
    q.resend()
    assert q.waiting() and q.waiting(), "waiting() hands nothing out"
    assert sent(q) == [b]


def case_flash_writes_one_index_per_confirmation():
    q = held(fresh())
    writes = [0]
    save = persist.save

    def counted(path, obj):
        writes[0] += 1
        save(path, obj)

    persist.save = counted
    try:
        r = [q.put(b"r%d" % i) for i in range(10)]
        sent(q)
        assert writes[0] == 0, "a PUBACK writes nothing"
        q.confirm([(r[0], r[9])])
        assert writes[0] == 1, writes[0]
    finally:
        persist.save = save


if __name__ == "__main__":
    globals()["case_" + sys.argv[2]]()
    wipe()
    print("PASS", sys.argv[2])
