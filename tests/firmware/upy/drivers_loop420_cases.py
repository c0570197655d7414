"""4-20 mA loop: ADC microvolts at 4, 12 and 20 mA and at each NAMUR NE 43 fault band; SimADC round trip."""

from drivercheck import eq, fault, near
from simdev import SimADC

from drivers import make
from drivers.loop420 import Loop420


class ListADC:
    """An ADC that returns recorded read_uv() values in turn."""

    def __init__(self, uv):
        self.uv = uv
        self.i = 0

    def read_uv(self):
        v = self.uv[self.i % len(self.uv)]
        self.i += 1
        return v


def loop(uv, samples=8):
    return Loop420(ListADC(uv), 0.0, 1600.0, shunt_ohm=100.0, samples=samples)


def case_loop_scaling_at_4_12_20_ma():
    # 100 ohm shunt: 4 mA = 0.4 V, 12 mA = 1.2 V, 20 mA = 2.0 V, with a few mV of ADC noise
    near(loop([399870, 400120, 400050, 399960, 400010, 399940, 400080, 399990]).read(), 0.0, 0.5, "4 mA")
    near(loop([1199880, 1200150, 1200020, 1199910, 1200060, 1199970, 1200110, 1199930]).read(), 800.0,
         0.5, "12 mA")
    near(loop([2000090, 1999920, 2000030, 2000110, 1999880, 2000000, 1999960, 2000050]).read(), 1600.0,
         0.5, "20 mA")
    sensor = loop([1000000])  # 10 mA
    near(sensor.read(), 600.0, 1e-6, "10 mA")
    near(sensor.ma, 10.0, 1e-9, "mA")


def case_loop_average_drops_a_spike():
    # one 2.9 V spike among 12 mA readings: dropped as the maximum of eight
    near(loop([1200000, 1200000, 2900000, 1200000, 1200000, 1200000, 1200000, 1200000]).read(), 800.0,
         1e-6, "spike")
    near(loop([1200000], samples=1).read(), 800.0, 1e-6, "single sample")


def case_loop_namur_ne43_faults():
    cases = ((0, "open-loop"), (350000, "sensor-fault"), (370000, "under-range"),
             (2070000, "over-range"), (2200000, "short"))
    sensor = Loop420(ListADC([0]), 0.0, 1600.0)
    for uv, reason in cases:
        sensor.adc = ListADC([uv])
        e = fault(sensor.read, reason)
        near(e.value, uv / 100000, 1e-9, reason + " mA")
    eq(sensor.faults, len(cases), "fault count")
    # inside 3.8..20.5 mA a reading is still a reading, a little outside the span
    near(loop([390000]).read(), -10.0, 1e-6, "3.9 mA")
    near(loop([2040000]).read(), 1640.0, 1e-6, "20.4 mA")


def case_loop_sim_round_trip():
    value = [0.0]
    adc = SimADC(lambda: value[0], shunt_ohm=120.0, range=(0.0, 1600.0), noise_uv=3000)
    sensor = Loop420(adc, 0.0, 1600.0, shunt_ohm=120.0, samples=16)
    # 1 unit is 1.2 mV across 120 ohm, so +-3 mV of uniform noise is +-2.5 units a sample. The mean of the
    # 14 samples kept has a sigma of about 0.4 units; 2.0 units is over 5 sigma, so the case is not flaky.
    for v in (0.0, 437.5, 800.0, 1234.0, 1600.0, 1630.0):
        value[0] = v
        near(sensor.read(), v, 2.0, "sim %r" % v)
    for v, reason in ((None, "open-loop"), (1660.0, "over-range"), (5000.0, "short"), (-25.0, "under-range")):
        value[0] = v
        fault(sensor.read, reason)


def case_loop_made_by_profile_name_reads_one_unnamed_metric():
    sensor = make("loop420", ListADC([1200000]), {"lo": 0.0, "hi": 1600.0})
    eq(type(sensor) is Loop420, True, "a Loop420")
    eq(sensor.poll(), None, "nothing to poll")
    (name, v), = sensor.values()
    eq(name, None, "the profile's metric")
    near(v, 800.0, 1e-6, "12 mA")
    sensor.adc = ListADC([0])
    fault(sensor.values, "open-loop")
