"""Small JSON state (boot count, sequence high-water mark, queue index) that survives power loss.

A file is never rewritten in place: the new content goes to a temp file that is then renamed over the
old one. littlefs (the ESP32 default) and POSIX make that rename atomic, so a reader sees either the old
dict or the new one, never half of each.
"""

import json
import os


def load(path, default=None):
    """The saved dict, or `default` when the file is missing or unreadable (a fresh or damaged flash)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save(path, obj):
    """Written by streaming, so a large dict (a whole profile) needs no string of its size on the heap."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)
