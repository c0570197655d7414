"""SenML packs (RFC 8428) in the CBOR representation, with the integer labels of RFC 8428 section 6.

Devices build packs with `record` and `pack`; reading a received pack back (protocol/senml_resolve.py)
is the gateway's job, so a node does not carry it.
"""

BVER = -1
BN = -2
BT = -3
BU = -4
BV = -5
BS = -6
N = 0
U = 1
V = 2
VS = 3
VB = 4
S = 5
T = 6
UT = 7
VD = 8


class SenMLError(ValueError):
    pass


def record(name, value, unit=None, t=None):
    """One measurement; the value's type picks the field (v, vs, vb or vd)."""
    rec = {N: name}
    if value is True or value is False:
        rec[VB] = value
    elif isinstance(value, str):
        rec[VS] = value
    elif isinstance(value, (bytes, bytearray)):
        rec[VD] = bytes(value)
    else:
        rec[V] = value
    if unit is not None:
        rec[U] = unit
    if t is not None:
        rec[T] = t
    return rec


def pack(records, bn=None, bt=None, bu=None):
    """A pack: base fields ride on the first record, as RFC 8428 requires."""
    if not records:
        raise SenMLError("a pack needs at least one record")
    first = records[0]
    if bn is not None:
        first[BN] = bn
    if bt is not None:
        first[BT] = bt
    if bu is not None:
        first[BU] = bu
    return records
