"""Ed25519 signature verification (RFC 8032, section 5.1.7), small enough for a node: a node only ever
checks a release's signature (docs/ota.md), so there is no signing, no key generation and no constant-time
care here (the inputs are public). It runs unchanged on CPython, where the tests check it. SHA-512, which
MicroPython's hashlib lacks, is written out below; its round constants are derived from the primes as
FIPS 180-4 defines them rather than typed in.

Verification is cofactorless, as OpenSSL's (and so the `cryptography` package's) is: [S]B - [k]A must encode
to exactly the R of the signature.
"""

_M64 = 0xFFFFFFFFFFFFFFFF


def _iroot(n, k):
    """The integer k-th root of n (Newton's method from above), exact for any size. (MicroPython's int has no
    bit_length: the hex digits bound it.)"""
    x = 1 << ((len("%x" % n) * 4 + k - 1) // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _primes(n):
    out = []
    c = 2
    while len(out) < n:
        if all(c % q for q in out if q * q <= c):
            out.append(c)
        c += 1
    return out


# FIPS 180-4, 4.2.3 and 5.3.5: the first 64 bits of the fractional parts of the cube roots of the first 80
# primes, and of the square roots of the first 8. Kept as bytes made before the arithmetic, so that they are
# two blocks at one end of the heap rather than 88 numbers scattered through it by the arithmetic's garbage
# (in a 64K heap that cost a 5 KB allocation its room).
_K = bytearray(640)
_H0 = bytearray(64)
for _i, _q in enumerate(_primes(80)):
    _K[_i * 8:_i * 8 + 8] = (_iroot(_q << 192, 3) & _M64).to_bytes(8, "big")
    if _i < 8:
        _H0[_i * 8:_i * 8 + 8] = (_iroot(_q << 128, 2) & _M64).to_bytes(8, "big")
del _i, _q


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


class Sha512:
    """SHA-512 fed with update(), as hashlib's objects are."""

    def __init__(self, data=b""):
        self._h = [int.from_bytes(_H0[i:i + 8], "big") for i in range(0, 64, 8)]
        self._buf = b""
        self._n = 0
        self.update(data)

    def update(self, data):
        self._n += len(data)
        buf = self._buf + data
        i = 0
        while len(buf) - i >= 128:
            self._block(buf[i:i + 128])
            i += 128
        self._buf = buf[i:]

    def _block(self, blk):
        w = [int.from_bytes(blk[i:i + 8], "big") for i in range(0, 128, 8)]
        for i in range(16, 80):
            a, b = w[i - 15], w[i - 2]
            s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
            s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & _M64)
        a, b, c, d, e, f, g, h = self._h
        for i in range(80):
            k = int.from_bytes(_K[i * 8:i * 8 + 8], "big")
            t1 = h + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ ((e ^ _M64) & g)) + k + w[i]
            t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
            h, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M64, c, b, a, (t1 + t2) & _M64
        hs = self._h
        for i, v in enumerate((a, b, c, d, e, f, g, h)):
            hs[i] = (hs[i] + v) & _M64

    def digest(self):
        """The digest of what was fed so far; the object can be fed on afterwards."""
        h, buf, n = list(self._h), self._buf, self._n
        tail = buf + b"\x80" + bytes((111 - len(buf)) % 128) + (n * 8).to_bytes(16, "big")
        for i in range(0, len(tail), 128):
            self._block(tail[i:i + 128])
        out = b"".join(v.to_bytes(8, "big") for v in self._h)
        self._h = h
        return out


# RFC 8032, 5.1: the field, the curve constant d, the group order L and the base point B (y = 4/5).
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493


def _inv(x):
    return pow(x, _P - 2, _P)


_D = -121665 * _inv(121666) % _P
_I = pow(2, (_P - 1) // 4, _P)  # a square root of -1


def _x(y, sign):
    """The x of the curve point with this y and sign bit (5.1.3), or None when there is none."""
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx == (-u) % _P:
        x = x * _I % _P
    elif vxx != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _point(b):
    """A 32-byte encoding decoded to extended coordinates (X, Y, Z, T), or None when it is not a point."""
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    x = _x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % _P
    g = a - b
    f = c + g
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _encode(p):
    x, y, z, _ = p
    zi = _inv(z)
    x, y = x * zi % _P, y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


_BY = 4 * _inv(5) % _P
_B = (_x(_BY, 0), _BY, 1, _x(_BY, 0) * _BY % _P)


def verify(public, message, signature):
    """True when `signature` (64 bytes) is the Ed25519 signature of `message` by the key `public` (32 bytes).
    Malformed keys and signatures are False, never an exception."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _point(public)
    r = signature[:32]
    s = int.from_bytes(signature[32:], "little")
    if a is None or s >= _L or _point(r) is None:
        return False
    h = Sha512(r)
    h.update(public)
    h.update(message)
    k = int.from_bytes(h.digest(), "little") % _L
    na = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)  # -A
    both = _add(_B, na)
    acc = (0, 1, 1, 0)
    for i in range(252, -1, -1):  # [S]B + [k](-A) in one pass (Shamir's trick); s and k are below L < 2**253
        acc = _double(acc)
        bs, bk = (s >> i) & 1, (k >> i) & 1
        if bs and bk:
            acc = _add(acc, both)
        elif bs:
            acc = _add(acc, _B)
        elif bk:
            acc = _add(acc, na)
    return _encode(acc) == bytes(r)
