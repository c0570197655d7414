"""CPython-only checks of protocol.cbor against cbor2, and bounded fuzzing of the decoder."""

import itertools
import math
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor, cbor_decode

scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.booleans()
    | st.none()
)
keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_cbor2_reads_what_we_write(value: Any) -> None:
    assert equal(cbor2.loads(cbor.dumps(value)), value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_we_read_what_cbor2_writes(value: Any) -> None:
    assert equal(cbor_decode.loads(cbor2.dumps(value)), value)


@settings(max_examples=300)
@given(st.floats(allow_nan=False) | st.integers(min_value=-(2**64), max_value=2**64 - 1))
def test_scalar_bytes_match_cbor2_canonical(value: Any) -> None:
    assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)


@settings(max_examples=200)
@given(st.dictionaries(keys, st.integers(), max_size=6))
def test_map_keys_in_deterministic_order(value: dict[Any, int]) -> None:
    data = cbor.dumps(value)
    order = [cbor.dumps(k) for k in cbor2.loads(data)]
    assert order == sorted(order)
    assert cbor.dumps(dict(reversed(list(value.items())))) == data


def test_hand_written_utf8_check_agrees_with_cpython() -> None:
    """MicroPython's str() lets surrogates and overlong forms through, so the decoder checks UTF-8 itself
    there. Against CPython's decoder: every lead byte above ASCII, followed by up to three bytes from
    the edges of the continuation ranges."""
    edges = (0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF)
    wrong = []
    for lead in range(0x80, 0x100):
        for k in range(4):
            for tail in itertools.product(edges, repeat=k):
                raw = bytes((lead, *tail))
                try:
                    raw.decode("utf-8")
                    valid = True
                except UnicodeDecodeError:
                    valid = False
                if cbor_decode._utf8_ok(raw) != valid:
                    wrong.append(raw.hex())
    assert wrong == []


@settings(max_examples=3000, deadline=200)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        cbor_decode.loads(data)
    except cbor_decode.CBORDecodeError:
        pass


@settings(max_examples=2000, deadline=200)
@given(values, st.data())
def test_fuzz_mutated_valid_items_raise_only_decode_errors(value: Any, data: st.DataObject) -> None:
    raw = bytearray(cbor.dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i:]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    try:
        cbor_decode.loads(bytes(raw))
    except cbor_decode.CBORDecodeError:
        pass
