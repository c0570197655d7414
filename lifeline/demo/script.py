"""The demo's incident as timed stimulus: the seed's ramps cut into datagrams the sim world can read, and a
thread that sends each on time, so that every device sees the values the seed declares at the moment it
declares them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lifeline.virtual import stimulus
from lifeline.virtual.plan import Site

DATAGRAM_MAX = 900  # the sim world reads control datagrams into 1024 bytes; SimStimulus adds a little


@dataclass(order=True)
class Send:
    """One ramp, due at `at` seconds of script time: (seconds from then, value) points for one channel."""

    at: float
    dev: str = field(compare=False)
    channel: str = field(compare=False)
    points: list[tuple[float, float]] = field(compare=False)


def schedule(site: Site, quick: bool, running: set[str]) -> list[Send]:
    """The whole incident as timed ramp datagrams for the running devices.

    A datagram holds about 60 points, so a long ramp is cut into pieces, each sent when its predecessor
    reaches its last point. A piece starts with its first point at offset 0 (the world's ramp interpolates
    from there, not from whatever value the channel held) and lists the rest relative to its send time."""
    sends = []
    for inc in site.incidents:
        start = inc.start(quick)
        for dev, channels in inc.stimulus.items():
            if dev not in running:
                continue
            for ch, pts in channels.items():
                i = 0
                while True:
                    t_i = pts[i][0]
                    piece = [(0.0, float(pts[i][1]))]
                    j = i + 1
                    while j < len(pts):
                        piece.append((round(pts[j][0] - t_i, 6), float(pts[j][1])))
                        if len(piece) > 2 and len(json.dumps({"ramp": {ch: piece}})) > DATAGRAM_MAX:
                            piece.pop()
                            break
                        j += 1
                    sends.append(Send(start + t_i, dev, ch, piece))
                    if j >= len(pts):
                        break
                    i = j - 1
    return sorted(sends)


class Player(threading.Thread):
    """Sends the scheduled ramps on time (script time 0 = `t0`, Unix seconds) through the bench's stimulus
    interface to each device's sim world."""

    def __init__(self, sends: list[Send], ports: Mapping[str, int], t0: float, on_error: Any) -> None:
        super().__init__(name="demo-player", daemon=True)
        self.sends = sends
        self.rigs = {dev: stimulus.SimStimulus(port, timeout_s=3.0) for dev, port in ports.items()}
        self.t0 = t0
        self.on_error = on_error
        self.stop = threading.Event()

    def run(self) -> None:
        for s in self.sends:
            delay = self.t0 + s.at - time.time()
            if delay > 0 and self.stop.wait(delay):
                return
            try:
                self.rigs[s.dev].ramp(s.channel, s.points)
            except stimulus.StimulusError as exc:
                self.on_error(f"{s.dev}: {exc}")
