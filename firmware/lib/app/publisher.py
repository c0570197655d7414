"""Store-and-forward: every pack is sealed (protocol.message.encode) and put into the flash queue
before anything is sent, and leaves the queue only after the broker's PUBACK.

Routine readings collect in RAM until `batch` of them or report_s has passed, then go out as one
SenML pack; alarm readings and events are sealed at once into the alarm lane. The sender takes the
queue's next record (alarm lane first, then the routine backlog oldest first), publishes it at QoS 1
and acks it in the queue once the PUBACK is in. A sequence number is the queue's record id: both are
issued together, one apart, never reused, and recovered by the queue after any power cut (flashq.py).
It is handed the clock, the device's identity and the MQTT client whose will it keeps current, rather
than the app, so it can be read and run on its own.
"""

import asyncio

from micropython import const

from flashq import FlashQ
from protocol import message, senml_build, topics

_KIND_DATA = const(0)
_KIND_EVENT = const(1)
_MAX_RECORD = const(1024)


class Publisher:
    def __init__(self, profile, clock, dev, boot, key, topic, mqtt):
        """clock: the node's Clock; dev, boot, key: the device id, its boot count and its HMAC key, which
        seal every message; topic: the device's topics by kind; mqtt: the client it publishes with."""
        self.clock = clock
        self.dev = dev
        self.boot = boot
        self.key = key
        self.topic = topic
        self.mqtt = mqtt
        q = profile.get("queue", {})
        self.q = FlashQ("q", q.get("capacity", 65536), q.get("segment", 4096), _MAX_RECORD)
        self.tags = profile.get("tag", ())
        self.latest = {}  # the last reading of each tagged metric, kept by the app's routing
        self.pending = []
        self.wake = asyncio.Event()
        self.boot_clk = False  # a boot-relative message was issued this boot, its start not yet told (runtime)
        self.full = False  # a message found the flash full this boot (said once)
        self.will()

    def will(self):
        """The will must carry the sequence number due next, so it is rebuilt whenever one is used."""
        body = message.death(self.dev, self.boot, self.q.next_id)
        self.mqtt.will = (self.topic[topics.STATE], message.encode(body, self.key))

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
        Urgent messages (by default those with alarm priority) take the alarm lane. Every pack carries the
        latest value of each tagged metric (a drone's position and fix), added here rather than in a method
        of its own: a method's name is one more every node interns (docs/firmware.md, Memory)."""
        for name in self.tags:
            if name in self.latest and not any(r[0] == name for r in recs):
                recs.append(self.latest[name])
        if urgent is None:
            urgent = pri == message.PRI_ALARM
        clock = self.clock
        base = clock.ms(recs[0][3])
        bt = base // 1000
        bu = recs[0][2]
        bn = recs[0][0]
        for r in recs:
            if r[0] != bn:
                bn = None
            if r[2] is None:  # a record without u would inherit bu (RFC 8428 4.5.2): then no bu
                bu = None
        records = []
        for name, v, unit, up in recs:
            # ms after bt to the nearest 1/1024 s (integer arithmetic, exact on single-precision boards):
            # exact as a binary float, so the encoder picks half precision within 2 s of bt (every
            # pack's first reading) and single precision up to 4.5 h; a whole second stays an integer.
            e = ((clock.ms(up) - bt * 1000) * 128 + 62) // 125
            t = e >> 10 if e & 1023 == 0 else e / 1024
            # one metric only (bn): its name goes once, as the base name
            records.append(senml_build.record(None if bn else name, v, None if unit == bu else unit, t or None))
        pack = senml_build.pack(records, bn=bn, bt=bt, bu=bu)
        seq = self.q.next_id
        clk = clock.clk
        if ev is None:
            body = message.data(self.dev, self.boot, seq, pack, clk, pri)
        else:
            body = message.event(self.dev, self.boot, seq, ev, pack, clk, pri)
        data = message.encode(body, self.key)
        if len(data) > _MAX_RECORD and len(recs) > 1:
            half = len(recs) // 2
            self.seal(recs[:half], pri, ev, urgent)
            self.seal(recs[half:], pri, ev, urgent)
            return
        if self.q.put(data, urgent, _KIND_EVENT if ev else _KIND_DATA) is None:
            # The flash is full even after the queue's oldest records went: the message is counted as dropped
            # (qdrop) and goes out once, QoS 0, if the link is up; nothing keeps it for later. Said once a boot.
            if not self.full:
                print("flash full: messages dropped (qdrop %d)" % sum(self.q.dropped))
            self.full = True
            if self.mqtt.isconnected():
                asyncio.create_task(self.mqtt.publish(self.topic[topics.EVENT if ev else topics.DATA], data))
        if clk == message.CLK_BOOT:
            self.boot_clk = True
        self.will()
        self.wake.set()

    async def run(self):
        topic = (self.topic[topics.DATA], self.topic[topics.EVENT])
        mqtt = self.mqtt
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
