"""Every check one device message passes before the gateway believes it.

In order: the topic is a device topic of this site; the device is registered; size, CBOR, COSE_Mac0 MAC with
the device's key and body schema (protocol.message_check.decode); the key id's device is the topic's device; the
sequence number is new (duplicates are dropped and counted, replays rejected); and the reading times are
plausible. A failure quarantines the raw message with its reason and returns None: it never raises, so
one bad message cannot take the good ones beside it down.

A reading's metric is its SenML name after the last ":", so a base name such as "gas-01:" (docs/protocol.md)
does not hide the metric from the rules.

Times are not rejected but judged. On an epoch clock (clk=0), SenML times below 2**28 are relative to "now"
(RFC 8428 section 4.5.3), so they are taken from the arrival time; absolute times too far in the future or
past are flagged and replaced by the arrival time for alarm evaluation. On a boot clock (clk=1), times are
converted with the gateway's estimate of when that boot started (from a live birth, see registry.py);
without one they are flagged "unknown" the same way, as is a time that is no number (NaN). The flag and the
device's own time travel upstream.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from gateway.device_list import DeviceConfig
from gateway.message_decode import Decoded, decode, own_number
from gateway.quarantine import Quarantine
from gateway.registry import Registry
from gateway.sequence import SequenceTracker, Verdict
from protocol import message, topics

RELATIVE_LIMIT = 2 ** 28  # RFC 8428 section 4.5.3

# Clock verdicts of a reading
CLOCK_OK = "ok"  # epoch time within tolerance
CLOCK_BOOT = "boot"  # boot clock converted with the estimated boot time
CLOCK_FUTURE = "future"
CLOCK_PAST = "past"
CLOCK_UNKNOWN = "unknown"  # boot clock, boot time not known
TRUSTED = (CLOCK_OK, CLOCK_BOOT)
VALUE_FIELDS = ("v", "vb", "vs", "vd", "s")  # a resolved record's value fields (protocol.senml_resolve)


class Reading(NamedTuple):
    """One resolved reading. A NamedTuple rather than a frozen dataclass: one is built for every reading the
    gateway admits, and a tuple is built in a fraction of the time."""

    name: str  # as resolved: base name + name, e.g. "gas-01:ch4"
    metric: str  # the name without the base name's prefix, as rules know it: "ch4"
    value: float | str | bool | bytes
    unit: str | None
    t: float  # epoch seconds to judge by: the device's time if trusted, else the arrival time
    t_device: float  # the time as the device sent it (on its own clock)
    clock: str
    # The SenML value fields as the device sent them (v, vs, vb, vd and a sum s, resolved): `value` is what
    # the rules judge, these are what goes upstream, so a sum stays a sum and data stays data.
    fields: tuple[tuple[str, Any], ...] = ()


class Checked(NamedTuple):
    """A message that passed: its kind, device, decoded body and (data and events) resolved readings. A
    NamedTuple for the reason Reading is one (a frozen dataclass took 1.4 µs a message to build, this 0.5)."""

    kind: str
    device: DeviceConfig
    body: Mapping[str, Any]
    readings: tuple[Reading, ...]
    retained: bool
    raw: bytes = b""  # the message as the device sealed it, forwarded upstream as its proof of origin


class Checker:
    def __init__(self, site: str, registry: Registry, sequence: SequenceTracker, quarantine: Quarantine,
                 clock_future_s: float = 120.0, clock_past_s: float = 30 * 86400.0) -> None:
        self.site = site
        self.registry = registry
        self.sequence = sequence
        self.quarantine = quarantine
        self.clock_future_s = clock_future_s
        self.clock_past_s = clock_past_s
        self.dropped: Counter[str] = Counter()  # accepted by the checks but not new: duplicate, stale
        self.flagged: Counter[str] = Counter()  # readings by clock verdict other than ok
        # (device, number) of the last data or event message not admitted that the gateway nonetheless holds, until
        # the ingest takes it to confirm: a duplicate (committed before), or a message of the device's own MAC and
        # number refused as `schema` (in the quarantine once the batch commits). Its device holds it until a
        # confirmation names it, and sends it again at every connect and resend otherwise. Not a replay: after a
        # bogus huge number every genuine message is one until the device's next boot, which takes them.
        self.kept: tuple[str, int] | None = None

    def _reject(self, reason: str, detail: str, topic: str, raw: bytes, now: float) -> None:
        self.quarantine.put(reason, detail, topic, raw, now)

    def check(self, topic: str, raw: bytes, retained: bool, now: float,
              decoded: Decoded | None = None) -> Checked | None:
        """The message admitted, or None once it is quarantined or counted. `decoded`: what `decode` made of it
        elsewhere (gateway/check_stage.py); without it the message is decoded here."""
        try:
            site, dev, kind = topics.parse_device(topic)
        except topics.TopicError as exc:
            self._reject("topic", str(exc), topic, raw, now)
            return None
        if site != self.site or kind == topics.CMD:
            self._reject("topic", f"not a device uplink topic of site {self.site}", topic, raw, now)
            return None
        device = self.registry.devices.get(dev)
        if device is None:
            self._reject("unknown-device", f"device {dev!r} is not in the registry", topic, raw, now)
            return None
        dev = device.id  # the registry's string, not the topic's: per-device state keeps one copy of each id
        if decoded is None:
            try:
                decoded = decode(kind, raw, self.registry.devices.key_for)
            except Exception as exc:  # a bug must not stop the daemon nor flood its log: kept, logged per interval
                self.quarantine.put("internal", f"{type(exc).__name__}: {exc}", topic, raw, now, exc)
                return None
        if not decoded[0]:
            self._reject(decoded[1], decoded[2], topic, raw, now)
            if decoded[1] == "schema" and kind in (topics.DATA, topics.EVENT):
                seq = own_number(raw, kind, dev, device.key)
                if seq is not None:
                    self.kept = (dev, seq)
            return None
        _, body, records = decoded
        if body["dev"] != dev:
            self._reject("device-mismatch", f"key id says {body['dev']!r}, topic says {dev!r}", topic, raw, now)
            return None
        readings: tuple[Reading, ...] = ()
        if kind in (topics.DATA, topics.EVENT):
            verdict = self.sequence.check(dev, body["seq"], now, body["boot"])
            if verdict is not Verdict.NEW:
                if verdict is Verdict.DUPLICATE:
                    self.kept = (dev, body["seq"])
                self._new(verdict, f"seq {body['seq']} is at or below the window floor", topic, raw, now)
                return None
            readings = self._readings(dev, body, records, now)
        elif kind == topics.STATE:
            online = body["st"] == message.ONLINE
            verdict = self.sequence.check_state(dev, body["boot"], body["seq"], online, retained)
            if not self._new(verdict, f"birth of boot {body['boot']} after a newer one", topic, raw, now):
                return None
        self.registry.seen(dev, now)
        return Checked(kind, device, body, readings, retained, raw)

    def _new(self, verdict: Verdict, replay: str, topic: str, raw: bytes, now: float) -> bool:
        """Whether the sequence verdict admits the message: a replay is quarantined with its reason, a
        duplicate or an old number only counted."""
        if verdict is Verdict.REPLAY:
            self._reject("replay", replay, topic, raw, now)
            return False
        if verdict is not Verdict.NEW:
            self.dropped[verdict.value] += 1
            return False
        return True

    def _readings(self, dev: str, body: Mapping[str, Any], records: list[dict[str, Any]],
                  now: float) -> tuple[Reading, ...]:
        boot_clock = body["clk"] == message.CLK_BOOT
        epoch = self.registry.boot_epoch(dev, body["boot"]) if boot_clock else None
        out = []
        for rec in records:
            try:
                t_dev = float(rec["t"])
            except OverflowError:  # an integer past a float's range (CBOR's): as far off as an infinity is
                t_dev = math.inf if rec["t"] > 0 else -math.inf
            if boot_clock:
                clock = CLOCK_UNKNOWN if epoch is None else CLOCK_BOOT
                t = now if epoch is None else epoch + t_dev
            elif abs(t_dev) < RELATIVE_LIMIT:
                clock, t = CLOCK_OK, now + t_dev
            else:
                clock, t = CLOCK_OK, t_dev
            if clock in TRUSTED and t > now + self.clock_future_s:
                clock, t = CLOCK_FUTURE, now
            elif clock in TRUSTED and not t >= now - self.clock_past_s:  # a NaN is no time: not trusted either
                clock, t = CLOCK_PAST if t == t else CLOCK_UNKNOWN, now
            if clock != CLOCK_OK:
                self.flagged[clock] += 1
            # A resolved record has at most one value field, and a sum when it has none.
            value: Any
            if "v" in rec and "s" not in rec:  # the common record: a number and nothing else
                value = rec["v"]
                fields: tuple[tuple[str, Any], ...] = (("v", value),)
            else:
                value = rec["v"] if "v" in rec else next((rec[k] for k in ("vb", "vs", "vd") if k in rec), None)
                if value is None:  # a sum-only record
                    value = rec["s"]
                fields = tuple((k, rec[k]) for k in VALUE_FIELDS if k in rec)
            name = rec["n"]
            # The metric is interned: the alarm engine keeps it in each track's key, one copy for all devices.
            out.append(Reading(name, sys.intern(name.rpartition(":")[2]), value, rec.get("u"), t, t_dev, clock,
                               fields))
        return tuple(out)
