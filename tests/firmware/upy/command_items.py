"""protocol/message_check.decode of commands (a node's command path) on MicroPython, at the node's heap, with all
but HOLE bytes of the heap held: `micropython command_items.py HOLE FILE`, FILE a sealed command in hex a line.
Prints each one's outcome: OK, the MessageError (its reason first), or MEMORY."""

import gc
import sys

from protocol import message_check, topics

KEY = b"\x01" * 32


def key_for(kid):
    return KEY


def hog(hole):
    """Every block of the heap held by one list but a hole of `hole` bytes."""
    gc.collect()
    gap = bytes(hole)
    keep = [None] * 1000
    size, i = 1024, 0
    while size and i < 1000:
        try:
            keep[i] = bytes(size)
            i += 1
        except MemoryError:
            size //= 2
    del gap
    gc.collect()
    return keep


with open(sys.argv[2]) as f:
    sealed = [bytes.fromhex(line.strip()) for line in f]
for s in sealed:
    held = hog(int(sys.argv[1]))
    try:
        message_check.decode(s, key_for, topics.CMD)
        out = "OK"
    except message_check.MessageError as e:
        out = str(e)
    except MemoryError:
        out = "MEMORY"
    held = None
    gc.collect()
    print(out)
