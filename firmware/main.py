"""Entry point: count the boot and settle the config (a trial that never confirmed is rolled back)
with only that code loaded, then run the app -- in safe mode after a crash loop (app/watchdog.py).
Config files already checked by an earlier boot are read without the checks (app/checked.py); files not
yet checked are checked first and read again once the checks are dropped.
See docs/firmware.md."""

import app
from app import checked, watchdog

st = watchdog.boot()
if not checked.fresh():
    # Check first and drop the checks, so that neither their code nor the files they parsed are left
    # scattered through the heap that the app and later commands load into.
    from app import config

    config.boot()
    del config
    app.drop("app.config", "app.checks", "app.trial")
cfg = [checked.load()]  # in a list, so run() can take it out and the parsed files can be freed
app.drop("app.checked")
app.warm(cfg[0][2])  # every name the node will intern, interned while the heap is nearly empty
from app import runtime  # noqa: E402

runtime.run(st, cfg)
