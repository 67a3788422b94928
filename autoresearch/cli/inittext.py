"""The texts `autoresearch init` writes: program.md's prose, the scratchpad template, run.sh, and
what it says about the modes."""

BODY = """
# The research program

You are an autonomous researcher. Your job is to make `{script}` score better on `{metric}`
({better} is better), one careful experiment at a time, and to keep going until the budget runs
out. Nobody is watching: do not stop to ask.

## The loop

1. Read `scratchpad.md`: it is your memory across turns, compactions and restarts.
2. Form **one** hypothesis that fits the current phase's focus, and write it in the scratchpad
   before you touch code: what you change, why it should help, and by how much.
3. Edit the code to test it ({editable}). Keep the change small enough that the result
   means something.
4. Run it: `./run.sh -m "<what changed and why>"`. It trains in a sandbox for a fixed time; the
   metric is {source}. Read the lines it prints; the full log is in `runs/NNNN/train.log`.
5. Update `scratchpad.md` with the result and what you learned, then end your turn. The harness
   keeps (commits) or reverts the change, records it in `results.tsv`, and tells you what is next.

## The rules

- You may edit only {editable} (program.md's `editable:`). Everything else is fixed.
- No new packages, no network, no git commands that write.
- The time budget is enforced from outside: finish and report in time, or the run is a timeout.
- Report the real measurement, computed on the validation data as the code did before you
  started. Printing a number that was not measured, or measuring on training data, is cheating;
  every kept change is reviewed by a human.
- One idea per experiment. If a run crashes, read the log, fix the cause, and try again or move on.

## The scratchpad

Keep `scratchpad.md` short, current and honest, with these sections:

- **Current best**: the metric, the run, and what made it.
- **Experiment log**: one line per experiment: number, change, result, verdict.
- **Hypotheses**: ideas not yet tried, with why you think they could work.
- **Next experiments**: the next two or three, in order.
- **Failed patterns**: what did not work and why, so you do not repeat it.

Before you end a turn, the scratchpad must say what the last run showed. The harness checks.
"""

SCRATCHPAD = """# Scratchpad

## Current best
(none yet: the first run is the baseline)

## Experiment log
<!-- one line per experiment: number | change | {metric} | kept / discarded / crashed -->

## Hypotheses
-

## Next experiments
1. Run the baseline as it is: `./run.sh -m "baseline"`.

## Failed patterns
-
"""

RUN_SH_PLUGIN = """#!/usr/bin/env bash
# One experiment for the current {script}:  ./run.sh -m "what changed and why"
# Written by `autoresearch init` on {date} (plugin mode): the trusted runner is the installed
# autoresearch Claude Code plugin, found here at run time (its folder moves when the plugin updates);
# at init it was {bundle}
set -euo pipefail
root="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
cfg="${{CLAUDE_CONFIG_DIR:-${{HOME:-/nonexistent}}/.claude}}"
plugin=""
for d in "${{CLAUDE_PLUGIN_ROOT:-/nonexistent}}" "$cfg"/plugins/cache/*/autoresearch/* {bundle_q}; do
  [ -f "$d/autoresearch/run/__main__.py" ] || continue
  if [ -z "$plugin" ] || [ "$d" -nt "$plugin" ]; then plugin="$d"; fi    # the newest installed version
  [ "$d" = "${{CLAUDE_PLUGIN_ROOT:-}}" ] && break
done
py=""
for c in "${{CLAUDE_PLUGIN_DATA:-/nonexistent}}/venv/bin/python" "$cfg"/plugins/data/autoresearch-*/venv/bin/python \
         {py}; do
  [ -x "$c" ] && {{ py="$c"; break; }}
done
if [ -z "$plugin" ] || [ -z "$py" ]; then
  echo "run.sh: the autoresearch plugin${{plugin:+ ($plugin)}} or its Python is not installed for this user ($cfg):" >&2
  echo "  install it (claude plugin install autoresearch@<marketplace>) and start a Claude Code session here once," >&2
  echo "  which installs its Python; or run autoresearch init --force with a bundle checkout" >&2
  exit 2
fi
export CLAUDE_PROJECT_DIR="$root"
# the package from the plugin folder; never a module from the project (safe path, no user site)
PYTHONPATH="$plugin" PYTHONSAFEPATH=1 exec "$py" -s -m autoresearch.run "$@"
"""

RUN_SH = """#!/usr/bin/env bash
# One experiment for the current {script}:  ./run.sh -m "what changed and why"
# Written by `autoresearch init` on {date}: the trusted runner is the autoresearch bundle at
#   {bundle}
# run with its Python {python}. If the bundle moves, run `autoresearch init --force` again.
set -euo pipefail
root="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
py={py}
if [ ! -x "$py" ]; then
  echo "run.sh: $py is missing: run scripts/bootstrap.sh in the bundle, or autoresearch init --force" >&2
  exit 2
fi
export CLAUDE_PROJECT_DIR="$root"
exec "$py" -I -m autoresearch.run "$@"
"""


INLINE_GUARANTEE = (
    "inline mode gives a WEAKER guarantee: the metric is read from what the training code prints "
    "(the last line matching run.metric_regex), and the agent edits that code, so it could print a "
    "number it did not measure. Still enforced: the sandbox (no network, read-only repo, hard time "
    "limit), the guard on every tool call, the ledger and git history of every experiment. Not "
    "enforced: an independent evaluation, and keeping validation data away from training. Review the "
    "kept diffs (git log -p on the run branch) before you trust a result; `autoresearch final` is "
    "not available in this mode.")
LAST_RESORT = ("inline is the last resort. If your repo can evaluate a checkpoint with a script of its own, "
               "give it: --eval-command 'python eval.py' (run.mode eval_command). That script is frozen "
               "(never editable, run as committed), runs in its own sandbox with the held-out data that "
               "training never sees, and writes the metric where training code cannot; what training "
               "prints is then ignored.")
