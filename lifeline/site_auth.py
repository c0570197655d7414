"""`lifeline site-auth`: the site broker's password file and ACL, written from site.toml's device registry.

    lifeline site-auth --config site.toml --out /etc/mosquitto/lifeline

Writes into --out:
  passwords.json    user -> clear-text password (mode 0600): one per device and one for the gateway. Kept
                    across runs, so adding a device does not change the others', and a device taken out of
                    site.toml keeps its own (without a login in passwd) for when it is put back. A device's
                    goes into its secrets.json ("mqtt_password").
  gateway.password  the gateway's password alone, for site_broker.password_file.
  passwd            the same passwords hashed by mosquitto_passwd (Mosquitto's password_file).
  acl               deploy/mosquitto/site.acl with SITE replaced by the site id (Mosquitto's acl_file).
Then reload the broker (systemctl reload mosquitto) so it reads both files.

Each file is written whole (a new file renamed over the old, passwd only once mosquitto_passwd has hashed it),
keeping an old file's owner and group but not its others' bits: a crash or a failing mosquitto_passwd leaves
the files as they were, never a half-written passwords.json (the only copy of every device's password) or a
passwd of clear text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway.site_config import ConfigError, load
from lifeline.private_file import write_private

ACL_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "site.acl"

GATEWAY_USER = "gateway"


class SiteAuthError(Exception):
    """The files in --out cannot be read or written; the message says which and why."""


def mosquitto_passwd() -> str:
    return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _hash(passwd: Path) -> None:
    try:
        subprocess.run([mosquitto_passwd(), "-U", str(passwd)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise SiteAuthError(f"{mosquitto_passwd()} not found: install mosquitto (its clients)") from None
    except subprocess.CalledProcessError as exc:
        raise SiteAuthError(f"mosquitto_passwd -U failed: {(exc.stderr or exc.stdout).strip()}") from None


def _kept(store: Path) -> dict[str, str]:
    """The passwords of an earlier run: a file this command did not write is refused, not replaced, since
    new passwords would lock out every device flashed with the old ones."""
    if not store.exists():
        return {}
    try:
        kept = json.loads(store.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        why = "nested too deeply to be a map of user to password" if isinstance(exc, RecursionError) else exc
        raise SiteAuthError(f"{store}: cannot read the passwords of the last run ({why}); restore it (without "
                            "it every device gets a new password and must be flashed again)") from None
    if not isinstance(kept, dict) or not all(isinstance(u, str) and isinstance(p, str) for u, p in kept.items()):
        raise SiteAuthError(f"{store}: not a map of user to password; restore it (without it every device gets "
                            "a new password and must be flashed again)")
    return kept


def _write_whole(path: Path, text: str) -> None:
    """`text` written beside `path` and renamed over it once on disk: a full disk leaves the old file, never a
    short one the broker would read at its next reload. Readable as a file written in place would be (the
    old file's mode, or 0666 less the umask); unlike write_private's files, the ACL holds no secret."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def generate(config: Path, out: Path, acl_template: Path = ACL_TEMPLATE) -> dict[str, str]:
    cfg = load(config, check_files=False)  # the gateway's password file is written here
    if GATEWAY_USER in cfg.devices:
        raise ConfigError(f"devices: id {GATEWAY_USER!r} is the gateway's own broker login; rename the device")
    user = cfg.site_broker.username
    if user is not None and user != GATEWAY_USER:  # the gateway would be refused by its own broker at start
        raise ConfigError(f"site_broker.username {user!r}: the gateway's login is {GATEWAY_USER!r}, the user the site "
                          "broker's ACL (deploy/mosquitto/site.acl) gives its topics and the one site-auth writes")
    store = out / "passwords.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        kept = _kept(store)
        passwords = {u: kept.get(u) or secrets.token_urlsafe(24) for u in [GATEWAY_USER, *sorted(cfg.devices)]}
        # A device out of site.toml keeps its password here (the only copy; back in, its node logs in as it
        # was flashed) but has no login in passwd while it is out.
        left_out = {u: p for u, p in sorted(kept.items()) if u not in passwords}
        write_private(store, json.dumps({**passwords, **left_out}, indent=2) + "\n")
        write_private(out / "gateway.password", passwords[GATEWAY_USER] + "\n")
        write_private(out / "passwd", "".join(f"{u}:{p}\n" for u, p in passwords.items()), before_rename=_hash)
        _write_whole(out / "acl", acl_template.read_text().replace("/SITE/", f"/{cfg.site}/"))
    except OSError as exc:
        raise SiteAuthError(f"{exc.filename or out}: {exc.strerror}") from None
    return passwords


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.add_argument("--out", type=Path, required=True, help="directory for passwd, acl and passwords")


def run(args: argparse.Namespace) -> int:
    try:
        passwords = generate(args.config, args.out)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except SiteAuthError as exc:
        print(f"site-auth: {exc}", file=sys.stderr)
        return 2
    print(f"{len(passwords) - 1} devices and the gateway written to {args.out}")
    return 0
