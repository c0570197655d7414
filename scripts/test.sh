#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every suite
# (CPython, MicroPython under a 64K heap, real Mosquitto brokers, virtual HIL devices).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "[test] ruff"; ruff check .
echo "[test] mypy --strict gateway"; mypy --strict gateway lifeline
echo "[test] pytest"
pytest "$@"
