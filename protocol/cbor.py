"""CBOR (RFC 8949) encoding for the device side, where there is no pip, and the types both directions share.

The same file runs on MicroPython and CPython. Decoding lives in protocol/cbor_decode.py, so a node that
only sends carries no decoder in its heap; the gateway decodes with cbor2.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython: const() is MicroPython's compile-time constant, the value itself here
    def const(x):
        return x

MAX_DEPTH = 16


class CBOREncodeError(ValueError):
    pass


class Tag:
    """A tagged item, such as Tag(1, 1363896240) for epoch time."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, obj):  # obj, not other: a name a node interns anyway
        return isinstance(obj, Tag) and self.tag == obj.tag and self.value == obj.value

    def __hash__(self):
        return hash((self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Simple:
    """A simple value without a Python counterpart (not false, true, null or undefined)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, obj):
        return isinstance(obj, Simple) and self.value == obj.value

    def __hash__(self):
        return hash(("simple", self.value))

    def __repr__(self):
        return "Simple(%d)" % self.value


class _Undefined:
    def __repr__(self):
        return "undefined"


UNDEFINED = _Undefined()
_U64 = const(0x10000000000000000)  # const: folded away on MicroPython, no interned name for a node


def head(out, major, n):
    """Append the head of an item of major type `major` with argument `n` (RFC 8949 section 3): a whole integer,
    or the start of a string, array or map whose content the caller writes."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))


def _float(out, f):
    if f != f:
        out.extend(b"\xf9\x7e\x00")
        return
    for code, fmt in ((0xF9, ">e"), (0xFA, ">f")):
        try:
            packed = struct.pack(fmt, f)
        except (OverflowError, ValueError):
            continue
        if struct.unpack(fmt, packed)[0] == f:
            out.append(code)
            out.extend(packed)
            return
    out.append(0xFB)
    out.extend(struct.pack(">d", f))


def _encode(out, obj, depth):
    if depth > MAX_DEPTH:
        raise CBOREncodeError("nesting deeper than %d" % MAX_DEPTH)
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif obj is UNDEFINED:
        out.append(0xF7)
    elif isinstance(obj, int):
        if 0 <= obj < _U64:
            head(out, 0, obj)
        elif -_U64 <= obj < 0:
            head(out, 1, -1 - obj)
        else:
            tag, n = (2, obj) if obj > 0 else (3, -1 - obj)
            head(out, 6, tag)
            size = 0
            while n >> (8 * size):
                size += 1
            raw = n.to_bytes(size, "big")
            head(out, 2, len(raw))
            out.extend(raw)
    elif isinstance(obj, float):
        _float(out, obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        head(out, 3, len(raw))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        head(out, 4, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif isinstance(obj, dict):
        # Keys in RFC 8949 4.2.1 order (bytewise on their encodings): MicroPython dicts keep no
        # insertion order, and one value must give the same bytes on both interpreters.
        keyed = []
        for key in obj:
            kb = bytearray()
            _encode(kb, key, depth + 1)
            keyed.append((bytes(kb), key))
        keyed.sort()  # by encoding: distinct keys encode differently, so keys are never compared
        head(out, 5, len(obj))
        for kb, key in keyed:
            out.extend(kb)
            _encode(out, obj[key], depth + 1)
    elif isinstance(obj, Tag):
        head(out, 6, obj.tag)
        _encode(out, obj.value, depth + 1)
    elif isinstance(obj, Simple):
        v = obj.value
        if 0 <= v < 24:
            out.append(0xE0 | v)
        elif 32 <= v < 256:  # 24..31 have no well-formed encoding (RFC 8949 section 3.3)
            out.append(0xF8)
            out.append(v)
        else:
            raise CBOREncodeError("simple(%d) cannot be encoded" % v)
    else:
        raise CBOREncodeError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)
