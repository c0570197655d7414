"""`lifeline quarantine list|show ID`: the messages a gateway rejected, with their reasons, read from its
store while the daemon runs; `show` prints one in full with a best-effort CBOR decode for a person."""

from __future__ import annotations

import argparse
import sys
import time

import cbor2
from rich.console import Console
from rich.table import Table

from gateway.quarantine import REASONS, evicted, row, rows
from gateway.site_config import ConfigError
from lifeline.store_access import StoreError, add_store_arguments, open_readonly, shown

MAX_LIMIT = 1000  # rows one `list` shows


def _limit(text: str) -> int:
    """A number of rows from 1 to MAX_LIMIT: SQLite reads a negative LIMIT as none, the whole table."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{n}: a number of rows from 1 to {MAX_LIMIT}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser, "site.toml (its [store] path is read)")
    sub = parser.add_subparsers(dest="action", required=True)
    lst = sub.add_parser("list", help="newest rejected messages")
    lst.add_argument("--reason", choices=REASONS)
    lst.add_argument("--limit", type=_limit, default=50, help=f"rows, 1 to {MAX_LIMIT} (default 50)")
    show = sub.add_parser("show", help="one rejected message in full")
    show.add_argument("id", type=int)


def _diagnostic(raw: bytes) -> str:
    """Best-effort CBOR decode for a human: the envelope, and the body inside it if it parses."""
    try:
        outer = cbor2.loads(raw)
    except Exception as exc:
        return f"not CBOR: {exc}"
    text = repr(outer)
    value = getattr(outer, "value", None)
    if isinstance(value, (list, tuple)) and len(value) == 4 and isinstance(value[2], bytes):
        try:
            text += "\nbody: " + repr(cbor2.loads(value[2]))
        except Exception as exc:
            text += f"\nbody: not CBOR: {exc}"
    return text


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        conn = open_readonly(args, ("quarantine",))
    except (ConfigError, StoreError) as exc:
        print(exc, file=sys.stderr)  # one line as it is: a terminal-wide wrap would break a path
        return 2
    with conn:
        if args.action == "list":
            table = Table("id", "time (UTC)", "reason", "topic", "bytes", "detail")
            for r in rows(conn, args.reason, args.limit):
                # topic and detail are what a publisher chose (a key id, say): text, never markup or a control
                table.add_row(str(r.id), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at)), shown(r.reason),
                              shown(r.topic), str(r.size), shown(r.detail))
            console.print(table)
            totals = conn.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()
            gone = evicted(conn)
            console.print("kept: " + (", ".join(f"{reason} {n}" for reason, n in totals) or "none")
                          + (f"; {gone} older rejects evicted by the [quarantine] bounds" if gone else ""),
                          markup=False)
            return 0
        one = row(conn, args.id) if -2**63 <= args.id < 2**63 else None  # past SQLite's integers: none such
        if one is None:
            print(f"no quarantined message {args.id}", file=sys.stderr)
            return 2
        r = one
        console.print(f"id {r.id}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.at))} UTC\n"
                      f"reason {shown(r.reason)}: {shown(r.detail)}\ntopic {shown(r.topic)}\nsize {r.size} bytes"
                      + (f" (first {len(r.raw)} kept)" if len(r.raw) < r.size else ""))
        console.print("hex: " + r.raw[:512].hex() + ("..." if len(r.raw) > 512 else ""))
        console.print(_diagnostic(r.raw), markup=False)
        return 0
