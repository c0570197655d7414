"""lifeline/virtual/leftovers.py, which the stop-at-any-moment tests read /proc through: a process that ends
while it is read is one fewer, never an error (CI: `lifeline flash`'s esptool test failed with FileNotFoundError
on /proc/<pid>/task, the tool's process gone between two looks)."""

from __future__ import annotations

import subprocess
import sys
import time

from lifeline.virtual import leftovers


def test_children_that_end_while_they_are_read_are_no_error() -> None:
    """A shell starting one short-lived child after another: the race is met within milliseconds."""
    with subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"]) as parent:
        try:
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                leftovers.descendants(parent.pid)
        finally:
            parent.kill()


def test_the_descendants_of_a_running_process_are_found() -> None:
    with subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '30'])"]) as parent:
        found: set[int] = set()
        try:
            deadline = time.monotonic() + 10
            while not any(line.startswith("sleep ") for line in leftovers.command_lines(found).values()):
                assert time.monotonic() < deadline, "its child never ran sleep"
                found = leftovers.descendants(parent.pid)
            assert len(found) == 1
        finally:
            leftovers.kill_all(found | {parent.pid})
