#!/usr/bin/env bash
# Install the installed plugin's Python dependencies into Claude Code's per-plugin data folder,
# ${CLAUDE_PLUGIN_DATA}/venv (it survives plugin updates; the plugin folder itself stays a clean
# copy with no .venv). Run by the plugin's SessionStart hook and by scripts/autoresearch on first use;
# a human may run it too. Idempotent (a stamp keyed on the requirements and the interpreter) and safe
# under concurrent sessions (flock); the venv is built aside and moved into place whole, so a hook
# never sees a half-installed one. `plugin-deps.sh plot` also adds matplotlib (for `plot`).
# What is installed is exactly scripts/plugin-requirements.lock (plugin-plot.lock for plot), hash-checked:
# the versions CI tested (scripts/lock.py makes both from plugin-requirements.txt).
#   CLAUDE_PLUGIN_DATA=DIR scripts/plugin-deps.sh [plot]      (PYTHON=python3.x to choose the interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${CLAUDE_PLUGIN_DATA:?plugin-deps.sh: CLAUDE_PLUGIN_DATA is not set (Claude Code sets it for plugin hooks)}"
venv="$data/venv"
reqs=("$here/plugin-requirements.lock")
plot_lock="$here/plugin-plot.lock"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "autoresearch plugin: needs Python 3.10 or newer as python3 (or set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi
want="$( (cat "${reqs[@]}"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
stamp="$venv/.autoresearch-deps"
plot_ok() { [ "${1:-}" != "plot" ] || "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; }
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && plot_ok "$@" && exit 0
mkdir -p "$data"
exec 9>"$data/.install.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then       # the base is there (another session, maybe)
  plot_ok "$@" || "$venv/bin/python" -m pip install --disable-pip-version-check -q --require-hashes --no-deps -r "$plot_lock" >&2
  exit 0
fi
echo "autoresearch plugin: installing its Python dependencies into $venv (once, about a minute)..." >&2
new="$data/venv.new"
rm -rf "$new"
"$py" -m venv "$new"
"$new/bin/python" -m pip install --disable-pip-version-check -q --require-hashes --no-deps -r "${reqs[@]}" >&2
echo "$want" > "$new/.autoresearch-deps"
rm -rf "$venv.old"
[ -e "$venv" ] && mv "$venv" "$venv.old"
mv "$new" "$venv"
rm -rf "$venv.old"
plot_ok "$@" || "$venv/bin/python" -m pip install --disable-pip-version-check -q --require-hashes --no-deps -r "$plot_lock" >&2
echo "autoresearch plugin: dependencies ready in $venv" >&2
