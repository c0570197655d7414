"""Power-loss-safe queue of byte records on flash, for store-and-forward of sealed messages.

Layout of the queue directory:
  a<N>, r<N>   append-only segment files of the alarm and routine lanes, N counting up per lane
  idx          {"n": next id, "f": [[seg, off], [seg, off]] (first unacked byte per lane),
                "x": ids acked out of order beyond a floor, "d": [alarm, routine] records dropped when
                full, "c": records cut as damaged, "h": hold, below}; replaced by write-temp-then-rename (persist.save)
A record is a 12-byte header <magic u8, flags u8, length u16, id u32, crc32 u32> and its payload; the CRC
covers the first 8 header bytes and the payload. Flags bit 0 = alarm lane, bits 1..7 = caller's kind.

Why it survives a cut at any instant: segment bytes are only ever appended, so the worst a cut leaves is a
torn last record, which the CRC exposes and open() cuts off; everything else that changes (acks, drops,
which segments are dead) lives in the index, which is swapped atomically. A segment file is removed only
after an index that no longer points into it is in place, and leftovers below a floor are removed at open,
as is a cut's copy (cut.tmp) that a cut never renamed over its segment, which it left whole.

With `hold` on (the index keeps it: "h"; the first confirmation turns it on, so a node whose gateway never
confirms works as before), a record outlives its broker's PUBACK: it leaves only when confirm() names its id (the
gateway has committed it). Until then peek() hands each record out once, keeping a per-lane cursor in RAM,
and resend() rewinds the cursors so that every unconfirmed record goes out again (after a reconnect, or when
confirmations stop coming). A cut loses only the cursors, which is a resend.
"""

import os
import struct
from binascii import crc32

from micropython import const

import persist

_HDR = const("<BBHII")
_HLEN = const(12)
_MAGIC = const(0xA7)
_ALARM = const(0)  # the lanes
_ROUTINE = const(1)
_LANE = const("ar")


class FlashQ:
    def __init__(self, path, capacity=65536, segment=4096, max_record=1024):
        if capacity < 2 * segment:
            raise ValueError("capacity must hold at least two segments")
        self.dir = path
        self.capacity = capacity
        self.segment = segment
        self.max_record = max_record
        try:
            os.mkdir(path)
        except OSError:
            pass
        self._idx = path + "/idx"
        self._h = bytearray(_HLEN)
        self._h8 = memoryview(self._h)[:8]  # the CRC covers these header bytes
        self._buf = bytearray(128)
        self._rf = None
        self._rkey = -1  # segment * 2 + lane of the open read handle
        self._ln = self._rid = self._crc = 0
        self._pos = {}
        self._cur = [None, None]  # with hold: where each lane's records not yet handed out begin
        st = persist.load(self._idx) or {}
        self.hold = st.get("h", False)
        self._next = st.get("n", 1)
        self._floor = st.get("f") or [None, None]
        self._acked = st.get("x", [])
        self.dropped = st.get("d", [0, 0])
        self.corrupt = st.get("c", 0)
        self._head = [0, 0]
        self._low = [0, 0]
        self._hsize = [0, 0]
        self._used = [0, 0]
        self._live = [0, 0]
        segs = ([], [])
        try:
            os.remove(path + "/cut.tmp")  # a cut (_cut) a power loss ended before its rename: never a segment
        except OSError:
            pass
        try:
            names = os.listdir(path)
        except OSError as e:  # no room for the directory (a flash full at the first boot): every record is dropped
            if e.errno != 2:  # ENOENT only: a read error must not make the queue's segments look gone
                raise
            names = ()
            self.hold = None  # nothing is ever held, so nothing is confirmed (confirm)
        for name in names:
            lane = _LANE.find(name[:1])
            if lane >= 0 and name[1:].isdigit():
                segs[lane].append(int(name[1:]))
        seen = []
        top = 0
        for lane in (_ALARM, _ROUTINE):
            nums = segs[lane]
            fl = self._floor[lane] or [min(nums) if nums else 0, 0]
            self._floor[lane] = fl
            for n in nums:
                if n < fl[0]:
                    os.remove(self._name(lane, n))
            self._low[lane] = fl[0]
            self._head[lane] = max(nums + [fl[0]])
            top = max(top, self._scan(lane, seen))
        self._acked = seen
        self._next = max(self._next, top + 1)
        for lane in (_ALARM, _ROUTINE):
            self._advance(lane, False)
        try:
            self._save()
        except OSError:
            return  # flash full: nothing to reap; the index goes with the first one that fits
        for lane in (_ALARM, _ROUTINE):
            self._reap(lane)

    # -- public -----------------------------------------------------------------------------------------

    def put(self, data, alarm=False, kind=0):
        """Append one record and return its id; it is on flash when this returns. A write the flash refuses
        (full: other files took the room `capacity` counted on; or failing) is taken back and tried once more
        after the oldest segment is dropped, routine lane first, as a full queue drops it. A record that still
        does not go on flash is dropped too: counted in `dropped`, its id spent (the gap the gateway counts for
        any drop), and None returned, so a node with a full flash samples and sends on (docs/firmware.md)."""
        n = len(data)
        if n > self.max_record or not 0 <= kind < 128:
            raise ValueError("record too large or kind out of range")
        lane = _ALARM if alarm else _ROUTINE
        need = _HLEN + n
        rid = self._next
        for retry in (False, True):
            try:
                if retry and self.used:
                    self._make_room(self.capacity - self.used + 1)  # the oldest segment, whatever its size
                self._make_room(need)
                if self._hsize[lane] and self._hsize[lane] + need > self.segment:
                    self._roll(lane)
                h = self._h
                struct.pack_into(_HDR, h, 0, _MAGIC, kind << 1 | (lane ^ 1), n, rid, 0)
                struct.pack_into("<I", h, 8, crc32(data, crc32(self._h8)))
                if self._rkey == self._head[lane] * 2 + lane:
                    self._close()
                try:
                    with open(self._name(lane, self._head[lane]), "ab") as f:
                        f.write(h)
                        f.write(data)
                except OSError:
                    # Take back a partial record, or at least leave it last in its segment (a damaged record
                    # ends its segment for every reader).
                    try:
                        self._cut(lane, self._head[lane], self._hsize[lane])
                    except OSError:
                        if self._size(lane, self._head[lane]) > self._hsize[lane]:  # else nothing went on flash
                            self._head[lane] += 1
                            self._hsize[lane] = 0
                    raise
            except OSError:
                continue
            self._next = rid + 1
            self._hsize[lane] += need
            self._used[lane] += need
            self._live[lane] += 1
            return rid
        self._next = rid + 1
        self.dropped[lane] += 1
        try:
            self._save()
        except OSError:
            pass  # the count reaches flash with the next index written
        return None

    def peek(self, n=1, skip=0):
        """Up to n unacked records as (id, kind, payload) in sending order: the alarm lane first, then the
        routine lane, each oldest first. `skip` passes over that many first (the ones already in flight).
        With hold, only records not handed out since the last resend(), and each one returned counts as sent."""
        out = []
        left = skip
        if len(self._pos) > 16:
            self._pos = {}
        for lane in (_ALARM, _ROUTINE):
            seg, off = self._floor[lane]
            cur = self._cur[lane]
            if self.hold and cur and (cur[0] > seg or (cur[0] == seg and cur[1] > off)):
                seg, off = cur
            while len(out) < n and seg <= self._head[lane]:
                r = self._hdr(lane, seg, off)
                if r is None:
                    seg, off = seg + 1, 0
                    continue
                if r:
                    ln, rid = self._ln, self._rid
                    if rid in self._acked or left:
                        if rid not in self._acked:
                            left -= 1
                        off += _HLEN + ln
                        continue
                    data = self._rf.read(ln)
                    if len(data) == ln and crc32(data, crc32(self._h8)) == self._crc:
                        out.append((rid, self._h[1] >> 1, data))
                        self._pos[rid] = (lane, seg, off)
                        off += _HLEN + ln
                        if self.hold:
                            self._cur[lane] = (seg, off)
                        continue
                # Damaged after it was written (flash fault, failed put): cut it off like a torn tail.
                # Nothing after it in this segment can be trusted, so go on with the next one.
                self._scan(lane, self._acked)
                try:
                    self._save()
                except OSError:
                    pass  # the counters reach flash with the next ack
                seg, off = seg + 1, 0
        return out

    def ack(self, rid):
        """Forget a record once the broker has it (after PUBACK). False if it is unknown or already gone.
        With hold, the PUBACK proves nothing beyond the broker's RAM: the record stays for confirm()."""
        if self.hold:
            return self._pos.pop(rid, None) is not None
        loc = self._pos.pop(rid, None) or self._find(rid)
        if loc is None or rid in self._acked:
            return False
        lane, seg, off = loc
        self._live[lane] -= 1
        if [seg, off] != self._floor[lane]:
            self._acked.append(rid)
            self._save()
            return True
        self._advance(lane, True)
        self._save()
        self._reap(lane)
        return True

    def confirm(self, ranges):
        """Forget every record whose id lies in one of `ranges` ((first, last) pairs, inclusive): the gateway
        has committed it. One index write for the lot. Returns the id of the oldest record still held (None
        when none is): while it stays the same, the gateway lacks it, whatever came after it (the runtime
        sends it again). A confirmation naming an id this queue has not issued yet comes from an earlier queue
        (flash wiped) and is ignored whole. Any confirmation turns hold on for good: this node's gateway
        confirms. A queue without its directory holds nothing (hold None): it has nothing to confirm, and no
        index to turn hold on in."""
        if self.hold is None:
            return None
        gone = 0
        old = None
        if not self.hold:
            self.hold = True
            self._save()
        top = -1
        for r in ranges:
            top = max(top, r[1])
        if top >= self._next:
            ranges = ()
            top = -1
        for lane in (_ALARM, _ROUTINE):
            seg, off = self._floor[lane]
            while seg <= self._head[lane]:
                if not self._hdr(lane, seg, off):
                    seg, off = seg + 1, 0
                    continue
                rid = self._rid
                if rid not in self._acked:
                    for a, b in ranges:
                        if a <= rid <= b:
                            self._acked.append(rid)
                            self._live[lane] -= 1
                            gone += 1
                            break
                    else:  # held on: the lane's oldest if it is the first, and none after it is named
                        if old is None or rid < old:
                            old = rid
                        if rid > top:
                            break
                off += _HLEN + self._ln
        if gone:
            for lane in (_ALARM, _ROUTINE):
                self._advance(lane, False)
            self._save()
            for lane in (_ALARM, _ROUTINE):
                self._reap(lane)
        return old

    def waiting(self):
        """Whether peek() has a record to hand out (without handing it out)."""
        cur = self._cur[:]
        got = self.peek(1)
        self._cur = cur
        return bool(got)

    def resend(self):
        """With hold: hand every unconfirmed record out again, oldest first in each lane."""
        self._cur = [None, None]

    def __len__(self):
        return self._live[0] + self._live[1]

    def count(self, lane):
        return self._live[lane]

    @property
    def used(self):
        """Bytes of segment files on flash, the quantity held under `capacity`."""
        return self._used[0] + self._used[1]

    @property
    def next_id(self):
        return self._next

    def close(self):
        self._close()

    # -- internals --------------------------------------------------------------------------------------

    def _name(self, lane, seg):
        return "%s/%s%d" % (self.dir, _LANE[lane], seg)

    def _save(self):
        persist.save(self._idx, {"n": self._next, "f": self._floor, "x": self._acked, "d": self.dropped,
                                 "c": self.corrupt, "h": self.hold})

    def _close(self):
        if self._rf:
            self._rf.close()
        self._rf = None
        self._rkey = -1

    def _hdr(self, lane, seg, off):
        """Read the header at (seg, off) into _ln, _rid, _crc (flags stay in _h[1]): True when it is
        sane, None at the segment's end, False if damaged. Leaves the read handle at the payload.
        Fields go to attributes, not a tuple, to keep the per-record garbage of a scan small."""
        key = seg * 2 + lane
        if self._rkey != key:
            self._close()
            try:
                self._rf = open(self._name(lane, seg), "rb")
            except OSError:
                return None
            self._rkey = key
        f = self._rf
        f.seek(off)
        h = self._h
        got = f.readinto(h)
        if not got:
            return None
        if got < _HLEN or h[0] != _MAGIC or (h[1] & 1) != lane ^ 1:
            return False
        self._ln, self._rid, self._crc = struct.unpack_from("<HII", h, 2)
        return self._ln <= self.max_record

    def _scan(self, lane, seen):
        """Check every record from the floor, cutting a segment at its first bad record (a torn write);
        recount the lane. Collects acked-out-of-order ids still present into `seen`; returns the top id."""
        top = live = 0
        self._pos = {}
        seg, off = self._floor[lane]
        buf = memoryview(self._buf)
        while seg <= self._head[lane]:
            r = self._hdr(lane, seg, off)
            if r is None:
                seg, off = seg + 1, 0
                continue
            ok = bool(r)
            if ok:
                ln, rid = self._ln, self._rid
                c = crc32(self._h8)
                left = ln
                while left and ok:
                    k = self._rf.readinto(buf if left >= len(buf) else buf[:left])
                    ok = k > 0
                    c = crc32(buf if k == len(buf) else buf[:k], c)
                    left -= k
                ok = ok and c == self._crc
            if not ok:
                try:
                    self._cut(lane, seg, off)
                except OSError:
                    pass  # flash full: the damaged tail stays, and still ends its segment for readers
                self.corrupt += 1
                seg, off = seg + 1, 0
                continue
            top = max(top, rid)
            if rid in self._acked:
                if rid not in seen:
                    seen.append(rid)
            else:
                live += 1
            off += _HLEN + ln
        self._live[lane] = live
        used = 0
        for s in range(self._low[lane], self._head[lane] + 1):
            used += self._size(lane, s)
        self._used[lane] = used
        self._hsize[lane] = self._size(lane, self._head[lane])
        return top

    def _size(self, lane, seg):
        try:
            return os.stat(self._name(lane, seg))[6]
        except OSError:
            return 0

    def _cut(self, lane, seg, off):
        """Truncate a segment to its first `off` bytes by copy and rename (the port has no truncate)."""
        self._close()
        name = self._name(lane, seg)
        if off == 0:
            os.remove(name)
            return
        tmp = self.dir + "/cut.tmp"
        buf = self._buf
        with open(name, "rb") as src, open(tmp, "wb") as dst:
            left = off
            while left:
                k = min(src.readinto(buf), left)
                if not k:
                    break
                dst.write(memoryview(buf)[:k])
                left -= k
        os.rename(tmp, name)

    def _find(self, rid):
        for lane in (_ALARM, _ROUTINE):
            seg, off = self._floor[lane]
            while seg <= self._head[lane]:
                r = self._hdr(lane, seg, off)
                if not r:
                    if seg == self._head[lane]:
                        break
                    seg, off = seg + 1, 0
                    continue
                if self._rid == rid:
                    return lane, seg, off
                if self._rid > rid:
                    break
                off += _HLEN + self._ln
        return None

    def _advance(self, lane, skip):
        """Move the floor past acked records (and the one just acked if `skip`), and past the end of
        every segment that is not the head."""
        fl = self._floor[lane]
        while True:
            r = self._hdr(lane, fl[0], fl[1])
            if not r:  # end of segment, or a damaged record that ends it
                if fl[0] >= self._head[lane]:
                    return
                fl[0] += 1
                fl[1] = 0
                continue
            if skip:
                skip = False
            elif self._rid in self._acked:
                self._acked.remove(self._rid)
            else:
                return
            fl[1] += _HLEN + self._ln

    def _reap(self, lane):
        """Remove the segment files below the floor; call it only once the index saying so is saved."""
        for seg in range(self._low[lane], self._floor[lane][0]):
            size = self._size(lane, seg)
            if size:
                if self._rkey == seg * 2 + lane:
                    self._close()
                os.remove(self._name(lane, seg))
                self._used[lane] -= size
        self._low[lane] = self._floor[lane][0]

    def _roll(self, lane):
        self._head[lane] += 1
        self._hsize[lane] = 0
        fl = self._floor[lane]
        if fl[0] == self._head[lane] - 1 and not self._hdr(lane, fl[0], fl[1]):
            fl[0] += 1
            fl[1] = 0
            self._save()
            self._reap(lane)

    def _make_room(self, need):
        """Drop whole oldest segments, routine lane first, until `need` more bytes fit under capacity."""
        while self.used + need > self.capacity:
            lane = _ROUTINE if self._used[_ROUTINE] else _ALARM
            if not self._used[lane]:
                raise ValueError("record larger than capacity")
            fl = self._floor[lane]
            seg, off = fl
            while True:
                r = self._hdr(lane, seg, off)
                if not r:
                    break
                if self._rid in self._acked:
                    self._acked.remove(self._rid)
                else:
                    self.dropped[lane] += 1
                    self._live[lane] -= 1
                off += _HLEN + self._ln
            if seg == self._head[lane]:
                self._head[lane] += 1
                self._hsize[lane] = 0
            fl[0] = seg + 1
            fl[1] = 0
            self._pos = {}
            self._save()
            self._reap(lane)
