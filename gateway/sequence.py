"""Per-device sequence accounting: tell new messages from duplicates and replays, and find gaps.

A device numbers every queued message (data and events share one counter that survives reboots), but the
numbers do not arrive in order: an alarm pack jumps the device's flash backlog, and the backlog of an outage
drains after it. So the state is not a "last seen" number but the span [low, high] of numbers seen, minus
the holes not yet filled. A hole is only a gap once it has stayed open for the grace period; it is then
reported upstream, and if the missing message turns up after all, that is reported too ("recovered").

Everything at or below the floor is a replay: the floor trails the highest number by the window, and rises
further if a device leaves more holes open than `MAX_HOLES` (the oldest hole is then written off as lost).

A number is only ever presented by the device (a message is MACed with its key) or by a replay of the
device's own messages, but an authentic number can still be bogus: a corrupted counter sends one huge
number, the floor jumps with it and every later message would be a replay. The way out is the device's
next boot: a message of a boot newer than any in the window (a birth, whose seq is the next number, or a
data or event message when the birth was lost) whose number is at or below the highest seen proves that
highest number wrong, since a counter that survives reboots only grows. The window then restarts at that
number, as a Sparkplug host restarts on a new bdSeq. A replay cannot do this: a recorded message of a newer
boot carries a number above everything its device sent before it.

After a restart the window admits the older boots' backlog below the number the restarting boot began at (a
device whose counter sent one bogus number still holds it), but an older boot's message at or above that number
is no backlog: that boot's counter stood below it, so it is a recording (or the bogus number itself), a replay,
and so is such a boot's birth (its will is stale). Admitted, it would take the new count's number, and the
device's own message of it would be a duplicate, confirmed: the node forgets a reading the gateway never stored.
A wiped node begins at 0 again, so all of its old count is refused. Each restart's (boot, first number) is kept,
so a later restart does not undo an earlier one's limit (a wiped node whose counter then went bogus); the oldest
goes past `MAX_RESTARTS`, and the boots before it take the next one's limit.

State is one JSON row per device, written by `flush()` inside the ingest batch's transaction (this module
never commits). JSON text, not an SQLite INTEGER (signed 64-bit), so numbers up to 2^64-1 are stored exact.
"""

from __future__ import annotations

import bisect
import enum
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway import device_states
from gateway.logs import event
from gateway.store import from_json, to_json

log = logging.getLogger("lifeline.gateway.sequence")

MAX_HOLES = 1024
MAX_RESTARTS = 8


class Verdict(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    STALE = "stale"  # an old will or state that arrived late: harmless, dropped, counted
    RETAINED = "retained"  # the broker's retained copy of the state taken, sent again at a subscribe: dropped


@dataclass(frozen=True)
class Gap:
    """Sequence numbers first..last of one device: missing ("gap"), or found after all ("recovered")."""

    dev: str
    first: int
    last: int
    since: float
    kind: str


@dataclass(slots=True)
class _Hole:
    first: int
    last: int
    since: float
    reported: bool = False


# The holes of every device that has none: one list instead of one a device (56 bytes and an object the
# collector walks, at 50,000 devices). Never changed: check() gives a device a list of its own before its
# first hole, and the other changes of `holes` take place only where there is one.
_NO_HOLES: list[_Hole] = []


@dataclass(slots=True)
class _Device:
    floor: int = -1
    low: int | None = None
    high: int = -1
    holes: list[_Hole] = field(default_factory=lambda: _NO_HOLES)  # sorted and disjoint
    state_key: tuple[int, int, bool] | None = None  # (boot, seq, online) of the last state message
    boot: int = -1  # highest boot count seen in a birth
    duplicates: int = 0
    replays: int = 0
    gaps: int = 0
    high_boot: int = -1  # the newest boot of the numbers in the window
    # (boot, first number) of each restart, oldest first, first numbers rising (recorded()); most devices share ()
    restarts: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> str:
        holes = [[h.first, h.last, h.since, h.reported] for h in self.holes]
        return to_json([self.floor, self.low, self.high, holes, self.state_key, self.boot,
                        self.duplicates, self.replays, self.gaps, self.high_boot, self.restarts])

    @classmethod
    def from_json(cls, text: str) -> _Device:
        f, lo, hi, holes, sk, boot, d, r, g, *rest = from_json(text)
        # A row written before boots were kept: its window is taken to be of the newest boot born, so only a
        # later boot can restart it. One written before restarts were kept knows none.
        high_boot = rest[0] if rest else boot
        restarts = tuple((b, s) for b, s in rest[1]) if len(rest) > 1 else ()
        return cls(f, lo, hi, [_Hole(*h) for h in holes] if holes else _NO_HOLES, None if sk is None else tuple(sk),
                   boot, d, r, g, high_boot, restarts)

    def recorded(self, boot: int, seq: int) -> bool:
        """Whether number `seq` of boot `boot` is at or above where a later boot's restart began: no older
        boot's own (its counter stood below there), so a recording, or the bogus number itself."""
        for b, first in self.restarts:
            if boot < b:
                return seq >= first
        return False


class SequenceTracker:
    def __init__(self, conn: sqlite3.Connection, window: int = 65536, grace_s: float = 300.0,
                 capacity: int = device_states.CAPACITY) -> None:
        self.window = window
        self.grace_s = grace_s
        self._devices = device_states.DeviceStates(conn, "seq_state", "state", _Device.from_json, _Device.to_json,
                                                   capacity)
        self._events: list[Gap] = []
        self._flushed = 0  # events before this index were flushed with their batch: a later rollback keeps them
        # Devices whose window a data or event message of a newer boot restarted in the open batch: their
        # commit confirmations name numbers of the old count, and the ingest drops them (its `_data`).
        self.restarted: set[str] = set()
        self._find_holed()

    def _find_holed(self) -> None:
        # Devices that may hold a hole not yet reported: due() looks at these only, not at every device a
        # second (9 ms at 50,000). A device joins when a hole opens and leaves when due() finds none unreported.
        self._holed = {dev for dev, d in self._devices.items() if d.holes}

    def _dev(self, dev: str) -> _Device:
        d = self._devices.get(dev)
        if d is None:
            d = _Device()
            self._devices.put(dev, d)
        else:
            self._devices.changed(dev)
        return d

    def check(self, dev: str, seq: int, now: float, boot: int = 0) -> Verdict:
        """Account for data or event number `seq` of boot `boot` of `dev` received at `now`."""
        d = self._dev(dev)
        if boot > d.high_boot and seq <= d.high:
            self._restart(dev, d, boot, seq, seq)
            self.restarted.add(dev)
        if seq <= d.floor or (d.restarts and d.recorded(boot, seq)):
            d.replays += 1
            return Verdict.REPLAY
        if d.low is None:
            d.low = d.high = seq
            self._raise_floor(dev, d, seq - self.window)
        elif seq > d.high:
            if seq > d.high + 1:
                if d.holes is _NO_HOLES:
                    d.holes = []
                d.holes.append(_Hole(d.high + 1, seq - 1, now))
                self._holed.add(dev)
            d.high = seq
            self._raise_floor(dev, d, seq - self.window)
        elif seq < d.low:
            if seq < d.low - 1:
                if d.holes is _NO_HOLES:
                    d.holes = []
                d.holes.insert(0, _Hole(seq + 1, d.low - 1, now))
                self._holed.add(dev)
            d.low = seq
        elif not self._fill(dev, d, seq):
            d.duplicates += 1
            return Verdict.DUPLICATE
        if len(d.holes) > MAX_HOLES:
            self._raise_floor(dev, d, d.holes[0].last)
        d.high_boot = max(d.high_boot, boot)
        return Verdict.NEW

    def _restart(self, dev: str, d: _Device, boot: int, seq: int, last: int) -> None:
        """Forget a window whose highest number a newer boot proved bogus; `last` is the device's latest
        number, and the window below it stays open for the backlog it may still send. Open holes go too:
        they lie between numbers of which one was wrong."""
        event(log, "sequence", logging.WARNING, kind="reset", dev=dev, boot=boot, seq=seq, high=d.high)
        d.floor, d.low, d.high, d.holes, d.high_boot = max(last - self.window, -1), None, -1, _NO_HOLES, boot
        # An earlier restart at or above `seq` says no more than this one; the oldest go past MAX_RESTARTS.
        d.restarts = (*[r for r in d.restarts if r[1] < seq][1 - MAX_RESTARTS:], (boot, seq))

    def _fill(self, dev: str, d: _Device, seq: int) -> bool:
        i = bisect.bisect_right(d.holes, seq, key=lambda h: h.first) - 1
        if i < 0 or seq > d.holes[i].last:
            return False
        h = d.holes[i]
        d.holes[i:i + 1] = [_Hole(a, b, h.since, h.reported)
                             for a, b in ((h.first, seq - 1), (seq + 1, h.last)) if a <= b]
        if h.reported:
            self._events.append(Gap(dev, seq, seq, h.since, "recovered"))
        return True

    def _raise_floor(self, dev: str, d: _Device, floor: int) -> None:
        if floor <= d.floor:
            return
        d.floor = floor
        if d.low is not None and d.low <= floor:
            d.low = floor + 1
        while d.holes and d.holes[0].first <= floor:
            h = d.holes[0]
            if not h.reported:
                d.gaps += 1
                self._events.append(Gap(dev, h.first, min(h.last, floor), h.since, "gap"))
            if h.last <= floor:
                d.holes.pop(0)
            else:
                h.first = floor + 1

    def check_state(self, dev: str, boot: int, seq: int, online: bool, retained: bool = False) -> Verdict:
        """A birth or death. An older boot's birth is a replay; an older boot's death is a late will. A birth
        of a newer boot whose next number is not above the highest seen restarts the window; after it, an older
        boot's birth at or above where the restart began is a replay, its will stale. The same state
        again is the device's duplicate, unless `retained`: the broker sends its copy at every subscribe (each
        gateway restart or reconnect), which says nothing of the device."""
        d = self._dev(dev)
        key = (boot, seq, online)
        if key == d.state_key:
            if retained:
                return Verdict.RETAINED
            d.duplicates += 1
            return Verdict.DUPLICATE
        if (d.state_key is not None and (boot, seq) < d.state_key[:2]) or d.recorded(boot, seq):
            if online:
                d.replays += 1
                return Verdict.REPLAY
            return Verdict.STALE
        d.state_key = key
        if online:
            d.boot = max(d.boot, boot)
            if boot > d.high_boot and seq <= d.high:  # a birth's seq is the number the device uses next
                self._restart(dev, d, boot, seq, seq - 1)
        return Verdict.NEW

    def clock_stepped(self, step: float) -> None:
        """The wall clock was set by `step` seconds: a hole's grace period is a span, so the time it was seen
        moves with the clock (the old reading of the clock was off by the step)."""
        for dev in self._holed:
            d = self._devices.get(dev)
            if d is not None:
                for h in d.holes:
                    if not h.reported:
                        h.since += step
                self._devices.changed(dev)

    def due(self, now: float) -> list[Gap]:
        """Gaps past their grace period and recoveries since the last call; each is returned once."""
        settled = []
        for dev in self._holed:
            d = self._devices.get(dev)
            if d is None:  # written off with its window by a rollback
                settled.append(dev)
                continue
            waiting = False
            for h in d.holes:
                if h.reported:
                    continue
                if h.since + self.grace_s <= now:
                    h.reported = True
                    d.gaps += 1
                    self._devices.changed(dev)
                    self._events.append(Gap(dev, h.first, h.last, h.since, "gap"))
                else:
                    waiting = True
            if not waiting:
                settled.append(dev)
        self._holed.difference_update(settled)
        out, self._events, self._flushed = self._events, [], 0
        return out

    def stats(self, dev: str) -> tuple[int, int, int]:
        """(duplicates, replays, gaps reported) for one device."""
        d = self._devices.peek(dev)
        return (d.duplicates, d.replays, d.gaps) if d else (0, 0, 0)

    def open_holes(self, dev: str) -> int:
        d = self._devices.peek(dev)
        return sum(h.last - h.first + 1 for h in d.holes) if d else 0

    def held(self) -> tuple[int, int]:
        """(devices whose state is in memory, states read back from the store so far): every heard device has a
        sequence window, so these stand for all per-device state (the metrics lifeline_devices_in_memory and
        lifeline_device_states_read)."""
        return self._devices.held(), self._devices.reads

    def prefetch(self, devs: Iterable[str]) -> None:
        """Read the state of a batch's devices at once (device_states.DeviceStates.prefetch)."""
        self._devices.prefetch(devs)

    def flush(self) -> None:
        """Write changed devices into the current transaction (the caller commits)."""
        self._devices.flush()
        self._flushed = len(self._events)

    def rollback(self) -> None:
        """Forget unflushed changes after a failed batch: the (rolled back) store is read again. The gaps and
        recoveries of batches flushed before it wait for `due()` still: their holes are gone from the store.
        (A commit that fails after its flush leaves its batch's events too; the batch comes again, and the
        district is told twice.)"""
        self._devices.forget()
        del self._events[self._flushed:]
        self.restarted.clear()
        self._find_holed()


def sequence_stats(conn: sqlite3.Connection) -> dict[str, tuple[int, int, int]]:
    """(duplicates, replays, gaps reported) per device, read straight from a store (for `lifeline status`)."""
    out = {}
    for dev, text in conn.execute("SELECT dev, state FROM seq_state"):
        d = _Device.from_json(text)
        out[dev] = (d.duplicates, d.replays, d.gaps)
    return out
