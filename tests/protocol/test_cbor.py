"""CBOR codec tests; plain functions so that MicroPython runs them too (see upy_runner.py)."""

from protocol import cbor, cbor_decode
from protocol.cbor import UNDEFINED, Simple, Tag
from protocol.cbor_decode import CBORDecodeError
from prototest import load_vectors, raises, same, unhex

INF = float("inf")
# Appendix A items written in diagnostic notation rather than JSON: their Python values.
DIAGNOSTIC = {
    "Infinity": INF,
    "-Infinity": -INF,
    "NaN": float("nan"),
    "undefined": UNDEFINED,
    "simple(16)": Simple(16),
    "simple(255)": Simple(255),
    '0("2013-03-21T20:04:00Z")': Tag(0, "2013-03-21T20:04:00Z"),
    "1(1363896240)": Tag(1, 1363896240),
    "1(1363896240.5)": Tag(1, 1363896240.5),
    "23(h'01020304')": Tag(23, b"\x01\x02\x03\x04"),
    "24(h'6449455446')": Tag(24, b"dIETF"),
    '32("http://www.example.com")': Tag(32, "http://www.example.com"),
    "h''": b"",
    "h'01020304'": b"\x01\x02\x03\x04",
    "{1: 2, 3: 4}": {1: 2, 3: 4},
    "(_ h'0102', h'030405')": b"\x01\x02\x03\x04\x05",
}


def _expected(vector):
    if "decoded" in vector:
        return vector["decoded"]
    return DIAGNOSTIC[vector["diagnostic"]]


def _same_item(a, b):
    if isinstance(a, Tag):
        return isinstance(b, Tag) and a.tag == b.tag and same(a.value, b.value)
    return same(a, b)


def test_appendix_a_decode():
    vectors = load_vectors()
    assert len(vectors) == 81
    for v in vectors:
        got = cbor_decode.loads(unhex(v["hex"]))
        assert _same_item(got, _expected(v)), "%s decoded to %r" % (v["hex"], got)


def test_appendix_a_encode_roundtrip():
    checked = 0
    for v in load_vectors():
        if v["roundtrip"]:
            data = cbor.dumps(_expected(v))
            assert data == unhex(v["hex"]), "%s encoded as %s" % (v["hex"], binascii_hex(data))
            checked += 1
    assert checked == 64


def binascii_hex(b):
    import binascii
    return binascii.hexlify(b).decode()


def test_integers_to_64_bits_and_bignums():
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -2**64,
              2**64, 2**100, -2**64 - 1, -2**100):
        assert same(cbor_decode.loads(cbor.dumps(n)), n), n


def test_floats_take_the_shortest_exact_form():
    assert cbor.dumps(1.5) == unhex("f93e00")
    assert cbor.dumps(100000.0) == unhex("fa47c35000")
    assert cbor.dumps(1.1) == unhex("fb3ff199999999999a")
    assert cbor.dumps(-0.0) == unhex("f98000")
    assert cbor.dumps(float("nan")) == unhex("f97e00")
    assert cbor.dumps(2.0 ** -140)[0] == 0xFA  # subnormal single, exact
    assert cbor.dumps(12.3)[0] == 0xFB


def test_containers_round_trip():
    obj = {"a": [1, 2.5, None, True, False, b"\x00", "\u6c34"], -2: {"x": []}, 0: (1, 2)}
    back = cbor_decode.loads(cbor.dumps(obj))
    assert back["a"] == obj["a"]
    assert back[-2] == {"x": []}
    assert back[0] == [1, 2]


def test_tag_1_epoch_time():
    assert cbor.dumps(Tag(1, 1363896240)) == unhex("c11a514b67b0")


def test_cannot_encode_unknown_type():
    raises(cbor.CBOREncodeError, cbor.dumps, object())


def test_rejects_truncated_input():
    for h in ("", "18", "19 01", "1a 0000", "62 61", "82 01", "a1 01", "f9 00", "fb 0000", "c1", "5f 41"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_rejects_reserved_additional_information():
    for h in ("1c", "1d", "1e", "3c", "5c", "7d", "9e", "bc", "dc", "fc", "fd", "fe"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_rejects_two_byte_simple_below_32():
    raises(CBORDecodeError, cbor_decode.loads, unhex("f8 18")[:1] + b"\x10")


def test_two_byte_simple_values_below_32_are_not_well_formed():
    # RFC 8949 section 3.3 and Appendix F.1: f8 00..f8 1f, simple(24) included, are not well-formed.
    for v in range(32):
        e = raises(CBORDecodeError, cbor_decode.loads, bytes((0xF8, v)))
        assert "simple value %d" % v in str(e), str(e)
    for v in (32, 255):
        assert cbor_decode.loads(bytes((0xF8, v))) == Simple(v)


def test_rejects_break_outside_indefinite_item():
    for h in ("ff", "81 ff", "a1 01 ff", "c1 ff", "9f 01 ff ff"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_rejects_break_between_key_and_value():
    raises(CBORDecodeError, cbor_decode.loads, unhex("bf 01 ff"))


def test_rejects_wrong_chunk_types_in_indefinite_strings():
    for h in ("5f 61 61 ff", "7f 41 61 ff", "5f 5f 41 01 ff ff", "7f 01 ff"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_rejects_indefinite_integers_and_tags():
    for h in ("1f", "3f", "df"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_rejects_invalid_utf8():
    for h in ("62 c3 28", "63 ed a0 80", "62 c0 80", "61 ff", "64 f4 90 80 80", "7f 61 c3 ff"):
        raises(CBORDecodeError, cbor_decode.loads, unhex(h))


def test_accepts_valid_multibyte_utf8():
    assert cbor_decode.loads(unhex("63 e6 b0 b4")) == "\u6c34"
    assert cbor_decode.loads(unhex("64 f0 9f 92 a7")) == "\U0001f4a7"


def test_rejects_trailing_bytes():
    raises(CBORDecodeError, cbor_decode.loads, unhex("01 02"))


def test_rejects_deep_nesting():
    raises(CBORDecodeError, cbor_decode.loads, b"\x81" * 40 + b"\x01")
    assert cbor_decode.loads(b"\x81" * 10 + b"\x01") is not None


def test_huge_length_fails_before_allocating():
    # Each claims about 2**64 bytes or items in a ten-byte message.
    for h in ("5b ffffffffffffffff 00", "9b ffffffffffffffff 00", "bb ffffffffffffffff 00",
              "7a ffffffff 61"):
        e = raises(CBORDecodeError, cbor_decode.loads, unhex(h))
        assert "truncated" in str(e)


def test_bignum_tag_needs_bytes():
    raises(CBORDecodeError, cbor_decode.loads, unhex("c2 01"))


def test_unhashable_map_key_is_a_decode_error():
    raises(CBORDecodeError, cbor_decode.loads, unhex("a1 80 01"))


def test_non_bytes_input_is_a_decode_error():
    raises(CBORDecodeError, cbor_decode.loads, "00")


def test_the_encoder_writes_no_simple_value_that_is_not_well_formed():
    # The encoder's side of RFC 8949 section 3.3: simple(24)..simple(31) have no well-formed encoding, and a
    # simple value is one byte.
    for v in (24, 31, 256, -1):
        raises(cbor.CBOREncodeError, cbor.dumps, Simple(v))
    for v in (0, 19, 32, 255):  # 20..23 are false, true, null and undefined
        assert cbor_decode.loads(cbor.dumps(Simple(v))) == Simple(v)


def test_running_out_of_memory_is_not_a_malformation():
    """A node that cannot hold a command must retry it once memory is freed, not refuse it as malformed. Under
    MicroPython the heap is filled first but for a few hundred bytes (the decoder takes no more containers than
    one for every 8 bytes, so a message alone no longer fills it); CPython has no gc.mem_free, and decodes."""
    data = b"\x98\xc8" + b"\xa3\x00\x00\x01\x01\x18\x18\x00" * 200  # 200 maps of 8 bytes each
    hog = []
    try:
        import gc

        gc.collect()
        while gc.mem_free() > 1024:
            hog.append(bytearray(max(gc.mem_free() // 2, 256)))
    except (AttributeError, MemoryError):
        pass
    try:
        value = cbor_decode.loads(data)
    except MemoryError:
        return
    finally:
        hog.clear()
    assert value == [{0: 0, 1: 1, 24: 0}] * 200


def test_containers_cheaper_than_their_cost_are_refused():
    """An empty array is one byte of input and some 50-100 bytes of a node's heap, decoded before the MAC is
    checked: a 2 KB message of them took a device's whole heap. One array, map or tag for every 8 bytes (and
    16 more) is what the decoder takes."""
    e = raises(CBORDecodeError, cbor_decode.loads, b"\x99\x07\xd0" + b"\x80" * 2000)
    assert "arrays, maps and tags" in str(e)
    assert cbor_decode.loads(b"\x90" + b"\x80" * 16) == [[]] * 16  # short, nothing to fear
    nested = {"sensors": [{"name": "ch4", "bus": {"pin": 34}, "metrics": {"ch4": {"filters": [{"median": 3}]}}}]}
    assert cbor_decode.loads(cbor.dumps(nested)) == nested
