"""Sim backend for the unix port (hal.backend("sim")). The board's buses are proxies to the device models
of the world process (simworld.py here), so the real drivers run here while the models' code stays out of
the device's heap. Flash is the working directory. It lives in firmware/sim/, not in firmware/lib/hal/,
because a board never imports it and `lifeline flash` ships only firmware/lib.

The network is the world's "net" flag: a cut fails new connections and breaks open ones on their next
read or write, as a lost link does. Resets end the process -- exit code 3 for reset(), 4 for
deepsleep(), 5 for soft_reset(), SIGALRM from the watchdog -- and leave _MARK so the next start knows its
reset cause, whether the RTC kept time, the RTC memory and what woke it; a supervisor starts the process
again (docs/firmware.md). A deep sleep with a wake pin armed watches that pin in the world before it
exits, as a chip's RTC domain does while the rest sleeps.
"""

import _thread
import asyncio
import binascii
import json
import os
import socket
import sys
import time

from micropython import const, qstr_info

import persist

_EXIT_RESET = const(3)
_EXIT_DEEPSLEEP = const(4)
_EXIT_SOFT = const(5)
_MARK = const(".hal.json")
_NAMES_EVERY = const(50)  # polls between two prints of the interned-name pools (micropython.qstr_info)
_WATCH_MS = const(50)  # how often a deep sleep with a wake pin asks the world about that pin
_open_connection = asyncio.open_connection
_mark = {}  # the reset mark a Board took from flash: rst, rtc (time kept), mem (RTC memory, hex), pin (woke by it)


def soft_reset():
    """Start main.py over at once (exit 5), before any Board exists: the mark this start found is left
    for the next one, which so reports the reset cause, RTC and wake this start had."""
    sys.exit(_EXIT_SOFT)


def reset_cause():
    """The reset cause this start had, read before any Board exists (main.py counts crashes by it): the
    mark stays on flash until a Board takes it."""
    return (persist.load(_MARK) or _mark).get("rst", "power-on")


def _save(rst, ms=None, pin=False):
    m = persist.load(_MARK) or _mark  # no Board yet: what this start found is still on flash, and kept again
    mark = {"rst": rst, "rtc": m.get("rtc", False), "mem": m.get("mem", "")}
    if ms is not None:
        mark["ms"] = ms
    if pin:
        mark["pin"] = True
    persist.save(_MARK, mark)


def reset(rst="soft"):
    """Exit 3; the next start reports `rst` as its reset cause (main.py's reset after an error says "crash").
    A module function, so main.py can reset whether or not a Board was made."""
    _save(rst)
    sys.exit(_EXIT_RESET)


def deepsleep(ms, pin=False):
    """Exit 4; the supervisor starts the board again after `ms`. A module function, as reset() is."""
    _save("deepsleep", ms, pin)
    sys.exit(_EXIT_DEEPSLEEP)


class Bus:
    """machine.ADC / I2C / UART / Pin, as far as the drivers use them, forwarded to the world by method
    name (bytes travel as hex). No name a board's drivers do not use (each is one more the node interns, a
    board has machine's built in): I2C's address and register are `a` and `r` here."""

    IRQ_FALLING = 2

    def __init__(self, board, i):
        self.b, self.i = board, i
        self.handler = None

    def call(self, *args):
        return self.b.call(["bus", self.i] + list(args))

    def read_uv(self):
        return self.call("read_uv")

    def readfrom_mem(self, a, r, n):
        return binascii.unhexlify(self.call("readfrom_mem", a, r, n))

    def readfrom_mem_into(self, a, r, buf):
        buf[:] = self.readfrom_mem(a, r, len(buf))

    def writeto_mem(self, a, r, buf):
        self.call("writeto_mem", a, r, binascii.hexlify(buf).decode())

    def any(self):
        return self.call("any")

    def read(self, n=-1):
        d = self.call("read", 96 if n < 0 or n > 96 else n)  # a datagram's worth; the rest stays for later
        return None if d is None else binascii.unhexlify(d)

    def value(self):
        return self.call("value")

    def irq(self, handler=None, trigger=3):
        self.handler = handler
        self.b.pins.append(self)
        return self


class _Link:
    """One TCP connection that fails once the network has been cut since it opened."""

    def __init__(self, board, r, w):
        self.b, self.r, self.w, self.gen = board, r, w, board.cuts

    def _check(self):
        if self.gen != self.b.cuts:
            raise OSError(104)  # ECONNRESET

    async def readexactly(self, n):
        self._check()
        data = await self.r.readexactly(n)
        self._check()
        return data

    def write(self, data):
        if self.gen == self.b.cuts:  # like a socket's buffer: a dead link shows on drain()
            self.w.write(data)

    async def drain(self):
        self._check()
        await self.w.drain()

    def close(self):
        self.w.close()

    async def wait_closed(self):
        await self.w.wait_closed()


class Board:
    name = "sim"

    def __init__(self, device):
        self.device = device
        global _mark
        _mark = persist.load(_MARK) or {}
        try:
            os.remove(_MARK)
        except OSError:
            pass
        self._wake = None
        self.net = self.ntp_ok = True
        self.cuts = 0
        self.batt = None
        self.pins = []
        self._fed = None
        self._n = 0
        sim = persist.load("sim.json")
        self._peer = socket.getaddrinfo("127.0.0.1", sim["control_port"] + 1)[0][-1]
        self._s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._s.settimeout(0.5)
        self._idx = [s["name"] for s in persist.load("profile.json")["sensors"]]
        try:
            r = self.call(["load"], 1)
        except OSError:
            os.system("%s -m simworld >> .world.log 2>&1 &" % sys.executable)
            r = self.call(["load"], 20)
        self._flags(r)
        asyncio.open_connection = self._connect

    def call(self, req, tries=3):
        """One request to the world; replies are matched by number, so a late one is never taken
        for the answer to the next request."""
        self._n += 1
        data = json.dumps([self._n] + req).encode()
        for _ in range(tries):
            self._s.sendto(data, self._peer)
            try:
                while True:
                    r = json.loads(self._s.recv(256))
                    if r.get("n") == self._n:
                        break
            except OSError:
                continue
            if "e" in r:
                raise OSError(r["e"])
            return r.get("r", r)
        raise OSError(110)  # ETIMEDOUT: the world is gone

    def bus(self, sensor):
        return Bus(self, self._idx.index(sensor["name"]))

    def battery(self):
        return self.batt

    def wdt(self, ms):
        self._fed = [time.ticks_ms(), ms]
        _thread.start_new_thread(self._watchdog, ())
        return self

    def feed(self):
        self._fed[0] = time.ticks_ms()

    def _watchdog(self):
        fed = self._fed
        while True:
            time.sleep_ms(50)
            if time.ticks_diff(time.ticks_ms(), fed[0]) > fed[1]:
                _save("wdt")
                os.system("kill -ALRM $PPID")
                time.sleep(10)

    def services(self):
        return (self._poll(),)

    def _flags(self, r):
        if r["net"] != self.net:
            self.cuts += not r["net"]
            self.net = r["net"]
        self.ntp_ok = r["ntp"]
        self.batt = r["batt"]

    async def _poll(self):
        """Network flags, battery and pin edges from the world, ten times a second."""
        last = [0] * len(self.pins)
        k = 0
        while True:
            await asyncio.sleep_ms(100)
            k += 1
            if k % _NAMES_EVERY == 0:  # the name pools on the console, for the tests (they only grow)
                qstr_info()
            now = time.ticks_ms()
            ready = [i for i in range(len(self.pins)) if time.ticks_diff(now, last[i]) >= 250]
            try:
                r = self.call(["poll", [self.pins[i].i for i in ready]])
            except OSError:
                continue
            self._flags(r)
            for i in range(len(ready)):  # not k: the loop's own count above, reset to 0 here, never reached 50
                if r["edges"][i]:
                    last[ready[i]] = now
                    p = self.pins[ready[i]]
                    p.handler(p)
            if r["hang"]:
                while True:
                    time.sleep(1)

    # -- network ----------------------------------------------------------------------------------------

    async def connect(self, secrets, timeout_s=20):
        return self.net

    def online(self):
        return self.net

    def rssi(self):
        return -60 if self.net else None

    def ip(self):
        return "127.0.0.1" if self.net else None

    async def _connect(self, host, port, **kw):
        if not self.net:
            raise OSError(113)  # EHOSTUNREACH
        r, w = await _open_connection(host, port, **kw)
        link = _Link(self, r, w)
        return link, link

    # -- time -------------------------------------------------------------------------------------------

    def ntp(self, hosts):
        ok = self.net and self.ntp_ok
        if ok:
            _mark["rtc"] = True
        elif self.net:
            time.sleep(len(hosts))  # as ntptime on a board: each host waits out its socket's 1 s timeout
        return ok

    def rtc_valid(self):
        return _mark.get("rtc", False)

    def time(self):
        return time.time()

    # -- power ------------------------------------------------------------------------------------------

    def reset_cause(self):
        return _mark.get("rst", "power-on")

    def woke_by_pin(self):
        return _mark.get("pin", False)

    def rtc_ms(self):
        return time.time_ns() // 1000000

    def memory(self, data=None):
        if data is None:
            return binascii.unhexlify(_mark.get("mem", ""))  # gone only with the power
        _mark["mem"] = binascii.hexlify(data).decode()

    def wake_on(self, pin, level):
        self._wake = (pin.i, 1 if level else 0)

    def reset(self):
        reset()

    def deepsleep(self, ms):
        """Without a wake pin the process ends at once and the supervisor waits out ms. With one, the
        process watches the pin in the world for up to ms (no watchdog runs in deep sleep) and then
        ends, asking for no further wait; a hit ends the sleep early as a pin wake."""
        pin = False
        w = self._wake
        if w:
            if self._fed:
                self._fed[1] = 1 << 30
            t0 = time.ticks_ms()
            while not pin and time.ticks_diff(time.ticks_ms(), t0) < ms:
                time.sleep_ms(_WATCH_MS)
                try:
                    pin = self.call(["wake", w[0], w[1]])
                except OSError:
                    pass
            ms = 0
        qstr_info()
        deepsleep(ms, pin)

    def uid(self):
        return self.device["id"]
