"""Water level from a UART ultrasonic distance sensor looking down a drain or manhole.

Frames are the A02YYUW / DYP-A01 format (DFRobot SEN0311 wiki): 0xFF, distance high byte, distance
low byte, SUM = (0xFF + H + L) & 0xFF; distance in mm; 9600 baud 8N1, one frame every 100-300 ms."""

from micropython import const

from drivers import Driver, Fault

_HEADER = const(0xFF)


class UltrasonicLevel(Driver):
    """`uart` has any() and read(n) (machine.UART). `mount_m` is the height of the sensor face above
    the channel floor, so level = mount_m - distance. Distances outside min_mm..max_mm (the sensor's
    blind zone and range) are counted in `out_of_range` and not used."""

    def __init__(self, uart, mount_m, min_mm=30, max_mm=4500):
        self.uart = uart
        self.mount_m = mount_m
        self.min_mm = min_mm
        self.max_mm = max_mm
        self._frame = bytearray(4)
        self._n = 0
        self.distance_mm = None  # latest good distance, cleared by read()
        self.frames = 0
        self.bad_sum = 0
        self.skipped = 0  # bytes dropped while hunting for a header
        self.out_of_range = 0

    def poll(self):
        """Feeds whatever the UART holds; returns the number of good frames."""
        n = self.uart.any()
        return self.feed(self.uart.read(n)) if n else 0

    def feed(self, data):
        """Returns the number of good frames in this chunk; the last one sets distance_mm."""
        got = 0
        fr = self._frame
        for b in data or b"":
            n = self._n
            if not n and b != _HEADER:
                self.skipped += 1
                continue
            fr[n] = b
            n += 1
            if n == 4:
                n = 0
                if (fr[0] + fr[1] + fr[2]) & 0xFF == fr[3]:
                    got += self._distance(fr[1] << 8 | fr[2])
                else:
                    # a data byte may have been taken for the header: retry from the next 0xFF
                    self.bad_sum += 1
                    for k in (1, 2, 3):
                        if fr[k] == _HEADER:
                            n = 4 - k
                            fr[0:n] = fr[k:4]
                            break
                    self.skipped += 4 - n
            self._n = n
        return got

    def _distance(self, mm):
        if mm < self.min_mm or mm > self.max_mm:
            self.out_of_range += 1
            return 0
        self.distance_mm = mm
        self.frames += 1
        return 1

    def read(self):
        """Level in m from the newest frame since the last read; Fault("no-data") when none came,
        which is how a disconnected sensor or a lost echo shows."""
        self.poll()
        mm = self.distance_mm
        if mm is None:
            raise Fault("no-data")
        self.distance_mm = None
        return self.mount_m - mm / 1000


level = UltrasonicLevel  # the profile's driver name: the entry point drivers.make() looks up
