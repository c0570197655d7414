"""`lifeline district --config district.toml`: the district centre's service (district/service.py). Exit
codes: 0 after a clean stop, 1 when start-up failed (the database), 2 for a config error, printed with the
field it names."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from district import accounts, config, service, store
from district.store import open_engine
from gateway.logs import setup
from gateway.site_config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="district.toml (see deploy/district.example.toml)")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--worker", type=int, metavar="N", help="run ingest worker N alone (1..workers)")
    role.add_argument("--desk", action="store_true", help="run the desk alone")
    role.add_argument("--no-desk", action="store_true", help="supervise the workers only")
    role.add_argument("--add-user", metavar="NAME",
                      help="add a desk account (the password asked for at a terminal, else a line of stdin)")
    parser.add_argument("--role", choices=accounts.ROLES, default="viewer", help="with --add-user")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    setup(cfg.log_format, cfg.log_level)
    if args.worker is not None:
        if not 1 <= args.worker <= cfg.workers:
            print(f"config error: --worker {args.worker}: ingest.workers is {cfg.workers}", file=sys.stderr)
            return 2
        return service.run_worker(args.config, cfg, args.worker)
    if args.add_user:
        return _add_user(cfg, args.add_user, args.role)
    if args.desk:
        return service.run_desk(args.config, cfg)
    return service.supervise(args.config, cfg, desk=not args.no_desk)


def _add_user(cfg: config.DistrictConfig, name: str, role: str) -> int:
    # at a terminal asked for and unechoed, as passwd does; it sat silent there and echoed the password typed
    password = getpass.getpass(f"password for {name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    try:
        engine = open_engine(cfg.database, cfg.base)
    except DBAPIError as exc:  # PostgreSQL down, say: one line, as the other start-up failures
        reason = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
        print(f"start-up failed: database {store.shown(cfg.database)}: cannot open it ({reason[0]})", file=sys.stderr)
        return 1
    try:
        accounts.set_cost(cfg.hash_memory_kib, cfg.hash_time_cost)
        with engine.begin() as conn:
            accounts.add_user(conn, name, role, password)
    except accounts.AccountError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"{role} {name} added")
    return 0
