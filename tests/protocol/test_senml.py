"""SenML pack building and resolution (RFC 8428); shared by CPython and MicroPython."""

from protocol import cbor, cbor_decode, senml, senml_resolve
from prototest import raises, unhex


def _gas_pack():
    return senml.pack([senml.record("ch4", 12.5, "%LEL"), senml.record("temp", 21.5, "Cel", t=1),
                       senml.record("cover", False)], bn="gas-01:", bt=1763900000)


def test_record_picks_the_value_field_by_type():
    assert senml.record("a", 1.5) == {senml.N: "a", senml.V: 1.5}
    assert senml.record("a", True) == {senml.N: "a", senml.VB: True}
    assert senml.record("a", "x") == {senml.N: "a", senml.VS: "x"}
    assert senml.record("a", b"\x01") == {senml.N: "a", senml.VD: b"\x01"}


def test_the_builders_labels_are_senmls():
    """protocol/senml_build.py, all a node loads, keeps the labels as private constants of its own."""
    assert senml.record("a", 1.5, "V", 2) == {senml.N: "a", senml.V: 1.5, senml.U: "V", senml.T: 2}
    assert senml.record(None, 1) == {senml.V: 1}  # named by its pack's base name
    assert senml.pack([{}], bn="x:", bt=5, bu="V") == [{senml.BN: "x:", senml.BT: 5, senml.BU: "V"}]


def test_base_fields_ride_on_the_first_record():
    p = _gas_pack()
    assert p[0][senml.BN] == "gas-01:" and p[0][senml.BT] == 1763900000
    assert senml.BN not in p[1]


def test_resolve_applies_base_name_time_and_unit():
    recs = senml_resolve.resolve(_gas_pack())
    assert recs[0] == {"n": "gas-01:ch4", "t": 1763900000, "u": "%LEL", "v": 12.5}
    assert recs[1] == {"n": "gas-01:temp", "t": 1763900001, "u": "Cel", "v": 21.5}
    assert recs[2] == {"n": "gas-01:cover", "t": 1763900000, "vb": False}


def test_resolve_base_value_unit_and_sum():
    p = [{senml.BN: "r:", senml.BU: "mm", senml.BV: 100, senml.BS: 5, senml.N: "a", senml.V: 1,
          senml.S: 2}, {senml.N: "b", senml.V: 3, senml.U: "m"}]
    recs = senml_resolve.resolve(p)
    assert recs[0] == {"n": "r:a", "t": 0, "u": "mm", "v": 101, "s": 7}
    assert recs[1] == {"n": "r:b", "t": 0, "u": "m", "v": 103}


def test_resolve_survives_the_cbor_wire():
    assert senml_resolve.resolve(cbor_decode.loads(cbor.dumps(_gas_pack()))) == senml_resolve.resolve(_gas_pack())


def test_resolve_rejects_bad_packs():
    bad = [
        [],
        {},
        [[1]],
        [{senml.N: "a"}],
        [{senml.N: "a", senml.V: "x"}],
        [{senml.N: "a", senml.V: 1, senml.VS: "x"}],
        [{senml.N: "a", senml.VB: 1}],
        [{senml.N: "", senml.V: 1}],
        [{senml.N: "a b", senml.V: 1}],
        [{senml.N: "-a", senml.V: 1}],
        [{senml.N: "a", senml.V: 1, "x_": 0}],
        [{senml.N: "a", senml.V: 1, senml.T: "now"}],
        [{senml.BVER: 11, senml.N: "a", senml.V: 1}],
        [{senml.BN: None, senml.N: "a", senml.V: 1}],  # a null base name: bn + n was a TypeError
    ]
    for p in bad:
        raises(senml.SenMLError, senml_resolve.resolve, p)


def test_a_number_past_a_float_is_a_senml_error():
    """A bignum added to a float base (bt + t, bv + v, bs + s) is past a double's range: CPython raised
    OverflowError, which no caller expects of a pack (the gateway's check, the district's parse). MicroPython
    makes inf of it, which the gateway's number rules then refuse."""
    big = 1 << 1100
    for p in ([{senml.BT: 1.5, senml.N: "a", senml.V: 1, senml.T: big}],
              [{senml.BV: 0.5, senml.N: "a", senml.V: big}],
              [{senml.BS: 0.5, senml.N: "a", senml.S: big}],
              [{senml.N: "a", senml.V: 1}, {senml.BT: 2.5, senml.N: "b", senml.V: 1, senml.T: -big}]):
        try:
            senml_resolve.resolve(p)
        except senml.SenMLError as e:
            assert "past the range of a float" in str(e), str(e)


def test_pack_needs_records():
    raises(senml.SenMLError, senml.pack, [])


def test_three_reading_pack_is_at_most_half_of_senml_json():
    p = _gas_pack()
    wire = len(cbor.dumps(p))
    text = len(senml_resolve.to_json(p))
    assert wire * 2 <= text, (wire, text)


def test_to_json_uses_text_labels():
    j = senml_resolve.to_json([senml.record("a", 1, "m")])
    assert '"n":"a"' in j and '"u":"m"' in j and '"v":1' in j


def test_names_are_checked_and_the_first_bad_character_named():
    ok = senml_resolve.resolve([{senml.BN: "gas-01:", senml.N: "ch4_raw.2/x", senml.V: 1}])
    assert ok[0]["n"] == "gas-01:ch4_raw.2/x"
    for name, bad in (("ch 4", " "), ("ch4!", "!"), ("#ch4", "#"), ("c\u00e9h4 x", "\u00e9")):
        err = raises(senml.SenMLError, senml_resolve.resolve, [{senml.N: name, senml.V: 1}])
        assert ("character %r" % bad) in str(err), (name, str(err))
    for name in ("", "-ch4", ":ch4", "_ch4"):
        raises(senml.SenMLError, senml_resolve.resolve, [{senml.N: name, senml.V: 1}])


# RFC 8428 section 6's pack, [{"bn": "urn:dev:ow:10e2073a01080063", "n": "voltage", "u": "V", "v": 120.1},
# {"n": "current", "u": "A", "v": 1.2}], in CBOR with the integer labels.
RFC8428_CBOR = ("82 a4 21 781b 75726e3a6465763a6f773a3130653230373361303130383030363 3"
                " 00 67 766f6c74616765 01 61 56 02 fb 405e066666666666"
                " a3 00 67 63757272656e74 01 61 41 02 fb 3ff3333333333333")


def test_the_rfc_8428_cbor_example_is_read():
    recs = senml_resolve.resolve(cbor_decode.loads(unhex(RFC8428_CBOR)))
    assert recs == [{"n": "urn:dev:ow:10e2073a01080063voltage", "t": 0, "u": "V", "v": 120.1},
                    {"n": "urn:dev:ow:10e2073a01080063current", "t": 0, "u": "A", "v": 1.2}], recs


def test_an_older_version_is_read_and_carried_into_every_record():
    p = [{senml.BVER: 5, senml.BN: "r:", senml.N: "a", senml.V: 1}, {senml.N: "b", senml.V: 2}]
    recs = senml_resolve.resolve(p)
    assert recs == [{"bver": 5, "n": "r:a", "t": 0, "v": 1}, {"bver": 5, "n": "r:b", "t": 0, "v": 2}], recs
    # Version 10 is ours and the default: section 4.6 leaves it out of resolved records.
    assert senml_resolve.resolve([{senml.BVER: 10, senml.N: "a", senml.V: 1}]) == [{"n": "a", "t": 0, "v": 1}]
    for bver in (11, 0, -1, 5.0, True, "10", None):
        raises(senml.SenMLError, senml_resolve.resolve, [{senml.BVER: bver, senml.N: "a", senml.V: 1}])


def test_unknown_labels_are_ignored_unless_they_end_in_underscore():
    p = [{senml.N: "a", senml.V: 1, 99: 0, -20: "x", "ct": "60", "_x": 1}, {senml.N: "b", senml.V: 2, 9: b"?"}]
    assert senml_resolve.resolve(p) == [{"n": "a", "t": 0, "v": 1}, {"n": "b", "t": 0, "v": 2}]
    p[1]["ct_"] = "60"
    err = raises(senml.SenMLError, senml_resolve.resolve, p)
    assert "record 1" in str(err) and "ct_" in str(err), str(err)
