"""`lifeline demo --out DIR` and what it removes before a run: DIR/run when an earlier demo made it, never a
directory of the user's own. It removed DIR/run whatever it held."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline import cli
from lifeline.demo import run as demo_run
from lifeline.virtual import leftovers, plan


class Stop(RuntimeError):
    pass


@pytest.fixture
def no_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo stopped where it would stand its site up, just after clearing DIR/run."""
    def site(*args: object, **kwargs: object) -> None:
        raise Stop("stopped by the test before the site")

    monkeypatch.setattr(demo_run.virtual_site, "Site", site)


def test_a_run_directory_of_the_users_own_is_left_whole(tmp_path: Path, no_site: None,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "run"
    (mine / "logs").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me\n")
    assert cli.main(["demo", "--plain", "--out", str(tmp_path)]) == 2
    assert (mine / "notes.txt").read_text() == "keep me\n"
    assert capsys.readouterr().err == (f"--out: {mine} is not a run of the demo; nothing was removed: give --out "
                                       "a directory of its own, or move it\n")


def test_an_earlier_demo_run_is_removed(tmp_path: Path, no_site: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--plain", "--out", str(tmp_path)]) == 1  # the run the test stops makes DIR/run
    (tmp_path / "run" / "logs" / "gateway.log").write_text("an earlier run's\n")
    assert cli.main(["demo", "--plain", "--out", str(tmp_path)]) == 1
    assert not (tmp_path / "run" / "logs" / "gateway.log").exists()
    assert capsys.readouterr().err.count("demo failed: stopped by the test before the site\n") == 2


def test_an_out_that_cannot_be_a_directory_is_one_line(tmp_path: Path, no_site: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming a file (or a directory below one) was a FileExistsError traceback before anything ran; it is
    a usage error, one line and exit 2, as an --out holding a directory of the user's."""
    afile = tmp_path / "results.txt"
    afile.write_text("mine\n")
    assert cli.main(["demo", "--plain", "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"--out: {afile}: File exists\n"
    assert afile.read_text() == "mine\n"


@pytest.mark.parametrize("heap", ["-5", "0", "64", "64Kw", "abc", "100000M", "1e5"])
def test_a_heap_the_boards_cannot_run_in_is_refused(tmp_path: Path, no_site: None, heap: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--heap went to the unix port unchecked: the port refuses -5, 64 (no K) or abc and crashes at 100000M, so
    every board died at power-on, the site stood up all the same and the run said only, two minutes later, that
    no device came online. A usage error (exit 2) before anything runs."""
    with pytest.raises(SystemExit) as ended:
        cli.main(["demo", "--plain", "--out", str(tmp_path), "--heap", heap])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lifeline demo ") and err.splitlines()[-1] == (  # argparse's usage, then one line
        f"lifeline demo: error: argument --heap: {heap!r}: a heap size the unix port takes, digits then w (32-bit "
        "words) and K or M, from 16K to 64M, like 64wK"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("heap", ["64wK", "128k", "96wK", "1M", "65536"])
def test_a_heap_as_the_unix_port_takes_it(tmp_path: Path, no_site: None, heap: str) -> None:
    assert cli.main(["demo", "--plain", "--out", str(tmp_path), "--heap", heap]) == 1  # stopped at the site


def test_seed_text_is_shown_as_written_in_the_live_view(tmp_path: Path) -> None:
    """An incident's title and id and the lines said above the live view are the seed's or a desk's words, shown
    as text: rich read them as markup, so "[/]" in a title ended the run with a MarkupError traceback when its
    part began, and "[north gate]" vanished from the line."""
    import argparse
    import io

    from rich.console import Console

    from lifeline.demo import live

    text = plan.SEED.read_text()
    old = 'title = "Gas leak beside the Renmin Rd main"'
    assert old in text
    text = text.replace(old, 'title = "Gas leak [north gate] [/]"', 1)
    seed = tmp_path / "seed.toml"
    seed.write_text(text)
    demo = demo_run.Demo(argparse.Namespace(seed=seed, out=tmp_path, quick=True, live=True, heap="64wK"))
    console = Console(file=io.StringIO(), width=200)
    demo.console = console
    demo.say(f"incident: {demo.site.incidents[0].title}")
    demo.status.phase = "playing [/gas-leak]"
    console.print(live.render(demo.status))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "incident: Gas leak [north gate] [/]" in shown, shown
    assert "playing [/gas-leak]" in shown, shown


def test_a_summary_that_cannot_be_written_leaves_the_last_one_whole(tmp_path: Path) -> None:
    """summary.json is for tools, and under --forever it is rewritten after each pass: it was truncated and then
    written in place, so a tool reading it meanwhile, or after a write the disk could not take (here a file size
    limit), found half a JSON document. The last one stays whole until the new one is."""
    import json
    import os
    import resource
    import signal
    import subprocess
    import sys

    last = {"ok": True, "site": "the last pass"}
    (tmp_path / "summary.json").write_text(json.dumps(last))
    (tmp_path / "summary.md").write_text("# the last pass\n")

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as ENOSPC would be
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    code = ("import sys\nfrom pathlib import Path\nfrom lifeline.demo import report\nfrom lifeline.virtual import "
            "plan\nfrom lifeline.virtual.recorder import DistrictLog\n"
            "report.write_summary(report.summarise(plan.load(), DistrictLog(), 0.0, True, []), Path(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          preexec_fn=small_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode != 0 and "File too large" in done.stderr, done.stderr
    assert json.loads((tmp_path / "summary.json").read_text()) == last
    assert (tmp_path / "summary.md").read_text() == "# the last pass\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]  # no temp file left


def test_a_hang_up_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """A dropped SSH session sends the demo SIGHUP: it died at once, and its brokers, gateways, district and boards
    (each in a session of its own, so none had the signal) ran on, holding their ports, until found by hand. It
    leaves as Ctrl-C and SIGTERM do: everything it started stopped, exit 130."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lifeline.cli", "demo", "--plain", "--quick", "--out",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    started: set[int] = set()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # all up, and between starts: tests/test_signal_at_start.py sends one inside a start
            if " devices online at the district" in line:
                break
        started = leftovers.descendants(proc.pid)
        assert started, "the demo started nothing"
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
        left = leftovers.left_after(started, 10)
    finally:
        leftovers.stop_all(proc, started, tmp_path)
    assert proc.returncode == 130 and "interrupted: everything the demo started is stopped" in err, (out, err)
    assert left == {}, left


def test_a_district_record_that_cannot_be_written_leaves_the_last_one_whole(tmp_path: Path) -> None:
    """district.jsonl is rewritten after each pass under --forever, as summary.json is, and was truncated and
    written in place the same way: a tool reading it meanwhile, or after a write the disk could not take, found
    the record cut off mid-line."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    record = tmp_path / "district.jsonl"
    record.write_text('{"t":1.0,"kind":"state","body":{}}\n')

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as ENOSPC would be
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    code = ("import sys\nfrom pathlib import Path\nfrom lifeline.virtual.recorder import DistrictLog\n"
            "log = DistrictLog()\nfor i in range(50):\n"
            "    log.add(float(i), 'state', {'dev': 'gas-01', 'st': 'online'})\nlog.save(Path(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(record)], capture_output=True, text=True,
                          preexec_fn=small_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode != 0 and "File too large" in done.stderr, done.stderr
    assert record.read_text() == '{"t":1.0,"kind":"state","body":{}}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["district.jsonl"]  # no temp file left
