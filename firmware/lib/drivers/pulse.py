"""Tipping-bucket rain gauge: a reed switch closes once per tip and is counted on a pin interrupt.

The handler only compares two tick counts and bumps small-int counters, so it never allocates and is
safe as a hard IRQ. Readers take differences of a counter that only grows, so they never race it."""

from time import ticks_diff, ticks_ms


class RainGauge:
    """`pin` has irq(handler=, trigger=) and IRQ_FALLING (machine.Pin, input with pull-up, switch to
    ground). Edges within `debounce_ms` of the last counted tip are contact bounce: counted in
    `bounces`, not as rain. `clock` replaces time.ticks_ms (a test's clock)."""

    def __init__(self, pin, mm_per_tip=0.2, debounce_ms=200, clock=ticks_ms):
        self.mm_per_tip = mm_per_tip
        self.debounce_ms = debounce_ms
        self._clock = clock
        self.tips = 0
        self.bounces = 0
        self._last_tip = None
        self._taken = 0
        self._since = clock()
        pin.irq(handler=self._edge, trigger=pin.IRQ_FALLING)

    def _edge(self, pin):
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
