#!/usr/bin/env python3
"""Write the site broker's password file and ACL from site.toml's device registry.

    .venv/bin/python deploy/mosquitto/site_auth.py --config site.toml --out /etc/mosquitto/lifeline

Writes into --out:
  passwords.json  user -> clear-text password (mode 0600): one per device and one for the gateway. Kept
                  across runs, so adding a device does not change the others'. A device's goes into its
                  secrets.json ("mqtt_password"); the gateway's into the file named by site_broker.password_file.
  gateway.password  the gateway's password alone, for site_broker.password_file.
  passwd          the same, hashed by mosquitto_passwd (Mosquitto's password_file).
  acl             deploy/mosquitto/site.acl with SITE replaced by the site id (Mosquitto's acl_file).
Then reload the broker (systemctl reload mosquitto) so it reads both files.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from gateway.config import ConfigError, load  # noqa: E402

GATEWAY_USER = "gateway"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def generate(config: Path, out: Path, acl_template: Path = HERE / "site.acl") -> dict[str, str]:
    cfg = load(config, check_files=False)  # the gateway's password file is written here
    out.mkdir(parents=True, exist_ok=True)
    store = out / "passwords.json"
    passwords: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    users = [GATEWAY_USER, *sorted(cfg.devices)]
    passwords = {u: passwords.get(u) or secrets.token_urlsafe(24) for u in users}
    _write_private(store, json.dumps(passwords, indent=2) + "\n")
    _write_private(out / "gateway.password", passwords[GATEWAY_USER] + "\n")
    passwd = out / "passwd"
    _write_private(passwd, "".join(f"{u}:{p}\n" for u, p in passwords.items()))
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-U", str(passwd)], check=True)  # hashes the file in place
    acl = acl_template.read_text().replace("/SITE/", f"/{cfg.site}/")
    (out / "acl").write_text(acl)
    return passwords


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        passwords = generate(args.config, args.out)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(passwords) - 1} devices and the gateway written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
