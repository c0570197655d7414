"""4-20 mA current-loop transducer read as a voltage across a shunt resistor.

Limits follow NAMUR NE 43: 3.8..20.5 mA carries a measurement (slightly beyond the 4..20 span is
still a reading), <= 3.6 mA or >= 21.0 mA signals a failure. See docs/drivers.md."""

from micropython import const

from drivers import Driver, Fault

_OPEN_MA = const(1.0)       # no loop current at all: a cut wire, not a transmitter's failure signal
_FAIL_LOW_MA = const(3.6)   # NE 43 failure signal, low
_MEAS_LOW_MA = const(3.8)   # NE 43 measurement band
_MEAS_HIGH_MA = const(20.5)
_FAIL_HIGH_MA = const(21.0)


class Loop420(Driver):
    """`adc` has read_uv() (machine.ADC); `lo`..`hi` is the engineering value at 4..20 mA."""

    def __init__(self, adc, lo, hi, shunt_ohm=100.0, samples=8):
        if samples < 1 or shunt_ohm <= 0 or hi == lo:
            raise ValueError("loop420: samples >= 1, shunt_ohm > 0, hi != lo")
        self.adc = adc
        self.lo = lo
        self.span = hi - lo
        self.shunt_ohm = shunt_ohm
        self.samples = samples
        self.ma = None
        self.faults = 0

    def read(self):
        """Engineering value, or Fault with reason open-loop / sensor-fault / under-range /
        over-range / short and the loop current in mA as its value.

        The current is the mean of `samples` ADC reads; from 4 reads on the highest and lowest are dropped,
        so one spike from a relay or radio burst does not move the reading. (One method, not two: each
        method's name is one more a node interns; docs/firmware.md, Memory.)"""
        n = self.samples
        low = high = total = self.adc.read_uv()
        i = 1
        while i < n:
            uv = self.adc.read_uv()
            total += uv
            if uv < low:
                low = uv
            elif uv > high:
                high = uv
            i += 1
        if n >= 4:
            total -= low + high
            n -= 2
        # microvolts / ohms = microamps
        ma = self.ma = total / n / self.shunt_ohm / 1000
        reason = None
        if ma < _OPEN_MA:
            reason = "open-loop"
        elif ma <= _FAIL_LOW_MA:
            reason = "sensor-fault"
        elif ma < _MEAS_LOW_MA:
            reason = "under-range"
        elif ma >= _FAIL_HIGH_MA:
            reason = "short"
        elif ma > _MEAS_HIGH_MA:
            reason = "over-range"
        if reason:
            self.faults += 1
            raise Fault(reason, ma)
        return self.lo + (ma - 4.0) * self.span / 16.0


loop420 = Loop420  # the profile's driver name: the entry point drivers.make() looks up
