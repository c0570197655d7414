"""Entry point: count the boot and settle the config (a trial that never confirmed is rolled back)
with only that code loaded, then run the app -- in safe mode after a crash loop (app/watchdog.py).
See docs/firmware.md."""

import app
from app import watchdog

st = watchdog.boot()
from app import config  # noqa: E402 - imported after the boot is counted, dropped before the app loads

cfg = [config.boot()]  # in a list, so run() can take it out and the parsed files can be freed
del config
app.drop("app.config", "app.checks")
from app import runtime  # noqa: E402

runtime.run(st, cfg)
