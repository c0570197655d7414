"""The unix port's stand-in for a ROMFS board's start-up: `micropython hal/simrom.py MAIN` mounts the
image in `.romfs` (the sim's ROM partition) at /rom, imports from /rom/lib and /rom alone, then runs MAIN.

A board built with ROMFS maps its romfs partition from flash into the address space, so the bytecode and
strings of the modules imported from it stay in flash and out of the heap. The unix port has no such
memory, and a copy of the image on the heap would count against it. So the harness reserves the block
outside the heap: the value of the environment variable LIFELINE_ROMFS, as many bytes as the image, which
the kernel keeps above the stack (its address is in /proc/self/stat, proc(5) fields 50-51). The image is
copied into that block, and VfsRom reads it in place as it would the flash.

Run as a script, not imported: the hal package must come from /rom like every other module.
"""

import os
import sys

import uctypes
import vfs

_KEY = b"LIFELINE_ROMFS="


def _reserved():
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end
    env = uctypes.bytearray_at(start, end - start)
    at = env.find(_KEY)
    while at > 0 and env[at - 1]:  # not at the start of a variable: inside another's value
        at = env.find(_KEY, at + 1)
    if at < 0:
        raise OSError("LIFELINE_ROMFS is not set: no block reserved for the ROM partition")
    at += len(_KEY)
    return uctypes.bytearray_at(start + at, env.find(b"\0", at) - at)


def _mount():
    block = _reserved()
    size = os.stat(".romfs")[6]
    if size != len(block):
        raise OSError("LIFELINE_ROMFS reserves %d bytes for a %d-byte image" % (len(block), size))
    view = memoryview(block)
    n = 0
    with open(".romfs", "rb") as f:
        while n < size:
            n += f.readinto(view[n:n + 512])
    vfs.mount(vfs.VfsRom(block), "/rom")


def _compiled(path):
    with open(path) as f:
        return compile(f.read(), path, "exec")  # the source is dropped, as the port drops a script's


_mount()
sys.path[:] = ["/rom/lib", "/rom", ".frozen"]
sys.argv[:] = sys.argv[1:]
exec(_compiled(sys.argv[0]), {"__name__": "__main__"})
