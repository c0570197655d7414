"""The world around a virtual device: its sensors (the simdev models, driven by the stimulus) and
its Wi-Fi. It runs as a companion process beside the device (`micropython -m simworld`, cwd = the
device's flash directory; the sim backend starts it when it is not already up), so that only firmware
sits in the device's 64K heap, and so that the world goes on -- rain keeps tipping the gauge -- while
the device is reset or in deep sleep.

Ports (127.0.0.1, UDP, JSON): control_port takes the control datagrams of docs/firmware.md;
control_port + 1 is the device's bus: ["bus", sensor, method, args...] calls one machine-API method on a
model, ["poll", [pins]] returns the network flags and takes one pending edge from each listed pin,
["wake", pin, level] answers a deep-sleeping device whether its wake pin fired (a pending edge, which it
takes, or the pin at that level). The world exits after idle_s without a word from its device, or on
{"quit": true}.
"""

import binascii
import json
import select
import socket
import time

import simdev

import persist

_BUS_OPS = ("read_uv", "readfrom_mem", "writeto_mem", "any", "read", "value")  # what hal_sim.py's Bus forwards

STATE = ".world.json"


def _interp(points, t):
    prev = None
    for p in points:
        if t < p[0]:
            if prev is None:
                return p[1]
            v0, v1 = prev[1], p[1]
            if isinstance(v0, bool) or isinstance(v1, bool) or v0 is None or v1 is None:
                return v0
            return v0 + (v1 - v0) * (t - prev[0]) / (p[0] - prev[0])
        prev = p
    return prev[1] if prev else None


class World:
    def __init__(self, sim):
        st = persist.load(STATE) or {}
        self.start = sim.get("start") or st.get("start") or time.time()
        persist.save(STATE, {"start": self.start})
        self.script = sim.get("stimulus", {})
        self.live = {}
        self.flags = {"net": True, "ntp": sim.get("ntp", True), "hang": False}
        self.idle_ms = int(sim.get("idle_s", 120) * 1000)
        self.sensors = None
        self.load()

    def load(self):
        """Models for the sensors of the device's profile, as it stands at the device's boot. With the
        same sensors as before, the rain goes on across the restart: a tip the device has not taken yet
        stays pending, and so does the part of the next one already fallen."""
        sensors = persist.load("profile.json")["sensors"]
        edges, rain = (self.edges, self.rain) if sensors == self.sensors else (None, ())
        self.sensors = sensors
        self.models = []
        self.edges = []
        self.rain = []
        for s in sensors:
            self.models.append(self.model(s))
            self.edges.append(0)
        if edges:
            self.edges = edges
            for i in range(len(rain)):
                self.rain[i][3] = rain[i][3]

    def value(self, ch):
        pts, base = self.live.get(ch) or (self.script.get(ch), self.start)
        return None if pts is None else _interp(pts, time.time() - base)

    def fn(self, ch):
        return lambda: self.value(ch)

    def model(self, s):
        """The simdev model for a profile sensor; its "sim" entry names the stimulus channels."""
        drv = s["driver"]
        a = s.get("args", {})
        ch = s.get("sim", {})
        fn = self.fn
        if drv == "loop420":
            return simdev.SimADC(fn(ch.get("ch", s["name"])), a.get("shunt_ohm", 100.0), (a["lo"], a["hi"]),
                                 ch.get("noise_uv", 0))
        if drv == "adxl345":
            return simdev.SimADXL345(fn("tilt_x"), fn("tilt_y"), fn(ch.get("ch", "vib")), a.get("addr", 0x53),
                                     ch.get("vib_hz", 5.0))
        if drv == "level":
            return simdev.SimLevelUART(fn(ch.get("ch", "level")), a["mount_m"])
        if drv == "cover":
            v = fn(ch.get("ch", "cover"))
            on = a.get("open_value", 1)
            return simdev.SimPin(lambda: on if v() else 1 - on)
        if drv == "nmea":
            fix, lat, lon, alt = fn("fix"), fn("lat"), fn("lon"), fn("alt")
            return simdev.SimNMEA(lambda: (lat(), lon(), alt() or 0.0) if fix() else None)
        if drv == "rain":
            i = len(self.models)
            pin = simdev.SimPin()
            pin.irq(lambda p: self._edge(i))
            self.rain.append([pin, fn(ch.get("ch", "rain_rate")), a.get("mm_per_tip", 0.2), 0.0])
            return pin
        raise ValueError("no sim model for driver %r" % drv)

    def _edge(self, i):
        self.edges[i] += 1

    def tick(self, dt_ms):
        """Tips at the stimulus rate (mm/h) on every rain gauge."""
        for r in self.rain:
            r[3] += (r[1]() or 0) * dt_ms / 3600000 / r[2]
            while r[3] >= 1:
                r[3] -= 1
                r[0].fire()

    def control(self, msg):
        now = time.time()
        for ch, v in msg.get("set", {}).items():
            self.live[ch] = ([[0, v]], now)
        for ch, pts in msg.get("ramp", {}).items():
            self.live[ch] = ([[0, self.value(ch)]] + pts, now)
        for ch in msg.get("clear", ()):
            self.live.pop(ch, None)
        for k in ("net", "ntp", "hang"):
            if k in msg:
                self.flags[k] = bool(msg[k])

    def bus(self, req):
        if req[0] == "load":
            self.load()
            req = ["poll", []]
        if req[0] == "poll":
            out = dict(self.flags)
            out["batt"] = self.value("batt")
            taken = []
            for i in req[1]:
                n = 1 if self.edges[i] else 0
                self.edges[i] -= n
                taken.append(n)
            out["edges"] = taken
            self.flags["hang"] = False
            return out
        if req[0] == "wake":
            i = req[1]
            if self.edges[i]:
                self.edges[i] -= 1
                return {"r": True}
            return {"r": self.models[i].value() == req[2]}
        m = self.models[req[1]]
        op = req[2]
        if op not in _BUS_OPS:
            return {"e": 22}  # EINVAL
        a = req[3:]
        if op == "writeto_mem":
            a[2] = binascii.unhexlify(a[2])
        try:
            r = getattr(m, op)(*a)
        except OSError as e:
            return {"e": e.args[0]}
        return {"r": binascii.hexlify(r).decode() if isinstance(r, (bytes, bytearray)) else r}


def _udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    return s


def main():
    sim = persist.load("sim.json")
    world = World(sim)
    ctl = _udp(sim["control_port"])
    bus = _udp(sim["control_port"] + 1)
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(bus, select.POLLIN)
    last = seen = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), seen) < world.idle_ms:
        for s, _ev in poller.ipoll(20):
            data, peer = s.recvfrom(1024)
            try:
                msg = json.loads(data)
                if s is bus:
                    seen = time.ticks_ms()
                    n = msg.pop(0)
                    reply = world.bus(msg)
                    reply["n"] = n
                else:
                    world.control(msg)
                    reply = {"ok": True}
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                reply = {"ok": False, "err": repr(e)}
                msg = {}
            s.sendto(json.dumps(reply).encode(), peer)
            if s is ctl and msg.get("quit"):
                return
        now = time.ticks_ms()
        world.tick(time.ticks_diff(now, last))
        last = now


if __name__ == "__main__":
    main()
