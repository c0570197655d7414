# mypy: ignore-errors
# (MicroPython code: time.ticks_ms, machine; no annotations on the device.)
"""Reference firmware for the bench's stimulus board: MicroPython, one line protocol (docs/hil.md).

Copy this file as main.py (and a stim.json pin map) to a spare MicroPython board wired to the DUT's sensor
inputs; the bench's SerialStimulus driver talks to it over its USB serial port. Outputs are named by kind
and number: I (a 4-20 mA loop, value in mA), V (a voltage, V), R (a relay, 0/1), P (a pulse output, pulses
per hour, e.g. a rain gauge's tips). Ramps run on this board's clock, so serial latency does not skew them.

stim.json maps outputs to pins, e.g. {"I0": {"pwm": 15, "full": 24.0}, "V0": {"dac": 25, "full": 3.3},
"R0": {"pin": 12}, "P0": {"pin": 13}}: PWM and DAC outputs scale value/full to their range (an I output's
PWM drives a voltage-to-current converter whose full scale is `full` mA). Without stim.json (or without the
machine module, as on the unix port, where the bench's tests run it) outputs are kept and reported only.
"""

import json
import select
import sys
import time

VERSION = "lifeline-stim 1"
DEFAULT_OUTPUTS = ("I0", "I1", "V0", "R0", "R1", "R2", "P0")
PULSE_MS = 50  # contact closure of one tip


def _hardware(name, spec):
    """The write function for one output's pin, or None."""
    try:
        import machine
    except ImportError:
        return None
    full = float(spec.get("full", 1.0))
    if "pwm" in spec:
        pwm = machine.PWM(machine.Pin(spec["pwm"]), freq=20000)
        return lambda v: pwm.duty_u16(max(0, min(65535, int(65535 * v / full))))
    if "dac" in spec:
        dac = machine.DAC(machine.Pin(spec["dac"]))
        return lambda v: dac.write(max(0, min(255, int(255 * v / full))))
    if "pin" in spec:
        pin = machine.Pin(spec["pin"], machine.Pin.OUT, value=0)
        return lambda v: pin.value(1 if v else 0)
    return None


class Output:
    def __init__(self, name, write=None):
        self.name = name
        self.kind = name[0]
        self.value = 0.0
        self.write = write
        self.segs = []  # [duration ms, target], the first one running
        self.t0 = 0
        self.v0 = 0.0
        self.owed = 0.0  # pulses due (P outputs)
        self.pulses = 0
        self.pulse_end = 0
        self.last = time.ticks_ms()

    def set(self, value):
        self.segs = []
        self.value = value

    def ramp(self, ms, target, now):
        if not self.segs:
            self.t0, self.v0 = now, self.value
        self.segs.append([ms, target])

    def stop(self):
        self.segs = []

    def tick(self, now):
        while self.segs:
            ms, target = self.segs[0]
            gone = time.ticks_diff(now, self.t0)
            if gone < ms:
                self.value = self.v0 + (target - self.v0) * gone / ms
                break
            self.segs.pop(0)
            self.value = self.v0 = target
            self.t0 = time.ticks_add(self.t0, ms)
        if self.kind == "P":
            self.owed += self.value * time.ticks_diff(now, self.last) / 3600000
            level = time.ticks_diff(self.pulse_end, now) > 0
            if not level and self.owed >= 1:
                self.owed -= 1
                self.pulses += 1
                self.pulse_end = time.ticks_add(now, PULSE_MS)
                level = True
            if self.write is not None:
                self.write(level)
        elif self.write is not None:
            self.write(self.value)
        self.last = now

    def show(self):
        if self.kind == "R":
            return "1" if self.value else "0"
        if self.kind == "P":
            return f"{self.value:.3f}/{self.pulses}"
        return f"{self.value:.4f}"


def outputs():
    try:
        with open("stim.json") as f:
            pins = json.load(f)
    except (OSError, ValueError):
        pins = {}
    names = sorted(pins) if pins else DEFAULT_OUTPUTS
    return {n: Output(n, _hardware(n, pins.get(n, {}))) for n in names}


def handle(outs, line, now):
    words = line.split()
    if not words:
        return "ERR empty line"
    cmd = words[0].upper()
    if cmd == "HELLO":
        return "OK {} {}".format(VERSION, " ".join(sorted(outs)))
    if cmd == "STATUS":
        return "OK " + " ".join(f"{n}={outs[n].show()}" for n in sorted(outs))
    if len(words) < 2:
        return f"ERR {cmd} needs an output"
    out = outs.get(words[1])
    if out is None:
        return f"ERR no output {words[1]}"
    try:
        if cmd == "SET" and len(words) == 3:
            value = float(words[2])
            if out.kind == "R" and value not in (0.0, 1.0):
                return "ERR a relay is 0 or 1"
            out.set(value)
        elif cmd == "RAMP" and len(words) == 4 and out.kind != "R":
            ms = int(words[2])
            if ms < 0:
                return "ERR negative duration"
            out.ramp(ms, float(words[3]), now)
        elif cmd == "STOP" and len(words) == 2:
            out.stop()
        elif cmd == "GET" and len(words) == 2:
            return "OK " + out.show()
        else:
            return "ERR bad command: " + line
    except ValueError:
        return "ERR bad number: " + line
    return "OK"


def main():
    outs = outputs()
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)
    line = ""
    while True:
        now = time.ticks_ms()
        for o in outs.values():
            o.tick(now)
        if not poller.poll(10):
            continue
        ch = sys.stdin.read(1)
        if ch == "\n":
            reply = handle(outs, line.strip(), time.ticks_ms())
            for o in outs.values():  # a GET right after a SET reads what the pins now show
                o.tick(time.ticks_ms())
            sys.stdout.write(reply + "\n")
            line = ""
        elif ch != "\r" and len(line) < 120:
            line += ch


main()
