#!/usr/bin/env bash
# The README's main command: installs what the site demo needs, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/lifeline demo "$@"
