"""CPython-only: our HMAC against the standard library, our COSE_Mac0 against pycose (an independent
COSE implementation), in both directions."""

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.algorithms import HMAC256
from pycose.headers import KID, Algorithm
from pycose.keys import SymmetricKey
from pycose.messages import Mac0Message

from protocol import auth


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key: bytes, msg: bytes) -> None:
    assert auth.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@settings(max_examples=50)
@given(st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.binary(max_size=200))
def test_pycose_verifies_what_we_seal(key: bytes, payload: bytes) -> None:
    msg = Mac0Message.decode(auth.seal(key, b"gas-01", payload))
    msg.key = SymmetricKey(k=key)
    assert msg.verify_tag()
    assert msg.payload == payload


@settings(max_examples=50)
@given(st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.binary(max_size=200))
def test_we_verify_what_pycose_seals(key: bytes, payload: bytes) -> None:
    msg = Mac0Message(phdr={Algorithm: HMAC256}, uhdr={KID: b"gas-01"}, payload=payload)
    msg.key = SymmetricKey(k=key)
    assert auth.verify(msg.encode(), {b"gas-01": key}.get) == (b"gas-01", payload)
