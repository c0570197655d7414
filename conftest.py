"""Order of the whole suite under pytest-xdist (scripts/test.sh runs `--dist loadfile`): a file is handed to a
worker in collection order and stays on it, so a long file collected last runs alone at the end while the
other workers are idle. The longest files go first; measured in a fresh-clone run (per-file sums of the junit
times, 2026-12-07) the demo's end to end (115 s) and the HIL bench (131 s) were collected last and set the
run's tail. Within a file the order is untouched."""

from __future__ import annotations

import pytest

FIRST = ("tests/test_demo.py", "hil_tests/test_e2e.py", "tests/firmware/test_device.py",
         "tests/firmware/test_watchdog.py", "tests/firmware/test_config_cut.py", "tests/firmware/test_sleep_wake.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: every other file keeps its place
