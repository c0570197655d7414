"""Reading a received SenML pack (RFC 8428): `resolve` applies the base fields as section 4.6 describes,
`to_json` renders the pack in SenML-JSON to compare sizes. Runs on MicroPython and CPython.
"""

from protocol.senml import BN, BS, BT, BU, BV, BVER, UT, VB, VD, VS, N, S, SenMLError, T, U, V

# Label -> the name SenML-JSON uses; resolved records use these names too.
NAMES = {BVER: "bver", BN: "bn", BT: "bt", BU: "bu", BV: "bv", BS: "bs", N: "n", U: "u", V: "v",
         VS: "vs", VB: "vb", S: "s", T: "t", UT: "ut", VD: "vd"}
_VALUE_LABELS = (V, VS, VB, VD)
VERSION = 10  # RFC 8428's, the default; older packs are read, newer ones refused (section 4.6)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:./_"



def _number(rec, label, where):
    x = rec.get(label, 0)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SenMLError("%s: %s must be a number" % (where, NAMES[label]))
    return x


def _text(rec, label, where):
    x = rec.get(label)
    if x is not None and not isinstance(x, str):
        raise SenMLError("%s: %s must be text" % (where, NAMES[label]))
    return x


def _check_name(name, where):
    if not name:
        raise SenMLError("%s: empty name" % where)
    if name.strip(_NAME_CHARS):  # something outside the set is left: find the first for the message
        for ch in name:
            if ch not in _NAME_CHARS:
                raise SenMLError("%s: character %r not allowed in a name" % (where, ch))
    if name[0] in "-:./_":
        raise SenMLError("%s: name must start with a letter or digit" % where)


def resolve(senml_pack):
    """Full records with text keys: name = bn + n, time = bt + t, unit from bu, values offset by bv/bs.

    Times stay as numbers on the pack's own clock: the message envelope says whether that clock is
    epoch time or seconds since boot, which SenML alone cannot express.
    """
    if not isinstance(senml_pack, list) or not senml_pack:
        raise SenMLError("a pack is a non-empty array")
    bver, bn, bt, bu, bv, bs = VERSION, "", 0, None, 0, 0
    out = []
    for i in range(len(senml_pack)):
        rec = senml_pack[i]
        where = "record %d" % i
        if not isinstance(rec, dict):
            raise SenMLError("%s: not a map" % where)
        for label in rec:  # section 4.4: ignore unknown labels, except must-understand ones ending in "_"
            if label not in NAMES and isinstance(label, str) and label.endswith("_"):
                raise SenMLError("%s: must-understand label %r not understood" % (where, label))
        if BVER in rec:
            bver = rec[BVER]
            if isinstance(bver, bool) or not isinstance(bver, int) or not 0 < bver <= VERSION:
                raise SenMLError("%s: unsupported SenML version %r" % (where, bver))
        if BN in rec:
            bn = _text(rec, BN, where)
        if BT in rec:
            bt = _number(rec, BT, where)
        if BU in rec:
            bu = _text(rec, BU, where)
        if BV in rec:
            bv = _number(rec, BV, where)
        if BS in rec:
            bs = _number(rec, BS, where)
        name = bn + (_text(rec, N, where) or "")
        _check_name(name, where)
        full = {"n": name, "t": bt + _number(rec, T, where)}
        if bver != VERSION:  # section 4.6: an older pack's version rides on every resolved record
            full["bver"] = bver
        unit = _text(rec, U, where) or bu
        if unit is not None:
            full["u"] = unit
        present = [label for label in _VALUE_LABELS if label in rec]
        if len(present) > 1:
            raise SenMLError("%s: more than one value field" % where)
        if present:
            label = present[0]
            value = rec[label]
            if label == V:
                full["v"] = bv + _number(rec, V, where)
            elif label == VS and not isinstance(value, str):
                raise SenMLError("%s: vs must be text" % where)
            elif label == VB and value is not True and value is not False:
                raise SenMLError("%s: vb must be a boolean" % where)
            elif label == VD and not isinstance(value, bytes):
                raise SenMLError("%s: vd must be a byte string" % where)
            else:
                full[NAMES[label]] = value
        if S in rec:
            full["s"] = bs + _number(rec, S, where)
        if not present and "s" not in full:
            raise SenMLError("%s: no value and no sum" % where)
        if UT in rec:
            full["ut"] = _number(rec, UT, where)
        out.append(full)
    return out


def to_json(senml_pack):
    """The same pack in SenML-JSON (text labels), used to compare wire sizes."""
    import binascii
    import json

    records = []
    for rec in senml_pack:
        named = {}
        for label in rec:
            value = rec[label]
            if label == VD:
                value = binascii.b2a_base64(value).decode().strip().replace("+", "-").replace("/", "_")
                value = value.rstrip("=")
            named[NAMES[label]] = value
        records.append(named)
    return json.dumps(records, separators=(",", ":"))
