"""The node's run loop: wires board, clock, samplers, publisher, commands and health, and keeps the
watched main loop that feeds the watchdog. run() is what main.py calls once the config is settled."""

import asyncio
import gc
import os
import sys

from micropython import const

import hal
from app import COMMAND_PATH, drop, tls, watchdog
from app.clock import Clock
from protocol import message, topics

_STABLE_S = const(60)  # a boot that ran this long connected clears the crash-loop counter
_TRIAL_S = const(180)  # a trial config must reach the broker within this (device.json trial_s)
_SAFE_S = const(600)  # safe mode tries a normal boot again after this long connected
_SAFE_WAKE_S = const(60)  # a sleeping profile's safe mode sleeps after this long unconnected (device.json safe_wake_s)
_NTP_S = const(6 * 3600)
_UNSYNCED_S = const(60)  # NTP retry while the time is still unknown
_INBOX = const(4)
_TRIES = const(3)  # loads of the command path per command (runtime.commands)
_RETRY_MS = const(1000)
_RESEND_MAX_MS = const(600000)  # unconfirmed records go out again at most this far apart
_FW = const("0.1.0")  # ota.VERSION: the code flashed by cable (tests/ota/test_ota_names.py keeps them equal)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class App:
    def __init__(self, board, st, cfg, safe):
        d, s, p = cfg
        self.board = board
        self.st = st
        self.boot = st["boot"]
        self.safe = safe
        self.secrets = s
        self.ntp = list(d.get("ntp", []))  # app/clock.py turns it round
        self.trial_s = d.get("trial_s", _TRIAL_S)
        self.safe_wake_s = d.get("safe_wake_s", _SAFE_WAKE_S)
        self.prof = p["name"]
        self.sleep = p.get("sleep")
        self.wdt_ms = p.get("wdt_ms", 30000)
        self.dev = d["id"]
        self.key = bytes.fromhex(s["key"])
        self.clock = Clock(board)
        self.rst = board.reset_cause()
        self.topic = {}
        for k in (topics.DATA, topics.EVENT, topics.STATE, topics.CMD, topics.ACK, topics.DONE):
            self.topic[k] = topics.device(d["site"], self.dev, k)
        # A trial: of a config ("trial.json") or of new code (slot.json says so), decided by app/trial.py,
        # imported only then. A node that never took an update loads nothing of ota/ and interns none of
        # its names: on a 64K heap every name counts (docs/firmware.md, Memory).
        self.trial = _exists("trial.json")
        self.fw = _FW
        if _exists("slot.json"):  # ota.SLOT
            from app import trial

            self.fw, code = trial.running()  # new code on trial: confirmed by the first birth
            self.trial = self.trial or code
            drop("app.trial")
        self.connected_at = None
        self.inbox = []
        self.recent = []
        self.rejected = {}
        self.heapmin = None  # the lowest free heap since the last figures (heap())
        self.got = asyncio.Event()
        from app.publisher import Publisher
        from mqtt import MQTTClient

        b = d["broker"]
        # Not a clean session: the broker keeps the commands (QoS 1) sent while the node was asleep or
        # cut off and hands them over at the next connect; their exp bounds how late one may run.
        self.mqtt = MQTTClient(self.dev, b["host"], port=b.get("port", 1883), user=b.get("user"),
                               password=s.get("mqtt_password"), keepalive=p.get("keepalive", 60), clean=False,
                               ssl=tls(b), on_message=self.on_message,
                               on_connect=self.birth)
        self.pub = Publisher(p, self.clock, self.dev, self.boot, self.key, self.topic, self.mqtt)
        # End-to-end delivery: once the gateway confirms (topic done), a record leaves flash on its
        # confirmation, not on the site broker's PUBACK, which a power cut of the site box can take back.
        # [since when (the oldest record held last changed, or the last resend), the wait before the next resend,
        # its first wait, that oldest record's id (-1: none told yet)]: one attribute, not four names.
        r = int(p.get("queue", {}).get("resend_s", 30) * 1000)
        self.resend_at = [0, r, r, -1]
        self.configure(p)
        self.sensors = []
        self.beats = {}
        if not safe:
            from app.sampler import Sensor

            for spec in p["sensors"]:
                self.sensors.append(Sensor(spec, self))

    def configure(self, p):
        self.health_ms = int(p.get("health_s", 3600) * 1000)
        self.pub.batch = p.get("batch", 16)
        self.pub.report_ms = int(p["report_s"] * 1000)

    # -- called by the parts --------------------------------------------------------------------------

    def reading(self, metric, v, up, change, send, alarm):
        """Route one filtered reading; True when it belongs in the sensor's urgent pack (sent at once
        while the sensor is past a pre-alarm level)."""
        rec = (metric.name, v, metric.unit, up)
        pub = self.pub
        if metric.name in pub.tags:
            pub.latest[metric.name] = rec
        if change:
            ev = metric.level.spec.get("ev", "prealarm")
            if change > 0:
                pub.seal([rec], message.PRI_ALARM, ev)
            else:
                pub.seal([rec], message.PRI_ROUTINE, ev + "-clear", True)
        elif send:
            if alarm:
                return True
            pub.add(rec)
        return False

    def fault(self, sensor, reason):
        self.pub.seal([(sensor.name, reason or "ok", None, self.clock.up_ms())], ev="fault")

    def reject(self, reason):
        n = self.rejected.get(reason, 0)
        if not n:
            print("command rejected: %s" % reason)
        self.rejected[reason] = n + 1

    def on_message(self, topic, payload, retained):
        if topic == self.topic[topics.DONE]:  # retained on purpose: the newest confirmation, at every connect
            self.done(payload)
        elif retained:  # a retained "reboot" would run on every connect
            self.reject("retained")
        elif len(self.inbox) >= _INBOX:
            self.reject("inbox full")
        else:
            self.inbox.append(payload)
            self.got.set()

    def done(self, payload):
        """The gateway's confirmation: forget what it has committed. A malformed one is counted, not obeyed.
        The resend wait starts over only when the oldest record held changes: confirmations of later ones
        restarted it too, and a record the broker lost while later ones went through was never sent again."""
        try:
            ranges = topics.done_ranges(payload)
        except ValueError:
            self.reject("done")
            return
        old = self.pub.q.confirm(ranges)
        r = self.resend_at
        if old != r[3]:
            r[0], r[1], r[3] = self.clock.up_ms(), r[2], old

    def resend(self, up):
        """Send unconfirmed records again when the oldest has not been confirmed for a while (a broker that lost
        it without dropping the link, a gateway that was away), waiting twice as long each time up to
        _RESEND_MAX_MS, so a gateway down for hours costs a few resends, not one a minute."""
        r = self.resend_at
        if not len(self.pub.q):
            r[0] = up
            return
        if up - r[0] < r[1]:
            return
        r[0], r[1] = up, min(r[1] * 2, _RESEND_MAX_MS)
        self.pub.q.resend()
        self.pub.wake.set()

    async def commands(self):
        """One command at a time. Loading its path can fail for memory in a heap the running node has cut
        into pieces (a 30-minute soak saw it once in 30 drone commands). Nothing has been done by then, so
        the load is tried again a moment later, when the pieces have moved: up to _TRIES times (and the
        command is still refused once past its exp). A command that fails otherwise, for memory in its op
        or as a bug, is logged and counted, and the node goes on taking commands."""
        while True:
            await self.got.wait()
            self.got.clear()
            tries = 0
            while self.inbox:
                # Its ack needs the link, and a birth is not built beside a loaded command: commands kept
                # for this session arrive before the connect's birth, and wait for it.
                await self.mqtt.wait_connected()
                loaded = None
                try:
                    loaded = self._open(self.inbox[0])
                    if loaded:
                        await loaded[0].handle(self, loaded[1])
                except MemoryError:
                    if loaded is None and tries + 1 < _TRIES:
                        tries += 1
                        drop(*COMMAND_PATH)
                        await asyncio.sleep_ms(_RETRY_MS)
                        continue
                    self.reject("no memory")  # no ack: the gateway reports a timeout
                except Exception as e:  # a bug: shown with its traceback
                    sys.print_exception(e)
                    self.reject(type(e).__name__)
                loaded = None
                self.inbox.pop(0)
                tries = 0
                drop(*COMMAND_PATH)

    def _open(self, payload):
        """(the handler module, the command), or None for a command refused. Authenticates and decodes
        first, then drops the decoder before the handler loads: the two never share the heap (so nothing
        here may still hold the decoder when it is dropped)."""
        from protocol import message_check

        def key_for(kid):
            return self.key if kid == self.dev.encode() else None

        body = None
        try:
            body = message_check.decode(payload, key_for, topics.CMD)
        except message_check.MessageError as e:
            self.reject(e.reason)
        del message_check, key_for
        self.heap()  # the decoder half is the command path's high point
        drop(*COMMAND_PATH[2:])
        if body is not None:
            from app import commands

            return commands, body

    async def ack(self, cid, ok, res):
        body = message.ack(self.dev, self.boot, cid, ok, res)
        await self.mqtt.publish(self.topic[topics.ACK], message.encode(body, self.key), qos=1)

    def reboot(self):
        watchdog.stable(self.st)
        self.board.reset()

    def sync_clock(self):
        ok = self.clock.sync(self.ntp)
        if ok and self.pub.boot_clk:
            # Messages already sealed with boot-relative times: say when that boot began, once (synced, the
            # clock seals no more of them; the flag, cleared, says so without a name of its own).
            self.pub.boot_clk = False
            self.pub.seal([("boot_t", self.clock.epoch0_ms // 1000, "s", self.clock.up_ms())], ev="clock")
        return ok

    async def birth(self, mqtt):
        """The on-connect hook: unconfirmed records queued to go again, time, birth (retained), then a config
        trial's verdict."""
        self.pub.q.resend()
        self.pub.wake.set()
        if self.clock.clk == message.CLK_BOOT:
            self.sync_clock()
        extra = self.figures()
        for k in list(extra):
            if extra[k] is None:
                del extra[k]
        if self.safe:
            extra["safe"] = True
        if self.sleep:
            extra["sleep"] = self.sleep["wake_s"]
        body = message.birth(self.dev, self.boot, self.pub.q.next_id, self.fw, self.prof, self.rst,
                             self.clock.now(), self.clock.clk, **extra)
        await mqtt.publish(self.topic[topics.STATE], message.encode(body, self.key), retain=True, qos=1)
        if self.connected_at is None:
            self.connected_at = self.clock.up_ms()
        if not (self.trial or _exists("cfgack.json") or _exists("otares.json")):  # trial.RESULT, ota.RESULT
            return
        # Connected: what is on trial is confirmed. New code stays, and its outcome goes upstream as an event
        # (app/trial.py). A confirmed config's ack goes out, then the node reboots into the config it
        # confirmed: a config trial boot ran on the heap and name pool the config checks grew (main.py),
        # the next boot does not.
        from app import trial

        confirmed = trial.confirm(self.pub, self.clock.up_ms(), self.trial)
        self.trial = False
        done = trial.result()
        if done:
            await self.ack(*done)
            trial.acked()
        del trial
        drop("app.trial")
        if confirmed:
            self.reboot()

    def heap(self):
        """Free heap after a collection, kept as the low since the last figures if it is one. Called at
        the high points of the command path too, which a health event is unlikely to fall on. (Named
        like the figures' keys: on a 64K heap every new name is one more interned qstr.)"""
        gc.collect()
        f = gc.mem_free()
        if self.heapmin is None or f < self.heapmin:
            self.heapmin = f
        return f

    def figures(self):
        """Health: free heap now and its low since the last figures, Wi-Fi signal, battery, queue depth and
        records lost (dropped to make room, or cut as damaged: a reading lost either way), uptime."""
        heap = self.heap()
        low, self.heapmin = self.heapmin, None
        q = self.pub.q
        return {"heap": heap, "heapmin": low, "rssi": self.board.rssi(), "batt": self.board.battery(), "qlen": len(q),
                "qdrop": q.dropped[0] + q.dropped[1] + q.corrupt, "up": self.clock.up_ms() // 1000}

    def watch(self, sensor):
        """The watchdog is fed only while `sensor` beats at least every 3 sample periods (30 s at least).
        Called again when a command changes its schedule: a limit kept from a shorter sample_s reset the node."""
        self.beats[sensor.name] = [self.clock.up_ms(), 3 * max(sensor.sample_ms, 10000)]

    def beat(self, name):
        self.beats[name][0] = self.clock.up_ms()

    # -- running ----------------------------------------------------------------------------------------

    async def main(self):
        self.wdt = self.board.wdt(self.wdt_ms)
        for coro in self.board.services():
            asyncio.create_task(coro)
        await self.mqtt.subscribe(self.topic[topics.CMD])
        # QoS 0: the broker keeps no confirmations for a node away; the retained one says it all.
        await self.mqtt.subscribe(self.topic[topics.DONE], 0)
        asyncio.create_task(self.commands())
        if self.sleep and not self.safe:
            from app import sleeper

            await sleeper.cycle(self)
            return
        for s in self.sensors:
            self.watch(s)
            asyncio.create_task(s.run())
        self.mqtt.start()  # it retries with backoff until the Wi-Fi is up
        await self.loop(None if self.safe else asyncio.create_task(self.pub.run()))

    async def loop(self, pub):
        """The watched main loop: feeds the watchdog only while it runs and every sampler beats. Wi-Fi is
        joined in a task of its own: the backend waits up to 20 s for the access point, longer than a
        20 s watchdog, so awaited here it reset the node at every outage (and every boot without Wi-Fi).
        `pub`, the publisher's task, is started again if it ended: a MemoryError in a publish (a fragmented
        heap) ended it, and the node sampled and fed its watchdog on, sending nothing until a reboot."""
        synced = health = tick = self.clock.up_ms()  # tick: when the Wi-Fi was last looked at
        stalled = None
        link = asyncio.create_task(self.board.connect(self.secrets))
        while True:
            # A tick a second, or a quarter of the watchdog's limit if that is shorter (wdt_ms may be 1000): fed
            # once a 1 s tick, a node with the shortest watchdog went its whole limit unfed and was reset.
            await asyncio.sleep_ms(min(1000, self.wdt_ms // 4))
            up = self.clock.up_ms()
            late = None
            for name in self.beats:
                t, limit = self.beats[name]
                if up - t > limit:
                    late = name
            if late is None:
                self.wdt.feed()
            elif late != stalled:
                print("watchdog: %s stalled, not feeding" % late)
            stalled = late
            if pub is not None and pub.done():  # its record stays queued, unacked: it goes again
                print("publisher ended, started again")
                gc.collect()
                pub = asyncio.create_task(self.pub.run())
            if self.pub.due(up):
                self.pub.flush()
            self.resend(up)
            if up - tick >= 5000:
                tick = up
                if link.done() and not self.board.online():
                    link = asyncio.create_task(self.board.connect(self.secrets))
            if self.trial and up > self.trial_s * 1000:
                from app import trial

                trial.rollback("no broker connection within %d s" % self.trial_s, True)
                self.board.reset()
            if self.safe and self.sleep and self.connected_at is None and up > self.safe_wake_s * 1000:
                # A battery node: awake until connected drained it while its broker was away. Its crash count is
                # kept, so the next wake is in safe mode again.
                self.board.deepsleep(int(self.sleep["wake_s"] * 1000))
            if self.connected_at is not None and up - self.connected_at > (_SAFE_S if self.safe else _STABLE_S) * 1000:
                watchdog.stable(self.st)
                if self.safe:
                    self.board.reset()
            if self.mqtt.isconnected() and up - synced > (_NTP_S if self.clock.epoch0_ms else _UNSYNCED_S) * 1000:
                synced = up
                self.sync_clock()
            if not self.safe and up - health >= self.health_ms:
                health = up
                f = self.figures()
                units = {"heap": "B", "heapmin": "B", "rssi": "dBm", "batt": "V", "up": "s"}
                self.pub.seal([(k, f[k], units.get(k), up) for k in f if f[k] is not None], ev="health")


def run(st, cfg):
    """cfg: a list holding (device, secrets, profile); taken out so nothing keeps the parsed files."""
    board = hal.board(cfg[0][0])
    safe = watchdog.safe_mode(st)
    if safe:
        print("safe mode: %d boots without a clean run" % st["crash"])
    app = App(board, st, cfg.pop(), safe)
    gc.collect()
    asyncio.run(app.main())
