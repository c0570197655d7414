"""Checks of filter steps and pre-alarm levels (app/filters.py runs them), shared by the boot-time
config check and the commands that change them; raise ValueError naming the bad step."""

try:
    from micropython import const
except ImportError:  # CPython (tests/firmware import the checks): const() is the value itself there
    def const(x):
        return x

# const: folded into the code that uses them, so they cost no interned name (docs/firmware.md, Memory)
_TRANSFORMS = const(("offset", "multiply", "round", "q", "clamp", "median", "avg"))
_GATES = const(("delta", "throttle", "heartbeat"))
_MAX_WINDOW = const(32)


def num(x):
    """A number a profile can hold and the node compute with: finite (JSON has no inf or NaN, so one saved
    could not be read back at the next boot) and within 1e9, past which int(x * 1000) and round() overflow."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and -1e9 < x < 1e9


def check_filters(steps):
    """Raise ValueError naming the bad step unless `steps` is a valid filter list."""
    if not isinstance(steps, list):
        raise ValueError("filters must be a list of one-key maps")
    for i in range(len(steps)):
        s = steps[i]
        if not isinstance(s, dict) or len(s) != 1:
            raise ValueError("filter %d: must be a one-key map" % i)
        op, arg = next(iter(s.items()))
        if op not in _TRANSFORMS and op not in _GATES:
            raise ValueError("filter %d: unknown step %r" % (i, op))
        if op == "clamp":
            ok = isinstance(arg, list) and len(arg) == 2 and num(arg[0]) and num(arg[1]) and arg[0] <= arg[1]
        elif op in ("median", "avg", "round"):
            ok = num(arg) and int(arg) == arg and 0 <= arg <= _MAX_WINDOW and (op == "round" or arg >= 1)
        elif op in ("offset", "multiply"):
            ok = num(arg)
        else:
            ok = (num(arg) and arg >= 1e-6) or (op == "delta" and arg == 0)  # a q of 1e-300: v / q overflows
        if not ok:
            raise ValueError("filter %d: bad argument for %s: %r" % (i, op, arg))
    return steps


def check_level(spec):
    if not isinstance(spec, dict):
        raise ValueError("prealarm must be a map")
    kinds = [k for k in ("above", "below", "is") if k in spec]
    if len(kinds) != 1:
        raise ValueError("prealarm needs exactly one of above, below, is")
    k = kinds[0]
    if (not num(spec[k]) and (k != "is" or not isinstance(spec[k], (bool, str)))) or not num(spec.get("hyst", 0)) \
            or spec.get("hyst", 0) < 0:
        raise ValueError("prealarm %s and hyst must be numbers (is: or a boolean or text), hyst >= 0" % k)
    for name in spec:
        if name not in ("above", "below", "is", "hyst", "ev", "fall", "fall_s", "hold_s"):
            raise ValueError("prealarm: unknown field %r" % name)
    if ("fall" in spec or "fall_s" in spec) and (k == "is" or not num(spec.get("fall")) or spec["fall"] <= 0
                                                 or not num(spec.get("fall_s")) or spec["fall_s"] <= 0):
        raise ValueError("prealarm fall and fall_s must both be numbers > 0, on an above or below level")
    if "hold_s" in spec and (k == "is" or not num(spec["hold_s"]) or spec["hold_s"] <= 0):
        raise ValueError("prealarm hold_s must be a number > 0, on an above or below level")
    if not isinstance(spec.get("ev", ""), str):
        raise ValueError("prealarm ev must be an event name")
    return spec
