"""One asyncio task per sensor: read the driver on the sensor's schedule, pass every metric through
its filters and pre-alarm level, and hand what survives to the app.

The schedule is sample_s, or fast_s while any of the sensor's metrics is past its pre-alarm level or
falling by its local rate trigger, or burst.s during a burst window (burst.for_s every burst.every_s).
Drivers whose bus buffers data (UART, accelerometer FIFO) are polled every poll_s in between. Driver
faults, and reads that are no reading (NaN, an infinity, None), are counted by reason and reported as a
"fault" event when they start and when they clear, never as a crash.

Every driver is made, read and polled the same way (drivers.make, values(), poll(): drivers/__init__.py),
so this module names no driver or metric and loads only the drivers the profile uses.
"""

import asyncio
import time

from app.filters import Filter, Level
from drivers import Fault, make
from protocol import message


class Metric:
    def __init__(self, name, spec):
        self.name = name
        self.unit = spec.get("u") or None
        self.filter = Filter(spec.get("filters", []))
        pre = spec.get("prealarm")
        self.level = Level(pre) if pre else None


def _ms(x):
    return int(x * 1000) if x else 0


class Sensor:
    def __init__(self, spec, app):
        self.name = spec["name"]
        self.kind = spec["driver"]
        self.app = app
        self.metrics = {}
        self.configure(spec)
        self.first = next(iter(self.metrics))
        self.alarm = False
        self.fault = None
        self.faults = {}
        self.drv = None
        self.spec = spec
        self.make()

    def make(self):
        """Make the driver, or report why not. Tried again at each sample until it is made (the spec is kept
        until then): a sensor that did not answer at boot (powered up after the board, a bus glitch) stayed
        faulty until the next reboot, on a node that looked healthy."""
        spec = self.spec
        try:
            self.drv = make(self.kind, self.app.board.bus(spec), spec.get("args", {}))
            self.spec = None
        except Fault as f:
            self._fault(f.reason)
        except (OSError, ValueError, TypeError, KeyError) as e:
            self._fault("init: %s" % e)

    def configure(self, spec):
        """Take the schedule and the metrics' filters and levels from a profile entry (at start and
        after a command changed them); a level that was crossed stays crossed."""
        self.sample_ms = _ms(spec["sample_s"])
        self.fast_ms = _ms(spec.get("fast_s"))
        self.poll_ms = _ms(spec.get("poll_s"))
        b = spec.get("burst")
        self.burst = (_ms(b["every_s"]), _ms(b["for_s"]), _ms(b["s"])) if b else None
        for name in spec["metrics"]:
            old = self.metrics.get(name)
            m = self.metrics[name] = Metric(name, spec["metrics"][name])
            if old and old.level and m.level:
                m.level.active = old.level.active

    def _fault(self, reason):
        self.faults[reason] = self.faults.get(reason, 0) + 1
        if reason != self.fault:
            print("sensor %s: fault %s" % (self.name, reason))
            self.fault = reason
            self.app.fault(self, reason)

    def sample(self):
        """Read once and process every metric; returns False while the driver is faulty."""
        if self.drv is None:
            self.make()  # read from the next sample on: a device just set up may have nothing yet (a FIFO)
            return False
        try:
            values = self.drv.values()
        except Fault as f:
            self._fault(f.reason)
            return False
        except Exception as e:
            self._fault("%s: %s" % (type(e).__name__, e))
            return False
        for _, v in values:
            # NaN, an infinity or None is no reading: it raised in the filters, which killed this task (and the
            # watchdog then reset the node, into safe mode in the end), or went out as a reading.
            if not (isinstance(v, (bool, int, str)) or (isinstance(v, float) and v - v == 0)):
                self._fault("bad reading")
                return False
        if self.fault is not None:
            self.fault = None
            self.app.fault(self, None)
        up = self.app.clock.up_ms()
        now = self.app.clock.ms(up)
        urgent = []
        for name, v in values:
            m = self.metrics.get(name or self.first)  # None: a single-metric driver's reading
            if m is None:
                continue
            v = m.filter.transform(v)
            change = m.level.step(v) if m.level else 0
            top = m.level.fell(v, up) if m.level else None
            if top is not None:
                # The gateway's rate rule compares with an earlier sample: the one the fall started from
                # goes first, in this pack, or just before a level event that carries this reading.
                urgent.append((m.name, top[1], m.unit, top[0]))
                if change:
                    self.app.pub.seal(urgent, message.PRI_ALARM)
                    urgent = []
            held = m.level.holding(change, up) if m.level else False
            send = m.filter.send(v, now, change != 0 or top is not None)
            if self.app.reading(m, v, up, change, send, self.alarm or top is not None or held):
                urgent.append((m.name, v, m.unit, up))
        self.alarm = any(m.level is not None and (m.level.active or m.level.falling) for m in self.metrics.values())
        if urgent:
            self.app.pub.seal(urgent, message.PRI_ALARM)
        return True

    async def run(self):
        poll = self.poll_ms
        burst_at = time.ticks_ms()  # the burst window's start
        while True:
            # The period, worked out here rather than in a method, and the window's start a local: each
            # name is one more every node interns (docs/firmware.md, Memory).
            wait = self.sample_ms
            b = self.burst
            if self.alarm and self.fast_ms:
                wait = self.fast_ms
            elif b:
                into = time.ticks_diff(time.ticks_ms(), burst_at)
                if into >= b[0]:
                    burst_at = time.ticks_ms()
                    into = 0
                if into < b[1]:
                    wait = b[2]
            while poll and wait > poll:
                await asyncio.sleep_ms(poll)
                wait -= poll
                if self.drv is not None:
                    try:
                        self.drv.poll()
                    except Exception:
                        pass
            await asyncio.sleep_ms(wait)
            self.sample()
            self.app.beat(self.name)
