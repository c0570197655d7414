"""Battery profiles: each wake samples every sensor once, seals the pack into the flash queue, sends
what the queue holds (for at most awake_s), and deep-sleeps again; the queue stays in flash. Filter
and pre-alarm state is kept in sleep.json between wakes, so deadband and heartbeat work across
sleeps once the clock is on the epoch (an RTC keeps it through deep sleep). While a pre-alarm level
is crossed the node wakes every fast_s instead of wake_s."""

import asyncio

import persist
from app import watchdog

SLEEP = "sleep.json"


async def cycle(app):
    sl = app.sleep
    clock = app.clock
    saved = (persist.load(SLEEP) or {}) if clock.clk == 0 else {}
    for s in app.sensors:
        for name in s.metrics:
            m = s.metrics[name]
            v = saved.get(name)
            if v:
                m.filter.last, m.filter.sent_at = v[0], v[1]
                if m.level:
                    m.level.active = v[2]
    for s in app.sensors:
        tries = 30  # buffered buses (UART) need a moment after power-up for their first frame
        while not s.sample() and s.drv is not None and tries:
            tries -= 1
            await asyncio.sleep_ms(100)
        app.wdt.feed()
    app.pub.flush()
    asyncio.create_task(app.pub.run(app.mqtt))
    await app.board.connect(app.secrets)
    app.mqtt.start()
    t0 = clock.up_ms()
    while (len(app.pub.q) or not app.mqtt.isconnected()) and clock.up_ms() - t0 < sl.get("awake_s", 30) * 1000:
        await asyncio.sleep_ms(100)
        app.wdt.feed()
    keep = {}
    for s in app.sensors:
        for name in s.metrics:
            m = s.metrics[name]
            keep[name] = [m.filter.last, m.filter.sent_at, m.level.active if m.level else False]
    persist.save(SLEEP, keep)
    await app.mqtt.disconnect()
    wake = sl["wake_s"]
    for s in app.sensors:
        if s.alarm and s.fast_ms:
            wake = min(wake, s.fast_ms / 1000)
    watchdog.stable(app.st)
    app.board.deepsleep(max(1000, int(wake * 1000) - clock.up_ms()))
