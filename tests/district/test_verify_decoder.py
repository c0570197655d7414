"""The district's verifier with cbor2 (gateway.message_decode.loads_one) in place of the strict pure-Python decoder
(district/config.py): the same records from the same publish, and the same refusal of a body or a device
payload that is more than one CBOR item."""

from __future__ import annotations

import time

import pytest

from gateway import district_wire
from gateway.message_decode import loads_one
from lifeline.virtual.loadgen import Load, build, device_id, device_key
from protocol import auth, cbor, site_seal
from protocol import district as dtopics
from protocol.district_verify import Verifier, VerifyError

SITE = "s1"
KEY = bytes(range(32))
TOPIC = dtopics.up(SITE, dtopics.TELEMETRY)


def verifiers() -> list[Verifier]:
    keys = {device_id(d): device_key(d) for d in range(3)}
    return [Verifier({SITE: KEY}, keys, track=False), Verifier({SITE: KEY}, keys, track=False, loads=loads_one)]


def publish(entries: list[bytes]) -> bytes:
    sealed: bytes = site_seal.seal(KEY, SITE, dtopics.TELEMETRY, district_wire.telemetry(SITE, entries, []))
    return sealed


def test_both_decoders_give_the_same_records() -> None:
    load = Load(SITE, 3, 2, 0, start_time=time.time() - 60)
    entries = [district_wire.telemetry_entry(device_id(d), s, 1, [], sealed=build(load, d, s)[1])
               for s in (1, 2) for d in range(3)]
    got = []
    for v in verifiers():
        _, _, body = v.publish(TOPIC, publish(entries))
        got.append([v.entry(e) for e in body["packs"]])
    assert got[0] == got[1] and len(got[0]) == 6 and all(len(r) == 3 for r in got[0])


def test_both_decoders_refuse_a_body_of_two_items() -> None:
    body = district_wire.telemetry(SITE, [], []) + cbor.dumps(0)
    for v in verifiers():
        with pytest.raises(VerifyError, match="malformed"):
            v.publish(TOPIC, site_seal.seal(KEY, SITE, dtopics.TELEMETRY, body))


def test_both_decoders_refuse_a_device_payload_of_two_items() -> None:
    load = Load(SITE, 1, 1, 0, start_time=time.time() - 60)
    genuine = auth.verify(build(load, 0, 1)[1], lambda kid: device_key(0))[1]
    sealed = auth.seal(device_key(0), device_id(0).encode(), genuine + cbor.dumps(0))  # MAC right, body not one item
    for v in verifiers():
        _, _, body = v.publish(TOPIC, publish([district_wire.telemetry_entry(device_id(0), 1, 1, [], sealed=sealed)]))
        with pytest.raises(VerifyError, match="malformed"):
            v.entry(body["packs"][0])
