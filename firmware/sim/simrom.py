"""The unix port's stand-in for a ROMFS board's start-up: `micropython simrom.py MAIN` mounts the board's
image in `.romfs` (the sim's ROM partition) at /rom and the sim's own image in `.sim.romfs` at /sim, imports
the sim backend (hal_sim) from /sim, leaves sys.path at /rom/lib and /rom, then runs MAIN.

A board built with ROMFS maps its romfs partition from flash into the address space, so the bytecode and
strings of the modules imported from it stay in flash and out of the heap. The unix port has no such
memory, and a copy of the image on the heap would count against it. So the harness reserves the blocks
outside the heap: the values of the environment variables LIFELINE_ROMFS and LIFELINE_SIMROM, as many bytes
as each image, which the kernel keeps above the stack (their address is in /proc/self/stat, proc(5) fields
50-51). Each image is copied into its block, and VfsRom reads it in place as it would the flash.

The board's image holds only what a board imports (`lifeline flash --romfs` deploys the same modules), so
the sim backend comes from an image of its own, read in place as well: its heap cost stays what it was
when it sat in the board's image. It is imported here, before MAIN, so that the firmware finds it loaded
(hal.backend("sim")) while its sys.path is a board's: the sim backend stands in for hardware a board has
built in. Run as a script, not imported: the hal package must come from /rom like every other module.
"""

import os
import sys

import uctypes
import vfs


def _mount(path, key, name):
    """Mount the image at `path` on `name`, read in place from the block the variable `key` reserves.
    Compiled on the device, this file's every name is interned, which a board's start-up (C) does not do:
    its locals take names the port has built in, and /proc's fields are read as bytes (no ")" interned).
    Eleven names were the ROMFS drone's past the 620 line's edge (docs/firmware.md, "ROMFS")."""
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    args = data[data.rfind(b")") + 2:].split()
    start, end = int(args[47]), int(args[48])  # env_start, env_end
    buf = uctypes.bytearray_at(start, end - start)
    index = buf.find(key)
    while index > 0 and buf[index - 1]:  # not at the start of a variable: inside another's value
        index = buf.find(key, index + 1)
    if index < 0:
        raise OSError("%s is not set: no block reserved for the ROM partition" % key[:-1].decode())
    index += len(key)
    buf = uctypes.bytearray_at(start + index, buf.find(b"\0", index) - index)
    length = os.stat(path)[6]
    if length != len(buf):
        raise OSError("%s reserves %d bytes for a %d-byte image" % (key[:-1].decode(), len(buf), length))
    data = memoryview(buf)
    n = 0
    with open(path, "rb") as f:
        while n < length:
            n += f.readinto(data[n:n + 512])
    vfs.mount(vfs.VfsRom(buf), name)


_mount(".romfs", b"LIFELINE_ROMFS=", "/rom")
_mount(".sim.romfs", b"LIFELINE_SIMROM=", "/sim")
sys.path[:] = ["/rom/lib", "/rom", ".frozen", "/sim"]  # the board's modules first, for hal_sim's imports too
import hal_sim  # noqa: E402, F401 -- kept in sys.modules for hal.backend("sim")

sys.path[:] = ["/rom/lib", "/rom", ".frozen"]
sys.argv[:] = sys.argv[1:]
with open(sys.argv[0]) as f:
    code = compile(f.read(), sys.argv[0], "exec")  # the source is dropped, as the port drops a script's
f = None
exec(code, {"__name__": "__main__"})
