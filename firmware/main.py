"""Entry point: settle the config (a trial that never confirmed is rolled back), count the boot, then run
the app -- in safe mode after a crash loop (app/watchdog.py). See docs/firmware.md.

Config files already checked by an earlier boot are read without the checks (app/checked.py). Files not
yet checked are checked first, and the node then starts over with a soft reset, so that the app runs on
a heap and a name pool the checks never touched; the boot is counted once, after it, and keeps its reset
cause. A trial is checked at every boot (app/trial.py), so a trial boot goes on without the soft reset.

An error that reaches this file is printed and the node resets, a reset the next boot reports (and counts, once
the boot was counted) as a crash: an ESP32 whose main.py ends sits at the REPL, and no one in a manhole comes
with a cable. Past three errors in a row (a config error with nothing to roll back to fails every boot) each
deep-sleeps first, 1 min doubling to 1 h (app/watchdog.py backoff()), after a power-on start only once 10 s
awake have let a cable's Ctrl-C in. A KeyboardInterrupt (Ctrl-C at the REPL: `lifeline flash`) still stops it.
"""

import os

try:
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
    import app
    from app import checked

    if not checked.fresh():
        from app import config

        config.boot()
        del config
        app.drop("app.config", "app.checks", "app.trial")
        if checked.fresh():  # checked, stamped and no trial on
            from hal import backend

            backend(checked.load()[0].get("hal")).soft_reset()
    from app import watchdog
    from hal import backend

    cfg = [checked.load()]  # in a list, so run() can take it out and the parsed files can be freed
    st = watchdog.boot(backend(cfg[0][0].get("hal")).reset_cause())
    del checked  # main's own reference, or the module outlives its drop (1.25 KB of a running node's heap)
    app.drop("app.checked")
    if pending:
        from ota import fetch

        fetch.run(st, cfg)  # takes the config out of the list; ends in a reset
    app.warm(cfg[0][0], cfg[0][2])  # every name the node will intern, interned while the heap is nearly empty
    from app import runtime

    runtime.run(st, cfg)
except Exception as e:
    import sys

    import persist
    from hal import backend

    sys.print_exception(e)
    try:
        b = backend(persist.load("device.json").get("hal"))
    except Exception:  # device.json unreadable, or naming no backend: the platform's own
        b = backend()
    try:
        from app import watchdog

        ms = watchdog.backoff()
    except Exception:  # app/ itself broken, or no room for state.json: reset at once, as before
        ms = 0
    if ms:
        print("main: errors in a row, deep sleep %d s" % (ms // 1000))
        if b.reset_cause() == "power-on":  # a hand on the board (power, its reset button, esptool's reset)
            print("main: Ctrl-C within 10 s for the REPL")
            import time

            time.sleep(10)
        b.deepsleep(ms)
    b.reset("crash")
