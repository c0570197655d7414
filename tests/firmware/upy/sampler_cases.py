"""app/sampler.py against a fake app and board: what a sensor does when its device does not answer at
boot, or its driver hands back something that is not a reading. The app records what the sensor tells it."""

from drivercheck import eq
from simdev import SimADXL345

from app.sampler import Sensor


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t

    def up_ms(self):
        return self.t

    def ms(self, up):
        return up


class Absent(SimADXL345):
    """An ADXL345 that does not acknowledge on the bus (ENODEV) until `up`."""

    up = False

    def readfrom_mem_into(self, addr, reg, buf):
        if not self.up:
            raise OSError(19)
        super().readfrom_mem_into(addr, reg, buf)

    def writeto_mem(self, addr, reg, buf):
        if not self.up:
            raise OSError(19)
        super().writeto_mem(addr, reg, buf)


class App:
    def __init__(self, bus, clock):
        self.board = self
        self.bus_ = bus
        self.clock = clock
        self.faults = []
        self.got = []

    def bus(self, spec):
        return self.bus_

    def fault(self, sensor, reason):
        self.faults.append(reason)

    def reading(self, metric, v, up, change, send, alarm):
        self.got.append((metric.name, v))
        return False


def bridge_spec():
    return {"name": "accel", "driver": "adxl345", "bus": {"type": "i2c"}, "args": {}, "sample_s": 10,
            "metrics": {"tilt_x": {"u": "rad"}, "tilt_y": {"u": "rad"}, "vib_rms": {}, "vib_peak": {}}}


def case_a_device_that_answers_after_boot_is_set_up_and_read():
    clock = Clock()
    bus = Absent(clock=clock)
    app = App(bus, clock)
    s = Sensor(bridge_spec(), app)
    eq(app.faults, ["no-device"], "fault at boot")
    eq(s.sample(), False, "still absent")
    eq(app.faults, ["no-device"], "said once")
    bus.up = True
    clock.t += 1000
    s.sample()  # set up now; its FIFO fills from here
    clock.t += 1000
    eq(s.sample(), True, "read once it answers")
    eq(app.faults, ["no-device", None], "the fault clears")
    eq(sorted(n for n, _ in app.got), ["tilt_x", "tilt_y", "vib_peak", "vib_rms"], "readings")


def case_a_device_that_loses_power_after_boot_is_set_up_again():
    """An ADXL345 that loses power comes back in standby with its registers at their reset values: it answers,
    but its FIFO stays empty ("no-samples") until it is set up again."""
    clock = Clock()
    bus = Absent(clock=clock)
    bus.up = True
    app = App(bus, clock)
    s = Sensor(bridge_spec(), app)
    clock.t += 1000
    eq(s.sample(), True, "read at boot")
    bus.up = False  # power lost: no answer, and the registers back at their reset values
    SimADXL345.__init__(bus, clock=clock)
    clock.t += 1000
    eq(s.sample(), False, "no answer")
    bus.up = True
    for _ in range(3):
        clock.t += 1000
        s.sample()
    clock.t += 1000
    eq(s.sample(), True, "read again once powered, without a reboot")
    eq(app.faults[-1], None, "the fault clears")


class Replay:
    """A driver that hands back the given values, one a read."""

    def __init__(self, values):
        self.left = list(values)

    def values(self):
        return ((None, self.left.pop(0)),)


def case_a_value_that_is_no_reading_is_a_fault_not_a_crash_nor_a_reading():
    nan, inf = float("nan"), float("inf")
    for filters in ([{"q": 0.0625}, {"delta": 0.5}, {"heartbeat": 10}], [{"delta": 0.0001}]):
        clock = Clock()
        app = App(None, clock)
        spec = {"name": "ch4", "driver": "loop420", "bus": {"type": "adc"}, "args": {"lo": 0, "hi": 100},
                "sample_s": 1, "metrics": {"ch4": {"u": "%LEL", "filters": filters, "prealarm": {"above": 10}}}}
        s = Sensor(spec, app)
        s.drv = Replay([5.0, nan, None, -inf, 6.0])
        got = []
        for _ in range(5):
            clock.t += 1000
            got.append(s.sample())
        eq(got, [True, False, False, False, True], "samples")
        eq(app.faults, ["bad reading", None], "one fault, then its clear")
        eq(app.got, [("ch4", 5.0), ("ch4", 6.0)], "readings")


def case_a_switch_reads_booleans():
    """A cover switch (drivers/cover.py) reads True and False: readings, not faults."""
    app = App(None, Clock())
    spec = {"name": "cover", "driver": "cover", "bus": {"type": "pin"}, "args": {}, "sample_s": 1,
            "metrics": {"cover": {"filters": [{"delta": 0}], "prealarm": {"is": True}}}}
    s = Sensor(spec, app)
    s.drv = Replay([False, True])
    eq([s.sample(), s.sample()], [True, True], "samples")
    eq(app.faults, [], "no fault")
    eq(app.got, [("cover", False), ("cover", True)], "readings")
