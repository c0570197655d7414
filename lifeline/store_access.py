"""A gateway's store opened read-only for the site's inspection commands (`lifeline status`, `lifeline
quarantine`, `lifeline ota status`), found from site.toml or named directly, so inspection never takes a write
lock from the running daemon."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from rich.markup import escape

from gateway.site_config import GatewayConfig, load

# C0, DEL and C1 (0x9b is a CSI on its own to some terminals): each as its \x escape
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


class StoreError(Exception):
    """No store to read at the path given: missing, not SQLite, or without the tables a command reads."""


def add_store_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help=config_help)
    where.add_argument("--store", type=Path, help="the gateway's SQLite store")


def check_reachable(path: Path) -> None:
    """A StoreError unless something is at `path`: a directory the operator may not enter (the gateway's state
    directory is 0750) made Path.exists raise PermissionError, a traceback."""
    try:
        path.stat()
    except FileNotFoundError:
        raise StoreError(f"no gateway store at {path}") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot reach it ({exc.strerror or exc})") from None


def store_path(args: argparse.Namespace, cfg: GatewayConfig | None = None) -> Path:
    """The store a command reads: --store, or site.toml's (`cfg` if the caller loaded it already)."""
    return Path(args.store) if args.store is not None else (cfg or load(args.config)).store_path


def open_readonly(args: argparse.Namespace, tables: tuple[str, ...] = (),
                  cfg: GatewayConfig | None = None) -> sqlite3.Connection:
    """The store, checked to be one before it is read: a wrong --store (the site.toml, the district's database,
    a gateway that stopped before making its tables) is a line naming it, not a traceback of the first query.
    `cfg`: site.toml as the caller loaded it already (a large site's takes about half a second to load)."""
    path = store_path(args, cfg)
    check_reachable(path)
    try:
        conn, found = _tables(f"file:{path}?mode=ro")
    except sqlite3.Error as exc:
        # A WAL store is opened read-only only where its -shm can be made: not by a reader in the gateway's group
        # while it is stopped (its state directory is 0750). With no -wal beside it the file is the whole store.
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY \
                and not Path(f"{path}-wal").exists():
            try:
                conn, found = _tables(f"file:{path}?mode=ro&immutable=1")
            except sqlite3.Error as again:
                raise StoreError(f"{path}: cannot read it as a gateway store ({again})") from None
        else:
            raise StoreError(f"{path}: cannot read it as a gateway store ({exc})") from None
    missing = [t for t in tables if t not in found]
    if missing:
        conn.close()
        raise StoreError(f"{path}: no table {', '.join(missing)}: not a gateway store, or the gateway has not "
                         "started on it")
    return conn


def _tables(uri: str) -> tuple[sqlite3.Connection, set[str]]:
    conn = sqlite3.connect(uri, uri=True)
    try:
        return conn, {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        conn.close()
        raise


def plain(text: str) -> str:
    """Text from outside with every control character as its \\x escape, for a rich Text (never read as markup)."""
    return text.translate(_CONTROLS)


def shown(text: str) -> str:
    """Text from the store that came from outside (a publisher's topic, a node's words) for a rich console: as
    text, not markup, and with every control character as its \\x escape, so none can recolour, clear or retitle
    the operator's terminal (rich escapes markup and drops a few controls, but passes ESC through)."""
    return escape(plain(text))
