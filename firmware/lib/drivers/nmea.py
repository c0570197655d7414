"""NMEA 0183 GGA and RMC sentences from a GNSS receiver's UART, fed in chunks of any size.

Only checksummed sentences count; a bad checksum, a sentence cut short (a new '$' before its end, an
over-long line, no '*hh') or fields that do not parse are dropped and counted by reason, and the
last good fix stays, until the receiver has sent nothing for _QUIET_MS. See docs/drivers.md for the fields used."""

from time import ticks_diff, ticks_ms

from micropython import const

from drivers import Driver

_LINE_MAX = const(100)  # NMEA 0183 caps a sentence at 82 characters; some receivers run over
_QUIET_MS = const(5000)  # no sentence for this long (several of a 1 Hz receiver's periods): it stopped answering


def _coord(text, h, s, limit):
    """ddmm.mmmm / dddmm.mmmm and its hemisphere letter `h` to signed decimal degrees, negative when `h` is
    `s` (S or W). Short argument names, no message: each name is one more a drone interns (docs/firmware.md)."""
    dot = text.find(b".")
    if dot < 0:
        dot = len(text)
    deg = int(text[:dot - 2])
    minutes = float(text[dot - 2:])
    if minutes >= 60 or deg > limit or h not in (b"N", b"S", b"E", b"W"):
        raise ValueError  # counted as malformed
    value = deg + minutes / 60
    return -value if h == s else value


class NMEA(Driver):
    """Position state from GGA (lat, lon, alt, fix, sats, hdop) and RMC (time, date, valid).
    `uart` (machine.UART: any(), read(n)) is only needed for poll()."""

    def __init__(self, uart=None):
        self.uart = uart
        self._buf = bytearray(_LINE_MAX)
        self._n = 0
        self.lat = self.lon = self.alt = self.hdop = None
        self.fix = 0
        self.sats = 0
        self.time = None  # (h, m, s) UTC from RMC
        self.date = None  # (y, m, d) from RMC
        self.valid = False
        self.sentences = 0
        self.ignored = 0
        self.bad_checksum = 0
        self.partial = 0
        self.malformed = 0
        self._last = ticks_ms()  # when the last sentence was accepted (named as clock.py's: no new name)

    def poll(self):
        """Feeds whatever the UART holds; returns the number of GGA/RMC sentences accepted."""
        n = self.uart.any()
        return self.feed(self.uart.read(n)) if n else 0

    def values(self):
        """The sampler's read: fix, and lat, lon (and alt) while there is a position. A receiver that stopped
        answering has no fix: its last one, sent on as current, put every reading where the drone had been."""
        self.poll()
        if ticks_diff(ticks_ms(), self._last) > _QUIET_MS:
            self.fix = 0
            self.lat = self.lon = self.alt = None
        out = [("fix", self.fix)]
        if self.lat is not None:
            out += [("lat", self.lat), ("lon", self.lon)]
            if self.alt is not None:
                out.append(("alt", self.alt))
        return out

    def feed(self, data):
        """Returns the number of GGA/RMC sentences accepted from this chunk."""
        got = 0
        buf = self._buf
        for b in data or b"":
            n = self._n
            if b == 0x24:  # '$' starts a sentence, even in the middle of a broken one
                if n:
                    self.partial += 1
                buf[0] = b
                self._n = 1
            elif not n:
                continue  # noise between sentences
            elif b == 0x0D or b == 0x0A:
                self._n = 0
                got += self._sentence(bytes(buf[:n]))
            elif n == len(buf):
                self.partial += 1
                self._n = 0
            else:
                buf[n] = b
                self._n = n + 1
        return got

    def _sentence(self, line):
        star = line.find(b"*")
        if star < 0 or len(line) != star + 3:
            self.partial += 1
            return 0
        check = 0
        for b in line[1:star]:
            check ^= b
        try:
            ok = int(line[star + 1:], 16) == check
        except ValueError:
            ok = False
        if not ok:
            self.bad_checksum += 1
            return 0
        f = line[1:star].split(b",")
        kind = f[0][2:]
        # GGA and RMC are read here rather than in a method each: every method name is one more a node
        # interns (docs/firmware.md, Memory). Every field is parsed before any is stored, so a bad one
        # leaves the last fix whole.
        try:
            if kind == b"GGA":
                fix = int(f[6])
                if fix and f[2]:
                    lat, lon = _coord(f[2], f[3], b"S", 90), _coord(f[4], f[5], b"W", 180)
                    alt = float(f[9]) if f[9] else None
                else:
                    lat = lon = alt = None
                sats = int(f[7]) if f[7] else 0
                hdop = float(f[8]) if f[8] else None
                self.fix, self.sats, self.hdop = fix, sats, hdop
                self.lat, self.lon, self.alt = lat, lon, alt
            elif kind == b"RMC":
                t, d = f[1], f[9]
                time = (int(t[0:2]), int(t[2:4]), float(t[4:])) if t else None
                date = (2000 + int(d[4:6]), int(d[2:4]), int(d[0:2])) if d else None
                # NMEA 2.3 adds a mode field; N (data not valid) overrides an A status
                valid = f[2] == b"A" and not (len(f) > 12 and f[12][:1] == b"N")
                if valid:
                    self.lat, self.lon = _coord(f[3], f[4], b"S", 90), _coord(f[5], f[6], b"W", 180)
                self.time, self.date, self.valid = time, date, valid
            else:
                self.ignored += 1
                return 0
        except (ValueError, IndexError):
            self.malformed += 1
            return 0
        self.sentences += 1
        self._last = ticks_ms()
        return 1

    def unix_time(self):
        """UTC seconds since 1970 from the last RMC, or None before one with time and date."""
        if self.time is None or self.date is None:
            return None
        h, mi, s = self.time
        # Days since 1970-01-01 of a proleptic Gregorian date: H. Hinnant's days_from_civil, inline (as a
        # function of its own, its name and arguments would be names the drone interns; docs/firmware.md, Memory)
        y, m, d = self.date
        y -= m <= 2
        era = y // 400
        yoe = y - era * 400
        doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
        days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
        return days * 86400 + h * 3600 + mi * 60 + s


nmea = NMEA  # the profile's driver name: the entry point drivers.make() looks up
