"""A strict CBOR (RFC 8949) decoder for what arrives from the network: on a node, commands.

The same file runs on MicroPython and CPython. Every length is checked against the input before anything
is allocated, nesting is bounded, and any malformation surfaces as CBORDecodeError and nothing else.
"""

import struct
import sys

from protocol.cbor import MAX_DEPTH, UNDEFINED, Simple, Tag

_MICROPYTHON = sys.implementation.name == "micropython"
_BREAK = object()


class CBORDecodeError(ValueError):
    pass


def _utf8_ok(b):
    """MicroPython's decoder lets surrogates and some overlong forms through; CPython's does not."""
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            need, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= c <= 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif c == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F
        elif 0xF1 <= c <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        else:
            return False
        if i + need >= n:
            return False
        if not lo <= b[i + 1] <= hi:
            return False
        for k in range(2, need + 1):
            if not 0x80 <= b[i + k] <= 0xBF:
                return False
        i += need + 1
    return True


class _Decoder:
    def __init__(self, data, max_depth):
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise CBORDecodeError("truncated: need %d bytes at offset %d, %d left"
                                  % (n, self.pos, len(self.data) - self.pos))
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def argument(self, ai):
        if ai < 24:
            return ai
        if ai == 24:
            return self.take(1)[0]
        if ai == 25:
            return struct.unpack(">H", self.take(2))[0]
        if ai == 26:
            return struct.unpack(">I", self.take(4))[0]
        if ai == 27:
            return struct.unpack(">Q", self.take(8))[0]
        raise CBORDecodeError("reserved additional information %d at offset %d" % (ai, self.pos - 1))

    def string(self, major, n):
        raw = self.take(n)
        if major == 2:
            return bytes(raw)
        return self.text(raw)

    def text(self, raw):
        raw = bytes(raw)
        try:
            s = str(raw, "utf-8")
        except UnicodeError:
            raise CBORDecodeError("invalid UTF-8 in text string")
        if _MICROPYTHON and not _utf8_ok(raw):
            raise CBORDecodeError("invalid UTF-8 in text string")
        return s

    def item(self, depth):
        value = self.item_or_break(depth)
        if value is _BREAK:
            raise CBORDecodeError("break outside an indefinite item at offset %d" % (self.pos - 1))
        return value

    def item_or_break(self, depth):
        if depth > self.max_depth:
            raise CBORDecodeError("nesting deeper than %d" % self.max_depth)
        ib = self.take(1)[0]
        major, ai = ib >> 5, ib & 0x1F
        if major == 7:
            return self.simple(ai)
        if ai == 31:
            return self.indefinite(major, depth)
        n = self.argument(ai)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major <= 3:
            return self.string(major, n)
        if major == 4:
            # Each item is at least one byte: a count beyond the input is refused before allocating.
            self.need_items(n)
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            self.need_items(2 * n)
            out = {}
            for _ in range(n):
                key = self.item(depth + 1)
                out[self.key(key)] = self.item(depth + 1)
            return out
        value = self.item(depth + 1)
        if n == 2 or n == 3:
            if not isinstance(value, bytes):
                raise CBORDecodeError("bignum tag %d needs a byte string" % n)
            big = int.from_bytes(value, "big") if value else 0
            return big if n == 2 else -1 - big
        return Tag(n, value)

    def need_items(self, n):
        if n > len(self.data) - self.pos:
            raise CBORDecodeError("truncated: %d items announced, %d bytes left" % (n, len(self.data) - self.pos))

    def key(self, key):
        try:
            hash(key)
        except TypeError:
            raise CBORDecodeError("unhashable map key of type %s" % type(key).__name__)
        return key

    def simple(self, ai):
        if ai < 20:
            return Simple(ai)
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            return UNDEFINED
        if ai == 24:
            v = self.take(1)[0]
            # RFC 8949 3.3 calls 0xf800-0xf81f not well-formed, but Appendix A lists f818 as simple(24);
            # we follow the vectors for 24-31 and refuse the values that have a one-byte form.
            if v < 24:
                raise CBORDecodeError("simple value %d in two-byte form" % v)
            return Simple(v)
        if ai == 25:
            return struct.unpack(">e", self.take(2))[0]
        if ai == 26:
            return struct.unpack(">f", self.take(4))[0]
        if ai == 27:
            return struct.unpack(">d", self.take(8))[0]
        if ai == 31:
            return _BREAK
        raise CBORDecodeError("reserved additional information %d in major type 7" % ai)

    def indefinite(self, major, depth):
        if major in (0, 1, 6):
            raise CBORDecodeError("major type %d cannot be indefinite" % major)
        if major <= 3:
            chunks = bytearray()
            while True:
                ib = self.take(1)[0]
                if ib == 0xFF:
                    break
                if ib >> 5 != major or ib & 0x1F == 31:
                    raise CBORDecodeError("wrong chunk type 0x%02x in indefinite string" % ib)
                chunks.extend(self.take(self.argument(ib & 0x1F)))
            return bytes(chunks) if major == 2 else self.text(chunks)
        if major == 4:
            out = []
            while True:
                value = self.item_or_break(depth + 1)
                if value is _BREAK:
                    return out
                out.append(value)
        result = {}
        while True:
            key = self.item_or_break(depth + 1)
            if key is _BREAK:
                return result
            value = self.item(depth + 1)
            result[self.key(key)] = value


def loads(data, max_depth=MAX_DEPTH):
    """Decode exactly one item; anything left over is an error."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORDecodeError("expected bytes, got %s" % type(data).__name__)
    dec = _Decoder(memoryview(data), max_depth)
    try:
        value = dec.item(0)
    except CBORDecodeError:
        raise
    except Exception as exc:
        # The contract is one exception type for any malformation, whatever the interpreter raised.
        raise CBORDecodeError("malformed CBOR: %s" % (exc,))
    if dec.pos != len(data):
        raise CBORDecodeError("%d trailing bytes after the item" % (len(data) - dec.pos))
    return value
