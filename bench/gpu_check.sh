#!/usr/bin/env bash
# The prepared GPU check (issue 27): one table, at most 8 minutes on a GPU box; run from the repo root.
# Without CUDA, or with --dry-run, every GPU row is skipped and only the CPU-side checks run.
# The logic is in bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/gpu_check.py "$@"
