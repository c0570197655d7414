"""Writer for the SIGKILL torture test: `micropython -m flashq_torture DIR SEED` (DIR may be "lfs:IMAGE").

On start it opens the queue and reports what it holds, one line per record, then "READY":
  Q <id> <alarm 0|1> <intact 0|1>       intact: the payload names this id and its hash matches
  S <len> <next id> <alarm drops> <routine drops> <records cut>
Then it writes and acks as fast as it can until it is killed, logging each step before and after:
  p <id> / P <id>   put about to start / put returned (the record is on flash)
  a <id> / A <id>   ack about to start / ack returned (the record must never come back)
Payload: alarm flag u8, id u32, random body, first 8 bytes of SHA-256 over all of that.
"""

import hashlib
import os
import random
import struct
import sys

import lfsdisk

from flashq import FlashQ


def check(rid, data):
    if len(data) < 13:
        return 0, 0
    alarm, named = struct.unpack_from("<BI", data)
    body = memoryview(data)[:-8]
    return alarm, int(named == rid and hashlib.sha256(body).digest()[:8] == data[-8:])


def main(path, seed):
    random.seed(seed)
    q = FlashQ(path, capacity=32768, segment=1024, max_record=256)
    skip = 0
    while True:
        page = q.peek(8, skip)
        if not page:
            break
        for rid, _, data in page:
            alarm, ok = check(rid, data)
            print("Q", rid, alarm, ok)
        skip += len(page)
    print("S", len(q), q.next_id, q.dropped[0], q.dropped[1], q.corrupt)
    print("READY")
    head = bytearray(5)
    while True:
        n = len(q)
        if n < 10 or (n < 60 and random.getrandbits(1)):
            rid = q.next_id
            alarm = int(random.getrandbits(3) == 0)
            struct.pack_into("<BI", head, 0, alarm, rid)
            body = bytes(head) + os.urandom(random.getrandbits(8) % 200)
            data = body + hashlib.sha256(body).digest()[:8]
            print("p", rid)
            got = q.put(data, alarm=bool(alarm))
            print("P", got)
        else:
            page = q.peek(4)
            rid = page[random.getrandbits(2) % len(page)][0]
            print("a", rid)
            q.ack(rid)
            print("A", rid)


main(lfsdisk.at(sys.argv[1]), int(sys.argv[2]))
