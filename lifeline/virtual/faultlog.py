"""The faults the suites inject and what each lost, written into docs/reliability.md by the tests themselves.

A test that injects a fault ends with `fault_log.record(...)` after its assertions, so a row exists only for
a run that passed. Each row is written to out/reliability/ at once (pytest-xdist workers write their own
files); when the run ends, the controlling process merges the rows of this run into docs/reliability.json,
one row per test (the newest wins, so a partial run updates only its own rows), and rewrites the table in
docs/reliability.md between its markers. Registered as the pytest plugin `lifeline_faults`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = ROOT / "out" / "reliability"
DOC = ROOT / "docs" / "reliability.md"
DATA = ROOT / "docs" / "reliability.json"
BEGIN, END = "<!-- faults: begin (written by the tests) -->", "<!-- faults: end -->"
STARTED = pytest.StashKey[float]()


@dataclass
class Row:
    test: str  # pytest node id
    fault: str  # what was done, in an operator's words
    injected: int  # how many times
    unit: str  # what was counted: readings, messages, records
    sent: int  # taken or sent at the source
    delivered: int  # distinct ones that reached `where`
    duplicates: int  # extra copies that arrived and were removed by (device, seq) de-duplication
    where: str  # where delivery was judged: the district, the gateway, the flash queue
    date: str

    @property
    def lost(self) -> int:
        return self.sent - self.delivered


class FaultLog:
    def __init__(self, test: str) -> None:
        self.test = test

    def record(self, fault: str, *, injected: int, unit: str, sent: int, delivered: int, where: str,
               duplicates: int = 0) -> None:
        row = Row(self.test, fault, injected, unit, sent, delivered, duplicates, where, time.strftime("%Y-%m-%d"))
        ROWS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.test)
        (ROWS / f"{name}.json").write_text(json.dumps(asdict(row)))


@pytest.fixture
def fault_log(request: pytest.FixtureRequest) -> FaultLog:
    return FaultLog(request.node.nodeid)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[STARTED] = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller merges
        return
    started = session.config.stash.get(STARTED, time.time())
    fresh = [Row(**json.loads(p.read_text())) for p in sorted(ROWS.glob("*.json")) if p.stat().st_mtime >= started]
    if fresh:
        write(fresh)


def write(fresh: list[Row]) -> None:
    rows = {r["test"]: Row(**r) for r in json.loads(DATA.read_text())} if DATA.exists() else {}
    rows.update((r.test, r) for r in fresh)
    ordered = sorted(rows.values(), key=lambda r: (r.where, r.test))
    DATA.write_text(json.dumps([asdict(r) for r in ordered], indent=1) + "\n")
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + table(ordered) + END + tail)


def table(rows: list[Row]) -> str:
    lines = ["| fault | times | judged at | sent | delivered | lost | duplicates removed | test | run |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    lines += [f"| {r.fault} | {r.injected} | {r.where} | {r.sent} {r.unit} | {r.delivered} | {r.lost} | "
              f"{r.duplicates} | `{r.test}` | {r.date} |" for r in rows]
    return "\n".join(lines) + "\n"
