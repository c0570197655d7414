"""`lifeline gateway --config site.toml`: loads the site's config, sets up logging and runs the daemon
(gateway/daemon.py) until a signal stops it. Exit codes: 0 after a clean stop, 1 when start-up failed (the
store or a broker setting), 2 for a config error, which is printed with the field it names."""

from __future__ import annotations

import argparse
import asyncio
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
    return asyncio.run(_main(cfg))


async def _main(cfg: GatewayConfig) -> int:
    try:
        gateway = Gateway(cfg)
    except sqlite3.Error as exc:  # SQLite's words name no file
        print(f"start-up failed: store.path {cfg.store_path}: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a site key file unreadable
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    try:
        return await gateway.run()
    except OSError as exc:  # the metrics port taken, say: a message, not a traceback
        print(f"gateway stopped: {exc}", file=sys.stderr)
        return 1
