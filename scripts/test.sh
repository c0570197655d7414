#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every suite (CPython, MicroPython under a
# 64K heap, real Mosquitto brokers, virtual HIL devices). The tests mostly wait on brokers and virtual boards,
# and each takes its own free ports and directories, so pytest-xdist runs them side by side; each file stays
# on one worker (its module fixtures, and the HIL bench, are built once). The slowest ten are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "[test] ruff"; ruff check .
echo "[test] mypy --strict gateway district lifeline"; mypy --strict gateway district lifeline
echo "[test] pytest"
pytest -n "${LIFELINE_TEST_WORKERS:-6}" --dist loadfile --durations=10 "$@"
