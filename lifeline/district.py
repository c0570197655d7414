"""`lifeline district --config district.toml`: the district centre's service (district/service.py). Exit
codes: 0 after a clean stop, 1 when start-up failed (the database), 2 for a config error, printed with the
field it names."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from district import accounts, config, service, store
from district.schema import sites
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
    role.add_argument("--forget-site-session", metavar="SITE",
                      help="clear the gateway session stored for SITE, so its gateway's next birth is taken "
                           "(a box behind the numbers of the one before: docs/gateway.md)")
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
    if args.forget_site_session:
        return _forget_site_session(cfg, args.forget_site_session)
    if args.desk:
        return service.run_desk(args.config, cfg)
    return service.supervise(args.config, cfg, desk=not args.no_desk)


def _add_user(cfg: config.DistrictConfig, name: str, role: str) -> int:
    # at a terminal asked for and unechoed, as passwd does; it sat silent there and echoed the password typed
    password = getpass.getpass(f"password for {name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    engine = _open(cfg)
    if engine is None:
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


def _forget_site_session(cfg: config.DistrictConfig, site: str) -> int:
    engine = _open(cfg)
    if engine is None:
        return 1
    try:
        with engine.begin() as conn:
            row = store.forget_session(conn, site, actor=f"shell:{_user()}"[:64], now=time.time())
            known = [] if row is not None else list(conn.execute(select(sites.c.site).order_by(sites.c.site)).scalars())
    finally:
        engine.dispose()
    if row is None:
        print(f"refused: site {site!r} is not in the district's database (its gateway never heard from); "
              f"sites there: {', '.join(known) or 'none'}", file=sys.stderr)
        return 2
    now = (f"online, its last birth at {_utc(row.born)}" if row.online
           else f"offline, its gateway's last death at {_utc(row.died)}" if row.died else "offline")
    if row.session is None:
        print(f"site {site}: no session stored, nothing forgotten; it reads {now}")
        return 0
    began = store.session_began(row.session)
    print(f"site {site}: session {row.session} forgotten"
          + (f" (begun {_utc(began)} by the site box's clock)" if began is not None else "")
          + f"; it reads {now}, and its gateway's next birth is taken whatever its session, at its next connect"
          " (a restart of its gateway has one at once)")
    return 0


def _open(cfg: config.DistrictConfig) -> Engine | None:
    try:
        return open_engine(cfg.database, cfg.base)
    except DBAPIError as exc:  # PostgreSQL down, say: one line, as the other start-up failures
        reason = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
        print(f"start-up failed: database {store.shown(cfg.database)}: cannot open it ({reason[0]})", file=sys.stderr)
        return None


def _user() -> str:
    """Who ran the command, for the audit: the login's name (desk accounts cannot hold the 'shell:' before it)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for the uid (a container's)
        return f"uid {os.getuid()}"


def _utc(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t is not None else "never"
