"""SenML packs (RFC 8428) in the CBOR representation, with the integer labels of RFC 8428 section 6.

Devices build packs with `record` and `pack` (protocol/senml_build.py, which is all of SenML a node loads);
reading a received pack back (protocol/senml_resolve.py) is the gateway's job, so a node does not carry it.
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


# A node builds packs with these, from protocol/senml_build.py alone (the labels there are constants MicroPython
# folds away, so they cost a node no interned names); they are re-exported here for the gateway and the tools.
from protocol.senml_build import SenMLError as SenMLError  # noqa: E402
from protocol.senml_build import pack as pack  # noqa: E402
from protocol.senml_build import record as record  # noqa: E402
