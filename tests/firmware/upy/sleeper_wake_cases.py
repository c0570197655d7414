"""app/sleeper.py's whole wake (sleeper.cycle) against a fake app whose MQTT client is the firmware's own over
a fake socket: what the end of a wake does with the watchdog. Run in a scratch directory (the wake writes
sleep.json and state.json)."""

import asyncio
import time

from drivercheck import eq

from app import sleeper
from mqtt import MQTTClient


class Slept(Exception):
    pass


class Watchdog:
    """machine.WDT's feed(), keeping the longest the app went without feeding it (ms)."""

    def __init__(self):
        self.fed = time.ticks_ms()
        self.gap = 0

    def feed(self):
        now = time.ticks_ms()
        self.gap = max(self.gap, time.ticks_diff(now, self.fed))
        self.fed = now


class StalledSocket:
    """A link whose peer has stopped reading: what is written stays in a full buffer and drain() never ends."""

    out_buf = b"\xe0\x00"

    def write(self, data):
        pass

    async def drain(self):
        await asyncio.sleep(3600)

    def close(self):
        pass

    async def wait_closed(self):
        pass


class StalledLink(MQTTClient):
    """The node's MQTT client, connected over a StalledSocket, with nothing left to send."""

    def __init__(self):
        super().__init__("dev", "127.0.0.1")
        self._w = StalledSocket()

    def start(self):
        pass

    def isconnected(self):
        return True


class Sealed:
    """The publisher of a wake that has sent everything: an empty queue, confirmations off."""

    hold = False

    def __init__(self):
        self.q = self

    def __len__(self):
        return 0

    def flush(self):
        pass

    async def run(self):
        await asyncio.sleep(3600)


class WakeBoard:
    """The board of a wake: Wi-Fi joins at once; its deep sleep stops the watchdog (its last gap counted)."""

    def __init__(self, dog):
        self.dog = dog
        self.slept = None

    async def connect(self, secrets):
        return True

    def deepsleep(self, ms):
        self.dog.feed()
        self.slept = ms
        raise Slept()


class UpClock:
    clk = 0

    def __init__(self):
        self.t0 = time.ticks_ms()

    def up_ms(self):
        return time.ticks_diff(time.ticks_ms(), self.t0)


class Wake:
    """What sleeper.cycle reads of the app, for a wake with no sensors."""

    def __init__(self):
        self.wdt = Watchdog()
        self.board = WakeBoard(self.wdt)
        self.st = {"boot": 1, "crash": 1}
        self.sleep = {"wake_s": 60, "awake_s": 5}
        self.rst = "deepsleep"
        self.clock = UpClock()
        self.sensors = []
        self.secrets = {}
        self.inbox = []
        self.heapmin = None
        self.pub = Sealed()
        self.mqtt = StalledLink()


def case_a_stalled_link_at_the_disconnect_does_not_starve_the_watchdog():
    """The wake's MQTT disconnect waits up to its ack timeout (5 s) for a stalled socket to take the DISCONNECT;
    awaited unfed, that outlasted a watchdog shorter than it (wdt_ms may be 1000) and reset the node at the end
    of the wake instead of letting it sleep."""
    app = Wake()
    try:
        asyncio.run(sleeper.cycle(app))
    except Slept:
        pass
    eq(app.board.slept is not None, True, "the wake ended in its deep sleep")
    eq(app.mqtt._run, False, "the client was told to stop")
    if app.wdt.gap > 500:
        raise AssertionError("the watchdog went %d ms unfed" % app.wdt.gap)
