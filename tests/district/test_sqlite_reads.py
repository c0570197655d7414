"""On SQLite a desk's read does not take the write lock: the workers' writes go on while a page's query runs
(district/store.py `reader`). Writers still queue behind each other (BEGIN IMMEDIATE), as before."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from district import store
from district.schema import messages


def test_a_read_in_progress_does_not_hold_a_workers_write_back(tmp_path: Path) -> None:
    engine = store.open_engine(str(tmp_path / "d.sqlite"))
    with store.reader(engine) as page:
        assert page.execute(select(func.count()).select_from(messages)).scalar_one() == 0  # the read is open
        done = threading.Event()

        def write() -> None:
            with engine.begin() as conn:
                store.add_message(conn, "s1", "gas1", 1, 1, [{"n": "ch4", "t": 1.0, "v": 1.0}], received=1.0)
            done.set()

        worker = threading.Thread(target=write)
        started = time.monotonic()
        worker.start()
        # With the write lock held by the read, the worker would wait out busy_timeout (10 s) and fail.
        assert done.wait(5), "the worker's write waited for a page's read"
        worker.join()
        assert time.monotonic() - started < 5
        # the read keeps its snapshot until it ends
        assert page.execute(select(func.count()).select_from(messages)).scalar_one() == 0
    with store.reader(engine) as page:
        assert page.execute(select(func.count()).select_from(messages)).scalar_one() == 1


def test_writers_still_take_the_lock_when_they_begin(tmp_path: Path) -> None:
    engine = store.open_engine(str(tmp_path / "d.sqlite"))
    with engine.begin():
        other = sqlite3.connect(tmp_path / "d.sqlite", timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            raise AssertionError("a second writer began while the first held the lock")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
        finally:
            other.close()
