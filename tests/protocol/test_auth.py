"""HMAC-SHA256 and the COSE_Mac0 envelope; shared by CPython and MicroPython."""

from protocol import auth, cbor, cbor_decode
from prototest import raises, unhex

KEY = b"k" * 32


def test_hmac_rfc4231_vectors():
    # Both our own HMAC (the only one on MicroPython) and whatever hmac_sha256 dispatches to.
    for fn in (auth.own_hmac_sha256, auth.hmac_sha256):
        assert fn(b"\x0b" * 20, b"Hi There") == unhex(
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        assert fn(b"Jefe", b"what do ya want for nothing?") == unhex(
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        assert fn(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First") == unhex(
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_seal_is_a_cose_mac0():
    sealed = auth.seal(KEY, b"gas-01", b"hello")
    outer = cbor_decode.loads(sealed)
    assert outer.tag == 17
    protected, unprotected, payload, tag = outer.value
    assert protected == b"\xa1\x01\x04" and unprotected == {4: b"gas-01"} and payload == b"hello"
    # HMAC 256/64: the leftmost 8 bytes of HMAC-SHA256 over the MAC structure (RFC 9053 section 3.1)
    assert tag == auth.hmac_sha256(KEY, auth._to_be_maced(protected, b"hello"))[:8]


def test_verify_returns_kid_and_payload():
    sealed = auth.seal(KEY, b"gas-01", b"hello")
    assert auth.verify(sealed, {b"gas-01": KEY}.get) == (b"gas-01", b"hello")


def test_envelope_is_exactly_one_item():
    # Bytes after a genuine envelope, even a copy of its own tag item or a second envelope, are refused.
    sealed = auth.seal(KEY, b"d", b"x")
    for extra in (b"\x00", b"\xff", sealed[-9:], sealed):
        err = raises(auth.AuthError, auth.verify, sealed + extra, {b"d": KEY}.get)
        assert err.reason == "malformed" and "%d trailing bytes" % len(extra) in str(err), str(err)


def test_every_single_bit_flip_is_caught():
    sealed = auth.seal(KEY, b"d", b"payload")
    for i in range(len(sealed)):
        for bit in (0, 7):
            bad = bytearray(sealed)
            bad[i] ^= 1 << bit
            raises(auth.AuthError, auth.verify, bytes(bad), {b"d": KEY}.get)


def test_reasons():
    sealed = auth.seal(KEY, b"d", b"x")
    assert raises(auth.AuthError, auth.verify, sealed, {b"d": b"other"}.get).reason == "bad-mac"
    assert raises(auth.AuthError, auth.verify, sealed, {}.get).reason == "unknown-key"
    assert raises(auth.AuthError, auth.verify, b"\xff", {}.get).reason == "malformed"
    assert raises(auth.AuthError, auth.verify, cbor.dumps([1, 2]), {}.get).reason == "malformed"
    wrong_alg = cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x05", {4: b"d"}, b"x", b"\x00" * 32]))
    assert raises(auth.AuthError, auth.verify, wrong_alg, {b"d": KEY}.get).reason == "malformed"


def test_no_downgrade_and_no_other_tag_length():
    # A full HMAC 256/256 tag that is right for its header is still refused: only algorithm 4 verifies.
    full = auth.hmac_sha256(KEY, auth._to_be_maced(b"\xa1\x01\x05", b"x"))
    assert raises(auth.AuthError, auth.verify, cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x05", {4: b"d"}, b"x", full])),
                  {b"d": KEY}.get).reason == "malformed"
    # Under the right header, a tag of any length but 8 does not verify, not even the right one untruncated
    # or a prefix of it.
    full = auth.hmac_sha256(KEY, auth._to_be_maced(b"\xa1\x01\x04", b"x"))
    for tag in (full, full[:4], full[:7], full[:9], b""):
        sealed = cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x04", {4: b"d"}, b"x", tag]))
        assert raises(auth.AuthError, auth.verify, sealed, {b"d": KEY}.get).reason == "bad-mac"
    assert auth.verify(cbor.dumps(cbor.Tag(17, [b"\xa1\x01\x04", {4: b"d"}, b"x", full[:8]])),
                       {b"d": KEY}.get) == (b"d", b"x")


def test_mac_structure_is_the_cbor_of_rfc_9052():
    # every head length of a byte string a message can have, with the usual header and with others
    for protected in (b"\xa1\x01\x04", b"\xa1\x01\x05", b"\xa2\x01\x04\x04" + b"\x58\x1c" + b"k" * 28):
        for payload in (b"", b"x" * 23, b"x" * 24, b"x" * 255, b"x" * 256, b"x" * 300):
            assert auth._to_be_maced(protected, payload) == cbor.dumps(["MAC0", protected, b"", payload])


def test_protected_header_is_judged_by_what_it_says():
    def sealed_with(protected):
        tag = auth.hmac_sha256(KEY, auth._to_be_maced(protected, b"x"))[:8]
        return cbor.dumps(cbor.Tag(17, [protected, {4: b"d"}, b"x", tag]))

    # Other bytes that still say HMAC 256/64 verify like the usual header; other meanings do not.
    assert auth.verify(sealed_with(b"\xa2\x01\x04\x03\x00"), {b"d": KEY}.get) == (b"d", b"x")
    for protected in (b"\xa1\x01\x05", b"\xa1\x01\x06", b"\xa1\x01\x07", b"\xa0", b"\x40", b"\xff\x00"):
        assert raises(auth.AuthError, auth.verify, sealed_with(protected), {b"d": KEY}.get).reason == "malformed"
