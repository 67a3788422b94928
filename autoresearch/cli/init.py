"""`autoresearch init [PATH]`: set up an existing research repo (the legacy-code case) for the loop.

What it writes into PATH (and nothing else):
  program.md                 front matter from the options (training command, metric, direction,
                             budget, mode), a four-phase plan and the agent's instructions
  scratchpad.md              the agent's memory template (kept if it exists)
  run.sh                     `./run.sh -m "why"`: runs one experiment with the installed bundle
  .claude/settings.json      hook wiring, permissions.deny and env, merged into the repo's own (kept)
  .gitignore                 runs/, results.tsv, .autoresearch/, progress.png
  .autoresearch/bundle.json  where the bundle (or plugin) and its Python were at init time

How the repo gets the package and the hooks: nothing is copied or installed into it. run.sh and
the hook commands name the installed bundle's scripts and its .venv Python by absolute path,
recorded at init time (re-run `autoresearch init --force` if the bundle moves). The hook commands
keep the bundle's fail-closed wrapper, so if that Python disappears every guarded tool call is
denied, not allowed. (The plugin is the alternative: its hooks step aside when the repo wires
its own, so the two never decide twice.)

Plugin-only (`--plugin`, or automatically when this package runs from an installed plugin rather
than a bundle checkout): the project's .claude/settings.json gets the permissions.deny and env
but no hooks, so the installed plugin's hooks guard and decide; run.sh finds the installed plugin
and its Python (the per-plugin data folder) at run time, so a plugin update does not break it;
run.python names the repo's own interpreter (the plugin's has no numpy or torch).

Files it would replace are refused unless --force, which first saves them as
<name>.before-autoresearch (then .before-autoresearch.1, .2, ...: never overwritten). Then it runs
the command once, briefly, as the loop will (initcheck.py), unless --no-check.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from ..hostenv import run_python
from ..program import Budget, ConfigError, parse_program
from ..registry import AUTO, ISOLATING_CHOICES, LOG_MODE, MODES, SCRIPT_MODE, evaluator, from_log
from .inittext import BODY, INLINE_GUARANTEE, LAST_RESORT, RUN_SH, RUN_SH_PLUGIN, SCRATCHPAD
from .plugin import in_plugin_install, plugin_enabled, plugin_project_settings, training_python
from .wiring import legacy_settings, load_settings, merge_settings, read_settings

BACKUP_SUFFIX = ".before-autoresearch"
GITIGNORE_LINES = ["runs/", "results.tsv", ".autoresearch/", "progress.png"]

class InitError(ValueError):
    """init cannot proceed; the message says what to change. Nothing was written."""


class InitOptions(BaseModel):
    path: Path
    command: list[str] = Field(min_length=1)     # the training command, e.g. ["python", "train.py"]
    metric: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"]
    mode: Literal[MODES] = LOG_MODE                   # type: ignore[valid-type]  (registry.py)
    metric_regex: str | None = None
    eval_command: list[str] | None = None        # eval_command mode: the human's evaluation script
    eval_files: list[str] = []                   # its files, frozen (default: the .py files in eval_command)
    train_script: str | None = None              # the file the agent edits (default: from the command)
    editable: list[str] = []                     # more files, folders/ or globs the agent may edit (model.py)
    budget_seconds: float = Field(300, gt=0)
    objective: str | None = None
    sandbox: Literal[ISOLATING_CHOICES] = AUTO            # type: ignore[valid-type]  (registry.py)
    python: str | None = None                    # run.python: the interpreter training runs with
    wiring: Literal["auto", "bundle", "plugin"] = "auto"   # whose hooks: the bundle checkout's or the plugin's
    force: bool = False


class InitResult(BaseModel):
    root: Path
    written: list[str]
    kept: list[str]
    backups: list[str]
    program_text: str
    wiring: str = "bundle"


def default_regex(metric: str) -> str:
    """`val_acc=0.87`, `val_acc: 0.87`, `val_acc 0.87` (the last such line wins)."""
    return rf"{re.escape(metric)}\s*[:=]?\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def eval_files(o: InitOptions) -> list[str]:
    """The eval script's files: --eval-file, else the .py files its command names."""
    return o.eval_files or [a for a in o.eval_command or [] if a.endswith(".py") and not a.startswith("-")]


def script_from_command(command: list[str]) -> str | None:
    return next((a for a in command if a.endswith(".py") and not a.startswith("-")), None)


def bundle_paths() -> tuple[Path, Path]:
    """(the bundle folder holding hooks/ and autoresearch/, the Python of its virtualenv)."""
    bundle = Path(__file__).resolve().parents[2]
    if not (bundle / "hooks" / "pre_tool_use.py").is_file() or not (bundle / ".claude" / "settings.json").is_file():
        raise InitError(f"{bundle} is not an autoresearch bundle checkout (no hooks/ or .claude/settings.json): "
                        "run init from a clone of the bundle (its .venv/bin/autoresearch)")
    if sys.prefix == sys.base_prefix:
        raise InitError("run init with the bundle's virtualenv Python (.venv/bin/autoresearch init ...): "
                        "the hooks need a virtualenv's interpreter")
    return bundle, Path(sys.prefix) / "bin" / "python"


def locate(o: InitOptions) -> tuple[Path, Path, str]:
    """(bundle or plugin folder, the trusted runner's Python, "bundle" | "plugin")."""
    here = Path(__file__).resolve().parents[2]
    wiring = o.wiring if o.wiring != "auto" else "plugin" if in_plugin_install(here) else "bundle"
    if wiring == "plugin":
        if not (here / "hooks" / "pre_tool_use.py").is_file():
            raise InitError(f"{here} is not the autoresearch plugin (no hooks/pre_tool_use.py): reinstall it")
        if not plugin_enabled():          # else the project would have no guard at all
            raise InitError("the autoresearch plugin is not installed and enabled for this user, and plugin wiring leaves "
                            "the guard to it: claude plugin install autoresearch@<marketplace>, or use a bundle checkout")
        return here, Path(sys.executable), wiring
    return (*bundle_paths(), wiring)


def _bundle_settings(bundle: Path, python: Path, bash_ms: int) -> dict:
    settings = legacy_settings(load_settings(bundle), bundle, python)      # hooks by absolute path
    env = settings.setdefault("env", {})
    for k in ("BASH_DEFAULT_TIMEOUT_MS", "BASH_MAX_TIMEOUT_MS"):
        env[k] = str(max(int(env.get(k, 0) or 0), bash_ms))
    return settings


def _merged(existing: dict, ours: dict, wiring: str) -> dict:
    """The repo's settings with ours merged in; plugin wiring also drops earlier autoresearch hook
    wiring (a bundle-mode init before), so the plugin's hooks are the only ones and decide once."""
    if wiring != "plugin":
        return merge_settings(existing, ours)
    out = merge_settings(existing, {**ours, "hooks": {e: [] for e in (existing.get("hooks") or {})}})
    out["hooks"] = {e: g for e, g in out["hooks"].items() if g}
    if not out["hooks"]:
        del out["hooks"]
    return out


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from ..gitops import git
    return git(root, *args, check=False)


def program_text(o: InitOptions, script: str) -> str:
    from .machine import sandbox_limits
    from .repodeps import imported, offline_env
    run: dict = {"mode": o.mode, "train_script": script}
    if o.python:
        run["python"] = o.python
    if env := offline_env(imported(o.path.resolve())):     # W&B, Hugging Face, timm: no network in a run
        run["env"] = env
    if from_log(o.mode):
        run |= {"command": o.command, "metric_regex": o.metric_regex or default_regex(o.metric)}
    if evaluator(o.mode).script:
        run |= {"command": o.command}
    front = {
        "objective": o.objective or (f"{'Lower' if o.direction == 'minimize' else 'Raise'} {o.metric}, "
                                     + (f"measured by `{shlex.join(o.eval_command)}` on the checkpoint of "
                                        if o.eval_command else "printed by ")
                                     + f"`{shlex.join(o.command)}`, within a fixed training-time budget."),
        "metric": {"name": o.metric, "direction": o.direction},
        "budget": {"train_seconds": o.budget_seconds, "grace_seconds": Budget().grace_seconds, "eval_seconds": 300},
        "editable": list(dict.fromkeys([script, *o.editable, "scratchpad.md"])),
        "min_improvement": 0.0,
        "noise": {"k_sigma": 2.0, "confirm_margin": 0.0, "calibrate_runs": 3},
        "sandbox": {"backend": o.sandbox, **sandbox_limits(o.command)},     # sized to this machine and launcher
        "run": run,
        **({"eval": {"command": o.eval_command, "files": eval_files(o)}} if evaluator(o.mode).script else {}),
        "deadline_hours": 10,
        "phase": "hyperparameters",
        "phases": [
            {"name": "hyperparameters", "max_experiments": 20, "web": False,
             "focus": "Tune what is already there: learning rate and its schedule, batch size, "
                      "model size at the fixed budget, regularisation."},
            {"name": "model", "max_experiments": 20, "web": False,
             "focus": "Change the model: layers, normalisation, activations, initialisation."},
            {"name": "training", "max_experiments": 20, "web": False,
             "focus": "Change how it learns: optimiser, schedule shape, data order and augmentation."},
            {"name": "moonshot", "max_experiments": 10, "web": True,
             "focus": "Bigger ideas from the literature (web access is on in this phase): read, "
                      "then try the most promising one carefully."},
        ],
    }
    head = ("# Written by `autoresearch init`. Edit `phase:` to change what the agent works on next;\n"
            "# the guard and the Stop hook read this file on every call.\n")
    if from_log(o.mode):
        head += "# " + "\n# ".join(textwrap.wrap(INLINE_GUARANTEE + " " + LAST_RESORT, 96, break_on_hyphens=False)) + "\n"
    body = BODY.format(script=script, metric=o.metric, editable=", ".join(f"`{e}`" for e in front["editable"]),
                       better="lower" if o.direction == "minimize" else "higher",
                       source=("the last line of its output that matches `run.metric_regex`" if from_log(o.mode)
                               else f"measured by `{shlex.join(o.eval_command)}`, a frozen evaluation script you "
                               "cannot edit, on data you never see" if o.eval_command else "the trusted evaluator"))
    return "---\n" + head + yaml.safe_dump(front, sort_keys=False, width=100) + "---\n" + body


def _bash_timeout_ms(o: InitOptions) -> int:
    return int(Budget(train_seconds=o.budget_seconds).experiment_seconds() * 1000)


def plan(o: InitOptions) -> dict[str, str]:
    """Validate everything and return {relative path: new content}; writes nothing."""
    root = o.path.resolve()
    if not root.is_dir():
        raise InitError(f"{root} is not a folder")
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise InitError(f"{root} is not a git repository: the loop keeps and reverts changes with git. "
                        f"Run: cd {shlex.quote(str(root))} && git init && git add -A && git commit -m baseline")
    if Path(top.stdout.strip()).resolve() != root:
        raise InitError(f"{root} is inside the git repository {top.stdout.strip()}: run init at its top level")
    if _git(root, "rev-parse", "-q", "--verify", "HEAD").returncode != 0:
        raise InitError("the repository has no commit yet: commit the training code first "
                        "(git add -A && git commit -m baseline)")
    script = o.train_script or script_from_command(o.command)
    if not script:
        raise InitError("cannot tell which file the agent should edit from the command: pass --train-script FILE")
    if not (root / script).is_file():
        raise InitError(f"the training script {script} does not exist in {root}")
    if _git(root, "ls-files", "--error-unmatch", script).returncode != 0:
        raise InitError(f"{script} is not committed: the loop reverts it from the branch head, so commit it first")
    if from_log(o.mode):
        regex = o.metric_regex or default_regex(o.metric)
        try:
            rx = re.compile(regex)
        except re.error as e:
            raise InitError(f"--metric-regex {regex!r} is not a valid regular expression: {e}") from None
        if rx.groups < 1:
            raise InitError(f"--metric-regex {regex!r} needs one group capturing the number, e.g. "
                            f"'{o.metric}=([0-9.]+)'")
    elif evaluator(o.mode).script:
        if not eval_files(o):
            raise InitError("cannot tell the eval script's files from --eval-command: pass --eval-file FILE")
        for f in eval_files(o):
            if _git(root, "ls-files", "--error-unmatch", "--", f).returncode != 0 or not (root / f).is_file():
                raise InitError(f"the eval script {f} is not committed: it runs as committed at the base commit, "
                                f"never from the work tree: git add {f} && git commit")
    elif not (root / "prepare.py").is_file():
        raise InitError("two_stage mode needs the trusted evaluator: a prepare.py with the bundle's evaluator "
                        "interface (load_split, eval_windows, evaluate_bpb) and a train.py with build_model(). "
                        "For code that prints its own metric, use --mode inline")
    bundle, python, wiring = locate(o)
    if wiring == "plugin" and o.python is None:
        o = o.model_copy(update={"python": training_python(root, o.command)})
    text = program_text(o, script)
    try:
        parse_program(text).check_editable(root)
    except ConfigError as e:
        raise InitError(f"the options give an invalid program.md: {e}") from None
    try:
        settings = plugin_project_settings(bundle, _bash_timeout_ms(o)) if wiring == "plugin" else \
            _bundle_settings(bundle, python, _bash_timeout_ms(o))
    except ValueError as e:
        raise InitError(str(e)) from None
    existing_path = root / ".claude" / "settings.json"
    try:
        existing = read_settings(existing_path)
    except ValueError as e:
        raise InitError(str(e)) from None
    files = {
        "program.md": text,
        "scratchpad.md": SCRATCHPAD.format(metric=o.metric),
        "run.sh": (RUN_SH_PLUGIN if wiring == "plugin" else RUN_SH).format(
            script=script, date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), bundle=bundle, python=python,
            py=shlex.quote(str(python)), bundle_q=shlex.quote(str(bundle))),
        ".claude/settings.json": json.dumps(_merged(existing, settings, wiring), indent=2) + "\n",
        ".gitignore": _gitignore(root),
        ".autoresearch/bundle.json": json.dumps({"bundle": str(bundle), "wiring": wiring,
                                                 "python": str(run_python(root, o.python) or python),
                                                 "runner": str(python), "mode": o.mode, "initialised_at":
                                                 datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                                indent=2) + "\n",
    }
    return files


def _gitignore(root: Path) -> str:
    path = root / ".gitignore"
    text = path.read_text() if path.is_file() else ""
    have = {ln.strip() for ln in text.splitlines()}
    missing = [ln for ln in GITIGNORE_LINES if ln not in have and ln.rstrip("/") not in have]
    if not missing:
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return text + sep + "# autoresearch: experiment artifacts and loop state\n" + "\n".join(missing) + "\n"


# files that init merges into rather than replaces, and files it never overwrites
MERGED = {".claude/settings.json", ".gitignore", ".autoresearch/bundle.json"}
KEPT_IF_PRESENT = {"scratchpad.md"}


def backup_path(path: Path) -> Path:
    """<name>.before-autoresearch, else .before-autoresearch.1, .2, ...: the first free name, so a
    second --force never overwrites the copy the first one saved."""
    first = path.with_name(path.name + BACKUP_SUFFIX)
    n = 0
    while (cand := first if n == 0 else first.with_name(f"{first.name}.{n}")).exists() or cand.is_symlink():
        n += 1
    return cand


def init_project(o: InitOptions) -> InitResult:
    root = o.path.resolve()
    files = plan(o)
    clash = [rel for rel in files if rel not in MERGED | KEPT_IF_PRESENT and (root / rel).exists()
             and (root / rel).read_text(errors="replace") != files[rel]]
    if clash and not o.force:
        raise InitError(f"{', '.join(clash)} already exist{'s' if len(clash) == 1 else ''} in {root}; "
                        f"--force replaces {'it' if len(clash) == 1 else 'them'} (keeping a copy as "
                        f"<name>{BACKUP_SUFFIX}, numbered if that exists)")
    written, kept, backups = [], [], []
    for rel, content in files.items():
        path = root / rel
        if rel in KEPT_IF_PRESENT and path.exists():
            kept.append(rel)
            continue
        if path.exists() and path.read_text(errors="replace") == content:
            kept.append(rel)
            continue
        if path.exists() and rel in {*clash, ".claude/settings.json"}:
            backup = backup_path(path)
            backup.write_bytes(path.read_bytes())
            backups.append(str(backup.relative_to(root)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if rel == "run.sh":
            path.chmod(0o755)
        written.append(rel)
    return InitResult(root=root, written=written, kept=kept, backups=backups, program_text=files["program.md"],
                      wiring=json.loads(files[".autoresearch/bundle.json"])["wiring"])


def ask_missing(args) -> None:
    """Prompt for what the command line did not give, when a human is at the terminal."""
    if args.command and args.metric and args.direction:
        return
    if not sys.stdin.isatty():
        missing = [f"--{n}" for n in ("command", "metric", "direction") if not getattr(args, n)]
        raise InitError(f"missing {', '.join(missing)} (no terminal to ask on)")
    from rich.prompt import Prompt
    if not args.command:
        args.command = Prompt.ask("training command (run from the repo root)", default="python train.py")
    if not args.metric:
        args.metric = Prompt.ask("metric name, as the training code prints it", default="val_loss")
    if not args.direction:
        args.direction = Prompt.ask("is lower or higher better?", choices=["minimize", "maximize"],
                                    default="minimize")


def main(args) -> int:
    from rich.console import Console
    from rich.panel import Panel
    console = Console()
    try:
        ask_missing(args)
        ev = getattr(args, "eval_command", None)
        opts = InitOptions(path=Path(args.path or "."), command=shlex.split(args.command), metric=args.metric,
                           direction=args.direction, mode=SCRIPT_MODE if ev else args.mode,
                           metric_regex=args.metric_regex, eval_command=shlex.split(ev) if ev else None,
                           eval_files=getattr(args, "eval_file", None) or [],
                           train_script=args.train_script, editable=getattr(args, "editable", None) or [],
                           budget_seconds=args.budget, objective=args.objective,
                           sandbox=args.sandbox, force=args.force, python=getattr(args, "python", None),
                           wiring="plugin" if getattr(args, "plugin", False) else "auto")
        res = init_project(opts)
    except (InitError, ValueError) as e:
        console.print(f"autoresearch init: {e}", style="red", markup=False, highlight=False)
        return 2
    console.print(f"autoresearch set up in {res.root}", style="bold")
    for verb, rels, note in (("wrote", res.written, ""), ("kept ", res.kept, " (already there)"),
                             ("saved", res.backups, " (the previous version)")):
        for rel in rels:
            console.print(f"  {verb}   {rel}{note}", markup=False)
    if from_log(opts.mode):
        console.print(Panel(INLINE_GUARANTEE + "\n\n" + LAST_RESORT,
                            title="inline mode: what is and is not guaranteed", border_style="yellow"))
    from .repodeps import cache_note, imported
    mods = imported(res.root)
    if mods:
        console.print(f"  offline: the code imports {', '.join(sorted(mods))}; program.md's run.env keeps them off "
                      "the network (runs have none)", markup=False, highlight=False)
    if note := cache_note(mods):
        console.print(f"  note: {note}", style="yellow", markup=False, highlight=False)
    from .initcheck import check_and_show
    code = check_and_show(res.root, args, console)      # runs the command once (not with --no-check)
    doctor = "/autoresearch:doctor in Claude Code" if res.wiring == "plugin" else "autoresearch doctor"
    print("\nNext:\n"
          f"  1. check the setup:            {doctor}\n"
          "  2. commit it (your branch):    git add program.md scratchpad.md run.sh .claude .gitignore "
          "&& git commit -m 'autoresearch setup'\n"
          "  3. run the baseline once:      ./run.sh -m baseline\n"
          "  4. start the agent:            claude   (then say: go), or: autoresearch overnight --hours 8")
    return code
