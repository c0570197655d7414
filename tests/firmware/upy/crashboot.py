"""A virtual device whose boots fail: `micropython crashboot.py MAIN`. While `.crash` in the device's directory
holds a number above 0, a start's app.warm takes one from it and raises OSError: an error after the boot is
counted and before the watchdog is armed, as a sensor that fails as it starts would raise. At 0 (or without
`.crash`) the start runs MAIN untouched.
"""

import sys

import app

_MARK = ".crash"


def _fail(device, profile):
    with open(_MARK, "w") as f:  # counted here: a start that checks the config and soft-resets never gets this far
        f.write(str(_left - 1))
    raise OSError("crashboot: a boot that fails before the watchdog is armed")


try:
    with open(_MARK) as f:
        _left = int(f.read())
except OSError:
    _left = 0
if _left:
    app.warm = _fail
sys.argv[:] = sys.argv[1:]
with open(sys.argv[0]) as f:
    code = compile(f.read(), sys.argv[0], "exec")
exec(code, {"__name__": "__main__"})
