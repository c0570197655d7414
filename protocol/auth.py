"""Per-device integrity: HMAC-SHA256 truncated to 64 bits in a COSE_Mac0 envelope (RFC 9052 section 6.2;
algorithm 4, "HMAC 256/64", RFC 9053 section 3.1). MicroPython has hashlib.sha256 but no hmac module, so
HMAC (RFC 2104) is written here; where the interpreter has `hmac` (CPython, the gateway's hot path) its C
implementation is used instead.

Envelope: 17([h'A10104', {4: kid}, payload, tag]) where the tag is the first 8 bytes of HMAC-SHA256 over the
CBOR encoding of ["MAC0", h'A10104', h'', payload]. The kid is the device id in UTF-8, so the verifier can
pick the key. Only algorithm 4 verifies: a header naming any other is refused, so nobody can ask for a
weaker check. docs/protocol.md ("Integrity") gives the reasons for 64 bits.
"""

import hashlib

from protocol import cbor

try:
    import hmac as _stdlib_hmac
except ImportError:
    _stdlib_hmac = None

ALG_HMAC_256_64 = 4
TAG_BYTES = 8  # 64 bits
COSE_MAC0_TAG = 17
_PROTECTED = b"\xa1\x01\x04"  # {1: 4}: alg HMAC 256/64
_BLOCK = 64


class AuthError(ValueError):
    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason


def hmac_sha256(key, msg):
    if _stdlib_hmac is not None:  # the one-shot call is OpenSSL's HMAC: 1.9 µs against 2.8 for hmac.new().digest()
        return _stdlib_hmac.digest(key, msg, "sha256")
    return own_hmac_sha256(key, msg)


def own_hmac_sha256(key, msg):
    """RFC 2104 over hashlib.sha256, for interpreters without an hmac module."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def _equal(a, b):
    """Compare in time independent of where the first difference is."""
    if _stdlib_hmac is not None:
        return _stdlib_hmac.compare_digest(a, b)
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def _bstr(data):
    out = bytearray()
    cbor.head(out, 2, len(data))
    return bytes(out) + data


_MAC0_HEAD = b"\x84\x64MAC0" + _bstr(_PROTECTED) + b"\x40"  # up to the payload, for the header every sender writes


def _to_be_maced(protected, payload):
    """CBOR of ["MAC0", protected, h'', payload], written directly: it is built for every message sealed or
    verified."""
    head = _MAC0_HEAD if protected == _PROTECTED else b"\x84\x64MAC0" + _bstr(protected) + b"\x40"
    return head + _bstr(payload)


def seal(key, kid, payload):
    tag = hmac_sha256(key, _to_be_maced(_PROTECTED, payload))[:TAG_BYTES]
    return cbor.dumps(cbor.Tag(COSE_MAC0_TAG, [_PROTECTED, {4: kid}, payload, tag]))


def verify(data, key_for, loads=None):
    """(kid, payload) when the MAC is right. `loads` decodes the envelope; it must take exactly one CBOR item
    and raise a ValueError on anything else (bytes appended to a genuine envelope are refused, not ignored).
    The gateway passes cbor2 behind such a check (C, about half the cost); the default is our strict decoder,
    imported here rather than with the module because a node seals all the time and verifies only commands (and
    only when needed: an import statement is a third of a microsecond, and the gateway verifies every message)."""
    if loads is None:
        from protocol import cbor_decode

        loads = cbor_decode.loads
    try:
        outer = loads(data)
    except ValueError as exc:  # CBORDecodeError is one, and so are cbor2's errors
        raise AuthError("malformed", "not one CBOR item: %s" % exc)
    if getattr(outer, "tag", None) != COSE_MAC0_TAG:  # our cbor.Tag or cbor2's CBORTag
        raise AuthError("malformed", "not a tagged COSE_Mac0")
    parts = outer.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise AuthError("malformed", "COSE_Mac0 is not a 4-element array")
    protected, unprotected, payload, tag = parts
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(tag, bytes):
        raise AuthError("malformed", "COSE_Mac0 fields have wrong types")
    kid = unprotected.get(4) if isinstance(unprotected, dict) else None
    if not isinstance(kid, bytes):
        raise AuthError("malformed", "no kid in the unprotected header")
    if protected != _PROTECTED:  # what every sender here writes; anything else is decoded and judged
        from protocol import cbor_decode

        try:  # a header of more than 16 entries is no header: a 2 KB one of ints took a node 16 KB before the MAC
            header = cbor_decode.loads(protected, 16)
        except cbor_decode.CBORDecodeError as exc:
            raise AuthError("malformed", "protected header: %s" % exc)
        if not isinstance(header, dict) or header.get(1) != ALG_HMAC_256_64:
            raise AuthError("malformed", "algorithm is not HMAC 256/64")
    key = key_for(kid)
    if key is None:
        raise AuthError("unknown-key", "no key for kid %r" % kid)
    if not _equal(hmac_sha256(key, _to_be_maced(protected, payload))[:TAG_BYTES], tag):  # 8 bytes or no match
        raise AuthError("bad-mac", "MAC does not verify for kid %r" % kid)
    return kid, payload
