"""A virtual device that loses its power at a chosen step of a config replacement: `micropython cutboot.py
MAIN`. The steps are the renames and removals of the files a replacement touches (device.json, profile.json,
trial.json, cfgack.json, with any suffix: .new, .prev, .tmp), counted over every start. `.cut` in the device's
directory holds how many of them may still happen; the one after is not done: the process is killed instead,
as a power cut would end it, and `.cut` is removed, so the next start runs on uncut. Without `.cut` nothing is
counted.
"""

import os as _os
import sys

_MARK = ".cut"
_FILES = ("device.json", "profile.json", "trial.json", "cfgack.json")


def _step(path):
    if not path.startswith(_FILES):
        return
    try:
        with open(_MARK) as f:
            left = int(f.read())
    except OSError:
        return
    if left:
        with open(_MARK, "w") as f:
            f.write(str(left - 1))
        return
    _os.remove(_MARK)
    _os.system("kill -KILL $PPID")
    while True:
        pass


class _Os:
    """os, with the steps counted (firmware modules import it from sys.modules)."""

    def __getattr__(self, name):
        return getattr(_os, name)

    def rename(self, src, dst):
        _step(dst)
        _os.rename(src, dst)

    def remove(self, path):
        _step(path)
        _os.remove(path)


sys.modules["os"] = _Os()
sys.argv[:] = sys.argv[1:]
with open(sys.argv[0]) as f:
    code = compile(f.read(), sys.argv[0], "exec")
exec(code, {"__name__": "__main__"})
