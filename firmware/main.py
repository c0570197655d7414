"""Entry point: count the boot and settle the config (a trial that never confirmed is rolled back)
with only that code loaded, then run the app -- in safe mode after a crash loop (app/watchdog.py).
Config files already checked by an earlier boot are read without the checks (app/checked.py).
See docs/firmware.md."""

import app
from app import checked, watchdog

st = watchdog.boot()
app.warm()  # the command path's names, interned while the heap is empty
cfg = [checked.load()]  # in a list, so run() can take it out and the parsed files can be freed
if cfg[0] is None:
    from app import config

    cfg[0] = config.boot()
    del config
app.drop("app.config", "app.checks", "app.checked", "app.trial")
from app import runtime  # noqa: E402

runtime.run(st, cfg)
