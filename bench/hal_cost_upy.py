"""Runs under MicroPython: the heap one HAL backend takes when imported, after what both import anyway.
argv: sim or esp32. On the unix port the esp32 backend imports firmware/sim/esp32_machine's machine and
network (a board has those modules in ROM; they bring the sim backend, hal_sim, in with them), which are
imported before the count starts. Prints one JSON line."""

import asyncio  # noqa: F401 -- imported first by both backends' callers, so not counted against either
import gc
import json
import sys

import hal  # the package, which the firmware imports whatever its backend
import persist  # noqa: F401

if sys.argv[1] == "esp32":
    import machine  # noqa: F401
    import network  # noqa: F401
gc.collect()
before = gc.mem_alloc()
hal.backend(sys.argv[1])
gc.collect()
print(json.dumps({"backend": sys.argv[1], "bytes": gc.mem_alloc() - before}))
