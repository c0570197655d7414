"""Building SenML packs (RFC 8428) in the CBOR representation: what a node does with SenML, and all of it that
a node loads. protocol/senml.py re-exports `record`, `pack` and `SenMLError` beside the labels by name, for
the gateway and the tools.

The labels are private constants here (RFC 8428 section 6; tests/protocol/test_senml.py checks them against
senml.py's): MicroPython folds them into the code, so they cost a node no interned names, where fifteen public
labels would be fifteen more (docs/firmware.md, Memory).
"""

try:
    from micropython import const
except ImportError:  # CPython: const() is MicroPython's compile-time constant, the value itself here
    def const(x):
        return x

_BN = const(-2)
_BT = const(-3)
_BU = const(-4)
_N = const(0)
_U = const(1)
_V = const(2)
_VS = const(3)
_VB = const(4)
_T = const(6)
_VD = const(8)


class SenMLError(ValueError):
    pass


def record(name, value, unit=None, t=None):
    """One measurement; the value's type picks the field (v, vs, vb or vd). Without a name (None) it is named
    by its pack's base name."""
    rec = {} if name is None else {_N: name}
    if value is True or value is False:
        rec[_VB] = value
    elif isinstance(value, str):
        rec[_VS] = value
    elif isinstance(value, (bytes, bytearray)):
        rec[_VD] = bytes(value)
    else:
        rec[_V] = value
    if unit is not None:
        rec[_U] = unit
    if t is not None:
        rec[_T] = t
    return rec


def pack(records, bn=None, bt=None, bu=None):
    """A pack: base fields ride on the first record, as RFC 8428 requires."""
    if not records:
        raise SenMLError("a pack needs at least one record")
    first = records[0]
    if bn is not None:
        first[_BN] = bn
    if bt is not None:
        first[_BT] = bt
    if bu is not None:
        first[_BU] = bu
    return records
