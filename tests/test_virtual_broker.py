"""lifeline.virtual.broker.Mosquitto, the broker every test starts: what a stop leaves behind."""

from __future__ import annotations

from pathlib import Path

from lifeline.virtual.broker import Mosquitto


def test_a_stopped_broker_leaves_no_pipe_open(tmp_path: Path) -> None:
    """The broker's stderr pipe (read when it fails to start) stayed open after stop(): a ResourceWarning
    for each broker a test started, and a file descriptor held until the collector found it."""
    broker = Mosquitto(workdir=tmp_path).start()
    proc = broker.proc
    assert proc is not None and proc.stderr is not None
    broker.stop()
    assert proc.returncode is not None and proc.stderr.closed
    broker.stop()  # stopped twice: nothing more to do
