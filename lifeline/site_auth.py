"""`lifeline site-auth`: the site broker's password file and ACL, written from site.toml's device registry.

    lifeline site-auth --config site.toml --out /etc/mosquitto/lifeline

Writes into --out:
  passwords.json    user -> clear-text password (mode 0600): one per device and one for the gateway. Kept
                    across runs, so adding a device does not change the others'. A device's goes into its
                    secrets.json ("mqtt_password").
  gateway.password  the gateway's password alone, for site_broker.password_file.
  passwd            the same passwords hashed by mosquitto_passwd (Mosquitto's password_file).
  acl               deploy/mosquitto/site.acl with SITE replaced by the site id (Mosquitto's acl_file).
Then reload the broker (systemctl reload mosquitto) so it reads both files.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from gateway.site_config import ConfigError, load

ACL_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "site.acl"

GATEWAY_USER = "gateway"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def mosquitto_passwd() -> str:
    return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def generate(config: Path, out: Path, acl_template: Path = ACL_TEMPLATE) -> dict[str, str]:
    cfg = load(config, check_files=False)  # the gateway's password file is written here
    if GATEWAY_USER in cfg.devices:
        raise ConfigError(f"devices: id {GATEWAY_USER!r} is the gateway's own broker login; rename the device")
    out.mkdir(parents=True, exist_ok=True)
    store = out / "passwords.json"
    passwords: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    users = [GATEWAY_USER, *sorted(cfg.devices)]
    passwords = {u: passwords.get(u) or secrets.token_urlsafe(24) for u in users}
    _write_private(store, json.dumps(passwords, indent=2) + "\n")
    _write_private(out / "gateway.password", passwords[GATEWAY_USER] + "\n")
    passwd = out / "passwd"
    _write_private(passwd, "".join(f"{u}:{p}\n" for u, p in passwords.items()))
    subprocess.run([mosquitto_passwd(), "-U", str(passwd)], check=True)  # hashes the file in place
    acl = acl_template.read_text().replace("/SITE/", f"/{cfg.site}/")
    (out / "acl").write_text(acl)
    return passwords


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.add_argument("--out", type=Path, required=True, help="directory for passwd, acl and passwords")


def run(args: argparse.Namespace) -> int:
    try:
        passwords = generate(args.config, args.out)
    except ConfigError as exc:
        print(f"config error: {exc}")
        return 2
    print(f"{len(passwords) - 1} devices and the gateway written to {args.out}")
    return 0
