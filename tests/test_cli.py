"""The `lifeline` command: its version, and every subcommand's module loads and describes itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline import __version__, cli

LIFELINE = str(Path(sys.executable).parent / "lifeline")
ROOT = Path(__file__).resolve().parents[1]
# The installed script, importing the tree under test (a worktree beside the one the venv was installed from).
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_version() -> None:
    out = subprocess.run([LIFELINE, "--version"], capture_output=True, text=True, check=True, env=ENV)
    assert out.stdout.strip() == f"lifeline-edge {__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_each_subcommand_has_help(name: str) -> None:
    out = subprocess.run([LIFELINE, name, "--help"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: lifeline {name}")
