"""app/runtime.py's watched main loop (App.loop) run against a fake node: how often it feeds the watchdog, and
how often it tries the Wi-Fi again. Run from source at the node's heap (test_watchdog.py)."""

import asyncio
import time

from drivercheck import eq

from app import runtime


class Watchdog:
    """machine.WDT's feed(), keeping the longest the loop went without feeding it (ms) and the feeds."""

    def __init__(self):
        self.fed = time.ticks_ms()
        self.gap = 0
        self.feeds = 0

    def feed(self):
        now = time.ticks_ms()
        self.gap = max(self.gap, time.ticks_diff(now, self.fed))
        self.fed = now
        self.feeds += 1


class Offline:
    """A board whose access point is away: every join fails at once."""

    def __init__(self):
        self.joins = 0

    async def connect(self, secrets):
        self.joins += 1
        return False

    def online(self):
        return False


class Idle:
    """The publisher with nothing batched, and its empty queue; the link that is down."""

    def __init__(self):
        self.q = self

    def due(self, up):
        return False

    def __len__(self):
        return 0

    def isconnected(self):
        return False


class UpClock:
    epoch0_ms = 0

    def __init__(self):
        self.t0 = time.ticks_ms()

    def up_ms(self):
        return time.ticks_diff(time.ticks_ms(), self.t0)


class Node:
    """What App.loop reads of the app, with no sensors: every tick may feed."""

    loop = runtime.App.loop
    resend = runtime.App.resend

    def __init__(self, wdt_ms):
        self.wdt_ms = wdt_ms
        self.wdt = Watchdog()
        self.board = Offline()
        self.clock = UpClock()
        self.pub = self.mqtt = Idle()
        self.resend_at = [0, 30000, 30000]
        self.secrets = {}
        self.beats = {}
        self.trial = self.safe = False
        self.connected_at = None
        self.health_ms = 3600000


def _run(node, ms):
    try:
        asyncio.run(asyncio.wait_for_ms(node.loop(None), ms))
    except asyncio.TimeoutError:
        pass


def case_the_shortest_watchdog_is_fed_at_a_quarter_of_its_limit():
    """wdt_ms 1000, the least the config takes: fed once a 1 s tick, the loop went its whole limit unfed, and a
    tick's work (a flash write, a collection) more put it past. Counted in feeds, not held to the longest gap
    within a few ms: on a loaded test machine this process alone can be kept off the CPU for a third of a
    second (a 326 ms gap was seen), which says nothing of the loop."""
    node = Node(1000)
    _run(node, 5600)
    if node.wdt.feeds < 16 or node.wdt.gap >= 1000:
        raise AssertionError("fed %d times in 5.6 s, at most %d ms apart (wdt_ms 1000)" % (node.wdt.feeds,
                                                                                          node.wdt.gap))
    eq(node.board.joins, 2, "Wi-Fi tried at start and 5 s later, not at every tick")


def case_a_long_watchdog_keeps_the_one_second_tick():
    node = Node(30000)
    _run(node, 3500)
    eq(node.wdt.feeds, 3, "fed once a second")
