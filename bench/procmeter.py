"""What the processes of a benchmark run cost the machine, read from /proc: a benchmark compares the gateway
with a baseline on the same two cores, so it must say where their CPU time and memory went, not only how fast
messages arrived.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from lifeline.virtual.broker import Mosquitto


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, and its Pss (the pages it shares divided among their sharers, which is
    what processes of one program sum to), in MB (1 MB = 2**20 bytes)."""
    out: dict[str, float] = {}
    for path, keys in ((f"/proc/{pid}/status", ("VmRSS", "VmHWM")), (f"/proc/{pid}/smaps_rollup", ("Pss",))):
        with contextlib.suppress(OSError), open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each process of the run used from its creation to stop(): what the 2 cores went to."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs
        self._start = {name: cpu_seconds(pid) for name, pid in procs.items()}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        used = {name: round(cpu_seconds(pid) - self._start[name], 2) for name, pid in self.procs.items()}
        return {"wall_s": round(time.monotonic() - self._t0, 2), "cpu_s": used}


def broker_pid(broker: Mosquitto | None) -> int:
    """The process to meter for a running broker."""
    assert broker is not None and broker.proc is not None
    return broker.proc.pid
