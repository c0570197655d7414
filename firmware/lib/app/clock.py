"""Device time. Readings are stamped with milliseconds since boot (an int, exact on boards with
single-precision floats, and safe across ticks_ms wrap-around). Until NTP, or an RTC that kept time
through deep sleep, gives the real time, packs carry seconds since this boot and say clk=1; once the
time is known, every stamp not yet sealed into a message is moved onto the epoch at packing time."""

import time

from protocol import message


class Clock:
    def __init__(self, board):
        self.board = board
        self._last = time.ticks_ms()
        self._up = 0
        self.epoch0_ms = None  # epoch milliseconds at boot, once known
        if board.rtc_valid():
            self._anchor()

    def _anchor(self):
        """Epoch ms at boot, to the ms: board.time() is whole seconds on an ESP32, so the ms come from
        rtc_ms(), the same clock a whole number of seconds away; read between two RTC reads within one
        second, the seconds between the two clocks are exact."""
        b = self.board
        while True:
            r = b.rtc_ms()
            s = int(b.time())
            now = b.rtc_ms()
            if r // 1000 == now // 1000:
                break
        self.epoch0_ms = now + (s - now // 1000) * 1000 - self.up_ms()

    def up_ms(self):
        """Milliseconds since boot; must be called more often than every 6 days (ticks wrap)."""
        now = time.ticks_ms()
        self._up += time.ticks_diff(now, self._last)
        self._last = now
        return self._up

    @property
    def clk(self):
        return message.CLK_BOOT if self.epoch0_ms is None else message.CLK_EPOCH

    def ms(self, up):
        """A boot stamp on the current clock (epoch ms once synced)."""
        return up if self.epoch0_ms is None else self.epoch0_ms + up

    def now(self):
        """Whole seconds on the current clock."""
        return self.ms(self.up_ms()) // 1000

    def sync(self, hosts):
        """Ask NTP, the first of `hosts` only, which goes to the end if it gives no answer; True when the time is
        known afterwards. Each host can block a board's loop, unfed (ntptime's DNS lookup, then its 1 s timeout):
        every host asked in turn outlasted the watchdog, and a node whose NTP servers were away was reset at every
        connect, into safe mode (tests/firmware/test_watchdog.py)."""
        if hosts:
            if self.board.ntp(hosts[:1]):
                self._anchor()
            else:
                hosts.append(hosts.pop(0))
        return self.epoch0_ms is not None
