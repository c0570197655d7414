"""bench/district_reads.py runs end to end at tiny sizes on both engines and reports every figure; speed is the
benchmark's business, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_district_reads_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench.district_reads", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "postgresql: filled after" in proc.stderr, proc.stderr  # progress while it runs
    r = json.loads(out.read_text())
    for engine in ("sqlite", "postgresql"):
        for read in ("scrape", "rollout_view"):
            assert set(r[engine][read]) == {"first_s", "median_s", "max_s"}, r[engine]
            assert all(v > 0 for v in r[engine][read].values()), r[engine]
