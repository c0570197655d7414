"""What gateway tests add to the virtual site (lifeline/virtual/site.py): the district application as an
async context over the site's recorder, keeping bodies as decoded so a test can check the wire itself, and
the `lifeline` command run to completion, and the gateway's quarantine read as it fills."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from gateway.registry import Registry
from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import ROOT, Site, environment, lifeline_cmd
from protocol import district as dtopics


class District:
    """The district side for an asyncio test: the site's uplink as it arrives, and its downlink."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.recorder: Recorder | None = None

    async def __aenter__(self) -> District:
        self.recorder = self.site.recorder(raw=True)
        if not await self.recorder.until(self.recorder.subscribed.is_set, 10):
            raise AssertionError("the district application did not subscribe within 10 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.recorder is not None
        self.recorder.close()

    @property
    def items(self) -> list[tuple[str, Any]]:
        assert self.recorder is not None
        return [(e.kind, e.body) for e in self.recorder.entries()]

    def of(self, kind: str) -> list[Any]:
        assert self.recorder is not None
        return [e.body for e in self.recorder.entries(kind)]

    def packs(self) -> Counter[tuple[str, int]]:
        """How many times each (device, seq) arrived in telemetry: exactly once is what de-duplication leaves."""
        return Counter((p["dev"], p["seq"]) for b in self.of(dtopics.TELEMETRY) for p in b["packs"])

    async def send(self, kind: str, body: Any) -> None:
        assert self.recorder is not None
        self.recorder.send(kind, body)

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        assert self.recorder is not None
        if not await self.recorder.until(predicate, timeout):
            raise AssertionError(f"district did not see what was expected within {timeout}s; "
                                 f"got {len(self.items)} items: {self.items[-5:]!r}")


    async def drained(self, done: Any, progress: Any, stall: float = 20.0) -> None:
        """Until `done()` holds, however long a backlog takes to drain on a loaded machine, as long as
        `progress()` (a count of what has arrived) grows at least once every `stall` seconds; a stall fails."""
        seen = -1
        while not done():
            if progress() <= seen:
                raise AssertionError(f"district stalled: nothing more within {stall}s after {seen}; "
                                     f"last items {self.items[-3:]!r}")
            seen = progress()
            assert self.recorder is not None
            await self.recorder.until(lambda now=seen: done() or progress() > now, stall)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lifeline_cmd(), *args], capture_output=True, text=True, env=environment(), cwd=ROOT,
                          timeout=60)


async def quarantined(site: Site, count: int, timeout: float = 20.0) -> sqlite3.Connection:
    """The gateway's store, read-only, once its quarantine holds `count` rows or `timeout` has passed (the
    caller asserts on what it finds)."""
    store = sqlite3.connect(f"file:{site.dir / 'gateway.sqlite'}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    while store.execute("SELECT count(*) FROM quarantine").fetchone()[0] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return store


def break_births(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    """A birth whose `ip` is "poison" meets a bug in the registry: an unknown defect of the gateway, which must
    cost that one message (kept as `internal`), not its batch."""
    real = registry.birth

    def broken(dev: str, body: Any, now: float, live: bool) -> None:
        if body.get("ip") == "poison":
            raise RuntimeError("a bug")
        real(dev, body, now, live)

    monkeypatch.setattr(registry, "birth", broken)
