"""`autoresearch init`'s check: run the training command once, briefly, exactly as ./run.sh will
(the same runner, sandbox, environment and metric parsing), and show what the loop would see,
before a night is spent finding out that the regex never matches, the seed is ignored or the
code needs a GPU.

    run 1     seed = program.seed, budget --check-seconds (the sandbox stops it the save margin
              later; check_grace() bounds its start-up): did it start, its last lines, the lines run.metric_regex matched (or the
              last lines that look numeric when none did), the parsed value
    run 2     only when run 1 gave a value: seed + 1. Identical values: the seed is ignored, so
              `calibrate` would report sigma = 0 and every difference would look like signal
    findings  no match, a timeout, a crash (a missing module: where a dependency goes), CUDA
              needed with no GPU visible, the seed ignored

A check run is a real run of the runner (runs/NNNN while it goes, its metrics.json says purpose:
check) that is moved to .autoresearch/checks/ when it ends, with the run counter put back: it is
never an experiment, never a ledger row, and the baseline is still run 0001. The last report is
.autoresearch/checks/report.json. Only a command that does not start is a failure (init exits 1);
everything else is a warning.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, PrivateAttr

from ..atomic import write_atomic
from ..program import Program, load_program
from ..record import RUN_COUNTER, RUNS_DIR, STATE_DIR, run_lock
from ..registry import from_log

CHECKS_DIR = "checks"                     # .autoresearch/checks/<n>/: one folder per check run
CHECK_GRACE_S = 10.0                      # a check's start-up allowance is at least this (torch's import)
TAIL = 8
CUDA_SIGNS = re.compile(
    r"Torch not compiled with CUDA|no CUDA GPUs are available|CUDA_VISIBLE_DEVICES|Found no NVIDIA driver"
    r"|CUDA driver|CUDA error|CUDA is not available|cuda\.is_available|libcudart|libcuda\.so"
    r"|^\S*(?:Assertion|Runtime)Error\b.*\bcuda\b", re.I | re.M)
NOT_STARTED = re.compile(r"can't open file|command not found|in execvp", re.I)   # the sandbox's exec, not the code
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


class CheckRun(BaseModel):
    label: str
    seed: int
    started: bool
    status: str | None = None                 # the runner's status: ok | crash | timeout | oom | invalid
    reason: str | None = None
    exit_code: int | None = None
    seconds: float | None = None
    folder: str | None = None                 # where the run's files are, relative to the project
    tail: list[str] = []                      # its last lines
    matched: list[str] = []                   # lines run.metric_regex matched (the last few)
    numeric: list[str] = []                   # none matched: the last lines that look numeric
    values: list[float] = []                  # every value the regex parsed, in order (inline mode)
    value: float | None = None                # the runner's metric (ok), else the last parsed value
    _text: str = PrivateAttr("")              # the whole log, for the findings; never serialised


class CheckReport(BaseModel):
    mode: str
    command: str
    regex: str | None
    check_seconds: float
    runs: list[CheckRun] = []
    warnings: list[str] = []
    failure: str | None = None                # the command did not start: init exits 1


def _parse(text: str, regex: str) -> tuple[list[str], list[float]]:
    lines, values = [], []
    rx = re.compile(regex, re.M)
    for m in rx.finditer(text):
        start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
        lines.append(text[start:end if end >= 0 else len(text)].rstrip())
        with contextlib.suppress(ValueError, TypeError, IndexError):
            values.append(float(m.group(1) if rx.groups else m.group(0)))
    return lines, values


def numeric_lines(text: str, n: int = 5) -> list[str]:
    """The last n lines with a number in them (not traceback frames): where the metric probably is."""
    out = [ln.rstrip() for ln in text.splitlines()
           if re.search(r"\d", ln) and not ln.lstrip().startswith(("File \"", "Traceback"))]
    return out[-n:]


def _park(root: Path, run_dir: Path, counter_before: str | None) -> Path:
    """Move a finished check run out of runs/ into .autoresearch/checks/<n>/, and give its id back
    (the counter as it was, when nothing else took a number meanwhile)."""
    checks = root / STATE_DIR / CHECKS_DIR
    checks.mkdir(parents=True, exist_ok=True)
    with run_lock(root):
        n = 1 + max([int(p.name) for p in checks.iterdir() if p.name.isdigit()] + [0])
        dest = checks / f"{n:03d}"
        shutil.move(str(run_dir), dest)
        counter = root / STATE_DIR / RUN_COUNTER
        with contextlib.suppress(OSError, ValueError):
            if int(counter.read_text().strip()) == int(run_dir.name):
                if counter_before is None:
                    counter.unlink()
                else:
                    write_atomic(counter, counter_before)
        with contextlib.suppress(OSError):
            (root / RUNS_DIR).rmdir()                  # only when empty: it was created for this check
    return dest


def check_grace(program: Program, seconds: float) -> float:
    """The check's start-up allowance (the trusted warm-up: interpreter and torch import, not
    counted): the program's grace, at least CHECK_GRACE_S. Code that ignores the budget is
    killed at budget + the save margin anyway, so a check costs init seconds, not a minute."""
    return max(program.budget.grace_seconds, CHECK_GRACE_S)


def _park_leftovers(root: Path, counter_before: str | None) -> None:
    """Park every run folder in runs/ whose metrics.json says purpose: check (an interrupted check)."""
    import json
    for d in sorted((root / RUNS_DIR).glob("[0-9][0-9][0-9][0-9]*")):
        with contextlib.suppress(OSError, ValueError):
            if json.loads((d / "metrics.json").read_text()).get("purpose") == "check":
                _park(root, d, counter_before)


def run_once(root: Path, program: Program, seconds: float, seed: int, label: str) -> CheckRun:
    """One check run through the runner; parked in .autoresearch/checks/ afterwards."""
    from ..record import HarnessError, RunBusy
    from ..run import RunOptions, run_experiment
    counter = root / STATE_DIR / RUN_COUNTER
    try:
        before: str | None = counter.read_text()
    except OSError:
        before = None
    try:
        m = run_experiment(root, f"autoresearch init: check ({label})", RunOptions(
                           budget=seconds, seed=seed, purpose="check", grace=check_grace(program, seconds)))
    except (HarnessError, RunBusy) as e:
        return CheckRun(label=label, seed=seed, started=False, reason=str(e))
    except BaseException:                              # Ctrl-C, a harness bug: still never left in runs/
        _park_leftovers(root, before)
        raise
    folder = _park(root, root / RUNS_DIR / m.run_id, before)
    try:
        text = (folder / "train.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    code = m.train_exit_code
    run = CheckRun(label=label, seed=seed, started=True, status=m.status, reason=m.reason,
                   exit_code=code if isinstance(code, int) else None, seconds=m.train_seconds,
                   folder=str(folder.relative_to(root)), tail=[ln.rstrip() for ln in text.splitlines()[-TAIL:]],
                   value=m.metric_value)
    if run.exit_code in (126, 127) or (run.status == "crash" and NOT_STARTED.search("\n".join(run.tail))):
        run.started = False
    if from_log(program.run.mode) and program.run.metric_regex:
        lines, run.values = _parse(text, program.run.metric_regex)
        run.matched = lines[-5:]
        if not lines:
            run.numeric = numeric_lines(text)
        if run.value is None and run.values:
            run.value = run.values[-1]
    run._text = text
    return run


def check_project(root: Path, seconds: float, say=lambda _s: None) -> CheckReport:
    """Run the checks on an initialised project; see the module docstring."""
    root = Path(root).resolve()
    program = load_program(root)
    regex = program.run.metric_regex if from_log(program.run.mode) else None
    cmd = " ".join(program.run.command or ["python", program.run.train_script])
    rep = CheckReport(mode=program.run.mode, command=cmd, regex=regex, check_seconds=seconds)
    say(f"check: running `{cmd}` once for up to {seconds:g} s in the sandbox, as ./run.sh will")
    first = run_once(root, program, seconds, program.seed, "first run")
    rep.runs.append(first)
    if not first.started:
        rep.failure = (f"the command did not start: {first.reason or _last(first.tail)}"
                       + ("" if first.status is None else f" (see {first.folder}/train.log)"))
        return _finish(root, rep)
    if first.value is not None:
        say(f"check: running it again with seed {program.seed + 1} (the seed check)")
        rep.runs.append(run_once(root, program, seconds, program.seed + 1, "second seed"))
    rep.warnings = findings(rep, program, root)
    return _finish(root, rep)


DEFAULT_CHECK_SECONDS = 30.0


def last_check_seconds(root: Path) -> float:
    """The budget of the last check (init's, or an earlier trial's): `doctor --trial` runs the same,
    so a trial is not a shorter, easier test than the one init ran."""
    with contextlib.suppress(OSError, ValueError):
        s = float(json.loads((Path(root) / STATE_DIR / CHECKS_DIR / "report.json").read_text())["check_seconds"])
        if s > 0:
            return s
    return DEFAULT_CHECK_SECONDS


def no_metric(rep: CheckReport) -> str | None:
    """Why the check's first run is not a result the loop could use (None: it produced a metric).
    A run that started but timed out or crashed is not "ready"."""
    if rep.failure:
        return rep.failure
    first = rep.runs[0] if rep.runs else None
    if first is None or first.status != "ok" or first.value is None:
        what = (first.status or "no run") if first else "no run"
        why = f": {first.reason}" if first and first.reason else ""
        return (f"the trial produced no metric ({what}{why}"
                + (f"; see {first.folder}/train.log" if first and first.folder else "") + ")")
    return None


def _last(lines: list[str]) -> str:
    return next((ln for ln in reversed(lines) if ln.strip()), "no output")


def _finish(root: Path, rep: CheckReport) -> CheckReport:
    with contextlib.suppress(OSError):
        write_atomic(root / STATE_DIR / CHECKS_DIR / "report.json", rep.model_dump_json(indent=2) + "\n")
    return rep


REPO_VENVS = (".venv", "venv", "env")      # where a legacy repo keeps its own environment
SYSTEM = (Path("/usr"), Path("/bin"), Path("/lib"), Path("/etc"), Path("/proc"), Path("/dev"), Path("/sys"))


def environment_fix(root: Path, program: Program) -> str:
    """Where a missing dependency goes for this project: the environment its sandbox runs. A repo
    with its own venv is told to name it (run.python), not to install into the bundle."""
    if (root / "container" / "Dockerfile").is_file():
        return "add it to container/Dockerfile (the sandbox image) and rebuild it"
    if program.run.python:
        return (f"training runs with run.python ({program.run.python}); a human installs it into that "
                f"environment (`{program.run.python} -m pip install NAME`)")
    python = "the bundle's .venv/bin/python"
    with contextlib.suppress(Exception):
        from ..sandbox import choose_backend
        python = choose_backend(program.sandbox.backend, image=program.sandbox.image).runtime().python
    own = [f"{d}/bin/python" for d in REPO_VENVS if (root / d / "bin" / "python").is_file()]
    if own:
        return (f"training runs with {python} (the bundle's; the interpreter its sandbox uses), but this repo "
                f"has its own environment: set `run.python: {own[0]}` under run: in program.md (it runs both "
                "stages; autoresearch doctor checks it)")
    return (f"training runs with {python} (the interpreter its sandbox uses): point `run.python` in program.md "
            f"at the repo's own environment (a venv's or conda env's bin/python), or a human installs it there "
            f"(`{python} -m pip install NAME`), or builds a Docker image with it and sets sandbox.image "
            f"(and sandbox.backend: docker) in program.md")


def unseen_paths(root: Path, program: Program) -> list[str]:
    """Absolute paths the training or eval command names (`--val /x`, `data.root=/x`) that its sandbox
    cannot see: outside the project and under no mount of that stage. Each with the mounts line."""
    from ..hostenv import stage_mounts
    from ..record import inside
    out: list[str] = []
    commands = [("train", ["train"], program.run.command or [])]
    if program.eval is not None:
        commands.append(("eval", ["eval", "final"], program.eval.command))
    for stage, stages, argv in commands:
        seen = stage_mounts(program.mounts, stage)
        for arg in argv:
            word = arg.split("=", 1)[-1]
            p = Path(word)
            if not word.startswith("/") or not p.exists() or inside(p, root) or \
                    any(p == s or inside(p, s) for s in (*SYSTEM, *seen)):
                continue
            folder = p if p.is_dir() else p.parent
            out.append(f"the {stage} command reads {word}, which its sandbox cannot see (only the project and "
                       f"mounts are there): mount what it reads, and only what the {stage} stage may see "
                       f"(never held-out data in train), in program.md: "
                       f"`mounts: [{{path: {folder}, stages: [{', '.join(stages)}]}}]`")
    return out


def findings(rep: CheckReport, program: Program, root: Path) -> list[str]:
    """What the runs show that would spoil a night, each with its fix."""
    from ..sandbox import host_has_gpus
    out: list[str] = []
    first = rep.runs[0]
    text = first._text or "\n".join(first.tail)
    if rep.regex and not first.matched and (first.exit_code == 0 or first.status == "timeout"):
        out.append(f"no line matched run.metric_regex: {rep.regex}: every run would be a crash. Give "
                   "init --metric-regex with one group capturing the number as the code prints it"
                   + (" (the last lines that look numeric are shown above)" if first.numeric else ""))
    if first.status == "timeout":
        out.append(f"it did not finish within the check's {rep.check_seconds:g} s. In the loop each run gets "
                   f"budget.train_seconds ({program.budget.train_seconds:g} s) + a small save margin of its own "
                   "compute and is killed after it, "
                   "unmeasured: make the code stop in time (it is given AUTORESEARCH_TRAIN_SECONDS), or check "
                   "longer (--check-seconds) to see its metric")
    elif first.status in ("crash", "oom", "invalid") and not (rep.regex and not first.matched and first.exit_code == 0):
        out.append(f"the run ended with {first.status}: {first.reason}")      # (no match: said above)
    if mod := MISSING_MODULE.search(text):
        out.append(f"the training code needs the module {mod.group(1)!r}, which its environment lacks: "
                   + environment_fix(root, program))
    out += unseen_paths(root, program)
    from ..loop.blame import network_cause
    if net := network_cause(text):
        out.append(f"{net[0]}: {net[1]}")
    if CUDA_SIGNS.search(text):
        out.append("the code needs CUDA, and no GPU is visible on this machine: run the loop on a GPU machine, "
                   "or make the code fall back to the CPU (torch.cuda.is_available())" if not host_has_gpus() else
                   "the output shows a CUDA error although this machine has a GPU: check that the sandbox "
                   "sees it (autoresearch doctor)")
    if len(rep.runs) == 2 and _same(rep.runs[0], rep.runs[1]):
        from ..record import program_code
        from ..run import fixed_seeds, seed_override
        where = fixed_seeds(root, program_code(program, root), program.run.command)
        own = seed_override(root, program.run.command, where)
        out.append(f"the seed is ignored: seeds {rep.runs[0].seed} and {rep.runs[1].seed} gave the identical "
                   f"{first.value:g}, so calibrate would report sigma = 0"
                   + (f" (the seed is fixed at {'; '.join(where[:3])})" if where else "")
                   + "; make the code read AUTORESEARCH_SEED"
                   + (f", or let calibrate vary the repo's own seed: it runs `{' '.join(own)}`" if own else ""))
    elif len(rep.runs) == 1:
        out.append("the seed check was skipped: the first run gave no value")
    return out


def _same(a: CheckRun, b: CheckRun) -> bool:
    """Two runs agree wherever both printed a value (one may have been stopped earlier)."""
    if a.values and b.values:
        n = min(len(a.values), len(b.values))
        return a.values[:n] == b.values[:n]
    return a.value is not None and a.value == b.value


def render(rep: CheckReport, console) -> None:
    """The human-readable report."""
    from rich.markup import escape
    console.print(f"\n[bold]check[/bold]: `{escape(rep.command)}` in the sandbox, {rep.check_seconds:g} s budget")
    for r in rep.runs:
        head = (f"  {r.label} (seed {r.seed}): " + ("did not start" if not r.started else
                f"ran {r.seconds or 0:g} s, {r.status}" + (f", exit code {r.exit_code}" if r.exit_code else "")))
        value = "" if r.value is None else (f", value {r.value:g}" if r.status == "ok" else
                                            f", last printed value {r.value:g} (not a result: {r.status})")
        console.print(head + value, markup=False, highlight=False)
        if r is not rep.runs[0]:
            continue
        if r.tail:
            console.print(f"  last lines of its output ({r.folder}/train.log):", markup=False)
            for ln in r.tail:
                console.print(f"    | {ln}", markup=False, highlight=False)
        if r.matched:
            console.print("  lines run.metric_regex matched:", markup=False)
            for ln in r.matched:
                console.print(f"    > {ln}", markup=False, highlight=False)
        elif rep.regex and r.started:
            console.print(f"  no line matched run.metric_regex: {rep.regex}", style="yellow", markup=False,
                          highlight=False)
            for ln in r.numeric:
                console.print(f"    ? {ln}", markup=False, highlight=False)
        if r.reason and r.status is None:               # the runner refused: no run folder, no output
            console.print(f"  {r.reason}", markup=False, highlight=False)
    if rep.failure:
        console.print(f"check FAILED: {rep.failure}", style="bold red", markup=False, highlight=False)
    for w in rep.warnings:
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)
    if not rep.failure and not rep.warnings:
        console.print("check passed: it runs, prints its metric, and the seed changes the result", style="green")



def check_and_show(root: Path, args, console) -> int:
    """init's last step: the check and its report, unless --no-check. 1 when the command did not start."""
    if getattr(args, "no_check", False):
        return 0
    seconds = getattr(args, "check_seconds", None)
    seconds = 30.0 if seconds is None else float(seconds)
    if not seconds > 0:
        console.print("autoresearch init: --check-seconds must be positive (or --no-check)", style="red")
        return 2
    try:
        rep = check_project(root, seconds, say=lambda s: console.print(s, markup=False, highlight=False))
    except KeyboardInterrupt:
        console.print("autoresearch init: the check was interrupted (the setup files are written; "
                      "--no-check skips it)", style="yellow", markup=False)
        return 130
    render(rep, console)
    return 1 if rep.failure else 0
