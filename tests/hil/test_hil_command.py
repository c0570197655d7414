"""`lifeline hil --out DIR` and what it removes in DIR/bench before a run: only what the bench writes there (its
blank boards and its site), never a user's files. It removed the whole of DIR/bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifeline import cli
from lifeline.upy import ROOT
from lifeline.virtual import leftovers


@pytest.fixture
def suite_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """pytest.main as `lifeline hil` calls it, replaced: the arguments of each run, and no bench started."""
    runs: list[list[str]] = []

    def main(argv: list[str]) -> int:
        runs.append(argv)
        return 0

    monkeypatch.setattr(pytest, "main", main)
    return runs


def test_a_bench_directory_holding_a_users_files_is_left_whole(tmp_path: Path, suite_runs: list[list[str]],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "bench"
    (bench / "mine").mkdir(parents=True)
    (bench / "mine" / "results.csv").write_text("1,2\n")
    (bench / "notes.txt").write_text("keep me\n")
    (bench / "site").mkdir()
    (bench / "site" / "site.toml").write_text("")
    assert cli.main(["hil", "--out", str(tmp_path)]) == 2
    assert (bench / "notes.txt").read_text() == "keep me\n"
    assert (bench / "mine" / "results.csv").read_text() == "1,2\n"
    assert (bench / "site" / "site.toml").exists()  # nothing at all is removed once one file is not the bench's
    assert capsys.readouterr().err == (f"--out: {bench} holds files the bench did not write (mine, notes.txt); "
                                       "nothing was removed: give --out a directory of its own, or move them\n")
    assert suite_runs == []


def test_an_earlier_runs_bench_is_removed_before_the_next(tmp_path: Path, suite_runs: list[list[str]]) -> None:
    bench = tmp_path / "out" / "bench"
    (bench / "devices" / "gas-01").mkdir(parents=True)
    (bench / "devices" / "gas-01" / "device.json").write_text("{}")
    (bench / "site").mkdir()
    (bench / "site" / "district.jsonl").write_text("")
    assert cli.main(["hil", "--out", str(tmp_path / "out"), "--", "-k", "ramp"]) == 0
    assert not (bench / "devices").exists() and not (bench / "site").exists()
    [argv] = suite_runs
    assert argv[argv.index("--bench-dir") + 1] == str(bench) and argv[-2:] == ["-k", "ramp"]


def test_a_bench_path_that_is_a_file_is_refused(tmp_path: Path, suite_runs: list[list[str]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench").write_text("a file of the user's\n")
    assert cli.main(["hil", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "bench").read_text() == "a file of the user's\n"
    assert capsys.readouterr().err.startswith(f"--out: {tmp_path / 'bench'} is not a directory the bench wrote")
    assert suite_runs == []


def test_an_earlier_runs_report_is_not_shown_for_a_run_that_wrote_none(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """pytest can end before the suite runs (an option it does not know, a --device spec the plugin refuses:
    exit 4) and write no report; the last run's report.json was then read and its outcomes printed as this
    run's, a bench that never started shown as passing."""
    (tmp_path / "report.json").write_text(json.dumps({"summary": {"outcomes": {"passed": 9}, "latency_s": {}}}))
    (tmp_path / "junit.xml").write_text("<testsuites/>")
    monkeypatch.setattr(pytest, "main", lambda argv: 4)
    assert cli.main(["hil", "--out", str(tmp_path), "--", "--no-such-option"]) == 4
    out, err = capsys.readouterr()
    assert "passed" not in out, out
    assert err == f"no report: pytest ended with exit status 4 before writing {tmp_path / 'report.json'}\n"
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "junit.xml").exists()


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_a_count_of_no_devices_is_a_usage_error(tmp_path: Path, suite_runs: list[list[str]], count: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--count 0 went to pytest, whose plugin refused it (exit 4, its own ERROR line and then "no report"), after
    the last run's bench and reports were removed. A usage error (exit 2) before anything is removed or run."""
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(SystemExit) as ended:
        cli.main(["hil", "--out", str(tmp_path), "--count", count])
    assert ended.value.code == 2 and "argument --count: " in capsys.readouterr().err
    assert (tmp_path / "report.json").read_text() == "{}" and suite_runs == []


def test_the_out_directory_is_shown_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The closing line names --out as the operator typed it: rich read "[site-a]" in it as markup and dropped it,
    so the line named a directory that was not where the reports were."""
    out = tmp_path / "[site-a]" / "hil"

    def main(argv: list[str]) -> int:
        (out / "report.json").write_text(json.dumps({"summary": {"outcomes": {"passed": 1}, "latency_s": {}}}))
        return 0

    monkeypatch.setattr(pytest, "main", main)
    monkeypatch.setenv("COLUMNS", "300")
    assert cli.main(["hil", "--out", str(out)]) == 0
    assert f"reports in {out}/ (junit.xml, report.json, bench/)" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--bench-host", "bench host"), ("--bench-host", "192.168.4.256"),
                                           ("--wifi-ssid", "s" * 33), ("--wifi-password", "seven77")])
def test_bench_settings_no_board_can_use_are_a_usage_error(tmp_path: Path, suite_runs: list[list[str]], option: str,
                                                           value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The address real boards reach the bench at and its Wi-Fi go into each board as `lifeline flash` writes
    them, but were taken unchecked: every board was flashed with what it could not use, and the bench waited out
    its timeout for births that never came. Refused as `lifeline flash` refuses them, before anything runs."""
    with pytest.raises(SystemExit) as ended:
        cli.main(["hil", "--out", str(tmp_path), option, value])
    assert ended.value.code == 2 and f"argument {option}: " in capsys.readouterr().err and suite_runs == []


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_stop_while_the_bench_starts_stops_everything_it_started(tmp_path: Path, signum: int) -> None:
    """SIGTERM (systemd, kill) or a dropped SSH session ended `lifeline hil` at once, and a Ctrl-C while the bench
    was being set up skipped its teardown: its brokers, gateway and boards ran on, holding their ports. The bench
    is stopped as a Ctrl-C after setup stops it."""
    proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", "hil", "--out", str(tmp_path), "--",
                             "-k", "test_boot_birth_reaches_the_district"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not any(b"micropython" in line.encode() for line in leftovers.command_lines(started).values()):
            assert proc.poll() is None and time.monotonic() < deadline, "no board powered on"
            time.sleep(0.05)
            started |= leftovers.descendants(proc.pid)
        proc.send_signal(signum)  # while the bench flashes its boards and waits for their births
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        started |= leftovers.running_in(tmp_path)
        left = leftovers.left_after(started, 10)
    finally:
        leftovers.stop_all(proc, started, tmp_path)
    assert proc.returncode == 2 and left == {}, (proc.returncode, left, out[-3000:])


def test_the_bench_says_how_far_its_setup_is(tmp_path: Path) -> None:
    """Setting up the bench flashes every board in turn and waits for each birth at the district: on real boards
    over a 115200-baud UART about 20 s a board, minutes of a silent terminal after the test file's name. Each step
    is a line as it comes."""
    proc = subprocess.run([sys.executable, "-m", "lifeline.cli", "hil", "--out", str(tmp_path), "--",
                           "-k", "test_boot_birth_reaches_the_district"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("bench: ")]
    assert lines[0] == "bench: site brokers and gateway up; flashing 1 board(s)", proc.stdout
    assert lines[1].startswith("bench: gas-01 flashed (1/1) on /dev/pts/"), proc.stdout
    assert lines[2] == "bench: gas-01 online at the district (1/1)", proc.stdout
