"""Entry point: settle the config (a trial that never confirmed is rolled back), count the boot, then run
the app -- in safe mode after a crash loop (app/watchdog.py). See docs/firmware.md.

Config files already checked by an earlier boot are read without the checks (app/checked.py). Files not
yet checked are checked first, and the node then starts over with a soft reset, so that the app runs on
a heap and a name pool the checks never touched; the boot is counted once, after it, and keeps its reset
cause. A trial is checked at every boot (app/trial.py), so a trial boot goes on without the soft reset.
"""

import os

pending = False  # an update pending: this boot runs the updater instead of the app (docs/ota.md)
# A node that never took an update has neither ota.SLOT nor ota.STATE and loads nothing of ota/, whose names
# would take its name pool past the line (docs/firmware.md, Memory); tests/ota/test_ota_names.py keeps
# these two names equal to ota's.
for f in ("slot.json", "ota.json"):
    try:
        os.stat(f)
    except OSError:
        continue
    from ota import slot  # first: every module imported after select() comes from the running slot

    pending = slot.select()
    del slot
    break
import app  # noqa: E402
from app import checked  # noqa: E402

if not checked.fresh():
    from app import config

    config.boot()
    del config
    app.drop("app.config", "app.checks", "app.trial")
    if checked.fresh():  # checked, stamped and no trial on
        from hal import backend

        backend(checked.load()[0].get("hal")).soft_reset()
from app import watchdog  # noqa: E402
from hal import backend  # noqa: E402

cfg = [checked.load()]  # in a list, so run() can take it out and the parsed files can be freed
st = watchdog.boot(backend(cfg[0][0].get("hal")).reset_cause())
app.drop("app.checked")
if pending:
    from ota import fetch

    fetch.run(st, cfg)  # takes the config out of the list; ends in a reset
app.warm(cfg[0][0], cfg[0][2])  # every name the node will intern, interned while the heap is nearly empty
from app import runtime  # noqa: E402

runtime.run(st, cfg)
