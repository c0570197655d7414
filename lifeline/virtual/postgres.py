"""A real PostgreSQL server on a free loopback port, for tests, benchmarks and the demo's district.

Debian's `postgresql` package installs the server binaries under /usr/lib/postgresql/N/bin and does not put
them on PATH. initdb refuses to run as root, so as root the cluster belongs to the package's `postgres`
user and every server command runs as that user; as anyone else it runs as the caller. The cluster trusts
local connections: it lives in its own directory, listens on 127.0.0.1 only, and dies with the run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

from lifeline.virtual.broker import free_port


def server_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/bootstrap.sh (it uses apt-get)")
    return found[-1].parent


class Postgres:
    """One cluster with one database, `lifeline`; `url` is what district.toml's `database` takes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as: list[str] = []
        self._created = False
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/lifeline"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(server_bin() / tool), *args], capture_output=True, text=True)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log}")

    def start(self, timeout: float = 30.0) -> Postgres:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", str(int(timeout)),
                  "start")
        if not self._created:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "lifeline")
            self._created = True
        return self

    def end_sessions(self) -> int:
        """End every other session of the database, as a server restart or a cut link ends them: a client's
        pooled connections fail at their next use. How many were ended."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        return sum(1 for (ok,) in ended if ok)

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, recovery at the next start."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

