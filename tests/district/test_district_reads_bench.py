"""bench/district_reads.py runs end to end at tiny sizes on both engines and reports every figure, its baseline's
(the same reads over a tenth of the history) and the ratio of the two; speed is the benchmark's business, never
asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_district_reads_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench.district_reads", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "postgresql: filled after" in proc.stderr, proc.stderr  # progress while it runs
    assert "postgresql, baseline: filled after" in proc.stderr, proc.stderr
    assert "sqlite ratio" in proc.stdout, proc.stdout
    r = json.loads(out.read_text())
    base = r["baseline"]
    assert base["sizes"] == {**r["sizes"], "orders": 50, "messages": 200, "refusals": 5}, base["sizes"]
    for engine in ("sqlite", "postgresql"):
        for read in ("scrape", "rollout_view"):
            assert set(r[engine][read]) == {"first_s", "median_s", "max_s"}, r[engine]
            assert all(v > 0 for v in r[engine][read].values()), r[engine]
            assert set(base[engine][read]) == {"first_s", "median_s", "max_s"}, base[engine]
            assert all(v > 0 for v in base[engine][read].values()), base[engine]
            ratio = r["vs_baseline"][engine][read]
            assert ratio["median"] == pytest.approx(r[engine][read]["median_s"] / base[engine][read]["median_s"],
                                                    rel=0.05), (ratio, r[engine], base[engine])
