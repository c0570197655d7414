"""Runs under MicroPython: the heap one HAL backend takes when imported, after what both import anyway.
argv: sim or esp32. On the unix port the esp32 backend imports tests/firmware/esp32_sim's machine and network
(a board has those modules in ROM), which are imported before the count starts. Prints one JSON line."""

import asyncio  # noqa: F401 -- imported first by both backends' callers, so not counted against either
import gc
import json
import sys

import hal  # noqa: F401 -- the package, which esp32_sim's machine imports through hal.sim
import persist  # noqa: F401

if sys.argv[1] == "esp32":
    import machine  # noqa: F401
    import network  # noqa: F401
gc.collect()
before = gc.mem_alloc()
__import__("hal." + sys.argv[1])
gc.collect()
print(json.dumps({"backend": sys.argv[1], "bytes": gc.mem_alloc() - before}))
