"""The `autoresearch` command line: the parser and the dispatch to each command's module.

Each subcommand imports its module only when it runs, so `autoresearch guard explain` does not pay
for matplotlib or docker. A command that works on a project takes --project/-C (default: found
from here) and reports the errors a human can fix (bad program.md, bad ledger) in one line.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..registry import AUTO, BACKEND_CHOICES, ISOLATING_CHOICES, LOG_MODE, MODES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autoresearch", description="Set up, watch and drive the overnight "
                                                                      "experiment loop.")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    ap.exit_codes = {0: "done", 2: "no command given (the help is printed)"}   # type: ignore[attr-defined]
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _init_command(sub)
    _report_commands(sub)
    _loop_commands(sub)
    _guard_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from .. import __version__
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    return int(args.func(args) or 0)


def _project(args: argparse.Namespace):
    """The project folder: --project, else $CLAUDE_PROJECT_DIR, else the nearest program.md upwards."""
    from pathlib import Path

    from ..program import project_root
    return Path(args.project).resolve() if getattr(args, "project", None) else project_root()


# Every command's exit codes (the README's tables print them): 0 and 2 mean the same everywhere.
EXIT_COMMON = {0: "done", 2: "did not start: bad program.md, ledger or arguments (one line says which and the fix)"}


def _friendly(fn):
    """Turn the errors a human can fix (bad program.md, bad ledger, bad input) into one clear line;
    under --json into a JSON error on stdout (cli/jsonout.py), any other failure included."""
    def run(args: argparse.Namespace) -> int:
        from ..ledger import LedgerError
        from ..program import ConfigError
        as_json = bool(getattr(args, "json", False))
        try:
            return int(fn(args) or 0)
        except (ConfigError, LedgerError) as e:
            if as_json:
                from .jsonout import error
                fix = "edit program.md" if isinstance(e, ConfigError) else "autoresearch ledger rebuild"
                return error(args.command, str(e), fix, 2)
            print(f"autoresearch {args.command}: {e}", file=sys.stderr)
            return 2
        except Exception as e:       # noqa: BLE001 - a script asked for JSON: it gets JSON, not a traceback
            if not as_json:
                raise
            from .jsonout import error
            return error(args.command, f"{type(e).__name__}: {e}",
                         f"run `autoresearch {args.command}` without --json to see where it failed", 1)
    return run


def _adder(sub):
    """A subcommand that works on a project (--project/-C) and turns known errors into messages."""
    def add(name: str, help: str, func, exits: dict[int, str] | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--project", "-C", metavar="DIR", help="the project folder (default: found from here)")
        p.set_defaults(func=_friendly(func))
        p.exit_codes = {**EXIT_COMMON, **(exits or {})}          # type: ignore[attr-defined]  (helpdoc prints them)
        return p
    return add


class _Renamed(argparse.Action):
    """A flag's old name: still works, and says the new one (one name per idea across commands)."""
    NEW = {"--sandbox": "--backend"}

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"autoresearch: {option_string} is deprecated, use {self.NEW.get(option_string, '?')} "
              "(the same flag in every command)", file=sys.stderr)
        setattr(namespace, self.dest, values)


# --- setting up: init -----------------------------------------------------------------------------

def _init(a) -> int:
    if a.legacy_path and a.path and a.legacy_path != a.path:
        print("autoresearch init: give the repo once (-C DIR)", file=sys.stderr)
        return 2
    if a.legacy_path:
        print("autoresearch init: a positional PATH is deprecated, use -C PATH (--project), as every command does",
              file=sys.stderr)
    a.path = a.path or a.legacy_path
    if a.plugin and not a.command and os.path.isfile(os.path.join(a.path or ".", "program.md")):
        from .plugin import init_plugin
        return init_plugin(a.path)
    from .init import main as run
    return run(a)


def _init_command(sub) -> None:
    p = sub.add_parser("init", help="set up an existing research repo for the loop (the legacy-code case)",
                       description="Set up an existing research repo for the loop: program.md, scratchpad.md, "
                                   "run.sh, .claude/settings.json (hooks), .gitignore.")
    p.set_defaults(func=_friendly(_init))
    p.exit_codes = {**EXIT_COMMON, 1: "the check run did not start (the files are written all the same)"}  # type: ignore[attr-defined]
    p.add_argument("--project", "-C", metavar="DIR", dest="path", help="the repo (default: here)")
    p.add_argument("legacy_path", nargs="?", metavar="PATH", help=argparse.SUPPRESS)   # old spelling of -C
    p.add_argument("--command", metavar="CMD", help="the training command, run from the repo root, e.g. 'python train.py'")
    p.add_argument("--metric", metavar="NAME", help="the metric's name, e.g. val_loss")
    p.add_argument("--direction", choices=["minimize", "maximize"], help="whether lower or higher is better")
    p.add_argument("--mode", choices=MODES, default=LOG_MODE,
                   help="inline (the default without --eval-command, and the last resort): the metric is parsed "
                        "from what the training code prints -- a weaker guarantee; two_stage: the repo has the "
                        "bundle's trusted evaluator (prepare.py); eval_command: set by --eval-command")
    p.add_argument("--eval-command", metavar="CMD", help="your evaluation script, e.g. 'python eval.py': frozen "
                   "(never editable, run as committed), run after training in its own sandbox with the checkpoint "
                   "and the eval mounts; it writes {\"value\": N} to $AUTORESEARCH_METRIC_FILE (run.mode eval_command)")
    p.add_argument("--eval-file", action="append", metavar="FILE", help="a file of the eval script, frozen with it "
                   "(repeatable; default: the .py files in --eval-command)")
    p.add_argument("--metric-regex", metavar="REGEX", help="inline mode: a regex with one group capturing the metric "
                                          "(default: '<metric>[:=] <number>')")
    p.add_argument("--train-script", metavar="FILE", help="the file the agent edits (default: the .py file in --command)")
    p.add_argument("--editable", action="append", metavar="PATTERN", help="another file, folder/ or glob the agent "
                   "may edit, e.g. model.py, src/, 'config/*.py' (repeatable; the train script is always in)")
    p.add_argument("--budget", type=float, default=300, metavar="SECONDS", help="training budget per run (300)")
    p.add_argument("--objective", metavar="TEXT", help="one sentence on what to improve (default: from the metric)")
    p.add_argument("--backend", choices=ISOLATING_CHOICES, default=AUTO, dest="sandbox",
                   help="sandbox backend for the runs (auto: docker if an engine answers, else bwrap)")
    p.add_argument("--sandbox", choices=ISOLATING_CHOICES, dest="sandbox", action=_Renamed,
                   help=argparse.SUPPRESS)                    # the old name of --backend
    p.add_argument("--force", action="store_true", help="replace existing setup files (saved as *.before-autoresearch)")
    p.add_argument("--check-seconds", type=float, default=30, metavar="SECONDS", help="the check run's budget (30)")
    p.add_argument("--no-check", action="store_true", help="do not run the command once to check the setup")
    p.add_argument("--python", metavar="INTERPRETER", help="the interpreter training runs with (run.python): the repo's "
                   "venv, e.g. .venv/bin/python (default: the bundle's; with the plugin: the repo's .venv, else the "
                   "command's python as found now)")
    p.add_argument("--plugin", action="store_true",
                   help="plugin-only mode: the installed plugin's hooks guard and decide (the default when run from "
                        "the plugin); the settings get only what a plugin cannot set (the Stop-block cap, the Bash "
                        "timeout) and permissions.deny. In a project that has program.md already, without "
                        "--command: write just those settings; nothing else")


# --- reporting: status, plot, doctor, final -------------------------------------------------------

def _report_commands(sub) -> None:
    add = _adder(sub)

    def status(a):
        if a.watch:
            from .watch import main as watch
            return watch(_project(a), interval=a.interval, branch=a.branch)
        from .status import main as run
        return run(_project(a), branch=a.branch, show_all=a.all, as_json=a.json)
    p = add("status", "a table of the experiments: the best, the phase, budget left, noise sigma", status)
    p.add_argument("--branch", help="the run branch to show (default: the current or latest one)")
    p.add_argument("--all", action="store_true", help="every row, not just the last 20")
    p.add_argument("--json", action="store_true", help="print the report as JSON (status.Report) instead of tables")
    p.add_argument("--watch", action="store_true", help="redraw until Ctrl-C: the run in flight (stage, step, loss) "
                                                         "and the last decisions")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch: seconds between redraws")

    def plot(a):
        from pathlib import Path

        from .plot import main as run
        return run(_project(a), out=Path(a.out) if a.out else None, branch=a.branch)
    p = add("plot", "draw progress.png (or .svg/.pdf): every experiment, the kept ones, the running best, "
                    "crashes in their own strip", plot,
            {1: "nothing to draw yet (no decided experiment)"})
    p.add_argument("--out", "-o", metavar="FILE", help="where to write: .png, .svg or .pdf "
                                                        "(default: progress.png in the project)")
    p.add_argument("--branch", help="the run branch to draw (default: the current or latest one)")

    def doctor(a):
        from .doctor import main as run
        return run(_project(a), as_json=a.json, trial=a.trial)
    p = add("doctor", "check the sandbox backends, GPU, Claude Code, hook wiring and data, and say how to fix them",
            doctor, {1: "a check failed, or the --trial did not produce a metric"})
    p.add_argument("--json", action="store_true", help="print the checks as JSON (doctor.DoctorReport)")
    p.add_argument("--trial", type=float, nargs="?", const=0.0, metavar="SECONDS",
                   help="then run the command once in the sandbox, as init's check does (default: the budget "
                        "init's check used, else 30 s), after a program.md change; ready only if it produced "
                        "a metric; nothing is recorded as an experiment")

    def final(a):
        from .final import main as run
        return run(_project(a), branch=a.branch, again=a.again, baseline=not a.no_baseline, backend=a.backend,
                   as_json=a.json)
    p = add("final", "score the best kept experiment once on the held-out test split", final,
            {1: "the best could not be scored on the test split (the record says why)"})
    p.add_argument("--branch", help="the run branch (default: the current or latest one)")
    p.add_argument("--again", action="store_true", help="look at the test split again (recorded as such)")
    p.add_argument("--no-baseline", action="store_true", help="do not score the baseline for comparison")
    p.add_argument("--json", action="store_true", help="print the record as JSON (final.FinalRecord)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="sandbox (default: program.md)")

    def export(a):
        from .export import main as run
        return run(_project(a), tracking_uri=a.tracking_uri, experiment=a.experiment, branch=a.branch,
                   as_json=a.json)
    p = add("export", "log each decided experiment (signed records only) as a run in an experiment tracker; "
                      "needs the optional extra: pip install -e '.[mlflow]'", export)
    p.add_argument("tracker", choices=["mlflow"], help="the tracker (mlflow)")
    p.add_argument("--tracking-uri", metavar="URI", help="where to log (default: $MLFLOW_TRACKING_URI, else a local "
                                                          "SQLite store in .autoresearch/mlflow/)")
    p.add_argument("--experiment", metavar="NAME", help="the MLflow experiment (default: autoresearch/<folder>)")
    p.add_argument("--branch", help="only this run branch (default: every row of results.tsv)")
    p.add_argument("--json", action="store_true", help="print what was exported as JSON (export.ExportReport)")


# --- driving the loop: ledger, overnight, calibrate, pause, resume --------------------------------

def _loop_commands(sub) -> None:
    add = _adder(sub)

    def ledger(a):
        from .ledger import rebuild
        return rebuild(_project(a))
    p = add("ledger", "results.tsv maintenance: `ledger rebuild` rebuilds it from the run branches' keep commits "
                      "and runs/*/decision.json (a corrupt file is kept aside)", ledger)
    p.add_argument("action", choices=["rebuild"], help="rebuild: write results.tsv again from the durable record")

    def keys(a):
        from ..record import HarnessError
        try:
            return _keys(a)
        except HarnessError as e:
            print(f"autoresearch keys: {e}", file=sys.stderr)
            return 2

    def _keys(a):
        from . import keys as k
        root = _project(a)
        if a.action == "export":
            return k.export(root, a.file or a.output)
        if a.action == "import":
            if not a.file:
                print("autoresearch keys import: name the file `keys export` wrote (or - for stdin)", file=sys.stderr)
                return 2
            return k.import_(root, a.file)
        if a.action == "new":
            return k.new(root, a.forget or [])
        return k.show(root)
    p = add("keys", "the project's signing keys: `keys` shows them; `keys export -o FILE` / `keys import FILE` move "
                    "them to another user, HOME or machine; `keys new [--forget ID]` replaces a lost one", keys,
            {1: "show: a key that signed a record here is missing (the line says which and how to import it)"})
    p.add_argument("action", nargs="?", choices=["show", "export", "import", "new"], default="show",
                   help="show (default), export, import, new")
    p.add_argument("file", nargs="?", help="import: the file `keys export` wrote (- for stdin); export: where to write")
    p.add_argument("-o", "--output", metavar="FILE", help="export: write here (mode 0600) instead of stdout")
    p.add_argument("--forget", action="append", metavar="ID", help="new: retire this lost key id (repeatable)")

    def overnight(a):
        from .overnight import main as run
        return run(_project(a), a.hours, model=a.model, prompt=a.prompt, resume=a.resume, session=a.session)
    p = add("overnight", "drive Claude Code headless until a deadline, resuming the same session after errors",
            overnight, {1: "the night ended before its deadline or budget (the summary says why)",
                        130: "interrupted (Ctrl-C); `--resume` continues"})
    p.add_argument("--hours", type=float, required=True, metavar="H", help="stop after this many hours")
    p.add_argument("--model", metavar="NAME", help="the Claude model (default: Claude Code's default)")
    p.add_argument("--prompt", metavar="TEXT", help="the first instruction (default: follow program.md and start)")
    p.add_argument("--resume", action="store_true", help="continue the session recorded in .autoresearch/overnight.json")
    p.add_argument("--session", metavar="ID", help="continue this session id")

    def calibrate(a):
        from .calibrate import main as run
        return run(_project(a), runs=a.runs, budget=a.budget, backend=a.backend)
    p = add("calibrate", "run the current train.py N times with different seeds and store the noise sigma "
                         "(the keep threshold becomes max(min_improvement, k_sigma x sigma))", calibrate,
            {1: "sigma not stored: fewer than two runs succeeded, their fingerprints differ, or every seed gave "
                "the bit-identical result (the repo ignores the seed, and its own seed is out of the command line's "
                "reach or gave no spread either: noise unknown; when it did, calibrate stores that sigma: 0)"})
    p.add_argument("-n", "--runs", type=int, metavar="N", help="how many runs (default: noise.calibrate_runs in program.md)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="training budget per run (default: program.md)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="sandbox (default: program.md)")

    def pause(a):
        from .pause import pause as run
        return run(_project(a), " ".join(a.reason), a.update)
    p = add("pause", "let the agent stop at its next turn end (the loop's Stop hook stops blocking)", pause)
    p.add_argument("reason", nargs="*", help="why (shown in the summary)")
    p.add_argument("--update", action="store_true", help="when already paused, replace the reason (else it is kept)")

    def resume(a):
        from .pause import resume as run
        return run(_project(a), a.restart_clock)
    p = add("resume", "lift a pause (the deadline moves only with --restart-clock)", resume)
    p.add_argument("--restart-clock", action="store_true",
                   help="also restart the deadline clock: deadline_hours count again from now")


# --- guard: explain -------------------------------------------------------------------------------

def _guard_commands(sub) -> None:
    g = sub.add_parser("guard", help="the PreToolUse guard: what the agent may do",
                       description="the PreToolUse guard: what the agent may do")
    actions = g.add_subparsers(dest="guard_command", metavar="ACTION", required=True)
    p = actions.add_parser("explain", help="print the guard's decision on a command or tool call, and why",
                           description="autoresearch guard explain -- <command>   |   "
                                       "autoresearch guard explain --tool Edit --path train.py")
    p.add_argument("--project", "-C", metavar="DIR", help="the project folder (default: found from here)")
    p.add_argument("--tool", default="Bash", metavar="NAME", help="the tool (default: Bash)")
    p.add_argument("--path", help="file_path (Read/Edit/Write), notebook_path (NotebookEdit) or path (Glob/Grep)")
    p.add_argument("--pattern", metavar="GLOB", help="Glob/Grep pattern")
    p.add_argument("--url", help="WebFetch url")
    p.add_argument("--query", metavar="TEXT", help="WebSearch query")
    p.add_argument("--input", metavar="JSON", help="the whole tool_input as JSON (overrides the above)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("command", nargs="*", help="the Bash command, after --")

    def explain(a):
        from ..guard.explain import explain as run
        return run(_project(a), a.tool, a)
    p.set_defaults(func=_friendly(explain))
    p.exit_codes = {0: "allowed", 1: "denied", 2: EXIT_COMMON[2]}      # type: ignore[attr-defined]

