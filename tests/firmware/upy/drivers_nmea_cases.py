"""NMEA 0183: real GGA/RMC/GSV sentences with their checksums, in any chunking, with bad checksums,
cut sentences and checksummed junk; a SimNMEA round trip."""

import time

from drivercheck import Clock, eq, near
from simdev import SimNMEA

from drivers import make
from drivers.nmea import NMEA

GGA = b"$GNGGA,102133.00,5231.12345,N,01324.56789,E,1,12,0.78,48.3,M,44.6,M,,*70\r\n"
RMC = b"$GNRMC,102133.00,A,5231.12345,N,01324.56789,E,0.052,,170524,,,A*6B\r\n"
GSV = b"$GPGSV,3,1,11,02,17,308,31,05,42,071,44,11,07,287,,12,62,225,45*7A\r\n"
GGA_NOFIX = b"$GNGGA,102134.00,,,,,0,00,99.99,,,,,,*7D\r\n"
RMC_NOFIX = b"$GNRMC,102134.00,V,,,,,,,170524,,,N*63\r\n"
GGA_SW = b"$GPGGA,183012.00,3436.18250,S,05822.70130,W,2,09,1.10,25.6,M,14.2,M,,0000*62\r\n"
RMC_SW = b"$GPRMC,183012.00,A,3436.18250,S,05822.70130,W,12.418,271.30,311223,,,D*50\r\n"
GGA_MOVED_BAD_SUM = b"$GNGGA,102135.00,5231.12400,N,01324.56800,E,1,12,0.78,48.4,M,44.6,M,,*78\r\n"
GGA_JUNK_FIELDS = b"$GPGGA,abcdef,5231.1,N,01324.5,E,1,xx,0.9,1.0,M,0,M,,*66\r\n"
BERLIN = (52 + 31.12345 / 60, 13 + 24.56789 / 60)


def check_berlin(gps):
    near(gps.lat, BERLIN[0], 1e-9, "lat")
    near(gps.lon, BERLIN[1], 1e-9, "lon")
    near(gps.alt, 48.3, 1e-9, "alt")
    eq((gps.fix, gps.sats, gps.valid), (1, 12, True), "fix, sats, valid")
    near(gps.hdop, 0.78, 1e-9, "hdop")
    eq(gps.date, (2024, 5, 17), "date")
    eq(gps.time, (10, 21, 33.0), "time")
    eq(gps.unix_time(), 1715941293, "unix time")


def case_nmea_gga_and_rmc():
    gps = NMEA()
    eq(gps.unix_time(), None, "no time yet")
    eq(gps.feed(GSV + GGA + RMC), 2, "accepted")
    check_berlin(gps)
    eq((gps.sentences, gps.ignored, gps.bad_checksum, gps.partial, gps.malformed), (2, 1, 0, 0, 0), "counts")


def case_nmea_any_chunking():
    stream = b"\x00\xff" + GGA + GSV + RMC
    for size in (1, 2, 3, 5, 7, 64):
        gps = NMEA()
        got = 0
        for i in range(0, len(stream), size):
            got += gps.feed(stream[i:i + size])
        eq(got, 2, "chunks of %d" % size)
        check_berlin(gps)
    gps = NMEA()  # CR and LF in separate chunks, sentence split mid-checksum
    eq(gps.feed(GGA[:-4]) + gps.feed(GGA[-4:-1]) + gps.feed(GGA[-1:]), 1, "split checksum")
    eq(gps.partial, 0, "no partial")


def case_nmea_bad_checksum_keeps_last_fix():
    gps = NMEA()
    gps.feed(GGA + RMC)
    eq(gps.feed(GGA_MOVED_BAD_SUM), 0, "bad checksum rejected")
    eq(gps.bad_checksum, 1, "counted")
    check_berlin(gps)


def case_nmea_partial_sentences_are_dropped():
    gps = NMEA()
    # receiver reset mid-sentence, then a whole RMC
    eq(gps.feed(b"$GNGGA,102133.00,5231.1" + RMC), 1, "RMC after cut GGA")
    eq(gps.partial, 1, "cut sentence")
    eq(gps.feed(b"$GNGGA,no checksum here\r\n"), 0, "no checksum")
    eq(gps.feed(b"$" + b"9" * 300 + b"\r\n"), 0, "over-long line")
    eq(gps.partial, 3, "all partial")
    eq(gps.feed(GGA), 1, "recovers")
    check_berlin(gps)


def case_nmea_checksummed_junk_is_malformed():
    gps = NMEA()
    eq(gps.feed(GGA_JUNK_FIELDS), 0, "junk")
    eq((gps.malformed, gps.lat), (1, None), "counted, no position")
    gps.feed(GGA + RMC + GGA_JUNK_FIELDS)
    eq(gps.malformed, 2, "counted again")
    check_berlin(gps)  # the good fix is left whole


def case_nmea_lost_fix_and_southern_western_hemispheres():
    gps = NMEA()
    gps.feed(GGA + RMC + GGA_NOFIX + RMC_NOFIX)
    eq((gps.fix, gps.lat, gps.lon, gps.alt, gps.valid), (0, None, None, None, False), "no fix")
    eq(gps.time, (10, 21, 34.0), "time still known")
    gps.feed(GGA_SW + RMC_SW)
    near(gps.lat, -(34 + 36.1825 / 60), 1e-9, "south")
    near(gps.lon, -(58 + 22.70130 / 60), 1e-9, "west")
    eq((gps.fix, gps.valid, gps.date), (2, True, (2023, 12, 31)), "DGPS fix")
    eq(gps.unix_time(), 1704047412, "unix time")


def case_nmea_sim_round_trip():
    clock = Clock()
    pos = [(48.858370, 2.294481, 35.0)]
    uart = SimNMEA(lambda: pos[0], utc_fn=lambda: 1715941293.5, clock=clock)
    gps = NMEA(uart)
    eq(gps.poll(), 2, "GGA and RMC")
    near(gps.lat, 48.858370, 1e-6, "sim lat")
    near(gps.lon, 2.294481, 1e-6, "sim lon")
    near(gps.alt, 35.0, 1e-9, "sim alt")
    eq((gps.fix, gps.valid, gps.bad_checksum), (1, True, 0), "sim fix")
    near(gps.unix_time(), 1715941293.5, 1e-6, "sim time")
    eq(gps.poll(), 0, "nothing before the next second")
    pos[0] = (-33.856784, 151.215297, 3.0)
    clock.t += 1000
    data = uart.read(7)
    while data:
        gps.feed(data)
        data = uart.read(7)
    near(gps.lat, -33.856784, 1e-6, "sim south")
    near(gps.lon, 151.215297, 1e-6, "sim east")
    pos[0] = None
    clock.t += 1000
    gps.poll()
    eq((gps.fix, gps.lat, gps.valid, gps.sentences), (0, None, False, 6), "sim lost fix")


def case_nmea_made_by_profile_name_gives_fix_and_position():
    clock = Clock()
    pos = [(48.858370, 2.294481, 35.0)]
    gps = make("nmea", SimNMEA(lambda: pos[0], utc_fn=lambda: 1715941293.5, clock=clock), {})
    eq(type(gps) is NMEA, True, "an NMEA")
    got = gps.values()
    eq([n for n, _ in got], ["fix", "lat", "lon", "alt"], "metric names")
    eq(got[0][1], 1, "fix")
    near(got[1][1], 48.858370, 1e-6, "lat")
    pos[0] = None
    clock.t += 1000
    eq(gps.poll(), 2, "poll feeds the UART")
    eq(gps.values(), [("fix", 0)], "no position without a fix")


def case_nmea_a_receiver_that_stops_answering_has_no_fix():
    """A receiver gone silent (unplugged, dead, its UART cut) kept its last fix: every drone pack went on
    carrying that position with fix 1, as if current, and the gateway attributed the readings to where the
    drone had been. Past _QUIET_MS without a sentence its fix is gone, as a GGA without fix says it."""
    clock = Clock()
    pos = [(48.858370, 2.294481, 35.0)]
    gps = NMEA(SimNMEA(lambda: pos[0], utc_fn=lambda: 1715941293.5, clock=clock))
    eq(gps.values()[0], ("fix", 1), "a fix while it answers")
    time.sleep_ms(1500)  # a sample between two sentences is no silence
    eq(gps.values()[0], ("fix", 1), "one quiet second")
    time.sleep_ms(4000)  # the model's clock stands still: it sends nothing more
    eq(gps.values(), [("fix", 0)], "no position once it stopped answering")
    clock.t += 1000
    eq(gps.values()[0], ("fix", 1), "a fix again once it answers")
