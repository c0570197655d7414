"""`lifeline gateway --config site.toml`: loads the site's config, sets up logging and runs the daemon
(gateway/daemon.py) until a signal stops it. Exit codes: 0 after a clean stop, 1 when start-up failed (the
store or a broker setting), 2 for a config error, which is printed with the field it names. A start that made
the store and failed before serving takes the store away again."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path

from gateway import site_config
from gateway.daemon import Gateway
from gateway.logs import setup
from gateway.site_config import ConfigError, GatewayConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="site.toml (see deploy/site.example.toml)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = site_config.load(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    setup(cfg.log_format, cfg.log_level)
    # a link is the operator's, even to nothing (a data disk not mounted yet): exists() follows it
    made = [p for p in (cfg.store_path, *cfg.store_path.parents) if not p.exists() and not p.is_symlink()]
    code, served = asyncio.run(_main(cfg))
    if made and not served:
        _take_away(made)
    return code


async def _main(cfg: GatewayConfig) -> tuple[int, bool]:
    """The exit code, and whether the gateway served."""
    try:
        gateway = Gateway(cfg)
    except sqlite3.Error as exc:  # SQLite's words name no file
        print(f"start-up failed: store.path {cfg.store_path}: {exc}", file=sys.stderr)
        return 1, False
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a site key file unreadable
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1, False
    try:
        return await gateway.run(), True
    except OSError as exc:  # the metrics port taken, say: a message, not a traceback
        print(f"gateway stopped: {exc}", file=sys.stderr)
        gateway.conn.close()
        return 1, gateway.serving


def _take_away(made: list[Path]) -> None:
    """The store a failed first start made, and the directories made for it. Left, it was stamped as made
    then, and the next start (its config put right) opened it as its own without the `store-created` warning:
    on a misspelt path, the real store's backlog, sequence windows and alarms were left aside unsaid."""
    store = made[0]
    for name in (store.name, f"{store.name}-wal", f"{store.name}-shm", f"{store.name}-journal"):
        store.with_name(name).unlink(missing_ok=True)
    for directory in made[1:]:
        with contextlib.suppress(OSError):  # something else put there meanwhile: left as it is
            directory.rmdir()
