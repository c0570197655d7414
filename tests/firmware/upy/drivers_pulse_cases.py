"""Rain gauge: debounce, tick wrap, mm and mm/h per interval, and an IRQ handler that never allocates."""

import gc
from time import ticks_add

import micropython
from drivercheck import Clock, eq, near

from drivers.pulse import RainGauge
from hal.simdev import SimPin


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
