"""Order of the whole suite under pytest-xdist (scripts/test.sh runs `--dist loadfile`): a file is handed to a
worker in collection order and stays on it, so a long file collected last runs alone at the end while the
other workers are idle. The longest files go first; measured in a fresh-clone run (per-file sums of the junit
times, 2026-12-07) the demo's end to end (115 s) and the HIL bench (131 s) were collected last and set the
run's tail. Within a file the order is untouched.

And every test leaves the root logger as it found it (logging_as_found)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

FIRST = ("tests/test_demo.py", "hil_tests/test_e2e.py", "tests/firmware/test_device.py",
         "tests/firmware/test_watchdog.py", "tests/firmware/test_config_cut.py", "tests/firmware/test_sleep_wake.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: every other file keeps its place


@pytest.fixture(autouse=True)
def logging_as_found() -> Iterator[None]:
    """A command run in pytest's process (`lifeline gateway`, `lifeline district`) sets up logging for the
    process: a root handler on the test's captured stderr, closed when the test ends, and level INFO. Every
    later log line in that worker printed --- Logging error ---, failing whichever test read its stderr.
    pytest's own handlers, added and removed at each phase, are left to it."""
    root, mqtt = logging.getLogger(), logging.getLogger("mqtt")
    handlers, levels = [h for h in root.handlers if not _pytests(h)], (root.level, mqtt.level)
    yield
    for h in root.handlers[:]:
        if not _pytests(h) and h not in handlers:
            root.removeHandler(h)
    root.setLevel(levels[0])
    mqtt.setLevel(levels[1])


def _pytests(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest.")
