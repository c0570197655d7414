"""A stop signal that reaches `lifeline demo` while it is starting one of its parts (a broker, a gateway, the
district, a board). The signal is sent from inside Popen, just after the child has started: its handler then
runs before the demo has the child's handle, which is when a Ctrl-C, a SIGTERM or a dropped SSH session left the
child running, holding its port, with no parent to stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lifeline import cli


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += kids - found
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _running_in(directory: Path) -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(directory).encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


# the first of the demo's command lines to match, in the order it starts them (a board needs no case: closing its
# pty hangs its session up)
@pytest.mark.parametrize(("part", "signum"), [(r"/run/site-broker/mosquitto\.conf$", signal.SIGINT),
                                              (r"/district-broker/mosquitto\.conf$", signal.SIGHUP),
                                              (r" gateway --config \S+/run/site\.toml$", signal.SIGTERM),
                                              (r" district --config \S+$", signal.SIGTERM)])
def test_a_signal_as_the_demo_starts_a_part_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], part: str,
                                                     signum: int) -> None:
    started: list[int] = []
    signalled: list[str] = []

    class SignalledPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: Any, *more: Any, **kwargs: Any) -> None:
            super().__init__(args, *more, **kwargs)
            started.append(self.pid)
            line = " ".join(map(str, args))
            if not signalled and re.search(part, line):
                signalled.append(line)
                os.kill(os.getpid(), signum)

    before = _descendants(os.getpid())
    monkeypatch.setattr(subprocess, "Popen", SignalledPopen)
    try:
        code = cli.main(["demo", "--plain", "--quick", "--out", str(tmp_path)])
        monkeypatch.undo()
        assert signalled, "the demo never started that part"
        deadline = time.monotonic() + 5
        while (left := {p for p in (_descendants(os.getpid()) - before) | _running_in(tmp_path) if _alive(p)}) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        shown = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in left}
    finally:
        monkeypatch.undo()
        for pid in set(started) | _running_in(tmp_path) | (_descendants(os.getpid()) - before):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert code == 130 and "interrupted: everything the demo started is stopped" in capsys.readouterr().err
    assert shown == {}
