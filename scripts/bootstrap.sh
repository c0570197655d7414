#!/usr/bin/env bash
# Makes a fresh Debian-like machine ready: Mosquitto from apt (only when missing), a venv in .venv,
# and the project with its dev extras. Safe to run again; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "[bootstrap] installing mosquitto (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  # The Debian package starts a system broker on 1883; ours start on free ports, so stop it.
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# The district's tests start a real PostgreSQL; its desk is tested in Debian's Chromium.
missing=""
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
  echo "[bootstrap] installing$missing (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  # The package starts a system cluster on 5432; the tests start their own on free ports.
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

# tests/test_deploy.py checks the systemd unit with the systemd tools (systemd-analyze, -sysusers, -tmpfiles).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "[bootstrap] installing systemd's tools (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing Python packages"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
