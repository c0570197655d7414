"""Shared by the driver case modules (drivers_*_cases.py), which run on the MicroPython unix port
where pytest does not exist. One module per driver keeps each process well inside the 64K heap.

Usage: micropython -X heapsize=64K -m drivercheck drivers_nmea_cases [...]
Prints PASS/FAIL per case function and exits 1 on any failure."""

import gc
import sys

from drivers import Fault


def near(got, want, tol, what=""):
    if got is None or abs(got - want) > tol:
        raise AssertionError("%s: got %r, want %r +- %r" % (what, got, want, tol))


def eq(got, want, what=""):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def fault(fn, reason):
    try:
        fn()
    except Fault as e:
        eq(e.reason, reason, "fault reason")
        return e
    raise AssertionError("no Fault(%s)" % reason)


class Clock:
    """A ms tick source the case steps by hand."""

    def __init__(self, t=0):
        self.t = t

    def __call__(self):
        return self.t


def main(module_names):
    failed = 0
    for module_name in module_names:
        module = __import__(module_name)
        for name in sorted(n for n in dir(module) if n.startswith("case_")):
            gc.collect()
            try:
                getattr(module, name)()
            except Exception as exc:
                failed += 1
                print("FAIL %s: %s: %s" % (name[5:], type(exc).__name__, exc))
                sys.print_exception(exc)
            else:
                print("PASS %s" % name[5:])
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
