"""A file of secrets (keys, passwords) written whole and closed to others, for the tools that keep them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_private(path: Path, text: str, before_rename: Callable[[Path], None] | None = None) -> None:
    """Replace `path` with `text`. The new file is made beside it and renamed over it once on disk, so a crash
    leaves the old file or the new one, never half of it. It is 0600, or the old file's mode without the
    others' bits and with its owner and group (a group the deploy's tmpfiles rules gave read access keeps it).
    `before_rename(temp path)` may rework the file first (mosquitto_passwd hashing it in place); when it
    raises, the old file stays as it was."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as fh:
            if path.exists():
                old = path.stat()
                os.fchmod(fh.fileno(), old.st_mode & 0o770)
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename(tmp)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
