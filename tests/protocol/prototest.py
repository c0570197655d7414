"""Helpers for protocol tests that run unchanged on CPython (pytest) and MicroPython (upy_runner)."""

import binascii
import json
import os

# RFC 8949 Appendix A as JSON, kept beside the tests. Under MicroPython the modules run as .mpy from a
# temporary directory, so the runner names the file in LIFELINE_VECTORS.
HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS = os.getenv("LIFELINE_VECTORS") or HERE + "/rfc8949_appendix_a.json"


def unhex(s):
    return binascii.unhexlify(s.replace(" ", ""))


def load_vectors():
    with open(VECTORS) as f:
        return json.load(f)


def same(a, b):
    """Equality that also tells 1 from 1.0 and -0.0 from 0.0, and NaN from NaN-equal."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a != a:
            return b != b
        return a == b and str(a) == str(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(a[k], b[k]) for k in a)
    return a == b


def raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type as e:
        return e
    except Exception as e:
        raise AssertionError("expected %s, got %s: %s" % (exc_type.__name__, type(e).__name__, e))
    raise AssertionError("expected %s, nothing raised" % exc_type.__name__)
