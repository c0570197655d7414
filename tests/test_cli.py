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


@pytest.mark.parametrize("database", ["no-such-dir/district.sqlite", "postgresql://lifeline@127.0.0.1:{port}/lifeline",
                                      "postgresql://lifeline:s3cret@127.0.0.1:{port}/lifeline"])
def test_add_user_with_a_database_it_cannot_open(tmp_path: Path, database: str) -> None:
    """`lifeline district --add-user` with PostgreSQL down (or an SQLite file in a directory not there) is one line
    naming the database (not its password) and exit 1, as start-up failures are; it was a page of SQLAlchemy
    traceback. (A process of its own: the command sets up the process's logging.)"""
    from lifeline.virtual.broker import free_port

    database = database.format(port=free_port())
    conf = tmp_path / "district.toml"
    conf.write_text(f'[broker]\nhost = "127.0.0.1"\n[database]\nurl = "{database}"\n[[sites]]\nid = "site-a"\n'
                    f'seal_key = "{"00" * 32}"\n')
    done = subprocess.run([LIFELINE, "district", "--config", str(conf), "--add-user", "li.wei"],
                          input="duty-password-1\n", capture_output=True, text=True, env=ENV, timeout=60)
    shown = database.replace(":s3cret@", ":***@")  # a password in the URL is not printed
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"start-up failed: database {shown}: cannot open it (") and (
        done.stderr.count("\n") == 1), done.stderr


def test_add_user_on_a_terminal_asks_for_the_password_without_echo(tmp_path: Path) -> None:
    """On a terminal `--add-user` sat silent, waiting for a line no prompt asked for, and the password typed
    there was echoed on the screen (and into any session recording). It asks, and reads it unechoed, as passwd
    does; from a pipe it still reads a line."""
    import os
    import pty
    import select
    import signal
    import time

    conf = tmp_path / "district.toml"
    conf.write_text(f'[broker]\nhost = "127.0.0.1"\n[database]\nurl = "district.sqlite"\n[[sites]]\nid = "site-a"\n'
                    f'seal_key = "{"00" * 32}"\n')
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the pty, as an operator at a terminal runs it
        os.execve(LIFELINE, [LIFELINE, "district", "--config", str(conf), "--add-user", "li.wei"], ENV)
    seen = b""

    def read_until(what: bytes, timeout: float = 20.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while what not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 1024)
                except OSError:  # the child has ended
                    break
        assert what in seen, seen

    try:
        read_until(b"password for li.wei: ")
        os.write(fd, b"duty-password-1\n")
        read_until(b"viewer li.wei added")
    finally:
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        if done == (0, 0):  # still waiting for a line: ended, so that the test ends
            os.kill(pid, signal.SIGKILL)
            done = os.waitpid(pid, 0)
        os.close(fd)
    status = done[1]
    assert os.waitstatus_to_exitcode(status) == 0 and b"duty-password-1" not in seen, seen
