"""SenML pack building and resolution (RFC 8428); shared by CPython and MicroPython."""

from protocol import cbor, cbor_decode, senml, senml_resolve
from prototest import raises


def _gas_pack():
    return senml.pack([senml.record("ch4", 12.5, "%LEL"), senml.record("temp", 21.5, "Cel", t=1),
                       senml.record("cover", False)], bn="gas-01:", bt=1763900000)


def test_record_picks_the_value_field_by_type():
    assert senml.record("a", 1.5) == {senml.N: "a", senml.V: 1.5}
    assert senml.record("a", True) == {senml.N: "a", senml.VB: True}
    assert senml.record("a", "x") == {senml.N: "a", senml.VS: "x"}
    assert senml.record("a", b"\x01") == {senml.N: "a", senml.VD: b"\x01"}


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
        [{senml.N: "a", senml.V: 1, 99: 0}],
        [{senml.N: "a", senml.V: 1, senml.T: "now"}],
        [{senml.BVER: 11, senml.N: "a", senml.V: 1}],
    ]
    for p in bad:
        raises(senml.SenMLError, senml_resolve.resolve, p)


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
