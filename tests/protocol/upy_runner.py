"""Runs the shared protocol test modules under MicroPython, where pytest does not exist.

Usage: micropython -X heapsize=64K -m upy_runner test_cbor [test_senml ...]
Prints PASS/FAIL per test function and a closing count line; exits 1 on any failure.
"""

import gc
import sys


def main(module_names):
    passed = failed = 0
    for module_name in module_names:
        module = __import__(module_name)
        for name in sorted(dir(module)):
            if not name.startswith("test_"):
                continue
            fn = getattr(module, name)
            gc.collect()
            try:
                fn()
            except Exception as exc:
                failed += 1
                print("FAIL %s.%s: %s: %s" % (module_name, name, type(exc).__name__, exc))
                sys.print_exception(exc)
            else:
                passed += 1
                print("PASS %s.%s" % (module_name, name))
    print("upy: %d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
