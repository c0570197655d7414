"""A file of secrets (keys, passwords) written whole and owner-only, for the tools that keep them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600: the new file is made beside it (mkstemp gives 0600 whatever the
    umask or an old file's mode was) and renamed over it once on disk, so a crash leaves the old file or the
    new one, never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
