"""The updater: what a node boots into while an update is pending (main.py), instead of the app. On a 64K
heap the running app leaves too little room for a manifest, SHA-512 and curve arithmetic, so the node stops
sampling for the download (seconds to a few minutes) and runs only this, its MQTT client and its HAL.

It pulls the release from its gateway in chunks: a request "version offset length" on its otareq topic, the
answer on its ota topic as the offset (4 bytes, big-endian) and the bytes. The release is one run of bytes:
the manifest (JSON, signed with the district's release key), then each file it lists, in its order. The
manifest is checked first (signature, version above the one running, this node's profile, the .mpy version,
heap); each file is hashed as it is written and checked against the manifest before the next one starts. What
is on flash is the progress: after a power cut the node hashes what it already has and goes on from there.

Every way out ends in a reset: with the new slot switched in on trial (ota/slot.py), or refused with the
reason in ota.RESULT (app/runtime.py reports it upstream) and the old code running on.
"""

import asyncio
import gc
import hashlib
import os
import sys
from time import ticks_diff, ticks_ms

import hal
import persist
from app import tls, watchdog
from mqtt import MQTTClient
from ota import RESULT, STATE, slot
from protocol import topics

CHUNK = 1024
_BOOTS = 5  # boots without a file completed before the updater gives up (a bug, a release it cannot take)
_WAIT_MS = 2000  # an unanswered request is sent again after this
_IDLE_S = 120  # no chunk for this long: the gateway has no such release, or the link is down (device.json ota_idle_s)


class Refused(Exception):
    pass


def _ver(v):
    """"1.2.10" -> (1, 2, 10), for comparing versions as numbers."""
    try:
        return tuple(int(x) for x in v.split("."))
    except (ValueError, AttributeError):
        raise Refused("version %r is not numbers and dots" % (v,))


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _makedirs(path):
    d = ""
    for part in path.split("/")[:-1]:
        d = d + "/" + part if d else part
        try:
            os.mkdir(d)
        except OSError:
            pass


def _wipe(d):
    """Remove a slot directory's contents (not the directory)."""
    try:
        entries = list(os.ilistdir(d))
    except OSError:
        return
    for e in entries:
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            _wipe(p)
            os.rmdir(p)
        else:
            os.remove(p)


class Updater:
    def __init__(self, board, cfg, st, boot):
        d, s = cfg
        self.board = board
        self.boot = boot  # app/watchdog.py's boot record
        self.secrets = s
        self.st = st
        self.prof = d["profile"]
        self.pub = d.get("ota_key")
        self.idle_s = d.get("ota_idle_s", _IDLE_S)
        self.v = st["v"]
        self.req = topics.device(d["site"], d["id"], topics.OTA_REQ)
        self.want = -1
        self.chunk = None
        self.ev = asyncio.Event()
        b = d["broker"]
        self.mqtt = MQTTClient(d["id"] + "-ota", b["host"], port=b.get("port", 1883), user=b.get("user"),
                               password=s.get("mqtt_password"), keepalive=30, ssl=tls(b),
                               on_message=self.on_message, max_packet=CHUNK + 128)
        self.topic = topics.device(d["site"], d["id"], topics.OTA)

    def on_message(self, topic, payload, retained):
        if len(payload) >= 4 and int.from_bytes(payload[:4], "big") == self.want:
            self.chunk = payload[4:]
            self.ev.set()

    async def get(self, off, n):
        """Bytes off..off+n of the release, asked for again until they come; Refused after idle_s without
        them, the link up or not: the node samples nothing while the updater runs, so a broker or Wi-Fi that
        stays away must not keep it here."""
        self.want, self.chunk = off, None
        t0 = ticks_ms()
        while True:
            self.ev.clear()
            try:
                if not self.mqtt.isconnected():
                    await asyncio.wait_for_ms(self.mqtt.wait_connected(), _WAIT_MS)
                await self.mqtt.publish(self.req, ("%s %d %d" % (self.v, off, n)).encode())
                await asyncio.wait_for_ms(self.ev.wait(), _WAIT_MS)
            except (asyncio.TimeoutError, OSError):  # OSError: the link went down under the request
                if ticks_diff(ticks_ms(), t0) >= self.idle_s * 1000:
                    self._idle()
                continue
            c = self.chunk
            if len(c) != n:
                raise Refused("chunk at %d: %d bytes for %d" % (off, len(c), n))
            return c

    def _idle(self):
        raise Refused("%s for %d s" % ("no answer from the gateway" if self.mqtt.isconnected()
                                       else "no link to the broker", self.idle_s))

    async def fill(self, path, off, size, h=None):
        """The file at `path` made the release's bytes off..off+size, resuming from what is on flash; the
        file's SHA-256 when `h` is a hash object."""
        have = _size(path)
        if have > size:
            os.remove(path)
            have = 0
        if h is not None and have:
            with open(path, "rb") as f:
                while True:
                    b = f.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
        with open(path, "ab") as f:
            while have < size:
                n = min(CHUNK, size - have)
                c = await self.get(off + have, n)
                f.write(c)
                f.flush()
                if h is not None:
                    h.update(c)
                have += n
        return h.digest() if h is not None else None

    def manifest(self, path):
        """The manifest, once its signature, version, profile and heap are good; else Refused."""
        with open(path, "rb") as f:
            raw = f.read()
        try:  # not hex: a ValueError, taken for a bug and tried again at each of the updater's boots
            pub = bytes.fromhex(self.pub or "")
        except (ValueError, TypeError):  # TypeError: not text
            pub = b""
        if len(pub) != 32:
            raise Refused("ota_key in device.json is not 32 bytes of hex" if self.pub else "no ota_key in device.json")
        import ed25519

        ok = ed25519.verify(pub, raw, bytes.fromhex(self.st["sig"]))
        del ed25519
        sys.modules.pop("ed25519", None)  # its tables go before the manifest's file list is parsed
        gc.collect()
        if not ok:
            raise Refused("bad signature")
        import json

        m = json.loads(raw)
        del raw
        if m.get("version") != self.v:
            raise Refused("manifest is version %r, the command said %r" % (m.get("version"), self.v))
        running = slot.state()["v"]
        if _ver(self.v) <= _ver(running):
            raise Refused("version %s is not above %s, the one running" % (self.v, running))
        if self.prof not in m.get("profiles", ()):
            raise Refused("release is not for the %s profile" % self.prof)
        v = sys.implementation._mpy & 0xFF
        if m.get("mpy", v) != v:  # switched to, it would fail at import on each trial boot and roll back
            raise Refused("release is .mpy version %s, this MicroPython loads %d" % (m["mpy"], v))
        heap = gc.mem_free() + gc.mem_alloc()
        if m.get("min_heap", 0) > heap:
            raise Refused("release needs %d bytes of heap, this node has %d" % (m["min_heap"], heap))
        return m["files"]

    async def run(self):
        st = self.st
        if type(self.idle_s) is not int or not 5 <= self.idle_s <= 3600:  # checked here: only the updater reads it
            raise Refused("ota_idle_s in device.json is not 5..3600")
        await self.board.connect(self.secrets)
        await self.mqtt.subscribe(self.topic, 0)
        self.mqtt.start()
        try:
            await asyncio.wait_for_ms(self.mqtt.wait_connected(), self.idle_s * 1000)
        except asyncio.TimeoutError:
            self._idle()
        # A request is written in pieces (mqtt.py's _send), and Nagle held all but the first until the broker's
        # delayed ACK: 59 ms a KB on loopback, 2 with TCP_NODELAY (bench/ota_bench.py). Set here, not in mqtt.py,
        # which every boot keeps resident. IPPROTO_TCP 6 and TCP_NODELAY 1 on Linux and lwIP alike; the sim's
        # link wraps the stream (its .w).
        try:
            w = self.mqtt._w
            getattr(w, "w", w).s.setsockopt(6, 1, 1)
        except Exception:  # a TLS socket, a port without it: slower, not wrong
            pass
        d = st["dir"]
        man = d + "/manifest.json"
        n = st["n"]
        await self.fill(man, 0, n)
        files = self.manifest(man)
        off = n
        for i in range(len(files)):
            f = files[i]
            if i >= st["i"]:
                if f["path"].startswith("/") or ".." in f["path"].split("/"):
                    raise Refused("path %r leaves the slot" % f["path"])
                path = d + "/" + f["path"]
                _makedirs(path)
                got = await self.fill(path, off, f["size"], hashlib.sha256())
                if got.hex() != f["sha256"]:
                    raise Refused("%s: SHA-256 does not match the manifest" % f["path"])
                st["i"] = i + 1
                st["boots"] = 1  # this boot made progress: power cuts during a long download are no crash loop,
                persist.save(STATE, st)
                watchdog.stable(self.boot)  # for the updater's count nor the app's (it writes once a boot)
            off += f["size"]
        slot.switch(d, self.v)


def _end(ok, res, v):
    if not ok:
        persist.save(RESULT, {"v": v, "ok": False, "res": "refused: " + res})
    try:
        os.remove(STATE)
    except OSError:
        pass


def run(st, cfg):
    """Carry the pending update (ota.json) one boot further, then reset into whichever code is to run.
    cfg: a list holding (device, secrets, profile) as app/checked.py loads them, taken out here so that the
    profile can go at once: the updater has no use for it and the drone's is the largest. (A tuple, as an
    older main.py passes it, still works, with the profile kept.)"""
    if isinstance(cfg, list):
        cfg = cfg.pop()
    cfg = (cfg[0], cfg[1])
    gc.collect()
    u = persist.load(STATE)
    u["boots"] = u.get("boots", 0) + 1
    if "dir" not in u:
        u["dir"] = "ota/b" if slot.state()["run"] != "ota/b" else "ota/a"
        _makedirs(u["dir"] + "/x")
        _wipe(u["dir"])
        u["i"] = 0
    persist.save(STATE, u)
    board = hal.board(cfg[0])
    if u["boots"] > _BOOTS:
        _end(False, "the updater did not finish in %d boots" % _BOOTS, u["v"])
    elif slot.state()["v"] == u["v"] and "try" in slot.state():  # cut after the switch: it is done
        _end(True, None, u["v"])
    else:
        try:
            asyncio.run(Updater(board, cfg, u, st).run())
            _end(True, None, u["v"])
        except Refused as e:
            print("ota:", e)
            _end(False, str(e), u["v"])
        except Exception as e:  # a bug, flash or memory: tried again at the next boot, up to _BOOTS
            sys.print_exception(e)
    watchdog.stable(st)
    board.reset()
