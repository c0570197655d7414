"""What a tool that was stopped left running, read from /proc: its descendants, and the processes naming its
working directory (whatever their parent is now). For the tests of a stop at any moment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the kernel's list of each task's children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        tasks = Path(f"/proc/{todo.pop()}/task")
        try:
            listed = list(tasks.iterdir())
        except OSError:  # ended meanwhile (ENOENT or ESRCH, the directory gone while it was read)
            continue
        for task in listed:
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:  # ended meanwhile
                continue
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def running_in(directory: Path) -> set[int]:
    """Processes whose command line names `directory`."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(directory).encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def command_lines(pids: set[int]) -> dict[int, str]:
    """Those of `pids` still running, with their command lines."""
    out = {}
    for pid in pids:
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if alive(pid):
            out[pid] = line
    return out


def left_after(pids: set[int] | Callable[[], set[int]], timeout: float) -> dict[int, str]:
    """`command_lines` of those still running after up to `timeout` s: a stopped tool's children are given the
    moment their own shutdown takes. A callable is asked again at each look."""
    deadline = time.monotonic() + timeout
    while (left := command_lines(pids() if callable(pids) else pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_all(pids: set[int]) -> None:
    """SIGKILL those still running, so that a failing test leaves nothing behind."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop_all(proc: subprocess.Popen[Any], pids: set[int], directory: Path) -> None:
    """What a test ends with, so that a failing one leaves nothing behind: the tool if it still runs, then what it
    started (`pids`, seen before or after the look) and whatever else names its working `directory`."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    kill_all(pids | running_in(directory))
