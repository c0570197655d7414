"""littlefs (the ESP32 port's file system) on the unix port, over a disk-image file on the host.

Every block write goes straight to the image with one write() call, so killing the process cuts the
file system exactly where a power cut would: between two flash programs.
"""

import os

BLOCK = 4096


class ImageBlockDev:
    def __init__(self, path, blocks):
        self.blocks = blocks
        self.f = open(path, "r+b")  # noqa: SIM115 - held open as long as it is mounted

    def readblocks(self, block, buf, off=0):
        self.f.seek(block * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=0):
        self.f.seek(block * BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase
            self.f.seek(arg * BLOCK)
            self.f.write(b"\xff" * BLOCK)
            return 0
        return None


def mount(image, point="/flash", blocks=64, fresh=False):
    """Mount the image at `point` (formatting a new image when `fresh`); returns the mount point."""
    if fresh:
        with open(image, "wb") as f:
            for _ in range(blocks):
                f.write(b"\xff" * BLOCK)
    dev = ImageBlockDev(image, blocks)
    if fresh:
        os.VfsLfs2.mkfs(dev)
    os.mount(os.VfsLfs2(dev), point)
    return point


def at(arg):
    """A queue directory from a script argument: "lfs:IMAGE" mounts that image, anything else is a path."""
    if arg.startswith("lfs:"):
        return mount(arg[4:]) + "/q"
    return arg


if __name__ == "__main__":
    import sys

    mount(sys.argv[1], fresh=True)
