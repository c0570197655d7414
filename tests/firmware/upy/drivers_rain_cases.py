"""Rain gauge: debounce, tick wrap, mm and mm/h per interval, and an IRQ handler that never allocates."""

import gc
from time import ticks_add

import micropython
from drivercheck import Clock, eq, near
from simdev import SimPin

from drivers import make
from drivers.rain import RainGauge


def case_rain_debounce_and_rate():
    clock = Clock(0)
    pin = SimPin()
    rain = RainGauge(pin, mm_per_tip=0.2, debounce_ms=200, clock=clock)
    eq(pin.trigger, SimPin.IRQ_FALLING, "falling edge")
    for t in (1000, 1004, 1031, 1190, 5000, 5150, 9000):
        clock.t = t
        pin.fire()
    eq((rain.tips, rain.bounces), (3, 4), "tips, bounces")
    clock.t = 60000
    mm, rate = rain.take()
    near(mm, 0.6, 1e-9, "mm in a minute")
    near(rate, 36.0, 1e-9, "mm/h")
    clock.t = 120000
    eq(rain.take(), (0.0, 0.0), "dry minute")
    near(rain.total_mm(), 0.6, 1e-9, "total")


def case_rain_debounce_across_tick_wrap():
    top = ticks_add(0, -1)  # the largest tick value before wrapping to 0
    clock = Clock(ticks_add(top, -50))
    pin = SimPin()
    rain = RainGauge(pin, debounce_ms=200, clock=clock)
    pin.fire()
    clock.t = 100  # 151 ms later, across the wrap: a bounce
    pin.fire()
    clock.t = ticks_add(top, -50 + (top + 1) // 2 + 10)  # more than half a period later: a new tip
    pin.fire()
    eq((rain.tips, rain.bounces), (2, 1), "tips, bounces")


def _fire_many(handler, pin, times):
    i = 0
    while i < times:
        handler(pin)
        i += 1


def case_rain_irq_handler_allocates_nothing():
    clock = Clock(10)
    pin = SimPin()
    rain = RainGauge(pin, clock=clock)
    handler = pin._handler
    handler(pin)
    gc.collect()
    micropython.heap_lock()
    try:
        _fire_many(handler, pin, 200)
    finally:
        micropython.heap_unlock()
    eq((rain.tips, rain.bounces), (1, 200), "bounces counted without allocating")


def _slept(kept, ms):
    """kept() figures aged by a deep sleep of ms, as the sleeper hands them to resume()."""
    n, since, tip = kept
    return n, since + ms, (tip + ms if tip >= 0 else -1)


def case_rain_kept_across_deep_sleep_keeps_mm_and_rate():
    clock = Clock(5000)
    before = RainGauge(SimPin(), mm_per_tip=0.2, debounce_ms=200, clock=clock)
    clock.t = 65000
    before.take()  # a report: the next interval starts at 65 s
    for t in (70000, 80000, 90000):
        clock.t = t
        before.tip()
    clock.t = 95000
    kept = before.kept()
    eq(kept, (3, 30000, 5000), "tips, interval age, last tip age")
    # ticks start again after a deep sleep: the new gauge's clock knows nothing of the old one
    clock = Clock(ticks_add(0, -400))  # near the wrap, for good measure
    after = RainGauge(SimPin(), mm_per_tip=0.2, debounce_ms=200, clock=clock)
    after.resume(*_slept(kept, 60000))
    after.tip()  # the tip that woke it
    clock.t = ticks_add(clock.t, 10000)
    mm, rate = after.take()
    near(mm, 0.8, 1e-9, "the three kept tips and the waking one")
    near(rate, 0.8 * 3600000 / 100000, 1e-9, "mm/h over the whole 100 s since the last report")
    eq(after.kept(), (0, 0, 10000), "a take empties the interval")


def case_rain_debounce_across_a_wake():
    clock = Clock(1000)
    before = RainGauge(SimPin(), debounce_ms=200, clock=clock)
    before.tip()
    clock.t = 1100
    kept = before.kept()
    for slept, tips in ((50, 1), (150, 2)):  # 150 ms or 250 ms after the last tip
        clock = Clock(0)
        after = RainGauge(SimPin(), debounce_ms=200, clock=clock)
        after.resume(*_slept(kept, slept))
        after.tip()
        eq((after.tips, after.bounces), (tips, 2 - tips), "woken %d ms after the last tip" % (slept + 100))


def case_rain_resume_without_a_last_tip_and_with_absurd_ages():
    clock = Clock(0)
    gauge = RainGauge(SimPin(), debounce_ms=200, clock=clock)
    eq(gauge.kept(), (0, 0, -1), "no tip yet")
    gauge.resume(0, -5, -1)  # a clock set back: the interval starts now
    gauge.tip()
    eq(gauge.tips, 1, "no last tip to bounce against")
    gauge.resume(0, 1 << 40, 1 << 40)  # ages beyond the ticks range are clamped, not an OverflowError
    clock.t = 10
    mm, rate = gauge.take()
    near(mm, 0.2, 1e-9, "mm")
    if not 0 < rate < 0.2 * 3600000 / (1 << 27):
        raise AssertionError("a rate over a clamped (3-day) interval: %r" % rate)


def case_rain_made_by_profile_name_gives_rain_and_rate():
    clock = Clock(0)
    pin = SimPin()
    rain = make("rain", pin, {"mm_per_tip": 0.2, "clock": clock})
    eq(type(rain) is RainGauge, True, "a RainGauge")
    clock.t = 1000
    pin.fire()
    eq(rain.poll(), None, "nothing to poll")
    clock.t = 60000
    (n1, mm), (n2, rate) = rain.values()
    eq((n1, n2), ("rain", "rain_rate"), "metric names")
    near(mm, 0.2, 1e-9, "mm")
    near(rate, 12.0, 1e-9, "mm/h")
