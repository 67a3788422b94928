#!/usr/bin/env bash
# One experiment for the current train.py:  ./run.sh -m "what changed and why"
# Bootstraps .venv and the data on first use, then hands over to the trusted runner.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" -m autoresearch.run "$@"
