"""Ultrasonic level: A02YYUW frames with garbage, corrupt frames and look-alike headers between them;
level from mounting height; SimLevelUART round trip."""

from drivercheck import Clock, eq, fault, near
from simdev import SimLevelUART

from drivers import make
from drivers.level import UltrasonicLevel

F1953 = b"\xff\x07\xa1\xa7"  # 1953 mm: the frame in the DFRobot SEN0311 protocol description
F800 = b"\xff\x03\x20\x22"   # 800 mm
F511 = b"\xff\x01\xff\xff"   # 511 mm: low byte and SUM look like headers


def case_level_frames_with_garbage_between():
    stream = b"\x13\x37" + F1953 + b"\x12\x34" + F800 + F511 + b"\xff" + F1953 + b"\xff\x07\xa1\x00" + F800
    sensor = UltrasonicLevel(None, mount_m=3.0)
    eq(sensor.feed(stream), 5, "good frames")
    eq(sensor.distance_mm, 800, "newest distance")
    eq(sensor.bad_sum, 2, "bad sums")
    eq(sensor.skipped, 9, "bytes skipped")
    for size in (1, 2, 3, 5):
        chunked = UltrasonicLevel(None, mount_m=3.0)
        got = 0
        for i in range(0, len(stream), size):
            got += chunked.feed(stream[i:i + size])
        eq((got, chunked.bad_sum, chunked.skipped), (5, 2, 9), "chunks of %d" % size)
    sensor.feed(F1953)
    eq(sensor.feed(F511), 1, "511")
    eq(sensor.distance_mm, 511, "511 mm")


def case_level_is_mount_height_minus_distance():
    sensor = UltrasonicLevel(None, mount_m=3.0)
    sensor.uart = SimLevelUART(lambda: None, 3.0)  # read() polls; this one stays silent
    sensor.feed(F1953)
    near(sensor.read(), 3.0 - 1.953, 1e-9, "level")
    fault(sensor.read, "no-data")
    sensor.feed(b"\xff\x00\x14\x13" + b"\xff\x13\x88\x9a")  # 20 mm (blind zone), 5000 mm (beyond range)
    eq(sensor.out_of_range, 2, "out of range")
    fault(sensor.read, "no-data")


def case_level_sim_round_trip():
    clock = Clock()
    level = [1.25]
    sensor = UltrasonicLevel(SimLevelUART(lambda: level[0], mount_m=2.5, clock=clock), mount_m=2.5)
    near(sensor.read(), 1.25, 0.0011, "sim level")
    level[0] = 0.042
    clock.t += 100
    near(sensor.read(), 0.042, 0.0011, "sim low level")
    level[0] = None
    clock.t += 100
    fault(sensor.read, "no-data")
    eq((sensor.bad_sum, sensor.skipped), (0, 0), "clean stream")


def case_level_made_by_profile_name():
    clock = Clock()
    sensor = make("level", SimLevelUART(lambda: 1.25, mount_m=2.5, clock=clock), {"mount_m": 2.5})
    eq(type(sensor) is UltrasonicLevel, True, "an UltrasonicLevel")
    eq(sensor.poll(), 1, "a frame polled")
    (name, v), = sensor.values()
    eq(name, None, "the profile's metric")
    near(v, 1.25, 0.0011, "level")
    fault(sensor.values, "no-data")
