"""Device models for the sim backend: each is the inverse of a driver in drivers/, so the real driver
code runs on the unix port against a scripted stimulus. Stimulus functions are zero-argument callables
the sim HAL supplies; `clock` (ms ticks) is replaceable so tests can step time."""

from math import cos, pi, sin, sqrt
from random import getrandbits
from time import gmtime, ticks_add, ticks_diff, ticks_ms, time

# The ADXL345's register map and scale, from the Analog Devices datasheet, written out here rather
# than imported from drivers/adxl345.py: a model that shared the driver's numbers could not catch a wrong one.
DEVID = 0x00
DEVID_ADXL345 = 0xE5
BW_RATE = 0x2C
POWER_CTL = 0x2D
DATA_FORMAT = 0x31
DATAX0 = 0x32
FIFO_CTL = 0x38
FIFO_STATUS = 0x39
MEASURE = 0x08
FULL_RES = 0x08
FIFO_STREAM = 0x80
FIFO_LEVELS = 32
LSB_G = 0.0039
G = 9.80665

ENODEV = 19  # what machine.I2C raises when no device acknowledges


class SimADC:
    """A 4-20 mA transmitter over `range` (lo, hi) across `shunt_ohm`, read as machine.ADC.read_uv().
    value_fn() None means an open loop (0 mA). No NE 43 saturation, so a stimulus beyond the range
    shows as the driver's over-range and short faults; the loop supply caps it at 24 mA."""

    def __init__(self, value_fn, shunt_ohm=100.0, range=(0.0, 1600.0), noise_uv=0):
        self.value_fn = value_fn
        self.shunt_ohm = shunt_ohm
        self.lo, self.hi = range
        self.noise_uv = noise_uv

    def read_uv(self):
        v = self.value_fn()
        ma = 0.0 if v is None else 4 + 16 * (v - self.lo) / (self.hi - self.lo)
        ma = min(max(ma, 0.0), 24.0)
        noise = (getrandbits(16) / 32768 - 1) * self.noise_uv if self.noise_uv else 0
        return max(0, int(ma * self.shunt_ohm * 1000 + noise + 0.5))


class SimADXL345:
    """ADXL345 register map on an I2C bus (machine.I2C memory API). Gravity follows the tilt_x/tilt_y
    stimulus (rad, the drivers.adxl345.tilt convention); a `vib_hz` sine of RMS vib() (m/s2) rides along
    gravity. Samples are produced at the configured output data rate into a 32-level stream FIFO."""

    def __init__(self, tilt_x=None, tilt_y=None, vib=None, addr=0x53, vib_hz=5.0, clock=ticks_ms):
        self.tilt_x, self.tilt_y, self.vib = tilt_x, tilt_y, vib
        self.addr = addr
        self.vib_hz = vib_hz
        self.clock = clock
        self.regs = bytearray(0x40)
        self.regs[DEVID] = DEVID_ADXL345
        self.regs[BW_RATE] = 0x0A  # reset value: 100 Hz
        self._restart()

    def _restart(self):
        self._t0 = self.clock()
        self._due = 0      # samples produced since _t0
        self._entries = 0  # of them still in the FIFO

    def _rate(self):
        return 3200 / (1 << (0x0F - (self.regs[BW_RATE] & 0x0F)))

    def _fill(self):
        due = int(ticks_diff(self.clock(), self._t0) * self._rate() / 1000)
        stream = self.regs[FIFO_CTL] & 0xC0 == FIFO_STREAM
        self._entries = min(FIFO_LEVELS, self._entries + due - self._due) if stream else 0
        self._due = due

    def _counts(self, k):
        """Sample number k (since the last restart) as register counts."""
        tx = self.tilt_x() if self.tilt_x else 0.0
        ty = self.tilt_y() if self.tilt_y else 0.0
        vib = self.vib() if self.vib else 0.0
        gx, gy, gz = sin(tx), sin(ty) * cos(tx), cos(ty) * cos(tx)
        a = 1 + vib * sqrt(2) * sin(2 * pi * self.vib_hz * k / self._rate()) / G
        fmt = self.regs[DATA_FORMAT]
        lsb = LSB_G if fmt & FULL_RES else LSB_G * (1 << (fmt & 3))
        limit = 512 << (fmt & 3) if fmt & FULL_RES else 512
        data = self.regs
        for i, g in ((0, gx), (2, gy), (4, gz)):
            c = min(max(round(g * a / lsb), -limit), limit - 1) & 0xFFFF
            data[DATAX0 + i] = c & 0xFF
            data[DATAX0 + i + 1] = c >> 8

    def readfrom_mem_into(self, addr, reg, buf):
        if addr != self.addr:
            raise OSError(ENODEV)
        if self.regs[POWER_CTL] & MEASURE:
            if reg == FIFO_STATUS:
                self._fill()
                self.regs[FIFO_STATUS] = self._entries
            elif reg == DATAX0:
                self._fill()
                # a FIFO read pops the oldest level; an empty FIFO shows the newest sample
                k = self._due - self._entries if self._entries else max(self._due - 1, 0)
                self._entries = max(0, self._entries - 1)
                self._counts(k)
        buf[:] = self.regs[reg:reg + len(buf)]

    def readfrom_mem(self, addr, reg, n):
        buf = bytearray(n)
        self.readfrom_mem_into(addr, reg, buf)
        return bytes(buf)

    def writeto_mem(self, addr, reg, buf):
        if addr != self.addr:
            raise OSError(ENODEV)
        if reg != DEVID:
            self.regs[reg:reg + len(buf)] = buf
        if reg in (POWER_CTL, FIFO_CTL, BW_RATE):
            self._restart()


class _Stream:
    """machine.UART reading side: any() and read(n). Subclasses append what the device sends every
    `period_ms`; a reader that falls behind loses the oldest bytes, like an overflowing RX buffer."""

    def __init__(self, period_ms, clock, cap=1024):
        self.period_ms = period_ms
        self.clock = clock
        self.cap = cap
        self._out = bytearray()
        self._next = clock()

    def _pump(self):
        now = self.clock()
        if ticks_diff(now, self._next) >= 0:
            self._out += self.emit()
            self._next = ticks_add(now, self.period_ms)
            if len(self._out) > self.cap:
                self._out = self._out[-self.cap:]

    def any(self):
        self._pump()
        return len(self._out)

    def read(self, n=-1):
        self._pump()
        if not self._out:
            return None
        n = len(self._out) if n is None or n < 0 else n
        data = bytes(self._out[:n])
        self._out = self._out[n:]
        return data


def nmea_sentence(body):
    """'$' + body + '*' + XOR checksum (two upper-case hex digits) + CR LF."""
    c = 0
    for ch in body:
        c ^= ord(ch)
    return "$%s*%02X\r\n" % (body, c)


def _dm(value, deg_digits):
    """Decimal degrees to NMEA d(dd)mm.mmmmm, rounded in whole 1e-5 minutes so it never prints 60."""
    units = round(abs(value) * 6000000)
    deg, rem = divmod(units, 6000000)
    return ("%02d" if deg_digits == 2 else "%03d") % deg + "%02d.%05d" % (rem // 100000, rem % 100000)


class SimNMEA(_Stream):
    """A GNSS receiver's UART sending GGA and RMC once a period. position_fn() gives (lat, lon, alt) in
    degrees and m, or None for no fix; utc_fn() gives Unix time (default: the host clock)."""

    def __init__(self, position_fn, utc_fn=None, sats=9, hdop=0.9, period_ms=1000, clock=ticks_ms):
        super().__init__(period_ms, clock)
        self.position_fn = position_fn
        self.utc_fn = utc_fn or time
        self.sats = sats
        self.hdop = hdop

    def emit(self):
        t = self.utc_fn()
        y, mo, d, h, mi, s = gmtime(int(t))[:6]
        hms = "%02d%02d%02d.%02d" % (h, mi, s, int((t - int(t)) * 100))
        dmy = "%02d%02d%02d" % (d, mo, y % 100)
        pos = self.position_fn()
        if pos is None:
            gga = "GPGGA,%s,,,,,0,00,99.99,,,,,," % hms
            rmc = "GPRMC,%s,V,,,,,,,%s,,,N" % (hms, dmy)
        else:
            lat, lon, alt = pos
            where = "%s,%s,%s,%s" % (_dm(lat, 2), "S" if lat < 0 else "N", _dm(lon, 3), "W" if lon < 0 else "E")
            gga = "GPGGA,%s,%s,1,%02d,%.2f,%.1f,M,0.0,M,," % (hms, where, self.sats, self.hdop, alt)
            rmc = "GPRMC,%s,A,%s,0.00,,%s,,,A" % (hms, where, dmy)
        return (nmea_sentence(gga) + nmea_sentence(rmc)).encode()


class SimLevelUART(_Stream):
    """An A02YYUW-style sensor `mount_m` above the channel floor, sending a distance frame every
    period_ms for the stimulus level (m); level_fn() None sends nothing, like a lost echo."""

    def __init__(self, level_fn, mount_m, period_ms=100, clock=ticks_ms):
        super().__init__(period_ms, clock)
        self.level_fn = level_fn
        self.mount_m = mount_m

    def emit(self):
        level = self.level_fn()
        if level is None:
            return b""
        mm = min(max(round((self.mount_m - level) * 1000), 0), 0xFFFF)
        h, lo = mm >> 8, mm & 0xFF
        return bytes((0xFF, h, lo, (0xFF + h + lo) & 0xFF))


class SimPin:
    """machine.Pin: value() follows value_fn() when given (cover switch), else what was set; fire()
    runs the IRQ handler as a falling edge would (a rain gauge tip)."""

    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, value_fn=None, value=1):
        self.value_fn = value_fn
        self._value = value
        self._handler = None
        self.trigger = 0

    def value(self, v=None):
        if v is not None:
            self._value = v
            return None
        return self.value_fn() if self.value_fn else self._value

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        self._handler = handler
        self.trigger = trigger
        return self

    def fire(self, n=1):
        for _ in range(n):
            if self._handler:
                self._handler(self)
