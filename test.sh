#!/usr/bin/env bash
# The whole test suite, bootstrapping .venv and the data first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
