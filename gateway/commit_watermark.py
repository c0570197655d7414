"""Per-device confirmations of what the gateway has committed, so that a device forgets a message only once it
is in the store, not when the site broker has it (a broker saves to disk every 30 s; a power cut of the site
box took back what it held in memory).

After each ingest commit the gateway publishes, for every device heard from in the batch, the ranges of that
device's sequence numbers it has committed, retained, on lifeline/v1/{site}/{dev}/done (protocol/topics.py).
Ranges, not one number: alarm packs jump the device's backlog, so numbers are committed out of order, and a
single "everything up to N" would either wait for the backlog or pass over messages the gateway never had.
A device heard from again (a re-send the sequence window refused as a duplicate) is confirmed again, its
number put back in the ranges, so a confirmation lost with the broker costs a re-send, never a message. So is a
message refused into the quarantine whose MAC and number are the device's own (daemon.Gateway._heard): the node
would hold it and send it again at every resend. The ranges live in the store, written in the batch's own
transaction; at most topics.MAX_DONE_RANGES per device: past that the lowest one the device has been told of is
given up (`_give_up`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from gateway import device_states
from gateway.logs import event
from gateway.store import from_json, to_json
from protocol import topics

log = logging.getLogger("lifeline.gateway.commit_watermark")

Publish = Callable[..., Awaitable[None]]
WINDOW = 64  # confirmations awaiting their PUBACK at once (the link also keeps within the broker's Receive Maximum)
LOG_INTERVAL_S = 10.0  # confirmations not sent are logged at most this often, with the count folded away


def done_body(ranges: list[tuple[int, int]]) -> bytes:
    """The confirmation body a node reads with protocol.topics.done_ranges: each (first, last) range of
    committed numbers as two big-endian u64, at most topics.MAX_DONE_RANGES. Built here, not in topics.py,
    which every node loads: there its name would be one more a node interns (docs/firmware.md, Memory)."""
    if len(ranges) > topics.MAX_DONE_RANGES:
        raise topics.TopicError(f"at most {topics.MAX_DONE_RANGES} ranges")
    return b"".join(struct.pack(">QQ", a, b) for a, b in ranges)


class Confirmations:
    def __init__(self, conn: sqlite3.Connection, site: str, capacity: int = device_states.CAPACITY) -> None:
        self.site = site
        # Each device's ranges as one flat list, first and last of each range in turn, oldest first: one list
        # of ints a device rather than a list of two-item lists (about 90 bytes less each, at 50,000 devices).
        # The stored form stays a JSON list of [first, last] pairs.
        self._ranges = device_states.DeviceStates(conn, "done_ranges", "ranges", _flat, _stored, capacity)
        self._touched: set[str] = set()
        # Per device, numbers committed out of order since its confirmation was last built (with the highest range
        # of the time when a range opened above it): the ranges holding them are the ones the device may not
        # have heard of, which _give_up keeps. Only out of order: the common message, the next number after the
        # highest range, is in the range every give-up keeps. In memory: after a restart every range counts as told.
        self._untold: dict[str, set[int]] = {}
        # Devices to confirm, in the order their batches committed, each once. A queue and a set, not a dict taken
        # from the front: a dict's first key is found by walking past the slots of those taken before it, which
        # made 50,000 due devices cost 0.7 s of CPU to take in turn (docs/performance.md).
        self._queue: deque[str] = deque()
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self.published = 0
        self.not_sent = 0
        self._logged_at: float | None = None
        self._suppressed = 0

    def committed(self, dev: str, seq: int) -> None:
        """Data or event number `seq` of `dev` is in this batch (call before its commit)."""
        rs = self._ranges.get(dev)
        if rs is None:
            self._ranges.put(dev, [seq, seq])
        elif not rs:
            rs[:] = [seq, seq]
        elif rs[-1] == seq - 1:  # the next number after the newest range, as it is nearly always
            rs[-1] = seq
        else:
            i = bisect.bisect_right(rs[0::2], seq)  # ranges starting at or below seq
            if i and rs[2 * i - 1] >= seq:
                self._touched.add(dev)
                return
            if i and rs[2 * i - 1] == seq - 1:
                rs[2 * i - 1] = seq
                i -= 1
            else:
                if 2 * i == len(rs):  # a range above the highest: the one it was has grown unseen by _untold
                    self._untold.setdefault(dev, set()).add(rs[-1])
                rs[2 * i:2 * i] = [seq, seq]
            if 2 * i + 2 < len(rs) and rs[2 * i + 2] == rs[2 * i + 1] + 1:  # it joins the next range
                rs[2 * i + 1] = rs[2 * i + 3]
                del rs[2 * i + 2:2 * i + 4]
            untold = self._untold.setdefault(dev, set())
            untold.add(seq)
            if len(rs) > 2 * topics.MAX_DONE_RANGES:
                self._give_up(rs, i, untold)
        self._ranges.changed(dev)
        self._touched.add(dev)

    @staticmethod
    def _give_up(rs: list[int], i: int, untold: set[int]) -> None:
        """One range too many: the lowest the device has been told of goes, not one it may still hold records of:
        the range `i` just committed into, the highest (grown at every message) and those holding a number not yet
        in a confirmation built. A backlog drained oldest first behind alarm packs, each a range of its own, had
        its own range given up as soon as a number joined it, so none of it was ever confirmed. Only when every
        range is untold, the lowest but `i`."""
        last = len(rs) // 2 - 1
        told = (k for k in range(last) if k != i and not any(rs[2 * k] <= n <= rs[2 * k + 1] for n in untold))
        k = next(told, 1 if i == 0 else 0)
        del rs[2 * k:2 * k + 2]

    def started_over(self, dev: str, seq: int) -> None:
        """A birth whose next number, or a message of a newer boot whose number, is not above what was
        committed: the device's counter started over (its flash was wiped), and the old ranges would make it
        forget new messages; they go. Called before the message's own number is committed."""
        rs = self._ranges.get(dev)
        if rs and seq <= rs[-1]:
            event(log, "confirmations-reset", logging.WARNING, dev=dev, seq=seq, top=rs[-1])
            rs.clear()
            self._ranges.changed(dev)
            self._touched.add(dev)

    def heard(self, dev: str) -> None:
        """A message of `dev` that was not admitted (a duplicate, say): confirm again what it has."""
        if self._ranges.peek(dev):
            self._touched.add(dev)

    def prefetch(self, devs: Iterable[str]) -> None:
        """Read the state of a batch's devices at once (device_states.DeviceStates.prefetch)."""
        self._ranges.prefetch(devs)

    def flush(self) -> None:
        """Write the changed devices into the current transaction (the caller commits)."""
        self._ranges.flush()

    def rollback(self) -> None:
        """Forget what a failed batch added: the (rolled back) store is read again."""
        self._ranges.forget()
        self._touched.clear()

    def committed_now(self) -> None:
        """The batch is committed: its devices' confirmations may go out."""
        if self._touched:
            self._queue.extend(self._touched - self._due)
            self._due |= self._touched
            self._touched.clear()
            self._wake.set()

    def due(self) -> list[str]:
        """The devices whose confirmation has not gone out yet, in the order they go."""
        return list(self._queue)

    def due_count(self) -> int:
        return len(self._due)

    def body(self, dev: str) -> bytes:
        """The confirmation of what is committed for `dev`. Between batches (a batch is handled without a turn of
        the event loop) the ranges held are the committed ones. Built, it tells the device of them all."""
        self._untold.pop(dev, None)
        return done_body(_pairs(self._ranges.peek(dev) or []))

    async def run(self, publish: Publish, window: int = WINDOW) -> None:
        """Publish the due confirmations (retained, QoS 1), up to `window` at once, each built as it goes, so a
        device heard in many batches gets one with its newest ranges. One at a time, a site under full load
        confirmed about one device per ingest batch (docs/performance.md, "Commit confirmations under load").
        Two for one device go out in the order built, so the broker retains the newer. One that cannot go now
        is not kept: the device re-sends what stays unconfirmed, and that brings a new one."""
        slots = asyncio.Semaphore(window)
        async with asyncio.TaskGroup() as sending:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await slots.acquire()
                    dev = self._queue.popleft()
                    self._due.discard(dev)
                    sending.create_task(self._send(publish, dev, self.body(dev), slots))
                self._due.clear()  # empty already; clear() lets go of the table a burst grew (2 MB at 50,000)

    async def _send(self, publish: Publish, dev: str, body: bytes, slots: asyncio.Semaphore) -> None:
        try:
            await publish(topics.device(self.site, dev, topics.DONE), body, qos=1, retain=True)
            self.published += 1
        except Exception as exc:  # not connected: every due device fails at once, so one line per interval
            self.not_sent += 1
            now = time.monotonic()
            if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL_S:
                event(log, "confirmation-not-sent", logging.WARNING, dev=dev, error=str(exc),
                      suppressed=self._suppressed, total=self.not_sent)
                self._logged_at, self._suppressed = now, 0
            else:
                self._suppressed += 1
        finally:
            slots.release()


def _pairs(flat: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each range of a device's flat list."""
    return list(zip(flat[0::2], flat[1::2], strict=True))


def _flat(text: str) -> list[int]:
    return [n for r in from_json(text) for n in r]


def _stored(flat: list[int]) -> str:
    return to_json(_pairs(flat))
