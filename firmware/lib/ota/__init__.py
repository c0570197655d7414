"""Over-the-air updates (docs/ota.md): slot.py chooses the code a boot runs and keeps the trial of new code;
fetch.py is the updater a node reboots into to pull, check and install a signed release.

main.py, app/runtime.py and app/trial.py spell these file names and the version themselves, so that a node
that never took an update imports nothing of this package (tests/ota/test_ota_names.py keeps them equal)."""

VERSION = "0.1.0"  # the code a board was flashed with by cable; a release's own version is in slot.json
SLOT = "slot.json"  # which code runs: {"run": dir, "v", "prev", "pv"} and "try" while new code is on trial
STATE = "ota.json"  # an update under way: the ota command's release, the slot it fills, how far it got
RESULT = "otares.json"  # an outcome still to be reported upstream: {"v", "ok", "res"}

