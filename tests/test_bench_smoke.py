"""The gateway benchmark runs end to end at tiny sizes: both brokers, the bridge, the gateway daemon, the load
generator and the district recorder fit together, the JSON has every figure, and nothing is lost. Speed is
the benchmark's business (bench/gateway_throughput.py, docs/performance.md), never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Firmware\n\nkept as it is\n")
    args = ["--quick", "--devices", "8", "--messages", "25", "--rounds", "2", "--alarm-samples", "10",
            "--json", str(out), "--doc", str(doc)]
    proc = subprocess.run([sys.executable, "-m", "bench.gateway_throughput", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    for key in ("date", "command", "machine", "git", "sizes", "bridge", "gateway", "ratio", "alarm", "rss",
                "targets", "met"):
        assert key in r, key
    for phase in ("bridge", "gateway"):
        assert r[phase]["device_messages"] == 8 * 25 and r[phase]["device_messages_total"] == 2 * 8 * 25
        assert len(r[phase]["rounds"]) == 2
        assert r[phase]["site_acked"] == r[phase]["device_messages"]
        assert r[phase]["received"] == r[phase]["device_messages"] and r[phase]["lost_total"] == 0
        assert r[phase]["msgs_per_s"] > 0
    assert r["gateway"]["upstream_publishes"] < r["gateway"]["device_messages"]  # batched upstream
    alarm = r["alarm"]
    assert alarm["received"] == alarm["samples"] == 10 and alarm["lost"] == 0
    assert alarm["events"] == {"raised": 5, "cleared": 5}
    assert alarm["p50_ms"] is not None and alarm["p50_ms"] <= alarm["p99_ms"] <= alarm["max_ms"]
    assert alarm["background"]["lost"] == 0 and alarm["background"]["received"] > 0
    assert r["rss"]["peak_mb"] > 0
    assert r["gateway_exit_code"] == 0 and r["recorder_errors"] == []
    assert set(r["met"]) == {"ratio", "alarm_p99", "rss"}

    text = doc.read_text()
    assert "## Firmware\n\nkept as it is" in text
    assert "## Gateway throughput" in text and "| ratio gateway / bridge |" in text
    assert r["command"] in text
