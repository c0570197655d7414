"""Device topics on the site broker, and the id rules every topic level follows. Other modules build and
parse topics only through here and protocol/district.py (the gateway's topics on the district broker).

Device side (site broker):  lifeline/v1/{site}/{device}/{kind}   kind: data, state, evt, cmd, ack, done,
otareq, ota

`done` is the gateway's confirmation to one device: the sequence numbers it has committed (docs/protocol.md,
Topics), a body small enough to read without the CBOR decoder: big-endian u64 pairs (first, last). The
gateway builds it (gateway/commit_watermark.py, done_body); a node reads it with done_ranges.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython: const() is MicroPython's compile-time constant, the value itself here
    def const(x):
        return x

ROOT = "lifeline/v1"

DATA = "data"
STATE = "state"
EVENT = "evt"
CMD = "cmd"
ACK = "ack"
DONE = "done"
OTA_REQ = "otareq"  # a node updating asks for a range of a release's bytes: "version offset length"
OTA = "ota"  # the gateway's answer: the offset (4 bytes, big-endian), then the bytes (docs/ota.md)
DEVICE_KINDS = (DATA, STATE, EVENT, CMD, ACK, DONE, OTA_REQ, OTA)
MAX_DONE_RANGES = 16

# const: folded away on MicroPython, so a node interns no name for them (docs/firmware.md, Memory)
_MAX_ID = const(32)
_ID_CHARS = const("abcdefghijklmnopqrstuvwxyz0123456789_-")


class TopicError(ValueError):
    pass


def check_id(value, name="id"):
    """Site and device ids: 1-32 of [a-z0-9_-], so they are safe as topic levels and in ACL patterns.
    `name` says which id, in the error (named so on purpose: a name a node interns anyway)."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise TopicError("%s must be 1-%d characters: %r" % (name, _MAX_ID, value))
    bad = value.strip(_ID_CHARS)  # the first character not allowed starts it; iterating a str would
    if bad:  # intern each character on MicroPython, a name per letter or digit of a node's ids
        raise TopicError("%s %r: character %r not allowed (use a-z 0-9 _ -)" % (name, value, bad[:1]))
    return value


def check_kind(kind, allowed):
    if kind not in allowed:
        raise TopicError("unknown kind %r (expected one of %s)" % (kind, ", ".join(allowed)))
    return kind


def device(site, dev, kind):
    return "%s/%s/%s/%s" % (ROOT, check_id(site, "site"), check_id(dev, "device"), check_kind(kind, DEVICE_KINDS))


def device_filter(site, kind):
    """Subscription filter for one kind from every device of a site."""
    return "%s/%s/+/%s" % (ROOT, check_id(site, "site"), check_kind(kind, DEVICE_KINDS))


def parse_device(topic):
    """(site, device, kind) of a device topic, or TopicError."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != ROOT:
        raise TopicError("not a device topic: %r" % topic)
    return check_id(parts[2], "site"), check_id(parts[3], "device"), check_kind(parts[4], DEVICE_KINDS)


def done_ranges(payload):
    """The (first, last) ranges of a confirmation body, or TopicError."""
    n = len(payload) // 16
    if len(payload) != n * 16 or n > MAX_DONE_RANGES:
        raise TopicError("confirmation of %d bytes" % len(payload))
    out = []
    for i in range(n):
        a, b = struct.unpack_from(">Q", payload, i * 16)[0], struct.unpack_from(">Q", payload, i * 16 + 8)[0]
        if a > b:
            raise TopicError("range %d > %d" % (a, b))
        out.append((a, b))
    return out
