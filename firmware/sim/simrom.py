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


def _reserved(key):
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end
    env = uctypes.bytearray_at(start, end - start)
    at = env.find(key)
    while at > 0 and env[at - 1]:  # not at the start of a variable: inside another's value
        at = env.find(key, at + 1)
    if at < 0:
        raise OSError("%s is not set: no block reserved for the ROM partition" % key[:-1].decode())
    at += len(key)
    return uctypes.bytearray_at(start + at, env.find(b"\0", at) - at)


def _mount(image, key, where):
    block = _reserved(key)
    size = os.stat(image)[6]
    if size != len(block):
        raise OSError("%s reserves %d bytes for a %d-byte image" % (key[:-1].decode(), len(block), size))
    view = memoryview(block)
    n = 0
    with open(image, "rb") as f:
        while n < size:
            n += f.readinto(view[n:n + 512])
    vfs.mount(vfs.VfsRom(block), where)


def _compiled(path):
    with open(path) as f:
        return compile(f.read(), path, "exec")  # the source is dropped, as the port drops a script's


_mount(".romfs", b"LIFELINE_ROMFS=", "/rom")
_mount(".sim.romfs", b"LIFELINE_SIMROM=", "/sim")
sys.path[:] = ["/rom/lib", "/rom", ".frozen", "/sim"]  # the board's modules first, for hal_sim's imports too
import hal_sim  # noqa: E402, F401 -- kept in sys.modules for hal.backend("sim")

sys.path[:] = ["/rom/lib", "/rom", ".frozen"]
sys.argv[:] = sys.argv[1:]
exec(_compiled(sys.argv[0]), {"__name__": "__main__"})
