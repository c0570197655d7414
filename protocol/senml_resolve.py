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
_PLAIN_NUMBERS = (int, float)  # exact classes: a bool or a subclass goes through the full check


def _number(rec, label, where):
    x = rec.get(label, 0)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SenMLError("%s: %s must be a number" % (_where(where), NAMES[label]))
    return x


def _text(rec, label, where):
    x = rec.get(label)
    if x is not None and not isinstance(x, str):
        raise SenMLError("%s: %s must be text" % (_where(where), NAMES[label]))
    return x


def _where(i):
    """A record's place for an error message, formatted only when there is an error to report."""
    return "record %d" % i


def _check_name(name, where):
    if not name:
        raise SenMLError("%s: empty name" % _where(where))
    if name.strip(_NAME_CHARS):  # something outside the set is left: find the first for the message
        for ch in name:
            if ch not in _NAME_CHARS:
                raise SenMLError("%s: character %r not allowed in a name" % (_where(where), ch))
    if name[0] in "-:./_":
        raise SenMLError("%s: name must start with a letter or digit" % _where(where))


def resolve(senml_pack):
    """Full records with text keys: name = bn + n, time = bt + t, unit from bu, values offset by bv/bs.

    Times stay as numbers on the pack's own clock: the message envelope says whether that clock is
    epoch time or seconds since boot, which SenML alone cannot express.

    The gateway resolves every pack it admits, so the common record (integer labels, a plain number or
    unit) takes the short way through each check; any other input takes the same checks as before.
    """
    if not isinstance(senml_pack, list) or not senml_pack:
        raise SenMLError("a pack is a non-empty array")
    bver, bn, bt, bu, bv, bs = VERSION, "", 0, None, 0, 0
    out = []
    try:
        for i, rec in enumerate(senml_pack):
            if not isinstance(rec, dict):
                raise SenMLError("%s: not a map" % _where(i))
            for label in rec:  # section 4.4: ignore unknown labels, except must-understand ones ending in "_"
                if type(label) is not int and label not in NAMES and isinstance(label, str) and label.endswith("_"):
                    raise SenMLError("%s: must-understand label %r not understood" % (_where(i), label))
            if BVER in rec:
                bver = rec[BVER]
                if isinstance(bver, bool) or not isinstance(bver, int) or not 0 < bver <= VERSION:
                    from protocol.message_check import shown  # here: message_check is what imports this module

                    raise SenMLError("%s: unsupported SenML version %s" % (_where(i), shown(bver)))
            if BN in rec:
                bn = _text(rec, BN, i)
                if bn is None:
                    raise SenMLError("%s: bn must be text" % _where(i))
            if BT in rec:
                bt = _number(rec, BT, i)
            if BU in rec:
                bu = _text(rec, BU, i)
            if BV in rec:
                bv = _number(rec, BV, i)
            if BS in rec:
                bs = _number(rec, BS, i)
            n = rec.get(N)
            name = bn + n if type(n) is str else bn + (_text(rec, N, i) or "")
            _check_name(name, i)
            t = rec.get(T, 0)
            full = {"n": name, "t": bt + (t if type(t) in _PLAIN_NUMBERS else _number(rec, T, i))}
            if bver != VERSION:  # section 4.6: an older pack's version rides on every resolved record
                full["bver"] = bver
            unit = rec.get(U)
            if unit is None or type(unit) is not str:
                unit = _text(rec, U, i) or bu
            elif not unit:
                unit = bu
            if unit is not None:
                full["u"] = unit
            label = None
            for value_label in _VALUE_LABELS:
                if value_label in rec:
                    if label is not None:
                        raise SenMLError("%s: more than one value field" % _where(i))
                    label = value_label
            if label is not None:
                value = rec[label]
                if label == V:
                    full["v"] = bv + (value if type(value) in _PLAIN_NUMBERS else _number(rec, V, i))
                elif label == VS and not isinstance(value, str):
                    raise SenMLError("%s: vs must be text" % _where(i))
                elif label == VB and value is not True and value is not False:
                    raise SenMLError("%s: vb must be a boolean" % _where(i))
                elif label == VD and not isinstance(value, bytes):
                    raise SenMLError("%s: vd must be a byte string" % _where(i))
                else:
                    full[NAMES[label]] = value
            if S in rec:
                full["s"] = bs + _number(rec, S, i)
            if label is None and "s" not in full:
                raise SenMLError("%s: no value and no sum" % _where(i))
            if UT in rec:
                full["ut"] = _number(rec, UT, i)
            out.append(full)
    except OverflowError:  # CPython: an integer past a double's range added to a float (MicroPython makes inf)
        raise SenMLError("%s: a number past the range of a float" % _where(i))
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
