"""Over-the-air updates (docs/ota.md): slot.py chooses the code a boot runs and keeps the trial of new code;
fetch.py is the updater a node reboots into to pull, check and install a signed release."""

import os

VERSION = "0.1.0"  # the code a board was flashed with by cable; a release's own version is in slot.json
SLOT = "slot.json"  # which code runs: {"run": dir, "v", "prev", "pv"} and "try" while new code is on trial
STATE = "ota.json"  # an update under way: the ota command's release, the slot it fills, how far it got
RESULT = "otares.json"  # an outcome still to be reported upstream: {"v", "ok", "res"}


def touched(*names):
    """Whether any of these files is on flash (main.py asks before anything else is loaded). A node that
    never took an update has none of them and loads no more of this package: on a 64K heap every module
    and interned name counts (docs/firmware.md)."""
    for name in names:
        try:
            os.stat(name)
            return True
        except OSError:
            pass
    return False
