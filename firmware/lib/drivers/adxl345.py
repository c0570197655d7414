"""ADXL345 3-axis accelerometer on I2C (register map from the Analog Devices ADXL345 data sheet).

Runs in full-resolution mode (3.9 mg/LSB at every range) with the 32-level FIFO in stream mode, so a
sampler that wakes every ~100 ms still sees every sample at the output data rate. drain() copies the
FIFO into a preallocated ring of int16 counts and allocates nothing; summary() turns the window into
tilt and vibration figures."""

from array import array
from math import atan2, sqrt

from micropython import const

from drivers import Driver, Fault

_DEVID = const(0x00)
_DEVID_ADXL345 = const(0xE5)
_BW_RATE = const(0x2C)
_POWER_CTL = const(0x2D)
_DATA_FORMAT = const(0x31)
_DATAX0 = const(0x32)
_FIFO_CTL = const(0x38)
_FIFO_STATUS = const(0x39)
_MEASURE = const(0x08)      # _POWER_CTL bit D3
_FULL_RES = const(0x08)     # _DATA_FORMAT bit D3
_FIFO_STREAM = const(0x80)  # _FIFO_CTL mode bits D7:D6 = 10
_FIFO_LEVELS = const(32)
_RANGES = const((2, 4, 8, 16))                               # _DATA_FORMAT range bits 0..3
_RATES = const((3200, 1600, 800, 400, 200, 100, 50, 25))     # _BW_RATE codes 0x0F downwards
_LSB_G = const(0.0039)
_G = const(9.80665)


def s16(lo, hi):
    """Little-endian two's complement pair, as the data registers hold it."""
    v = lo | hi << 8
    return v - 0x10000 if v & 0x8000 else v


def tilt(x, y, z):
    """(tilt_x, tilt_y) in rad from a gravity vector in any unit. tilt_x: the X axis raised out of the
    horizontal (-pi/2..pi/2); tilt_y: roll about X (-pi..pi, so upside down reads +-pi)."""
    return atan2(x, sqrt(y * y + z * z)), atan2(y, z)


class ADXL345(Driver):
    """`i2c` has readfrom_mem, readfrom_mem_into, writeto_mem (machine.I2C). `window` samples are kept
    for summary(); at `rate_hz` = 100 the default covers 1.28 s."""

    def __init__(self, i2c, addr=0x53, g_range=16, rate_hz=100, window=128):
        self.i2c = i2c
        self.addr = addr
        self.g_range = g_range
        self.rate_hz = rate_hz
        self.configure()
        self.scale = _LSB_G * _G  # m/s2 per count
        self._status = bytearray(1)
        self._data = bytearray(6)
        self._win = array("h", [0] * (3 * window))
        self.window = window
        self.n = 0
        self._i = 0
        self.overruns = 0

    def configure(self):
        """Check the device and write its config registers: at start, and again whenever a window ends without
        a sample. A chip that lost power answers again in standby with its registers at their reset values,
        and its FIFO stays empty until it is set up again. (Named as the sampler's method: no new name.)"""
        i2c = self.i2c
        addr = self.addr
        try:
            devid = i2c.readfrom_mem(addr, _DEVID, 1)[0]
        except OSError:
            raise Fault("no-device", addr)
        if devid != _DEVID_ADXL345:
            raise Fault("devid", devid)
        w = i2c.writeto_mem
        w(addr, _POWER_CTL, b"\x00")  # standby while configuring
        w(addr, _DATA_FORMAT, bytes((_FULL_RES | _RANGES.index(self.g_range),)))
        w(addr, _BW_RATE, bytes((0x0F - _RATES.index(self.rate_hz),)))
        w(addr, _FIFO_CTL, bytes((_FIFO_STREAM,)))
        w(addr, _POWER_CTL, bytes((_MEASURE,)))

    def read_raw(self):
        """Current (x, y, z) counts straight from the data registers."""
        b = self._data
        self.i2c.readfrom_mem_into(self.addr, _DATAX0, b)
        return s16(b[0], b[1]), s16(b[2], b[3]), s16(b[4], b[5])

    def read(self):
        """Current (x, y, z) in m/s2."""
        x, y, z = self.read_raw()
        k = self.scale
        return x * k, y * k, z * k

    def values(self):
        """The sampler's read: the FIFO drained, then summary() by metric name."""
        self.drain()
        v = self.summary()
        return (("tilt_x", v[0]), ("tilt_y", v[1]), ("vib_rms", v[2]), ("vib_peak", v[3]))

    def drain(self):
        """Moves every FIFO entry into the window; returns how many. A full FIFO means samples were
        probably lost since the last call: counted in `overruns`."""
        i2c = self.i2c
        addr = self.addr
        i2c.readfrom_mem_into(addr, _FIFO_STATUS, self._status)
        entries = self._status[0] & 0x3F
        if entries >= _FIFO_LEVELS:
            self.overruns += 1
        b = self._data
        w = self._win
        end = len(w)
        i = self._i
        k = 0
        while k < entries:
            i2c.readfrom_mem_into(addr, _DATAX0, b)  # each burst read pops one FIFO level
            w[i] = s16(b[0], b[1])
            w[i + 1] = s16(b[2], b[3])
            w[i + 2] = s16(b[4], b[5])
            i += 3
            if i == end:
                i = 0
            k += 1
        self._i = i
        n = self.n + entries
        self.n = n if n < self.window else self.window
        return entries

    poll = drain  # between samples

    def summary(self):
        """(tilt_x, tilt_y, vib_rms, vib_peak) over the window, then starts a new one. Gravity is the
        window mean; vibration is the deviation vector from it, so neither depends on mounting."""
        n = self.n
        if not n:
            self.configure()  # powered again after a loss: set up anew, read from the next window on
            raise Fault("no-samples")
        w = self._win
        sx = sy = sz = 0
        for i in range(0, 3 * n, 3):
            sx += w[i]
            sy += w[i + 1]
            sz += w[i + 2]
        mx, my, mz = sx / n, sy / n, sz / n
        total = peak = 0.0
        for i in range(0, 3 * n, 3):
            dx, dy, dz = w[i] - mx, w[i + 1] - my, w[i + 2] - mz
            d = dx * dx + dy * dy + dz * dz
            total += d
            if d > peak:
                peak = d
        self.n = self._i = 0
        tx, ty = tilt(mx, my, mz)
        return tx, ty, sqrt(total / n) * self.scale, sqrt(peak) * self.scale


adxl345 = ADXL345  # the profile's driver name: the entry point drivers.make() looks up
