"""ADXL345: register dumps read off a board (flat, tilted 30 degrees both ways, upside down), init
register writes, an allocation-free sampling loop, and a SimADXL345 round trip."""

import gc
from math import pi

import micropython
from drivercheck import Clock, eq, fault, near
from simdev import SimADXL345

from drivers import make
from drivers.adxl345 import ADXL345

DEG = pi / 180


def unhex(text):
    return bytes(int(h, 16) for h in text.split())


class DumpI2C:
    """An I2C bus with one ADXL345 whose registers hold a recorded dump; logs writes."""

    def __init__(self, data, devid=0xE5, entries=0, addr=0x53):
        self.regs = bytearray(0x40)
        self.regs[0x00] = devid
        self.regs[0x32:0x38] = data
        self.regs[0x39] = entries
        self.addr = addr
        self.writes = []

    def readfrom_mem_into(self, addr, reg, buf):
        if addr != self.addr:
            raise OSError(19)
        i = 0
        n = len(buf)
        while i < n:
            buf[i] = self.regs[reg + i]
            i += 1

    def readfrom_mem(self, addr, reg, n):
        buf = bytearray(n)
        self.readfrom_mem_into(addr, reg, buf)
        return bytes(buf)

    def writeto_mem(self, addr, reg, buf):
        self.writes.append((reg, bytes(buf)))
        self.regs[reg:reg + len(buf)] = buf


# DATAX0..DATAZ1 as read from a board in full resolution (~256 LSB/g): small zero-g offsets included
FLAT = "FD FF 04 00 01 01"            # x -3, y 4, z 257
ROLL_30 = "02 00 80 00 DE 00"         # Y end raised 30 deg: y 128 = sin 30 g, z 222 = cos 30 g
PITCH_30 = "80 00 FE FF DE 00"        # X end raised 30 deg
UPSIDE_DOWN = "01 00 FE FF 01 FF"     # x 1, y -2, z -255


def case_accel_init_programs_the_datasheet_registers():
    bus = DumpI2C(unhex(FLAT))
    ADXL345(bus, g_range=16, rate_hz=100)
    # standby, full resolution +-16 g, 100 Hz, FIFO stream, then measure
    eq(bus.writes, [(0x2D, b"\x00"), (0x31, b"\x0b"), (0x2C, b"\x0a"), (0x38, b"\x80"), (0x2D, b"\x08")],
       "init writes")
    bus = DumpI2C(unhex(FLAT))
    ADXL345(bus, g_range=2, rate_hz=400)
    eq(bus.writes[1:3], [(0x31, b"\x08"), (0x2C, b"\x0c")], "2 g at 400 Hz")


def case_accel_checks_device_id():
    e = fault(lambda: ADXL345(DumpI2C(unhex(FLAT), devid=0xE6)), "devid")
    eq(e.value, 0xE6, "devid value")
    fault(lambda: ADXL345(DumpI2C(unhex(FLAT)), addr=0x1D), "no-device")


def case_accel_register_dumps_to_m_s2_and_tilt():
    acc = ADXL345(DumpI2C(unhex(FLAT)))
    eq(acc.read_raw(), (-3, 4, 257), "flat raw")
    x, _, z = acc.read()
    near(z, 257 * 0.0039 * 9.80665, 1e-9, "flat z m/s2")
    near(z, 9.81, 0.1, "flat z near 1 g")
    near(x, -3 * 0.0039 * 9.80665, 1e-9, "flat x")
    expect = {FLAT: (0.0, 0.0), ROLL_30: (0.0, 30.0), PITCH_30: (30.0, 0.0)}
    for dump, (want_x, want_y) in expect.items():
        bus = DumpI2C(unhex(dump), entries=10)
        acc = ADXL345(bus)
        eq(acc.drain(), 10, "entries drained")
        tx, ty, rms, peak = acc.summary()
        near(tx / DEG, want_x, 1.5, dump + " tilt_x")
        near(ty / DEG, want_y, 1.5, dump + " tilt_y")
        eq((rms, peak), (0.0, 0.0), "steady dump has no vibration")
    acc = ADXL345(DumpI2C(unhex(UPSIDE_DOWN), entries=4))
    near(acc.read()[2], -9.75, 0.1, "upside down z")
    acc.drain()
    tx, ty, _, _ = acc.summary()
    near(tx / DEG, 0.0, 1.5, "upside down tilt_x")
    near(abs(ty) / DEG, 180.0, 1.5, "upside down rolls over")
    fault(acc.summary, "no-samples")


def _drain_many(acc, times):
    i = 0
    while i < times:
        acc.drain()
        i += 1


def case_accel_sampling_loop_allocates_nothing():
    acc = ADXL345(DumpI2C(unhex(ROLL_30), entries=32), window=64)
    acc.drain()
    gc.collect()
    micropython.heap_lock()
    try:
        _drain_many(acc, 50)  # 1600 samples through the ring
    finally:
        micropython.heap_unlock()
    eq(acc.n, 64, "window full")
    eq(acc.overruns, 51, "a full FIFO each time")


def case_accel_sim_round_trip_tilt_and_vibration():
    clock = Clock(1000)
    sim = SimADXL345(tilt_x=lambda: 0.10, tilt_y=lambda: -0.20, vib=lambda: 0.5, vib_hz=5.0, clock=clock)
    acc = ADXL345(sim, rate_hz=100, window=100)
    got = 0
    for step in (300, 300, 300, 100):  # 100 samples at 100 Hz: five whole 5 Hz periods
        clock.t += step
        got += acc.drain()
    eq(got, 100, "samples")
    eq(acc.overruns, 0, "overruns")
    tx, ty, rms, peak = acc.summary()
    near(tx, 0.10, 0.01, "sim tilt_x")
    near(ty, -0.20, 0.01, "sim tilt_y")
    near(rms, 0.5, 0.03, "sim vib rms")
    near(peak, 0.5 * 2 ** 0.5, 0.05, "sim vib peak")
    clock.t += 1000
    eq(acc.drain(), 32, "FIFO holds 32")
    eq(acc.overruns, 1, "overrun counted")
    fault(lambda: ADXL345(SimADXL345(addr=0x1D)), "no-device")


def case_accel_made_by_profile_name_polls_and_summarises():
    clock = Clock(1000)
    acc = make("adxl345", SimADXL345(tilt_x=lambda: 0.10, tilt_y=lambda: -0.20, vib=lambda: 0.0, clock=clock),
               {"rate_hz": 100, "window": 100})
    eq(type(acc) is ADXL345, True, "an ADXL345")
    clock.t += 300
    eq(acc.poll(), 30, "poll drains the FIFO")
    clock.t += 200
    got = acc.values()
    eq([n for n, _ in got], ["tilt_x", "tilt_y", "vib_rms", "vib_peak"], "metric names")
    near(got[0][1], 0.10, 0.01, "tilt_x")
    near(got[1][1], -0.20, 0.01, "tilt_y")
    eq(acc.n, 0, "a new window")
    fault(acc.values, "no-samples")
