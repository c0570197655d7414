"""The `lifeline` command: the site gateway, its status and quarantine, the district centre, flashing nodes,
the bench and the demo. Each subcommand is a module of lifeline/ named for it, and only the chosen one is
imported, so a missing optional piece breaks only its own subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from gateway import systemd
from lifeline import __version__

# name -> (module, help). Each module provides add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("lifeline.gateway", "run the site gateway daemon"),
    "status": ("lifeline.status", "devices and active alarms of a gateway (reads its store)"),
    "quarantine": ("lifeline.quarantine", "list or show messages the gateway rejected"),
    "site-auth": ("lifeline.site_auth", "write the site broker's password file and ACL from site.toml"),
    "district": ("lifeline.district", "run the district centre: ingest workers and the web desk"),
    "flash": ("lifeline.flash", "flash the firmware and a device's identity onto a board (or a virtual one)"),
    "release": ("lifeline.release", "build and sign a firmware release for OTA updates (keygen, build)"),
    "ota": ("lifeline.ota", "over-the-air updates at the site: status per node, staged rollout"),
    "hil": ("lifeline.hil", "run the bench suite on virtual devices or real boards (docs/hil.md)"),
    "demo": ("lifeline.demo.run", "the site demo: brokers, gateway, ~20 virtual devices and a scripted incident"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of the `selected` subcommand only (the others are just listed)."""
    parser = argparse.ArgumentParser(prog="lifeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lifeline-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def reloads(argv: list[str], command: str | None) -> bool:
    """Whether this run is one SIGHUP reloads: the gateway, a district worker or the desk. (The district's
    supervisor stops on it; the other subcommands are the terminal's.)"""
    roles = ("--worker", "--desk")
    return command == "gateway" or (command == "district" and any(a.startswith(roles) for a in argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if reloads(argv, command):  # before the subcommand's imports: a SIGHUP during them killed the service
        systemd.hold_reload()
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = importlib.import_module(args._module).run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
