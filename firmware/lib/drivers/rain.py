"""Tipping-bucket rain gauge: a reed switch closes once per tip and is counted on a pin interrupt.

The handler only compares two tick counts and bumps small-int counters, so it never allocates and is
safe as a hard IRQ. Readers take differences of a counter that only grows, so they never race it.

A deep-sleeping node (app/sleeper.py) wakes on the switch itself: it counts that tip with tip(), and
carries what a take() needs across the sleep with kept() and resume()."""

from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

from drivers import Driver

_AGE_MAX = const(1 << 28)  # ms (3 days): older is as good as never, and stays inside the ticks half-period


class RainGauge(Driver):
    """`pin` has irq(handler=, trigger=) and IRQ_FALLING (machine.Pin, input with pull-up, switch to
    ground). Edges within `debounce_ms` of the last counted tip are contact bounce: counted in
    `bounces`, not as rain. `clock` replaces time.ticks_ms (a test's clock)."""

    def __init__(self, pin, mm_per_tip=0.2, debounce_ms=200, clock=ticks_ms):
        self.pin = pin
        self.mm_per_tip = mm_per_tip
        self.debounce_ms = debounce_ms
        self._clock = clock
        self.tips = 0
        self.bounces = 0
        self._last_tip = None
        self._taken = 0
        self._since = clock()
        pin.irq(handler=self.tip, trigger=pin.IRQ_FALLING)

    def tip(self, pin=None):
        """The IRQ handler; also called for the tip that woke a sleeping node."""
        now = self._clock()
        last = self._last_tip
        # ticks wrap: a negative difference is a tip long ago, not a bounce
        if last is not None and 0 <= ticks_diff(now, last) < self.debounce_ms:
            self.bounces += 1
            return
        self._last_tip = now
        self.tips += 1

    def total_mm(self):
        return self.tips * self.mm_per_tip

    def take(self):
        """(mm, mm/h) since the previous take (or since start), then starts the next interval."""
        tips = self.tips
        now = self._clock()
        mm = (tips - self._taken) * self.mm_per_tip
        ms = ticks_diff(now, self._since)
        self._taken = tips
        self._since = now
        return mm, (mm * 3600000 / ms if ms > 0 else 0.0)

    def values(self):
        mm, rate = self.take()
        return (("rain", mm), ("rain_rate", rate))

    def kept(self):
        """What a deep sleep must keep: (tips not yet taken, ms since the interval began, ms since
        the last counted tip or -1)."""
        now = self._clock()
        last = self._last_tip
        return (self.tips - self._taken, ticks_diff(now, self._since),
                -1 if last is None else ticks_diff(now, last))

    def resume(self, tips, since_ms, tip_ms):
        """Carry on from kept() figures aged by the time asleep: the tips join the open interval, whose
        start and the last tip (for the debounce) are that many ms ago."""
        now = self._clock()
        self.tips += tips
        self._since = ticks_add(now, -min(max(since_ms, 0), _AGE_MAX))
        if tip_ms >= 0:
            self._last_tip = ticks_add(now, -min(tip_ms, _AGE_MAX))


rain = RainGauge  # the profile's driver name: the entry point drivers.make() looks up
