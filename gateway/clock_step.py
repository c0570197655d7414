"""Noticing that the wall clock was set while the gateway runs.

The gateway dates everything it sends on the wall clock, and measures its spans (a device's silence, an
alarm's re-send, a command's deadline) as differences of wall times. A site box without a real-time clock
boots on the time it was switched off at, and NTP sets it forward by the whole outage once the link is back;
an operator may set it back by hand. Each step would look like a span that did not pass: a stale alarm for
every device at once, every pending command timed out, or a dead device hidden for as long as the step.
The monotonic clock is never set, so the difference between the two clocks' advances since the last look is
the step, and the gateway moves its own deadlines by it (`Gateway.clock_stepped`).
"""

from __future__ import annotations

# Steps smaller than this are left alone: they move a deadline by less than a tick's jitter. NTP's slewing
# changes the clock's rate by at most 500 ppm (RFC 5905), half a millisecond for each second between looks.
STEP_S = 2.0


class ClockWatch:
    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None
        self.steps = 0  # found so far, for the metrics

    def step(self, wall: float, mono: float) -> float:
        """Seconds the wall clock was set by (forward positive) since the last look, or 0.0."""
        last, self._last = self._last, (wall, mono)
        if last is None:
            return 0.0
        stepped = (wall - last[0]) - (mono - last[1])
        if abs(stepped) < STEP_S:
            return 0.0
        self.steps += 1
        return stepped
