"""Message bodies: build, seal, decode, check; shared by CPython and MicroPython."""

from protocol import cbor, message, message_check, senml, senml_resolve, topics
from prototest import raises

KEY = b"\x01" * 32
KEYS = {b"gas-01": KEY}.get


def _pack():
    return senml.pack([senml.record("ch4", 12.5, "%LEL")], bn="gas-01:", bt=1763900000)


def test_data_round_trip():
    body = message.data("gas-01", 3, 41, _pack())
    got = message_check.decode(message.encode(body, KEY), KEYS, topics.DATA)
    assert got["seq"] == 41 and got["boot"] == 3 and got["clk"] == message.CLK_EPOCH
    assert got["dev"] == "gas-01" and got["pri"] == message.PRI_ROUTINE
    assert senml_resolve.resolve(got["e"])[0]["v"] == 12.5


def _payload(sealed):
    from protocol import cbor_decode
    return cbor_decode.loads(cbor_decode.loads(sealed).value[2])


def test_dev_travels_as_the_key_id_and_zero_defaults_stay_off_the_wire():
    body = message.data("gas-01", 3, 41, _pack())
    sealed = message.encode(body, KEY)
    assert sorted(_payload(sealed)) == ["boot", "e", "k", "seq"]
    assert body["dev"] == "gas-01" and sorted(body) == ["boot", "dev", "e", "k", "seq"]  # encode leaves it whole
    from protocol import cbor_decode
    assert cbor_decode.loads(sealed).value[1] == {4: b"gas-01"}
    # Non-zero values travel, and come back as sent.
    alarm = message.event("gas-01", 3, 42, "prealarm", _pack(), message.CLK_BOOT, message.PRI_ALARM)
    sealed = message.encode(alarm, KEY)
    assert _payload(sealed)["clk"] == 1 and _payload(sealed)["pri"] == 1
    got = message_check.decode(sealed, KEYS, topics.EVENT)
    assert (got["dev"], got["clk"], got["pri"]) == ("gas-01", message.CLK_BOOT, message.PRI_ALARM)
    birth = message.birth("gas-01", 7, 100, "0.1.0", "gas", "power-on", 1763900000)
    assert "clk" not in _payload(message.encode(birth, KEY))
    assert message_check.decode(message.encode(birth, KEY), KEYS, topics.STATE)["clk"] == message.CLK_EPOCH
    late = message.birth("gas-01", 7, 100, "0.1.0", "gas", "power-on", 12, message.CLK_BOOT)
    assert message_check.decode(message.encode(late, KEY), KEYS, topics.STATE)["clk"] == message.CLK_BOOT
    for b in (message.death("gas-01", 7, 100), message.ack("gas-01", 7, 5, True),
              message.command("gas-01", 5, "set", {}, 1763900030)):
        assert "dev" not in _payload(message.encode(b, KEY))


def test_sequence_is_64_bit():
    body = message.data("gas-01", 1, message.MAX_SEQ, _pack())
    assert message_check.decode(message.encode(body, KEY), KEYS, topics.DATA)["seq"] == message.MAX_SEQ


def test_birth_death_ack_command():
    b = message.birth("gas-01", 7, 100, "0.1.0", "gas", "power-on", 1763900000, rssi=-61)
    got = message_check.decode(message.encode(b, KEY), KEYS, topics.STATE)
    assert got["st"] == "online" and got["fw"] == "0.1.0" and got["rst"] == "power-on" and got["rssi"] == -61
    d = message_check.decode(message.encode(message.death("gas-01", 7, 100), KEY), KEYS, topics.STATE)
    assert d["st"] == "offline"
    a = message_check.decode(message.encode(message.ack("gas-01", 7, 5, True, {"report_s": 30}), KEY), KEYS,
                       topics.ACK)
    assert a["ok"] is True and a["res"] == {"report_s": 30}
    c = message_check.decode(message.encode(message.command("gas-01", 5, "set", {"report_s": 30}, 1763900030), KEY),
                             KEYS, topics.CMD)
    assert c["op"] == "set" and c["exp"] == 1763900030
    no_exp = message.command("gas-01", 5, "set", {}, 0)
    del no_exp["exp"]
    err = raises(message_check.MessageError, message_check.decode, message.encode(no_exp, KEY), KEYS, topics.CMD)
    assert err.reason == "schema" and "exp" in str(err)


def test_event_carries_its_name():
    ev = message.event("gas-01", 1, 2, "prealarm", _pack(), pri=message.PRI_ALARM)
    got = message_check.decode(message.encode(ev, KEY), KEYS, topics.EVENT)
    assert got["ev"] == "prealarm" and got["pri"] == 1


def test_a_body_cannot_pass_as_another_kind():
    sealed = message.encode(message.ack("gas-01", 1, 5, True), KEY)
    assert raises(message_check.MessageError, message_check.decode, sealed, KEYS, topics.CMD).reason == "schema"


def test_schema_errors_name_the_field():
    bits = 15000  # a name, not a literal: mpy-cross would fold the number into the module, 2 KB of the heap
    huge = 1 << bits  # more digits (4,516) than CPython writes an integer in (4,300)
    cases = [
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"clk": 2}, "clk"),
        ({"pri": "high"}, "pri"),
        ({"e": []}, "e:"),
        ({"dev": "Gas 01"}, "dev"),
        ({"boot": 1.5}, "boot"),
        ({"k": huge}, "kind (an integer of 19 digits or more)"),  # its repr raised ValueError, not a refusal
        ({"k": [huge]}, "kind (a list)"),
        ({"e": [{senml.BVER: huge, senml.N: "a", senml.V: 1}]}, "version (an integer of 19 digits or more)"),
    ]
    for change, field in cases:
        body = message.data("gas-01", 3, 41, _pack())
        for k in change:
            body[k] = change[k]
        err = raises(message_check.MessageError, message_check.check, body, topics.DATA)
        assert err.reason == "schema" and field in str(err), (change, str(err))


def test_the_key_id_alone_names_the_device():
    # A payload that names a device is refused, whether or not the name agrees with the key id.
    from protocol import auth
    for dev in ("gas-02", "gas-01"):
        forged = auth.seal(KEY, b"gas-01", cbor.dumps(message.data(dev, 3, 41, _pack())))
        err = raises(message_check.MessageError, message_check.decode, forged, KEYS, topics.DATA)
        assert err.reason == "schema" and "dev" in str(err)
    # A key id that is no device id is refused even when some key answers to it.
    body = message.data("gas-01", 3, 41, _pack())
    body.pop("dev")
    odd = auth.seal(KEY, b"Gas 01", cbor.dumps(body))
    err = raises(message_check.MessageError, message_check.decode, odd, {b"Gas 01": KEY}.get, topics.DATA)
    assert err.reason == "schema" and "dev" in str(err)
    # A message sealed under another device's kid does not reach the body: no key, or the wrong one.
    other = message.encode(message.data("gas-02", 3, 41, _pack()), KEY)
    assert raises(message_check.MessageError, message_check.decode, other, KEYS, topics.DATA).reason == "unknown-key"


def test_failures_carry_reasons():
    sealed = message.encode(message.data("gas-01", 3, 41, _pack()), KEY)
    assert raises(message_check.MessageError, message_check.decode, sealed, {}.get, topics.DATA).reason == "unknown-key"
    assert raises(message_check.MessageError, message_check.decode, sealed, {b"gas-01": b"x"}.get,
                  topics.DATA).reason == "bad-mac"
    assert raises(message_check.MessageError, message_check.decode, b"\x00" * 5000, KEYS,
                  topics.DATA).reason == "oversize"
    assert raises(message_check.MessageError, message_check.decode, b"\x9f", KEYS, topics.DATA).reason == "malformed"


def test_trailing_bytes_after_a_message_are_refused():
    sealed = message.encode(message.data("gas-01", 3, 41, _pack()), KEY)
    for extra in (b"\x00", sealed):
        err = raises(message_check.MessageError, message_check.decode, sealed + extra, KEYS, topics.DATA)
        assert err.reason == "malformed" and "trailing" in str(err), str(err)


def test_deterministic_bytes():
    a = message.encode(message.data("gas-01", 3, 41, _pack()), KEY)
    b = message.encode(message.data("gas-01", 3, 41, _pack()), KEY)
    assert a == b


def test_decode_hands_over_the_records_its_check_resolved():
    pack = _pack()
    records = []
    body = message_check.decode(message.encode(message.data("gas-01", 3, 41, pack), KEY), KEYS, topics.DATA,
                          records=records)
    assert records == senml_resolve.resolve(body["e"]) and records[0]["n"] == "gas-01:ch4"
    state = []
    message_check.decode(message.encode(message.death("gas-01", 7, 100), KEY), KEYS, topics.STATE, records=state)
    assert state == []
    forged = []
    from protocol import auth
    sealed = auth.seal(KEY, b"gas-01", cbor.dumps({"k": "data", "boot": 3, "seq": 41, "e": []}))
    raises(message_check.MessageError, message_check.decode, sealed, KEYS, topics.DATA, None, forged)
    assert forged == []  # nothing from a message that failed a check


def test_a_data_message_from_an_older_or_extended_senml_writer_is_accepted():
    pack = [{senml.BVER: 5, senml.BN: "gas-01:", senml.N: "ch4", senml.V: 12.5, "ct": "60"}]
    records = []
    message_check.decode(message.encode(message.data("gas-01", 3, 41, pack), KEY), KEYS, topics.DATA,
                         records=records)
    assert records == [{"bver": 5, "n": "gas-01:ch4", "t": 0, "v": 12.5}], records
    pack[0]["ct_"] = "60"
    err = raises(message_check.MessageError, message_check.decode,
                 message.encode(message.data("gas-01", 3, 42, pack), KEY), KEYS, topics.DATA)
    assert err.reason == "schema" and "ct_" in str(err), str(err)
