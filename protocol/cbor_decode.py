"""A strict CBOR (RFC 8949) decoder for what arrives from the network: on a node, commands.

The same file runs on MicroPython and CPython. Every length is checked against the input before anything
is allocated, nesting is bounded, and any malformation surfaces as CBORDecodeError and nothing else.
It is plain functions over a one-element position list rather than a decoder class: a node loads it
beside its running app for each command, where every method and attribute name costs heap.
"""

import struct
import sys

from protocol.cbor import MAX_DEPTH, UNDEFINED, Simple, Tag

try:
    from micropython import const
except ImportError:  # CPython: const() is MicroPython's compile-time constant, the value itself here
    def const(x):
        return x

_MICROPYTHON = sys.implementation.name == "micropython"
_BREAK = object()
_UINT = const(("B", ">H", ">I", ">Q"))  # additional information 24..27; const: no interned name on a node


class CBORDecodeError(ValueError):
    pass


def _utf8_ok(b):
    """MicroPython's decoder lets surrogates and some overlong forms through; CPython's does not.
    Per lead byte: how many continuation bytes follow, and the range the first of them must be in."""
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        i += 1
        if c < 0x80:
            continue
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            need = 2
            lo, hi = (0xA0, 0xBF) if c == 0xE0 else (0x80, 0x9F) if c == 0xED else (0x80, 0xBF)
        elif 0xF0 <= c <= 0xF4:
            need = 3
            lo, hi = (0x90, 0xBF) if c == 0xF0 else (0x80, 0x8F) if c == 0xF4 else (0x80, 0xBF)
        else:
            return False
        if i + need > n or not lo <= b[i] <= hi:
            return False
        for k in range(1, need):
            if not 0x80 <= b[i + k] <= 0xBF:
                return False
        i += need
    return True


def _take(d, p, n):
    """The next n bytes of d from position p[0], which moves past them."""
    end = p[0] + n
    if end > len(d):
        raise CBORDecodeError("truncated: need %d bytes at offset %d, %d left" % (n, p[0], len(d) - p[0]))
    chunk = d[p[0]:end]
    p[0] = end
    return chunk


def _argument(d, p, ai):
    if ai < 24:
        return ai
    if ai < 28:
        return struct.unpack(_UINT[ai - 24], _take(d, p, 1 << (ai - 24)))[0]
    raise CBORDecodeError("reserved additional information %d at offset %d" % (ai, p[0] - 1))


def _text(raw):
    raw = bytes(raw)
    try:
        s = str(raw, "utf-8")
    except UnicodeError:
        s = None
    if s is None or (_MICROPYTHON and not _utf8_ok(raw)):
        raise CBORDecodeError("invalid UTF-8 in text string")
    return s


def _simple(d, p, ai):
    """Major type 7 but the break: simple values, false, true, null, undefined and floats."""
    if ai < 20:
        return Simple(ai)
    if ai < 24:
        return (False, True, None, UNDEFINED)[ai - 20]
    if ai == 24:
        v = _take(d, p, 1)[0]
        if v < 32:  # not well-formed (RFC 8949 3.3): 0-23 have a one-byte form, 24-31 are reserved
            raise CBORDecodeError("simple value %d in two-byte form" % v)
        return Simple(v)
    if ai < 28:
        return struct.unpack(">" + "efd"[ai - 25], _take(d, p, 2 << (ai - 25)))[0]
    raise CBORDecodeError("reserved additional information %d in major type 7" % ai)


def _chunks(d, p, major):
    """An indefinite byte or text string: definite chunks of its own type up to the break."""
    out = bytearray()
    while True:
        ib = _take(d, p, 1)[0]
        if ib == 0xFF:
            return bytes(out) if major == 2 else _text(out)
        if ib >> 5 != major or ib & 0x1F == 31:
            raise CBORDecodeError("wrong chunk type 0x%02x in indefinite string" % ib)
        out.extend(_take(d, p, _argument(d, p, ib & 0x1F)))


def _item(d, p, depth, in_indefinite=False):
    """One item; a break is returned as _BREAK only where `in_indefinite` says one may end the container."""
    if depth > MAX_DEPTH:
        raise CBORDecodeError("nesting deeper than %d" % MAX_DEPTH)
    ib = _take(d, p, 1)[0]
    if ib == 0xFF:
        if in_indefinite:
            return _BREAK
        raise CBORDecodeError("break outside an indefinite item at offset %d" % (p[0] - 1))
    major, ai = ib >> 5, ib & 0x1F
    if major == 7:
        return _simple(d, p, ai)
    n = -1  # an indefinite array or map runs to its break
    if ai == 31:
        if major in (0, 1, 6):
            raise CBORDecodeError("major type %d cannot be indefinite" % major)
        if major < 4:
            return _chunks(d, p, major)
    else:
        n = _argument(d, p, ai)
    if major < 2:
        return n if major == 0 else -1 - n
    if major < 4:
        raw = _take(d, p, n)
        return bytes(raw) if major == 2 else _text(raw)
    # An array, a map or a tag costs a node's heap some 50-100 bytes however short its encoding (an empty
    # array is one byte): one for every 8 bytes of input, and 16 more, keeps a hostile message to a few
    # times its size before its MAC is checked (loads sets the count in p[1]).
    p[1] -= 1
    if p[1] < 0:
        raise CBORDecodeError("more arrays, maps and tags than one for every 8 bytes")
    if major == 6:
        value = _item(d, p, depth + 1)
        if n == 2 or n == 3:
            if not isinstance(value, bytes):
                raise CBORDecodeError("bignum tag %d needs a byte string" % n)
            big = int.from_bytes(value, "big") if value else 0
            return big if n == 2 else -1 - big
        return Tag(n, value)
    # Each item is at least one byte: a count beyond the input is refused before allocating.
    if n * (major - 3) > len(d) - p[0]:
        raise CBORDecodeError("truncated: %d items announced, %d bytes left" % (n * (major - 3), len(d) - p[0]))
    out = [] if major == 4 else {}
    while n:
        n -= 1
        p[2] -= 1  # loads' item budget, taken before the item is decoded
        if p[2] < 0:
            raise CBORDecodeError("more array items and map entries than %d" % p[3])
        value = _item(d, p, depth + 1, n < 0)
        if value is _BREAK:
            return out
        if major == 4:
            out.append(value)
            continue
        try:
            hash(value)
        except TypeError:
            raise CBORDecodeError("unhashable map key of type %s" % type(value).__name__)
        out[value] = _item(d, p, depth + 1)
    return out


def loads(data, items=-1):
    """Decode exactly one item; anything left over is an error. `items`, when given, bounds the array items and
    map entries in all, for a caller that knows what it expects: a node's int costs its heap a word in a list
    decoded before its MAC is checked, and the same decoder reads dense lists elsewhere at an item a byte."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORDecodeError("expected bytes, got %s" % type(data).__name__)
    d = memoryview(data)
    if items < 0:
        items = len(d)  # each item takes a byte at least: no bound
    # the position, the arrays, maps and tags still allowed (_item), the items still allowed and the bound
    p = [0, len(d) // 8 + 16, items, items]
    try:
        value = _item(d, p, 0)
    except (CBORDecodeError, MemoryError):
        raise  # a node short of heap retries the item later: that is not a malformation
    except Exception as exc:
        # The contract is one exception type for any malformation, whatever the interpreter raised.
        raise CBORDecodeError("malformed CBOR: %s" % (exc,))
    if p[0] != len(d):
        raise CBORDecodeError("%d trailing bytes after the item" % (len(d) - p[0]))
    return value
