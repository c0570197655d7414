"""A gateway's store opened read-only for the site's inspection commands (`lifeline status`, `lifeline
quarantine`), found from site.toml or named directly, so inspection never takes a write lock from the
running daemon."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from gateway.site_config import load


def add_store_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help=config_help)
    where.add_argument("--store", type=Path, help="the gateway's SQLite store")


def open_readonly(args: argparse.Namespace) -> sqlite3.Connection:
    path = Path(args.store) if args.store is not None else load(args.config).store_path
    if not path.exists():
        raise FileNotFoundError(f"no gateway store at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
