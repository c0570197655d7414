"""A virtual device whose flash is littlefs (the ESP32 port's file system) of a fixed size, so that it can
fill up as a board's does: `micropython lfsflash.py BLOCKS FREE MAIN`.

The image is `.flash.img` in the device's directory, BLOCKS blocks of 4 KB (the harness makes the file), and
one byte more past them: while the harness sets it, every block read fails (EIO), as a failing chip's do; the
read returns the error to littlefs, which raises OSError(EIO) in the file call. (Raising it from `readblocks`
instead unwinds through littlefs's C code, and left it in a state that crashed the interpreter, SIGSEGV, in a
loaded CI run.) At
the first start it is formatted and the config files the harness wrote beside it (device.json, secrets.json,
profile.json, sim.json) are copied in. At every start a filler file (other files on the flash) grows until no
more than FREE blocks are free; the image is mounted at /flash, made the working directory, as a board's flash
is, and MAIN runs. The sim world, which the device starts, stays in the host directory and reads sim.json there.
"""

import os
import sys

import vfs
from micropython import const

_IMAGE = ".flash.img"
_BLOCK = const(4096)
_FILES = ("device.json", "secrets.json", "profile.json", "sim.json")


class _Image:
    """The image file as a block device. It allocates nothing: littlefs calls it where the heap may be locked,
    and on a 64K heap a block-sized buffer would count against the node. Erasing does nothing (littlefs does
    not read erased bytes back as anything in particular)."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.f = open(_IMAGE, "r+b")  # noqa: SIM115 - held open as long as it is mounted
        self.flag = bytearray(1)

    def readblocks(self, block, buf, off=0):
        self.f.seek(self.blocks * _BLOCK)
        self.f.readinto(self.flag)
        if self.flag[0]:
            return -5  # EIO, a block device's error return
        self.f.seek(block * _BLOCK + off)
        self.f.readinto(buf)
        return 0

    def writeblocks(self, block, buf, off=0):
        self.f.seek(block * _BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return _BLOCK
        if op == 6:  # erase
            return 0
        return None


def _fill(free):
    """Grow the filler until at most `free` blocks are left, or the flash takes no more."""
    buf = bytes(_BLOCK)
    try:
        with open("filler", "ab") as f:
            while os.statvfs("/flash")[3] > free:
                f.write(buf)
    except OSError:
        pass


blocks, free = int(sys.argv[1]), int(sys.argv[2])
host = os.getcwd()
dev = _Image(blocks)
try:
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    fresh = False
except OSError as e:  # not formatted yet: the first start (a failing read is no reason to format)
    if e.errno == 5:
        raise
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    fresh = True
del dev
os.chdir("/flash")
if fresh:
    for name in _FILES:
        with open(host + "/" + name, "rb") as src, open(name, "wb") as dst:
            dst.write(src.read())
_fill(free)
sys.argv[:] = sys.argv[3:]
with open(sys.argv[0]) as f:
    code = compile(f.read(), sys.argv[0], "exec")
exec(code, {"__name__": "__main__"})
