"""gateway/district_wire.py: what the district reads from a bulk telemetry publish."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import district_wire

ENTRY = st.builds(lambda dev, seq, sealed: cbor2.dumps({"dev": dev, "seq": seq, "boot": 1, "m": sealed}),
                  st.text(min_size=1, max_size=40), st.integers(0, 2**32 - 1), st.binary(max_size=300))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.lists(ENTRY, max_size=300), st.lists(ENTRY, max_size=30))
def test_a_telemetry_publish_is_the_cbor_of_its_document(site: str, packs: list[bytes], thinned: list[bytes]) -> None:
    """The stored entries are spliced in as they are, and the framing written around them must be what a CBOR
    encoder makes of the whole document: array and map heads of every length class (up to 23, one byte, two
    bytes), text keys, "thinned" only when there are some."""
    doc: dict[str, object] = {"site": site, "packs": [cbor2.loads(p) for p in packs]}
    if thinned:
        doc["thinned"] = [cbor2.loads(t) for t in thinned]
    data = district_wire.telemetry(site, packs, thinned)
    assert data == cbor2.dumps(doc)
    assert cbor2.loads(data) == doc


def test_an_alarm_ack_names_a_bounded_number_of_ids() -> None:
    """The gateway looks each acknowledged id up among its active alarms and logs it, so the list a district
    message may carry is bounded: a page of acknowledgements passes, a longer list is refused whole."""
    ids = [f"a{i}" for i in range(district_wire.MAX_ACK_IDS)]
    assert district_wire.alarm_acks(cbor2.dumps({"ids": ids})) == [(i, None) for i in ids]
    try:
        district_wire.alarm_acks(cbor2.dumps({"ids": [*ids, "one-more"]}))
    except district_wire.DownlinkError as exc:
        assert f"at most {district_wire.MAX_ACK_IDS}" in str(exc)
    else:
        raise AssertionError("a list over the bound was taken")


def test_an_alarm_ack_names_the_step_each_alarm_was_acknowledged_at() -> None:
    """An ack carried the ids alone, so the gateway could not tell an ack of the orange an officer saw from one
    of the red it escalated to since. Each id now has its step, null for an alarm numbered by no step; a body
    without steps (a district from before them) reads as acks of whatever each alarm is at."""
    both = cbor2.dumps({"ids": ["a", "b"], "steps": [3, None]})
    assert district_wire.alarm_acks(both) == [("a", 3), ("b", None)]
    assert district_wire.alarm_acks(cbor2.dumps({"id": "a", "step": 0})) == [("a", 0)]
    assert district_wire.alarm_acks(cbor2.dumps({"id": "a"})) == [("a", None)]
    # refused as input, not raised as a bug: the daemon redid the downlink batch and kept it as "internal"
    not_ids = ({"ids": 5}, {"ids": None}, {"ids": True, "steps": [0]}, {"id": "a", "ids": 3})
    bad_steps = ({"ids": ["a", "b"], "steps": [3]}, {"ids": ["a"], "steps": [-1]}, {"ids": ["a"], "steps": [True]},
                 {"ids": ["a"], "steps": 3}, {"id": "a", "step": "3"})
    for bodies, said in ((not_ids, "expected"), (bad_steps, "steps")):
        for body in bodies:
            with pytest.raises(district_wire.DownlinkError, match=said):
                district_wire.alarm_acks(cbor2.dumps(body))
