"""The bench's JSON report: every test's outcome, duration and measured latencies, plus the devices.

Latencies are recorded with the `latency` fixture as pytest user properties ("latency:<name>", seconds), so
the JUnit XML (`--junitxml`) carries them too, as <property> elements of each test case.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

PREFIX = "latency:"


class LatencyLog:
    """Handed to a test by the `latency` fixture: `record("birth", 0.42)`."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def record(self, name: str, seconds: float) -> float:
        self.item.user_properties.append((PREFIX + name, round(float(seconds), 4)))
        return seconds


class JsonReport:
    """A pytest plugin object that collects the report and writes it at the end of the session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.time()
        self.tests: dict[str, dict[str, Any]] = {}
        self.devices: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {"test": report.nodeid, "outcome": "passed",
                                                      "duration_s": 0.0, "latencies_s": {}})
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 4)
        if report.outcome != "passed" and entry["outcome"] == "passed":  # the first failure or skip tells
            entry["outcome"] = report.outcome if report.when == "call" or report.skipped else "error"
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["skip_reason"] = str(report.longrepr[2])
        elif report.failed:
            entry.setdefault("failure", str(report.longrepr)[-2000:])
        for key, value in report.user_properties if report.when == "teardown" else ():  # all, once
            if isinstance(key, str) and key.startswith(PREFIX):
                entry["latencies_s"].setdefault(key[len(PREFIX):], []).append(value)

    def summary(self) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        samples: dict[str, list[float]] = {}
        for t in self.tests.values():
            outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
            for name, values in t["latencies_s"].items():
                samples.setdefault(name, []).extend(values)
        latency = {name: {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
                   for name, v in sorted(samples.items())}
        return {"outcomes": outcomes, "latency_s": latency}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        data = {"started": self.started, "finished": time.time(), "exit_status": int(exitstatus),
                "devices": self.devices, "summary": self.summary(), "tests": list(self.tests.values())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1) + "\n")
