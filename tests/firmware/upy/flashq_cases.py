"""flashq and persist behaviour, run under MicroPython: `micropython -m flashq_cases DIR CASE`, where
DIR is a host directory or "lfs:IMAGE" for a formatted littlefs image (see lfsdisk).

Each case builds its own queue in DIR and raises AssertionError on the first broken promise; the
script prints "PASS CASE" when the case held.
"""

import os
import sys

import lfsdisk

import persist
from flashq import FlashQ

DIR = lfsdisk.at(sys.argv[1])


def wipe(d=None):
    d = d or DIR
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        os.remove(d + "/" + n)
    os.rmdir(d)


def fresh(capacity=8192, segment=512, max_record=300):
    wipe()
    return FlashQ(DIR, capacity=capacity, segment=segment, max_record=max_record)


def reopen(q, capacity=8192, segment=512, max_record=300):
    q.close()
    return FlashQ(DIR, capacity=capacity, segment=segment, max_record=max_record)


def records(q):
    """Every held record, paged so that a full queue never sits in RAM at once."""
    skip = 0
    while True:
        page = q.peek(8, skip)
        if not page:
            return
        for r in page:
            yield r
        skip += len(page)


def ids(q):
    return [r[0] for r in records(q)]


def payloads(q):
    return [r[2] for r in records(q)]


def segment_files(lane):
    return sorted(n for n in os.listdir(DIR) if n[0] == lane and n[1:].isdigit())


def case_order_alarm_first_then_backlog_oldest_first():
    q = fresh()
    r = [q.put(b"routine %d" % i) for i in range(4)]
    a1 = q.put(b"alarm 1", alarm=True, kind=1)
    r.append(q.put(b"routine 4"))
    a2 = q.put(b"alarm 2", alarm=True, kind=1)
    assert ids(q) == [a1, a2] + r, ids(q)  # noqa: RUF005 (MicroPython has no [*x] displays)
    assert [x[1] for x in q.peek(3)] == [1, 1, 0]
    # Draining the backlog: a fresh alarm put now still goes out before the rest of it.
    for rid in (a1, a2, r[0], r[1]):
        assert q.ack(rid)
    a3 = q.put(b"alarm 3", alarm=True)
    assert ids(q) == [a3, r[2], r[3], r[4]], ids(q)
    assert q.peek(1)[0][2] == b"alarm 3"
    assert len(q) == 4 and q.count(0) == 1 and q.count(1) == 3


def case_ids_strictly_increase_across_reopen():
    q = fresh()
    first = [q.put(b"a%d" % i) for i in range(3)]
    for rid in first:
        q.ack(rid)
    q = reopen(q)
    assert len(q) == 0 and q.peek(5) == []
    nxt = q.put(b"after")
    assert nxt > max(first), (nxt, first)
    q = reopen(q)
    assert q.next_id == nxt + 1


def case_peek_does_not_consume_and_ack_is_exact():
    q = fresh()
    a = q.put(b"one")
    b = q.put(b"two")
    assert q.peek(1) == q.peek(1) == [(a, 0, b"one")]
    assert not q.ack(9999)
    assert q.ack(a)
    assert not q.ack(a), "a second ack of the same record must be refused"
    assert ids(q) == [b]


def case_out_of_order_acks_survive_reopen():
    q = fresh()
    r = [q.put(b"rec %d" % i + b"." * i) for i in range(10)]
    for rid in (r[3], r[5], r[1], r[0]):  # r0 and r1 move the floor, r3 and r5 wait beyond it
        assert q.ack(rid)
    expect = [x for x in r if x not in (r[0], r[1], r[3], r[5])]
    assert ids(q) == expect
    q = reopen(q)
    assert ids(q) == expect, ids(q)
    assert payloads(q)[0] == b"rec 2.."
    assert q.ack(r[2])  # floor now jumps over the out-of-order r3 too
    q = reopen(q)
    assert ids(q) == [r[4]] + r[6:], ids(q)  # noqa: RUF005


def case_everything_unacked_comes_back_nothing_acked_does():
    q = fresh(segment=256)
    kept = {}
    for i in range(60):
        data = b"%d:" % i + bytes([i]) * (i % 40)
        rid = q.put(data, alarm=(i % 7 == 0))
        if i % 3 == 0:
            assert q.ack(rid)
        else:
            kept[rid] = data
    q = reopen(q, segment=256)
    got = dict((rid, data) for rid, _, data in records(q))
    assert got == kept
    assert len(q) == len(kept)


def case_acked_segments_are_removed():
    q = fresh(segment=256)
    for _ in range(40):
        q.put(b"x" * 50)
    assert len(segment_files("r")) > 5
    while len(q):
        q.ack(q.peek(1)[0][0])
    assert segment_files("r") == ["r%d" % max(int(n[1:]) for n in segment_files("r"))]
    assert q.used <= 256
    q.put(b"y" * 50)  # the next put may roll to a fresh segment and reap the drained head
    assert len(segment_files("r")) <= 2 and len(q) == 1


def case_full_drops_oldest_routine_keeps_alarms():
    cap, seg = 4096, 512
    q = fresh(capacity=cap, segment=seg)
    alarms = []
    routine = []
    for i in range(200):
        if i % 20 == 5:
            alarms.append(q.put(b"ALARM %d " % i + b"!" * 30, alarm=True))
        else:
            routine.append(q.put(b"routine %d " % i + b"." * 30))
        assert q.used <= cap, q.used
    held = ids(q)
    assert held[:len(alarms)] == alarms, "every alarm record is kept, in order"
    kept_routine = held[len(alarms):]
    assert kept_routine == routine[-len(kept_routine):], "the routine survivors are the newest ones"
    assert q.dropped == [0, len(routine) - len(kept_routine)], q.dropped
    q = reopen(q, capacity=cap, segment=seg)
    assert ids(q) == held and q.dropped[1] == len(routine) - len(kept_routine)


def case_full_of_alarms_drops_oldest_alarms():
    q = fresh(capacity=2048, segment=512)
    a = [q.put(b"A%d" % i + b"#" * 60, alarm=True) for i in range(100)]
    held = ids(q)
    assert held == a[-len(held):] and q.dropped[0] == len(a) - len(held) > 0
    assert q.used <= 2048


def case_oversize_and_bad_kind_are_refused_without_writing():
    q = fresh(max_record=64)
    q.put(b"ok")
    used = q.used
    for bad in (lambda: q.put(b"z" * 65), lambda: q.put(b"k", kind=128)):
        try:
            bad()
        except ValueError:
            pass
        else:
            raise AssertionError("accepted")
    assert q.used == used and len(q) == 1
    q.put(b"z" * 64)


def rewrite(name, data):
    with open(DIR + "/" + name, "wb") as f:
        f.write(data)


def read(name):
    with open(DIR + "/" + name, "rb") as f:
        return f.read()


def case_torn_last_record_is_cut_at_every_byte():
    body = b"the third record, torn by a power cut"
    for cut in range(1, 12 + len(body)):
        q = fresh()
        q.put(b"first")
        q.put(b"second")
        q.close()
        whole = read("r0")
        q = reopen(q)
        third = q.put(body)
        q.close()
        rewrite("r0", read("r0")[:len(whole) + cut])
        q = reopen(q)
        assert payloads(q) == [b"first", b"second"], (cut, payloads(q))
        assert q.corrupt == 1 and len(read("r0")) == len(whole), cut
        again = q.put(b"fourth")
        q = reopen(q)
        assert payloads(q) == [b"first", b"second", b"fourth"]
        assert again >= third


def case_a_cut_ended_by_a_power_loss_leaves_no_copy_behind():
    """A power loss during _cut's copy leaves cut.tmp, a partial copy of a segment still whole beside it. When
    the next open has nothing to cut (a put taken back when nothing of it had reached flash), nothing renamed it
    away: it held up to a segment of flash that `used` does not count, until some later cut."""
    q = fresh()
    q.put(b"first")
    q.put(b"second")
    q.close()
    whole = read("r0")
    rewrite("cut.tmp", whole[:20])
    q = reopen(q)
    assert "cut.tmp" not in os.listdir(DIR), os.listdir(DIR)
    assert payloads(q) == [b"first", b"second"] and q.corrupt == 0 and read("r0") == whole
    assert q.used == len(whole)


def case_flipped_byte_is_never_delivered():
    for where in (0, 3, 6, 9, 14):  # magic, length, id, crc, payload of the second record
        q = fresh()
        q.put(b"good one")
        q.close()
        keep = len(read("r0"))
        q = reopen(q)
        q.put(b"damaged one")
        q.put(b"after it")
        q.close()
        raw = bytearray(read("r0"))
        raw[keep + where] ^= 0x40
        rewrite("r0", raw)
        q = reopen(q)
        assert payloads(q) == [b"good one"], (where, payloads(q))
        assert q.corrupt == 1


def case_damage_after_open_is_caught_at_peek():
    q = fresh()
    q.put(b"fine")
    q.put(b"will rot")
    raw = bytearray(read("r0"))
    raw[-2] ^= 1
    rewrite("r0", raw)
    assert payloads(q) == [b"fine"] and q.corrupt == 1 and len(q) == 1


def case_a_queue_whose_directory_cannot_be_made_drops_and_counts():
    """No room for the directory (a full flash at the first boot): the queue opens, and every put is dropped
    and counted without moving its head on (it went on two segments a put, and each peek tried them all)."""
    wipe()
    q = FlashQ(DIR + "/none/q", capacity=8192, segment=512, max_record=300)
    for _ in range(50):
        assert q.put(b"reading") is None
    assert q.dropped == [0, 50] and len(q) == 0 and q.peek(1) == [] and q._head == [0, 0], q._head


def case_a_queue_without_its_directory_has_nothing_to_confirm():
    """The gateway confirms what such a node sent live. Nothing is held, so confirm() has nothing to do; it turned
    hold on and saved the index into the missing directory, and the OSError reached the MQTT client's log."""
    wipe()
    q = FlashQ(DIR + "/none/q", capacity=8192, segment=512, max_record=300)
    for _ in range(3):
        assert q.put(b"reading") is None
    assert q.confirm([(1, 3)]) is None and q.confirm([(1, 1), (3, 3)]) is None
    assert not q.hold and len(q) == 0 and q.peek(1) == [] and q.dropped == [0, 3]


def case_a_queue_whose_directory_cannot_be_read_is_not_taken_for_empty():
    """Only a missing directory is an empty queue. Any other error listing it (a read error of the chip; here
    the path is a file) is raised: taken for empty, the queue would open without the segments its index names."""
    wipe()
    os.mkdir(DIR)
    rewrite("q", b"not a directory")
    try:
        FlashQ(DIR + "/q", capacity=8192, segment=512, max_record=300)
    except OSError as e:
        assert e.errno != 2, e
    else:
        raise AssertionError("opened over a directory it could not list")
    os.remove(DIR + "/q")


def case_persist_roundtrip_and_defaults():
    wipe()
    os.mkdir(DIR)
    path = DIR + "/state.json"
    assert persist.load(path) is None
    assert persist.load(path, {"boot": 0}) == {"boot": 0}
    persist.save(path, {"boot": 1, "seq": 2 ** 40})
    rewrite("state.json.tmp", b'{"boot": 9')  # a save cut short leaves only a torn temp file
    assert persist.load(path) == {"boot": 1, "seq": 2 ** 40}
    persist.save(path, {"boot": 2})
    assert persist.load(path) == {"boot": 2}
    rewrite("state.json", b"{not json")
    assert persist.load(path, {}) == {}


if __name__ == "__main__":
    globals()["case_" + sys.argv[2]]()
    wipe()
    print("PASS", sys.argv[2])
