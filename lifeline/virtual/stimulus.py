"""What the sensors see, under the test's control: one interface, two rigs.

`SimStimulus` drives a virtual device's world through the sim backend's UDP control port (the datagrams
of docs/firmware.md). `SerialStimulus` drives a real rig: a stimulus board (DAC, 4-20 mA loop outputs,
relays, pulse outputs) on a second serial port, speaking the line protocol of docs/hil.md, with a rig map
that says which output feeds which channel and how engineering units scale to it.

Channels are the sim world's names: the profile's metric names ("ch4", "temp", "pressure", "level",
"tilt_x", ...), plus "net" (the site Wi-Fi) and "hang" (a stalled main loop, sim only).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

Value = float | bool
Points = Sequence[tuple[float, float]]  # (seconds from now, value), times increasing


class StimulusError(RuntimeError):
    """The rig refused or did not answer a stimulus."""


class Unsupported(StimulusError):
    """This rig cannot produce the stimulus (for example a hung main loop on a real board)."""


class Stimulus(Protocol):
    def set(self, **values: Value) -> None:
        """Hold each channel at a value from now on."""

    def ramp(self, channel: str, points: Points) -> None:
        """Move a channel linearly from its present value through (t_s, value) points, t from now."""

    def network(self, up: bool) -> None:
        """Cut (False) or restore (True) the device's network."""

    def hang(self) -> None:
        """Stall the device's main loop, so the watchdog must act."""

    def close(self) -> None: ...


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to sockets bound to port 0 (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_udp_pair() -> int:
    """A port p with p and p + 1 both free for UDP: the sim world's control port and its device bus.

    Taken below the kernel's ephemeral range, so that no socket another device (or its world) binds to port
    0 can take it before its world binds it, and never overlapping a pair handed out before by this process:
    a world whose port is taken never answers, and its device cannot start (a CI run once saw a device of six
    started side by side time out on its world)."""
    high = min(_ephemeral_low(), 65535) - 2
    while True:
        port = random.randrange(max(1024, high - 10000), high)
        if {port, port + 1} & _HANDED_OUT:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        _HANDED_OUT.update((port, port + 1))
        return port


def sim_config(control_port: int, stimulus: dict[str, list[list[Any]]] | None = None,
               **extra: Any) -> dict[str, Any]:
    """The sim.json a virtual device reads at boot (docs/firmware.md)."""
    return {"control_port": control_port, "stimulus": stimulus or {}, **extra}


class SimStimulus:
    """The sim backend's control port: one JSON datagram per change, acknowledged by the world. The world
    starts with the device's first boot, so early datagrams are retried until it answers."""

    def __init__(self, control_port: int, host: str = "127.0.0.1", timeout_s: float = 20.0) -> None:
        self.addr = (host, control_port)
        self.timeout_s = timeout_s
        self.sent: list[tuple[float, dict[str, Any]]] = []  # (time.time(), message) for the report

    def send(self, msg: dict[str, Any]) -> float:
        """Send a control message; returns the wall-clock time the world acknowledged it."""
        data = json.dumps(msg).encode()
        deadline = time.monotonic() + self.timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.25)
            while True:
                s.sendto(data, self.addr)
                try:
                    reply = json.loads(s.recv(1024))
                except (TimeoutError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise StimulusError(f"the sim world on port {self.addr[1]} did not answer "
                                            f"{msg} within {self.timeout_s:.0f} s (is the device up?)") from None
                    time.sleep(0.05)
                    continue
                if not reply.get("ok"):
                    raise StimulusError(f"the sim world refused {msg}: {reply.get('err')}")
                at = time.time()
                self.sent.append((at, msg))
                return at

    def set(self, **values: Value) -> None:
        msg: dict[str, Any] = {k: bool(values.pop(k)) for k in ("net", "ntp", "hang") if k in values}
        if values:
            msg["set"] = values
        self.send(msg)

    def ramp(self, channel: str, points: Points) -> None:
        self.send({"ramp": {channel: [[float(t), float(v)] for t, v in points]}})

    def network(self, up: bool) -> None:
        self.send({"net": up})

    def hang(self) -> None:
        self.send({"hang": True})

    def close(self) -> None:
        pass


class SerialStimulus:
    """A stimulus board on a serial port (protocol in docs/hil.md).

    The rig map (JSON) names, per channel, the board output and its scaling, e.g.
    {"ch4": {"out": "I0", "lo": 0, "hi": 100}} for a 4-20 mA loop spanning 0-100 %LEL,
    {"level": {"out": "V0", "lo": 0, "hi": 5, "vlo": 0, "vhi": 3.3}} for a voltage output,
    {"cover": {"out": "R1"}} for a relay, {"net": {"out": "R0", "invert": true}} for the relay that
    powers the bench's Wi-Fi access point (closed = network up when not inverted).
    """

    BAUD = 115200

    def __init__(self, port: str, rig: dict[str, dict[str, Any]] | Path, timeout_s: float = 2.0) -> None:
        import serial

        self.rig: dict[str, dict[str, Any]] = (json.loads(Path(rig).read_text()) if isinstance(rig, Path)
                                               else dict(rig))
        self._lock = threading.Lock()
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self._port = serial.Serial(port, self.BAUD, timeout=timeout_s)
        hello = self._hello(boot_s=8.0)
        if not hello.startswith("lifeline-stim 1"):
            self.close()
            raise StimulusError(f"{port}: not a lifeline stimulus board (answered {hello!r})")
        self.outputs = set(hello.split()[2:])
        for channel, spec in self.rig.items():
            if spec.get("out") not in self.outputs:
                self.close()
                raise StimulusError(f"rig map: {channel} uses output {spec.get('out')!r}, which the board "
                                    f"does not have ({' '.join(sorted(self.outputs))})")

    def _hello(self, boot_s: float) -> str:
        """Opening the port may reset the board (DTR on many USB adapters): ask until it has booted."""
        deadline = time.monotonic() + boot_s
        while True:
            self._port.reset_input_buffer()
            try:
                return self.command("HELLO")
            except StimulusError:
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.5)

    def command(self, line: str) -> str:
        """One request line; returns the text after "OK", raises on "ERR" or silence."""
        with self._lock:
            self._port.write(line.encode() + b"\n")
            answer: str = self._port.readline().decode(errors="replace").strip()
        if answer.startswith("OK"):
            return answer[2:].strip()
        if answer.startswith("ERR"):
            raise StimulusError(f"stimulus board refused {line!r}: {answer[3:].strip()}")
        raise StimulusError(f"stimulus board did not answer {line!r} (got {answer!r})")

    def _spec(self, channel: str) -> dict[str, Any]:
        if channel not in self.rig:
            raise Unsupported(f"the rig map has no output for {channel!r}")
        return self.rig[channel]

    @staticmethod
    def level(spec: dict[str, Any], value: Value) -> str:
        """Engineering value -> the output's own unit (mA, V, relay state, pulses per hour)."""
        out = str(spec["out"])
        if out[0] == "R":
            return "1" if bool(value) != bool(spec.get("invert", False)) else "0"
        if out[0] == "P":
            return f"{float(value) / float(spec.get('mm_per_tip', 1.0)):.3f}"
        lo, hi = float(spec.get("lo", 0.0)), float(spec.get("hi", 1.0))
        a, b = (4.0, 20.0) if out[0] == "I" else (float(spec.get("vlo", 0.0)), float(spec.get("vhi", 3.3)))
        return f"{a + (b - a) * (float(value) - lo) / (hi - lo):.4f}"

    def set(self, **values: Value) -> None:
        for channel, value in values.items():
            if channel == "hang":
                self.hang()
                continue
            spec = self._spec(channel)
            self.command(f"SET {spec['out']} {self.level(spec, value)}")
        self.sent.append((time.time(), {"set": values}))

    def ramp(self, channel: str, points: Points) -> None:
        """Ramps run on the board's clock, segment by segment, so serial latency does not skew them."""
        spec = self._spec(channel)
        if str(spec["out"])[0] == "R":
            raise Unsupported(f"{channel} is a relay; it cannot ramp")
        self.command(f"STOP {spec['out']}")
        last = 0.0
        for t, v in points:
            self.command(f"RAMP {spec['out']} {round((t - last) * 1000)} {self.level(spec, v)}")
            last = t
        self.sent.append((time.time(), {"ramp": {channel: [list(p) for p in points]}}))

    def network(self, up: bool) -> None:
        self.set(net=up)

    def hang(self) -> None:
        raise Unsupported("a real board's main loop cannot be stalled from outside; the watchdog test "
                          "needs the sim backend")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._port.close()
