"""Battery profiles: each wake samples every sensor once, seals the pack into the flash queue, sends
what the queue holds and runs the commands the broker kept while it slept (for at most awake_s), and
deep-sleeps again; the queue stays in flash. Filter and pre-alarm state is kept in sleep.json between
wakes, so deadband and heartbeat work across sleeps once the clock is on the epoch (an RTC keeps it
through deep sleep). While a pre-alarm level is crossed the node wakes every fast_s instead of wake_s.

The profile's first rain gauge or cover switch also wakes the node from its sleep (board.wake_on; EXT0
on an ESP32). A cover wakes it when the switch leaves the state it was sampled in, so "cover-open" (and
its clear) goes out at once rather than at the next timed wake. A rain gauge wakes it on every tip: the
tip is counted and, unless the report is due, the node goes straight back to sleep for the rest of the
interval, before any sampling, sealing or connecting. What the rain figures need across sleeps -- the
tips not yet reported, when their interval began, the last tip (for the debounce), when the report is
due -- is kept in RTC memory (board.memory) as RTC milliseconds (board.rtc_ms, which runs through deep
sleep), written once before each sleep; none of it goes to flash. Power loss forgets it.

Where the gateway confirms what it has committed (flashq's hold), a wake that has sent everything waits up to
_CONFIRM_MS for the confirmation; without it the node sleeps keeping the records, and the next wake sends them
again (deep sleep forgets what was sent; the gateway drops the repeats)."""

import asyncio
import struct
import time

from micropython import const

import persist
from app import watchdog

_SLEEP = const("sleep.json")
_KEEP = const("<HHqqq")  # magic, tips not yet taken, interval start, last tip (-1: none), report due
_MAGIC = const(0x7A1D)
_SLACK_MS = const(1000)  # a tip this close to the report makes the report now
_RELEASE_MS = const(500)  # how long a wake waits for the bucket's switch to open again
_CONFIRM_MS = const(2000)  # a commit and its confirmation take tens of ms at a site


def _sleep(app, ms, s, level):
    """Arm the wake pin of sensor `s` (None: the timer only) at `level`, keep the rain figures, and
    deep-sleep `ms`; does not return."""
    board = app.board
    if s is not None and s.kind == "rain":
        pin = s.drv.pin
        t0 = time.ticks_ms()
        while not pin.value() and time.ticks_diff(time.ticks_ms(), t0) < _RELEASE_MS:
            time.sleep_ms(20)
        n, since, tip = s.drv.kept()
        now = board.rtc_ms()
        board.memory(struct.pack(_KEEP, _MAGIC, n, now - since, now - tip if tip >= 0 else -1, now + ms))
        if not pin.value():
            s = None  # a switch stuck closed would wake the chip again at once: the timer only, this time
    if s is not None:
        try:
            board.wake_on(s.drv.pin, level)
        except ValueError as e:  # not a pin that can wake the chip (ESP32: an RTC GPIO): the timer only
            print("sleeper: no wake on %s: %s" % (s.name, e))
    watchdog.stable(app.st)
    board.deepsleep(ms)


def _tip(app, s):
    """After a deep sleep, give the rain gauge back what it had; on a tip's wake, count the tip and
    sleep again unless the report is due."""
    board = app.board
    kept = board.memory()
    if len(kept) != struct.calcsize(_KEEP):
        return
    magic, n, since, tip, due = struct.unpack(_KEEP, kept)
    if magic != _MAGIC:
        return
    now = board.rtc_ms()
    s.drv.resume(n, now - since, now - tip if tip >= 0 else -1)
    if board.woke_by_pin():
        s.drv.tip()
        if due - now > _SLACK_MS:
            _sleep(app, due - now, s, 0)


async def cycle(app):
    sl = app.sleep
    clock = app.clock
    wake_s = None
    for s in app.sensors:
        if s.kind in ("rain", "cover") and s.drv is not None:
            wake_s = s
            break
    if wake_s is not None and wake_s.kind == "rain" and app.rst == "deepsleep":
        _tip(app, wake_s)
    saved = persist.load(_SLEEP) or {}
    # The lowest free heap the wake before reached after its birth, where its commands ran: this wake's
    # birth reports it.
    app.heapmin = saved.get("heapmin")
    if clock.clk:
        saved = {}  # filter times on the boot clock of a wake long gone
    for s in app.sensors:
        for name in s.metrics:
            m = s.metrics[name]
            v = saved.get(name)
            if v:
                m.filter.last, m.filter.sent_at = v[0], v[1]
                if m.level:
                    m.level.active = v[2]
    level = 0  # a tip closes the gauge's switch to ground
    for s in app.sensors:
        tries = 30  # buffered buses (UART) need a moment after power-up for their first frame
        while not s.sample() and s.drv is not None and tries:
            tries -= 1
            await asyncio.sleep_ms(100)
            app.wdt.feed()  # 3 s of tries outlast a short watchdog (wdt_ms may be 1000)
        if s is wake_s and s.kind == "cover":
            level = 1 - s.drv.pin.value()  # wake when the switch leaves the state just sampled
        app.wdt.feed()
    app.pub.flush()
    asyncio.create_task(app.pub.run())
    # Wi-Fi is joined in a task, the watchdog fed while it runs: the backend waits up to 20 s for the access
    # point, and awaited unfed that reset a node whose wdt_ms is shorter at every wake without Wi-Fi.
    link = asyncio.create_task(app.board.connect(app.secrets))
    while not link.done():
        await asyncio.sleep_ms(100)
        app.wdt.feed()
    app.mqtt.start()
    t0 = clock.up_ms()
    q = app.pub.q
    idle = None  # since when everything is sent and only confirmations are awaited
    # Connected means subscribed and born: commands the broker kept for this session came before that.
    while clock.up_ms() - t0 < sl.get("awake_s", 30) * 1000:
        if not app.mqtt.isconnected() or app.inbox or (q.waiting() if q.hold else len(q)):
            idle = None
        elif not len(q):
            break
        elif idle is None:
            idle = clock.up_ms()
        elif clock.up_ms() - idle > _CONFIRM_MS:
            break
        await asyncio.sleep_ms(100)
        app.wdt.feed()
    keep = {}
    for s in app.sensors:
        for name in s.metrics:
            m = s.metrics[name]
            keep[name] = [m.filter.last, m.filter.sent_at, m.level.active if m.level else False]
    keep["heapmin"] = app.heapmin
    persist.save(_SLEEP, keep)
    # The DISCONNECT waits up to the client's ack timeout (5 s) for a stalled socket: fed meanwhile, as the join.
    link = asyncio.create_task(app.mqtt.disconnect())
    while not link.done():
        await asyncio.sleep_ms(100)
        app.wdt.feed()
    wake = sl["wake_s"]
    for s in app.sensors:
        if s.alarm and s.fast_ms:
            wake = min(wake, s.fast_ms / 1000)
    _sleep(app, max(1000, int(wake * 1000) - clock.up_ms()), wake_s, level)
