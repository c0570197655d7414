"""The gateway benchmark runs end to end at tiny sizes: both brokers, the bridge, the gateway daemon, the load
generator and the district recorder fit together, the JSON has every figure, and nothing is lost. Speed is
the benchmark's business (bench/gateway_throughput.py, docs/performance.md), never asserted here. The district
benchmark (bench/district_ingest.py) is held to the same: every configuration ran and stored everything."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Firmware\n\nkept as it is\n")
    args = ["--quick", "--devices", "8", "--messages", "25", "--rounds", "2", "--alarm-samples", "10",
            "--link-messages", "20", "--link-rounds", "1", "--scale-devices", "12", "--scale-messages", "2",
            "--json", str(out), "--doc", str(doc)]
    proc = subprocess.run([sys.executable, "-m", "bench.gateway_throughput", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    for key in ("date", "command", "machine", "git", "sizes", "bridge", "gateway", "ratio", "alarm", "rss",
                "targets", "met"):
        assert key in r, key
    link = r["link"]
    for scenario, per_device, rounds in ((r, 25, 2), (link, 20, 1)):
        for phase in ("bridge", "gateway"):
            x = scenario[phase]
            assert x["device_messages"] == 8 * per_device and x["device_messages_total"] == rounds * 8 * per_device
            assert len(x["rounds"]) == rounds
            assert x["site_acked"] == x["device_messages"]
            assert x["received"] == x["device_messages"] and x["lost_total"] == 0
            assert x["msgs_per_s"] > 0
        assert scenario["gateway"]["upstream_publishes"] < scenario["gateway"]["device_messages"]  # batched
        assert scenario["gateway"]["confirmed_all_after_s"] is not None  # every device told its messages are in
        alarm = scenario["alarm"]
        assert alarm["received"] == alarm["samples"] == 10 and alarm["lost"] == 0
        assert alarm["events"] == {"raised": 5, "cleared": 5}
        assert alarm["p50_ms"] is not None and alarm["p50_ms"] <= alarm["p99_ms"] <= alarm["max_ms"]
        assert alarm["background"]["lost"] == 0 and alarm["background"]["received"] > 0
        commits = alarm["store_commits"]  # read from the gateway's commit-time histogram
        assert commits["all"] >= 1 and 0 <= commits["slow"] <= commits["all"]
        assert alarm["gateway_cpu_us_per_msg"] > 0 and alarm["msgs_per_commit"] >= 1  # light load's cost
        assert scenario["rss"]["peak_mb"] > 0
        assert scenario["gateway_exit_code"] == 0
        assert set(scenario["met"]) == {"ratio", "cpu", "alarm_p99", "rss"}
    assert r["recorder_errors"] == []
    # Over the link, what crossed it is counted, and the pass-through round lost nothing either.
    assert link["spec"]["rtt_ms"] == 40 and link["spec"]["up_mbit_s"] == 10
    for phase in ("bridge", "gateway"):
        assert link[phase]["link_bytes_per_msg"]["up"] >= link[phase]["upstream_bytes_per_msg"]
    assert link["pass_through"]["received"] == link["pass_through"]["device_messages"] == 8 * 25
    assert link["counters"]["connections"] >= 2  # the bridge's and the gateway's
    # At scale (a site of its own with more devices registered): every device heard, nothing lost.
    scale = r["scale"]
    assert scale["devices"] == 12 and scale["gateway"]["received"] == scale["gateway"]["device_messages"] == 24
    assert scale["alarm"]["received"] == 10 and scale["alarm"]["background"]["lost"] == 0
    assert scale["alarm"]["store_commits"]["all"] >= 1
    assert 0 < scale["rss"]["registered_mb"] <= scale["rss"]["peak_mb"] and scale["gateway_exit_code"] == 0
    restarted = scale["restarted"]  # a new gateway on the same store: each device once more, none lost
    assert restarted["received"] == restarted["device_messages"] == 12 and restarted["lost"] == 0
    assert 0 < scale["rss"]["restarted_mb"] <= scale["rss"]["restarted_peak_mb"]
    assert set(scale["met"]) == {"alarm_p99", "rss"} and scale["recorder_errors"] == []

    text = doc.read_text()
    assert "## Firmware\n\nkept as it is" in text
    assert "## Gateway throughput" in text and text.count("| ratio gateway / bridge |") == 2
    assert "Over an emulated district link: 40 ms RTT" in text
    assert "**With 12 registered devices**" in text
    assert r["command"] in text


def test_gateway_benchmark_pins_the_gateway_to_one_cpu(tmp_path: Path) -> None:
    """`--gateway-cpu N`: the gateway alone on CPU N, the brokers, load and recorders on the others (the
    per-core figure); as the kernel reports the affinity. A machine of one CPU gets a clear refusal. The
    gateway runs with a check process here, whose CPU is metered apart and counted in the gateway's."""
    out = tmp_path / "result.json"
    cpus = sorted(os.sched_getaffinity(0))
    args = ["--quick", "--devices", "4", "--messages", "10", "--rounds", "1", "--alarm-samples", "4",
            "--link-rounds", "0", "--scale-devices", "0", "--gateway-cpu", str(cpus[-1]), "--json", str(out),
            "--no-doc", "--check-processes", "1"]
    proc = subprocess.run([sys.executable, "-m", "bench.gateway_throughput", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if len(cpus) < 2:
        assert proc.returncode == 2 and "and another CPU besides" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["cpus"] == {"gateway": [cpus[-1]], "the rest": cpus[:-1]}
    assert r["gateway"]["received"] == r["gateway"]["device_messages"] == 40 and r["gateway"]["lost_total"] == 0
    cpu = r["gateway"]["cpu_s"]
    assert r["sizes"]["check_processes"] == 1 and "check process 1" in cpu and "check process 2" not in cpu
    total = (cpu["gateway"] + cpu["check process 1"]) / r["gateway"]["received"] * 1e6
    assert r["gateway"]["gateway_cpu_us_per_msg"] == pytest.approx(total, abs=0.1)
    assert r["gateway"]["ingest_cpu_us_per_msg"] <= r["gateway"]["gateway_cpu_us_per_msg"]


def test_district_benchmark_quick_run(tmp_path: Path) -> None:
    """Every configuration (baseline, 1 and 2 workers on SQLite and PostgreSQL) and the desk's live feed run
    end to end at tiny sizes and store every message; bench/district_ingest.py."""
    out = tmp_path / "district.json"
    args = ["--quick", "--devices", "6", "--messages", "10", "--per-publish", "7", "--latency-s", "2", "--json",
            str(out)]
    proc = subprocess.run([sys.executable, "-m", "bench.district_ingest", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stored after" in proc.stderr  # progress while it runs
    r = json.loads(out.read_text())
    for key in ("date", "command", "machine", "git", "sizes", "baseline", "ingest", "desk", "targets", "met"):
        assert key in r, key
    assert r["baseline"]["received"] == r["baseline"]["device_messages"] == 60
    assert set(r["ingest"]) == {"sqlite-1w", "sqlite-2w", "postgresql-1w", "postgresql-2w"}
    for x in r["ingest"].values():
        assert x["received"] == x["device_messages"] == 60 and x["lost"] == 0
        assert x["readings_per_s"] == pytest.approx(3 * x["msgs_per_s"], rel=0.01) and x["msgs_per_s"] > 0
        # a share of a core per worker; at 60 messages one worker may round to 0 (the broker shares them out)
        assert len(x["worker_cpu_busy"]) == x["workers"] and all(c >= 0 for c in x["worker_cpu_busy"])
        assert x["worker_cpu_us_per_msg"] > 0
        assert x["exit_codes"] == [0] * x["workers"]
    assert "postgres (server and backends)" in r["ingest"]["postgresql-2w"]["cpu_s"]
    desk = r["desk"]
    assert desk["lost"] == 0 and desk["stored"] == desk["device_messages"] > 0 and desk["exit_code"] == 0
    assert desk["notices"] > 0 and desk["p50_s"] <= desk["p99_s"] <= desk["max_s"]
    assert set(r["met"]) == {"desk_p99", *(f"per_worker_{k}" for k in r["ingest"])}


def test_ingest_cpu_benchmark_admits_every_message(tmp_path: Path) -> None:
    """bench/ingest_cpu.py (the handler alone, in process) takes every message it feeds, with and without its
    profile, and writes its figures with the machine and commit (not for a profile's run), beside its baseline
    timed in the same rounds (the floor: cbor2 and the MAC check alone) and the handler's multiple of it; the
    figures are not judged here."""
    out = tmp_path / "ingest_cpu.json"
    run = [sys.executable, "-m", "bench.ingest_cpu", "--devices", "4", "--messages", "3", "--rounds", "2", "--json",
           str(out)]
    proc = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "accepted 36, quarantined 0" in proc.stdout, proc.stdout  # warm-up and two rounds of 4 x 3
    r = json.loads(out.read_text())
    assert r["accepted"] == 36 and r["quarantined"] == 0 and r["messages_a_round"] == 12
    assert len(r["per_msg_us"]) == 2 and 0 < r["best_us"] <= r["median_us"] and r["git"]["commit"]
    assert len(r["floor"]["per_msg_us"]) == 2 and 0 < r["floor"]["best_us"] <= r["floor"]["median_us"], r
    assert r["x_floor"]["best"] == pytest.approx(r["best_us"] / r["floor"]["best_us"], rel=0.1), r
    assert "times the floor" in proc.stdout, proc.stdout
    out.unlink()
    proc = subprocess.run([*run, "--profile", "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "handle_site" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not out.exists()


def test_status_benchmark_quick_run(tmp_path: Path) -> None:
    """bench/status_scale.py at tiny sizes: a row per size, each round timed, the baseline's ratio 1."""
    out = tmp_path / "status.json"
    proc = subprocess.run([sys.executable, "-m", "bench.status_scale", "--devices", "5,40", "--rounds", "2",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "40 devices: round 2/2" in proc.stderr  # progress while it runs
    r = json.loads(out.read_text())
    assert r["baseline_devices"] == 5 and set(r["sizes"]) == {"5", "40"}
    for n, row in r["sizes"].items():
        assert row["devices"] == int(n) and len(row["rounds"]) == 2
        assert row["wall_s"] == min(x["wall_s"] for x in row["rounds"]) > 0 and row["peak_rss_mb"] > 0
    assert r["sizes"]["5"]["wall_vs_baseline"] == 1.0


@pytest.mark.parametrize("name", ["district_ingest", "district_reads", "firmware_bench", "firmware_soak",
                                  "firmware_wire", "gateway_throughput", "ingest_cpu", "mqtt_receive", "ota_bench",
                                  "status_scale", "store_mqtt", "wanlink", "water_burst"])
def test_every_benchmark_says_what_it_measures(name: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` gives the whole first paragraph of the benchmark's docstring (not its first line cut mid-sentence)
    and runs nothing; one that writes bench/results/ takes --json elsewhere, so a quick run keeps the committed
    figures (firmware_wire writes nothing, wanlink is a tool)."""
    module = importlib.import_module(f"bench.{name}")
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps to the terminal, and breaks a line at a hyphen
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    said = " ".join(capsys.readouterr().out.split())
    assert " ".join(module.__doc__.split("\n\n")[0].split()) in said, said
    assert ("--json" in said) == (name not in ("firmware_wire", "wanlink")), said


def test_store_mqtt_benchmark_quick_run(tmp_path: Path) -> None:
    """bench/store_mqtt.py (flash queue and MQTT client on the unix port, against the interpreter's own heap):
    every figure measured and written where --json says, with the commit and machine; the figures themselves are
    not judged."""
    out = tmp_path / "store_mqtt.json"
    proc = subprocess.run([sys.executable, "-m", "bench.store_mqtt", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "queue + connected client over baseline" in proc.stdout and str(out) in proc.stdout
    r = json.loads(out.read_text())
    assert r["baseline_heap"] > 0 and r["heap_in_use_end"] > r["baseline_heap"]
    assert r["git"]["commit"] and "firmware_dirty" in r["git"] and r["machine"]["cores"] > 0  # what it measured
    for key in ("flashq_import", "mqtt_import", "mqtt_connected_retained", "lfs_put100_prog_bytes",
                "flashq_mpy_bytes", "mqtt_mpy_bytes"):
        assert r[key] > 0, key


def test_mqtt_receive_benchmark_quick_run(tmp_path: Path) -> None:
    """bench/mqtt_receive.py at tiny sizes: the gateway's link (gateway/mqtt_link.Link, the baseline) and the floor
    client each drain a real Mosquitto session of every message, a progress line a round, the floor's ratio to the
    link in the table and the JSON."""
    out = tmp_path / "mqtt_receive.json"
    proc = subprocess.run([sys.executable, "-m", "bench.mqtt_receive", "--messages", "500", "--rounds", "1",
                           "--clients", "link,floor", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 1/1 floor    publishing 500" in proc.stdout, proc.stdout
    r = json.loads(out.read_text())
    for client in ("link", "floor"):
        (x,) = r["runs"][client]
        assert x["left_in_session"] == 0 and x["cpu_us_per_msg"] > 0, x
    assert r["summary"]["link"]["vs link"] == 1.0 and r["summary"]["floor"]["vs link"] > 0


def test_a_soak_shorter_than_its_baseline_is_all_baseline() -> None:
    """bench/firmware_soak.py compares each node's later peak heap with its first 3 minutes: a quick run of a
    minute or two has only the baseline, not a 'later' peak and no baseline."""
    from bench.firmware_bench import wk
    from bench.firmware_soak import peaks

    heap, reports = 131072, [(0, 60000), (4, 50000), (9, 55000)]
    assert peaks(heap, reports, None) == (wk(heap - 50000), None)
    assert peaks(heap, reports, 5) == (wk(heap - 50000), wk(heap - 55000))
    assert peaks(heap, [], None) == (None, None)


def test_a_benchmark_table_shows_every_name_and_figure_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """Columns were cut to 12 characters: messages_a_round read 'messages_a_r' and 1234567.8901234567 read
    '1234567.8901', a figure that looks whole and is not."""
    from bench import report
    report.print_rows({"ingest": {"messages_a_round": 5000, "x": 1234567.8901234567}}, ["messages_a_round", "x"])
    head, row = capsys.readouterr().out.splitlines()
    assert head.split() == ["profile", "messages_a_round", "x"]
    assert row.split() == ["ingest", "5000", "1234567.8901234567"]
