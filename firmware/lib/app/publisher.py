"""Store-and-forward: every pack is sealed (protocol.message.encode) and put into the flash queue
before anything is sent, and leaves the queue only after the broker's PUBACK.

Routine readings collect in RAM until `batch` of them or report_s has passed, then go out as one
SenML pack; alarm readings and events are sealed at once into the alarm lane. The sender takes the
queue's next record (alarm lane first, then the routine backlog oldest first), publishes it at QoS 1
and acks it in the queue once the PUBACK is in. A sequence number is the queue's record id: both are
issued together, one apart, never reused, and recovered by the queue after any power cut (flashq.py).
"""

import asyncio

from micropython import const

from flashq import FlashQ
from protocol import message, senml, topics

_KIND_DATA = const(0)
_KIND_EVENT = const(1)
_MAX_RECORD = const(1024)


class Publisher:
    def __init__(self, app, profile):
        self.app = app
        q = profile.get("queue", {})
        self.q = FlashQ("q", q.get("capacity", 65536), q.get("segment", 4096), _MAX_RECORD)
        self.pending = []
        self.wake = asyncio.Event()
        self.boot_clk = False  # a boot-relative message was issued this boot

    @property
    def next_seq(self):
        return self.q.next_id

    def add(self, rec):
        """A routine reading (name, value, unit, up_ms)."""
        self.pending.append(rec)
        if len(self.pending) >= self.batch:
            self.flush()

    def due(self, up_ms):
        return self.pending and up_ms - self.pending[0][3] >= self.report_ms

    def flush(self):
        if self.pending:
            recs, self.pending = self.pending, []
            self.seal(recs)

    def seal(self, recs, pri=message.PRI_ROUTINE, ev=None, urgent=None):
        """Seal readings into one message on flash; halves a pack that would not fit a record.
        Urgent messages (by default those with alarm priority) take the alarm lane."""
        app = self.app
        recs = app.tagged(recs)
        if urgent is None:
            urgent = pri == message.PRI_ALARM
        clock = app.clock
        base = clock.ms(recs[0][3])
        bt = base // 1000
        bu = recs[0][2]
        fine = pri == message.PRI_ALARM
        bn = recs[0][0]
        for r in recs:
            if r[0] != bn:
                bn = None
        records = []
        for name, v, unit, up in recs:
            dt = clock.ms(up) - bt * 1000
            if fine:  # alarm packs keep 1/8 s: a half-precision float up to 256 s
                e = (dt + 62) // 125
                t = e // 8 if e % 8 == 0 else e / 8
            else:
                t = (dt + 500) // 1000
            rec = senml.record(name, v, None if unit == bu else unit, t or None)
            if bn:  # one metric only: its name goes once, as the base name
                del rec[senml.N]
            records.append(rec)
        pack = senml.pack(records, bn=bn, bt=bt, bu=bu)
        seq = self.q.next_id
        clk = clock.clk
        if ev is None:
            body = message.data(app.dev, app.boot, seq, pack, clk, pri)
        else:
            body = message.event(app.dev, app.boot, seq, ev, pack, clk, pri)
        data = message.encode(body, app.key)
        if len(data) > _MAX_RECORD and len(recs) > 1:
            half = len(recs) // 2
            self.seal(recs[:half], pri, ev, urgent)
            self.seal(recs[half:], pri, ev, urgent)
            return
        self.q.put(data, urgent, _KIND_EVENT if ev else _KIND_DATA)
        if clk == message.CLK_BOOT:
            self.boot_clk = True
        app.sealed()
        self.wake.set()

    async def run(self, mqtt):
        topic = (self.app.topic[topics.DATA], self.app.topic[topics.EVENT])
        q = self.q
        while True:
            head = q.peek(1)
            if not head:
                self.wake.clear()
                await self.wake.wait()
                continue
            rid, kind, payload = head[0]
            await mqtt.publish(topic[kind], payload, qos=1)
            q.ack(rid)
