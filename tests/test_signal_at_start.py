"""A stop signal that reaches `lifeline demo` while it is starting one of its parts (a broker, a gateway, the
district, a board). The signal is sent from inside Popen, just after the child has started: its handler then
runs before the demo has the child's handle, which is when a Ctrl-C, a SIGTERM or a dropped SSH session left the
child running, holding its port, with no parent to stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lifeline import cli
from lifeline.virtual import leftovers


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

    def ours() -> set[int]:
        return set(started) | (leftovers.descendants(os.getpid()) - before) | leftovers.running_in(tmp_path)

    before = leftovers.descendants(os.getpid())
    monkeypatch.setattr(subprocess, "Popen", SignalledPopen)
    try:
        code = cli.main(["demo", "--plain", "--quick", "--out", str(tmp_path)])
        monkeypatch.undo()
        assert signalled, "the demo never started that part"
        left = leftovers.left_after(ours, 5)
    finally:
        monkeypatch.undo()
        leftovers.kill_all(ours())
    assert code == 130 and "interrupted: everything the demo started is stopped" in capsys.readouterr().err
    assert left == {}
