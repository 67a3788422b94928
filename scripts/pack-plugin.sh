#!/usr/bin/env bash
# Make a clean plugin marketplace in DEST from git's tracked files (as they are in the working
# tree; never an untracked or ignored file): only the plugin's own files -- no .venv, runs/, results.tsv, data or tests -- so `claude plugin install`
# copies a few hundred KB into its cache instead of this folder's 1.5 GB .venv.
#   scripts/pack-plugin.sh DEST && claude plugin marketplace add DEST && claude plugin install autoresearch@autoresearch
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:?usage: scripts/pack-plugin.sh DEST}"
if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
  echo "pack-plugin: $dest exists and is not empty" >&2
  exit 2
fi
mkdir -p "$dest"
# What the plugin runs: the manifest, the settings it derives from (init --plugin copies their deny rules), hooks, slash commands, the helper, the package, and the set-up
# script with its pins (hooks fall back to the project's .venv; see README "As a plugin").
(cd "$root" && git ls-files -z -- .claude-plugin .claude/settings.json assets hooks commands autoresearch scripts pyproject.toml README.md \
  | tar --null -T - -cf -) | tar -x -C "$dest"
echo "packed the plugin into $dest ($(du -sh "$dest" | cut -f1))"
