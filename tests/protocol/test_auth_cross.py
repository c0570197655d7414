"""CPython-only: our HMAC against the standard library, our COSE_Mac0 against pycose (an independent
COSE implementation), in both directions."""

import hashlib
import hmac

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.algorithms import HMAC25664
from pycose.headers import KID, Algorithm
from pycose.keys import SymmetricKey
from pycose.messages import Mac0Message

from protocol import auth, message_check, senml_resolve


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key: bytes, msg: bytes) -> None:
    assert auth.own_hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@settings(max_examples=50)
@given(st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.binary(max_size=200))
def test_pycose_verifies_what_we_seal(key: bytes, payload: bytes) -> None:
    # pycose's own decode() expects cbor2 < 6, which hands tagged arrays over as tuples and maps as
    # frozendicts; so we unwrap the tag with cbor2 and let pycose take the COSE structure from there.
    outer = cbor2.loads(auth.seal(key, b"gas-01", payload))
    assert outer.tag == 17
    protected, unprotected, body, tag = outer.value
    msg = Mac0Message.from_cose_obj([protected, dict(unprotected), body, tag], True)
    msg.key = SymmetricKey(k=key)
    assert msg.verify_tag()
    assert msg.payload == payload


@settings(max_examples=50)
@given(st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.binary(max_size=200))
def test_we_verify_what_pycose_seals(key: bytes, payload: bytes) -> None:
    msg = Mac0Message(phdr={Algorithm: HMAC25664}, uhdr={KID: b"gas-01"}, payload=payload)
    msg.key = SymmetricKey(k=key)
    sealed = msg.encode()
    assert auth.verify(sealed, {b"gas-01": key}.get) == (b"gas-01", payload)
    with pytest.raises(auth.AuthError, match="trailing"):
        auth.verify(sealed + b"\x00", {b"gas-01": key}.get)


def test_gateway_decodes_messages_with_cbor2() -> None:
    from protocol import message, senml, topics

    key = b"\x02" * 32
    pack = senml.pack([senml.record("ch4", 12.5, "%LEL"), senml.record("temp", 20.0, "Cel")], bn="gas-01:",
                      bt=1763900000)
    sealed = message.encode(message.data("gas-01", 2, 9, pack), key)
    body = message_check.decode(sealed, {b"gas-01": key}.get, topics.DATA, loads=cbor2.loads)
    assert body["seq"] == 9
    assert senml_resolve.resolve(body["e"])[1] == {"n": "gas-01:temp", "t": 1763900000, "u": "Cel", "v": 20.0}


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=40))
def test_gateway_refuses_bytes_after_a_genuine_message(extra: bytes) -> None:
    # cbor2.loads, the gateway's decoder, stops after one item; what follows must still be refused.
    from protocol import message, senml, topics

    key = b"\x02" * 32
    pack = senml.pack([senml.record("ch4", 12.5, "%LEL")], bn="gas-01:", bt=1763900000)
    sealed = message.encode(message.data("gas-01", 2, 9, pack), key)
    for tail in (extra, sealed[-9:], sealed):
        try:
            message_check.decode(sealed + tail, {b"gas-01": key}.get, topics.DATA, loads=cbor2.loads)
        except message_check.MessageError as exc:
            assert exc.reason == "malformed" and "trailing" in str(exc), str(exc)
        else:
            raise AssertionError(f"accepted with {len(tail)} bytes appended")
