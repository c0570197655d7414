"""SIGKILL torture: a MicroPython writer hammers the flash queue with puts and acks and is killed at random
instants, hundreds of times. A process kill stands in for a power cut: what the writer wrote before the
kill is in the file system, what it had not written is not, and a record can be cut between its header
and its payload.

After every kill the next writer opens the same queue and lists what it holds. The writer logs each put
and ack before it starts and after it returns, so the test knows, for every record, whether it must
be there (put returned, no ack started), must not be there (ack returned), or may be either.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from upy_support import build, env, queue_dir

from lifeline import upy
from lifeline.virtual.faultlog import FaultLog

KILLS = int(os.environ.get("LIFELINE_TORTURE_KILLS", "200"))


@dataclass
class Ledger:
    """What the logs prove about each record id across all lives."""

    put_started: set[int] = field(default_factory=set)
    put_done: set[int] = field(default_factory=set)
    ack_started: set[int] = field(default_factory=set)
    ack_done: set[int] = field(default_factory=set)
    top: int = 0  # highest id a put has returned or a reopened queue has shown
    mid_put: int = 0  # kills that landed between "p" and "P"
    mid_ack: int = 0

    def record(self, lines: list[str]) -> None:
        last = ""
        for line in lines:
            tag, _, arg = line.partition(" ")
            if tag not in ("p", "P", "a", "A"):
                continue
            rid = int(arg)
            if tag == "P":
                assert rid > self.top, f"id {rid} reused or out of order (top {self.top})"
                self.top = rid
            {"p": self.put_started, "P": self.put_done, "a": self.ack_started, "A": self.ack_done}[tag].add(rid)
            last = tag
        self.mid_put += last == "p"
        self.mid_ack += last == "a"


def complete_lines(path: Path) -> list[str]:
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def start(cmd: list[str], environment: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start a writer and wait for its report of the reopened queue."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = complete_lines(log)
        if "READY" in lines:
            return proc, lines[: lines.index("READY")]
        assert proc.poll() is None, f"writer died on open:\n{log.read_text()[-3000:]}"
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"writer never got ready:\n{log.read_text()[-3000:]}")


def check_reopened(report: list[str], ledger: Ledger, life: int) -> None:
    held = [line.split() for line in report if line.startswith("Q ")]
    stats = [line.split() for line in report if line.startswith("S ")]
    assert len(stats) == 1, report
    _, length, next_id, drop_a, drop_r, _cut = stats[0]
    ids = [int(q[1]) for q in held]
    where = f"life {life}"
    assert all(q[3] == "1" for q in held), f"{where}: a record failed its self-check: {held}"
    assert int(length) == len(ids), f"{where}: len() {length} but {len(ids)} records listed"
    assert (drop_a, drop_r) == ("0", "0"), f"{where}: nothing should have been evicted"
    alarms = [int(q[1]) for q in held if q[2] == "1"]
    routine = [int(q[1]) for q in held if q[2] == "0"]
    assert ids == alarms + routine, f"{where}: alarm records must come first"
    for lane in (alarms, routine):
        assert lane == sorted(set(lane)), f"{where}: ids not strictly increasing: {lane}"
    back = set(ids) & ledger.ack_done
    assert not back, f"{where}: acked records came back: {sorted(back)}"
    lost = ledger.put_done - ledger.ack_started - set(ids)
    assert not lost, f"{where}: unacked records lost: {sorted(lost)}"
    unknown = set(ids) - ledger.put_started
    assert not unknown, f"{where}: records nobody put: {sorted(unknown)}"
    assert int(next_id) > max(ids, default=0), where
    ledger.top = max([ledger.top, *ids])


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"), "flashq", "persist", "lfsdisk", "flashq_torture")


@pytest.mark.parametrize("fs", ["posix", "littlefs"])
def test_sigkill_during_heavy_writes(fs: str, mpy_dir: Path, tmp_path: Path, fault_log: FaultLog) -> None:
    seed = int(os.environ.get("LIFELINE_TORTURE_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    queue = queue_dir(fs, tmp_path, mpy_dir)
    log = tmp_path / "writer.log"
    environment = upy.environment(env(mpy_dir))
    ledger = Ledger()
    cuts = 0
    for life in range(KILLS + 1):
        cmd = upy.command("-m flashq_torture", queue, str(rng.randrange(1 << 30)))
        proc, report = start(cmd, environment, log)
        try:
            check_reopened(report, ledger, life)
        except AssertionError as err:
            raise AssertionError(f"{err} (LIFELINE_TORTURE_SEED={seed})") from None
        cuts = int(next(line for line in report if line.startswith("S ")).split()[5])
        if life == KILLS:
            proc.kill()
            proc.wait()
            break
        # The writer runs about 8 puts and acks a ms on posix, 1.7 on littlefs (alone): 5-50 ms reaches every point
        # of its cycle (a queue of 10-60 records, a segment every 8 records or so), and the queue carries over lives.
        time.sleep(rng.uniform(0.005, 0.050))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        ledger.record(complete_lines(log))
    print(f"\n{fs}: {KILLS} kills: {len(ledger.put_done)} puts, {len(ledger.ack_done)} acks, "
          f"{ledger.mid_put} kills inside put, {ledger.mid_ack} inside ack, {cuts} torn records cut")
    # Most kills must land inside a put or an ack (both write flash), or the run proved little.
    assert ledger.mid_put + ledger.mid_ack > KILLS // 2
    assert len(ledger.ack_done) > KILLS
    # Each reopen found every completed put that was not being acknowledged (check_reopened), so none was lost.
    fault_log.record(f"node power cut (SIGKILL) during flash-queue writes, {fs}", injected=KILLS, unit="records",
                     sent=len(ledger.put_done), delivered=len(ledger.put_done), where="the node's flash queue")
