"""`autoresearch doctor`: is this machine and this project ready for a night of experiments?

Each check says what it found and, when something is missing, how to fix it. The hook
check does not just read .claude/settings.json: it runs the wired PreToolUse command the
way Claude Code would, and expects a deny for `pip install` and an allow for `./run.sh -m`;
the canary then starts a real Claude Code session in the project (against a scripted model on
127.0.0.1) and expects the guard to deny its one call, so a plugin that failed to load is caught.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from ..program import ConfigError, Program, load_program
from ..registry import AUTO, ISOLATING, ISOLATING_CHOICES, evaluator, isolates, words
from .checks import Check, Level
from .claudeprobe import verdict
from .initcheck import CheckReport
from .jsonout import SCHEMA_VERSION

def _run(argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired):
        return None


# --- the checks ---------------------------------------------------------------------------

def check_python(root: Path, program: Program | None) -> Check:
    import autoresearch
    ok = sys.version_info >= (3, 10)
    return Check(name="python", level="ok" if ok else "fail",
                 found=f"{sys.version.split()[0]} at {sys.executable}; package at {Path(autoresearch.__file__).parent}",
                 fix="" if ok else "use Python 3.10 or newer (PYTHON=/path/to/python3.x scripts/bootstrap.sh)")


def check_program(root: Path) -> tuple[Check, Program | None]:
    try:
        p = load_program(root)
    except ConfigError as e:
        return Check(name="program.md", level="fail", found=str(e),
                     fix="fix the named line; `autoresearch init` writes a valid one"), None
    return Check(name="program.md", level="ok",
                 found=f"metric {p.metric.name} ({p.metric.direction}), phase {p.phase!r}, "
                       f"budget {p.budget.train_seconds:g}s, mode {p.run.mode}"), p


def check_git(root: Path, program: Program | None) -> Check:
    from ..gitops import current_branch, git
    p = git(root, "rev-parse", "--show-toplevel", check=False)
    if p.returncode != 0:
        return Check(name="git", level="fail", found=f"{root} is not a git repository",
                     fix="git init && git add -A && git commit -m baseline")
    script = program.run.train_script if program else "train.py"
    tracked = git(root, "ls-files", "--error-unmatch", script, check=False).returncode == 0
    branch = current_branch(root) or "(detached HEAD)"
    if not tracked:
        return Check(name="git", level="fail", found=f"on {branch}; {script} is not tracked by git",
                     fix=f"git add {script} && git commit -m 'baseline': the loop reverts it from the branch head")
    return Check(name="git", level="ok", found=f"on {branch}; {script} tracked")


def check_sandbox(root: Path, program: Program | None) -> list[Check]:
    from ..sandbox import SandboxUnavailable, backend_named, choose_backend
    want = program.sandbox.backend if program else AUTO
    image = program.sandbox.image if program else None
    out = []
    for name in ISOLATING:
        backend = backend_named(name, image)
        ok, why = backend.available()
        if ok and hasattr(backend, "origin"):
            why = backend.origin() or why                 # which binary, and where it came from
        out.append(Check(name=f"sandbox: {name}", level="ok" if ok else ("warn" if want == AUTO else
                                                                          ("fail" if want == name else "info")),
                         found=why if ok else "unavailable", fix="" if ok else why))
    try:
        chosen = choose_backend(want, image)
        level: Level = "ok" if isolates(chosen.name) else "warn"
        out.append(Check(name="sandbox: chosen", level=level, found=f"{want} -> {chosen.describe()}",
                         fix=f"set sandbox.backend to {words(ISOLATING_CHOICES)} in program.md" if level == "warn" else ""))
    except SandboxUnavailable as e:
        out.append(Check(name="sandbox: chosen", level="fail", found=f"sandbox.backend {want}: none available",
                         fix=str(e)))
    return out


def check_gpu(root: Path, program: Program | None) -> Check:
    smi = shutil.which("nvidia-smi")
    gpus = []
    if smi:
        p = _run([smi, "-L"], timeout=20)
        gpus = [ln for ln in (p.stdout.splitlines() if p and p.returncode == 0 else []) if ln.startswith("GPU")]
    probe = _run([sys.executable, "-c", "import torch, json; print(json.dumps([torch.__version__, "
                  "torch.cuda.is_available(), torch.version.cuda]))"], timeout=120)
    try:
        tv, cuda_ok, cuda_ver = json.loads(probe.stdout.strip().splitlines()[-1]) if probe else (None, False, None)
    except (ValueError, IndexError):
        tv, cuda_ok, cuda_ver = None, False, None
    if tv is None:
        return Check(name="gpu / torch", level="fail", found="torch does not import in this environment",
                     fix="scripts/bootstrap.sh (installs the pinned torch)")
    if gpus and not cuda_ok:
        return Check(name="gpu / torch", level="warn", found=f"{len(gpus)} GPU(s) but torch {tv} has no CUDA",
                     fix="install a CUDA build of torch into .venv (AUTORESEARCH_TORCH='torch==2.13.0 "
                         "--index-url https://download.pytorch.org/whl/cu126' scripts/bootstrap.sh)")
    if gpus:
        return Check(name="gpu / torch", level="ok", found=f"torch {tv} (CUDA {cuda_ver}); " + "; ".join(gpus))
    return Check(name="gpu / torch", level="info", found=f"no GPU: training runs on the CPU (torch {tv})")


def check_gpu_selection(root: Path, program: Program | None, host=None) -> Check:
    """What sandbox.gpus gives a run on this host (`host`: a GpuHost, discovered when None), with
    its /dev/shm and launcher; a warning when it asks for more GPUs than are visible, or a launcher
    starts more processes than the run has GPUs."""
    from ..run import gpu_request
    from ..sandbox import SandboxUnavailable, selected_gpus
    if program is None:
        return Check(name="gpus: selection", level="info", found="program.md does not load (see above)")
    sb, launcher = program.sandbox, program.run.launcher
    tail = f"; /dev/shm {sb.shm:g} GB" + (f"; launcher: {' '.join(launcher)}" if launcher else "")
    try:
        got = [d.index for d in selected_gpus(gpu_request(program), host=host)]
    except SandboxUnavailable as e:
        return Check(name="gpus: selection", level="warn", found=str(e),
                     fix="set sandbox.gpus in program.md to GPUs this machine has (all, none, a count, [indices])")
    want = sb.gpus if not isinstance(sb.gpus, list) else f"[{', '.join(map(str, sb.gpus))}]"
    found = f"sandbox.gpus: {want} -> " + (f"GPU(s) {', '.join(map(str, got))}" if got else "no GPU (CPU)") + tail
    m = re.search(r"--nproc[-_]per[-_]node[= ](\d+)", " ".join(launcher or []))
    if m and int(m.group(1)) > max(len(got), 1):
        return Check(name="gpus: selection", level="warn", found=found,
                     fix=f"the launcher starts {m.group(1)} processes for {len(got)} GPU(s): match them")
    return Check(name="gpus: selection", level="ok" if got or sb.gpus == "none" else "info", found=found)


def check_claude(root: Path, program: Program | None) -> Check:
    """The CLI a human's `claude` runs, against the one CI tests (claudeprobe.verdict)."""
    level, found, fix = verdict()
    return Check(name="claude code", level=level, found=found, fix=fix)


def _hook_input(root: Path, tool: str, tool_input: dict) -> str:
    return json.dumps({"session_id": "doctor", "transcript_path": "/dev/null", "cwd": str(root),
                       "hook_event_name": "PreToolUse", "permission_mode": "default",
                       "tool_name": tool, "tool_input": tool_input, "tool_use_id": "toolu_doctor"})


def run_hook(command: str, root: Path, payload: str, timeout: float = 30,
             env: dict[str, str] | None = None) -> str:
    """Run a wired hook command as Claude Code does (a shell, the project as cwd and
    $CLAUDE_PROJECT_DIR); return its decision: allow, deny, ask or none."""
    e = {**os.environ, **(env or {}), "CLAUDE_PROJECT_DIR": str(root)}
    p = _run(["bash", "-c", command] if shutil.which("bash") else ["sh", "-c", command], timeout=timeout,
             input=payload, cwd=root, env=e)
    if p is None:
        return "none"                            # a hook timeout is "no decision" to Claude Code
    if p.returncode == 2:
        return "deny"
    if p.returncode != 0:
        return "none"
    try:
        out = json.loads(p.stdout.strip() or "{}")
    except ValueError:
        return "none"
    return (out.get("hookSpecificOutput") or {}).get("permissionDecision") or "none"


def wired_commands(settings: dict, event: str, tool: str | None = None) -> list[tuple[str, float]]:
    """(command, timeout) of every command hook wired for `event` whose matcher matches `tool`."""
    out = []
    for group in (settings.get("hooks") or {}).get(event) or []:
        matcher = group.get("matcher") or "*"
        if tool is not None and matcher not in ("*", "") and not re.fullmatch(matcher, tool):
            continue
        for h in group.get("hooks") or []:
            if h.get("type") == "command" and h.get("command"):
                out.append((h["command"], float(h.get("timeout") or 60)))
    return out


def check_plugin_mode(root: Path, program: Program | None) -> list[Check] | None:
    """Plugin-only mode (hooks from the installed plugin, none in the project): the hooks are fine,
    but the Stop-block cap and the Bash timeout must come from the project's settings. None when
    the project wires the hooks itself or no plugin is enabled."""
    from .plugin import missing_env, plugin_enabled, project_wires_hooks, settings_path
    try:
        settings = json.loads(settings_path(root).read_text())
    except FileNotFoundError:
        settings = {}
    except ValueError:
        return None                              # check_hooks names the broken file
    if project_wires_hooks(settings) or not plugin_enabled():
        return None
    out = [Check(name="hooks", level="ok", found="plugin-only mode: the hooks come from the autoresearch plugin")]
    if program is not None:
        missing = missing_env(settings, program)
        out.append(Check(name="settings: plugin-only", level="fail" if missing else "ok",
                         found="; ".join(missing) if missing else "Stop-block cap and Bash timeout set",
                         fix="autoresearch init --plugin (writes just these into .claude/settings.json)"
                         if missing else ""))
    return out


def check_hooks(root: Path, program: Program | None) -> list[Check]:
    path = root / ".claude" / "settings.json"
    plugin = check_plugin_mode(root, program)
    if plugin is not None:
        return plugin
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        return [Check(name="hooks", level="fail", found=f"{path} does not exist",
                      fix="autoresearch init (writes the hook wiring), or install the plugin and run "
                          "autoresearch init --plugin")]
    except ValueError as e:
        return [Check(name="hooks", level="fail", found=f"{path} is not valid JSON: {e}",
                      fix="restore it from git (git checkout -- .claude/settings.json)")]
    out = []
    missing = [ev for ev in ("PreToolUse", "Stop", "SessionStart") if not wired_commands(settings, ev)]
    out.append(Check(name="hooks: wiring", level="fail" if missing else "ok",
                     found=f"missing {', '.join(missing)}" if missing else "PreToolUse, Stop, SessionStart wired",
                     fix="autoresearch init --force rewrites .claude/settings.json" if missing else ""))
    pre = wired_commands(settings, "PreToolUse", "Bash")
    if pre:
        bad = _hook_input(root, "Bash", {"command": "pip install requests"})
        good = _hook_input(root, "Bash", {"command": './run.sh -m "doctor probe"'})
        verdicts = [(run_hook(c, root, bad, t), run_hook(c, root, good, t)) for c, t in pre]
        denies = any(b == "deny" for b, _ in verdicts)
        allows = all(g in ("allow", "none") for _, g in verdicts) and any(g == "allow" for _, g in verdicts)
        level: Level = "ok" if denies and allows else "fail"
        out.append(Check(name="hooks: guard", level=level,
                         found=f"pip install -> {'deny' if denies else 'NOT denied'}; "
                               f"./run.sh -m -> {'allow' if allows else 'not allowed'}",
                         fix="" if level == "ok" else "the guard hook does not answer: check that the python in its "
                                                      "command exists (scripts/bootstrap.sh) and program.md is valid"))
    deny_rules = (settings.get("permissions") or {}).get("deny") or []
    out.append(Check(name="hooks: deny rules", level="ok" if deny_rules else "warn",
                     found=f"{len(deny_rules)} permissions.deny rules",
                     fix="" if deny_rules else "add the permissions.deny rules (second layer) from the bundle"))
    if program is not None:
        need_ms = int(program.budget.experiment_seconds() * 1000)
        env = settings.get("env") or {}
        try:
            have = int(env.get("BASH_MAX_TIMEOUT_MS") or 0)
        except ValueError:
            have = 0
        ok = have >= need_ms
        from .plugin import STOP_CAP_KEY, missing_env
        cap = [m for m in missing_env(settings, program) if m.startswith(STOP_CAP_KEY)]
        out.append(Check(name="hooks: stop-block cap", level="fail" if cap else "ok",
                         found=cap[0] if cap else f"{STOP_CAP_KEY}={env.get(STOP_CAP_KEY)}",
                         fix=f"set env.{STOP_CAP_KEY} to 1000 in .claude/settings.json" if cap else ""))
        out.append(Check(name="hooks: bash timeout", level="ok" if ok else "fail",
                         found=f"BASH_MAX_TIMEOUT_MS={have or 'unset'}; one experiment may take {need_ms} ms",
                         fix="" if ok else f"set env.BASH_MAX_TIMEOUT_MS and BASH_DEFAULT_TIMEOUT_MS to at least "
                                           f"{need_ms} in .claude/settings.json, or an experiment is cut off"))
    return out


def check_data(root: Path, program: Program | None) -> Check:
    if program is not None and not evaluator(program.run.mode).data:
        return Check(name="data", level="info", found=f"{program.run.mode} mode: the training command (and the eval "
                     "script) read their own data, from the project or the mounts")
    prep = root / "prepare.py"
    if not prep.is_file():
        return Check(name="data", level="fail", found="no prepare.py in the project (two_stage mode needs its evaluator)",
                     fix="use `autoresearch init --mode inline` for code that prints its own metric")
    p = _run([sys.executable, "-c", "import json, prepare; d = prepare.data_dir(); "
              "print(json.dumps([str(d), [(d / s / (s + '.bin')).is_file() for s in prepare.SPLITS], "
              "(d / 'meta.json').is_file()]))"], timeout=60, cwd=root)
    try:
        where, splits, meta = json.loads(p.stdout.strip().splitlines()[-1])
    except (AttributeError, ValueError, IndexError):
        return Check(name="data", level="fail", found="prepare.py does not import",
                     fix="scripts/bootstrap.sh, then python prepare.py")
    if all(splits) and meta:
        return Check(name="data", level="ok", found=f"train/val/test cached in {where}")
    return Check(name="data", level="fail", found=f"the dataset cache in {where} is incomplete",
                 fix=".venv/bin/python prepare.py (fetches and splits the corpus once)")


NIGHT_HOURS = 8.0                    # the night doctor sizes the disk for without program.md's deadline_hours


def check_disk(root: Path, program: Program | None) -> Check:
    """Whether a night's runs fit on the disk (cli/machine.py disk_plan), measured on the runs made."""
    from .machine import disk_plan
    if program is None:
        return Check(name="disk", level="info", found="program.md does not load (see above)")
    hours = program.deadline_hours or NIGHT_HOURS
    plan = disk_plan(root, program, hours)
    if plan is None:
        return Check(name="disk", level="info", found="no run yet to measure: sized after the baseline "
                     "(`autoresearch overnight` says so before it starts)")
    gb = f"{plan.need_bytes / 2**30:.1f} GB for up to {plan.runs} runs in {hours:g} h, {plan.free_bytes / 2**30:.1f} GB free"
    if warning := plan.warning():
        return Check(name="disk", level="warn", found=gb, fix=warning)
    return Check(name="disk", level="ok", found=gb)


def run_checks(root: Path) -> list[Check]:
    from .canary import check_canary
    from .envcheck import check_eval, check_executor, check_home_cache, check_interpreter, check_mounts
    prog_check, program = check_program(root)
    checks = [check_python(root, program), prog_check]
    steps: list[Callable[[Path, Program | None], Check | list[Check]]] = [
        check_git, check_sandbox, check_gpu, check_gpu_selection, check_interpreter, check_mounts, check_home_cache,
        check_eval, check_executor, check_claude, check_hooks, check_canary, check_data, check_disk]
    for step in steps:
        try:
            got = step(root, program)
        except Exception as e:                # a broken check is a failed check, never a crash
            got = Check(name=step.__name__.removeprefix("check_"), level="fail", found=f"{type(e).__name__}: {e}",
                        fix="please report this")
        checks += got if isinstance(got, list) else [got]
    return checks


class DoctorReport(BaseModel):
    """`autoresearch doctor --json`: the same checks as the table."""
    schema_version: int = SCHEMA_VERSION             # cli/jsonout.py: bumped when a field changes meaning
    root: str
    checks: list[Check]
    ready: bool                         # no check failed (and the trial, when asked for, produced a metric)
    trial: CheckReport | None = None    # --trial: init's check, run again
    trial_problem: str | None = None    # --trial: why it produced no metric (then not ready)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.level == "fail"]


def _trial(root: Path, seconds: float, console=None) -> CheckReport:
    """init's check again (the command once, briefly, in the sandbox), with today's program.md;
    its progress lines go to `console` (none for --json). `seconds` 0: the budget the last check
    (init's) used."""
    from .initcheck import check_project, last_check_seconds
    if seconds == 0:
        seconds = last_check_seconds(root)
    if not seconds > 0:
        raise SystemExit("autoresearch doctor: --trial needs a positive number of seconds")
    return check_project(root, seconds, say=(lambda _s: None) if console is None else
                         (lambda s: console.print(s, markup=False, highlight=False)))


def main(root: Path, as_json: bool = False, trial: float | None = None) -> int:
    from rich.console import Console
    from .initcheck import no_metric
    from rich.table import Table
    checks = run_checks(root)
    report = DoctorReport(root=str(root), checks=checks, ready=not any(c.level == "fail" for c in checks))
    program_ok = not any(c.name == "program.md" and c.level == "fail" for c in checks)
    if as_json:
        if trial is not None and program_ok:
            report.trial = _trial(root, trial)
            report.trial_problem = no_metric(report.trial)
            report.ready = report.ready and report.trial_problem is None
        print(report.model_dump_json(indent=2))
        return 0 if report.ready else 1
    style = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}
    table = Table(title=f"autoresearch doctor: {root}", show_lines=True)
    table.add_column("check", style="bold")
    table.add_column("", justify="center")
    table.add_column("found", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{style[c.level]}]{c.level}[/]", c.found, c.fix)
    console = Console()
    console.print(table)
    failed = [c.name for c in checks if c.level == "fail"]
    if trial is not None and program_ok:
        from .initcheck import render
        report.trial = _trial(root, trial, console)
        render(report.trial, console)
        if (why := no_metric(report.trial)) is not None:
            console.print(f"not ready: {why}", style="bold red", markup=False, highlight=False)
            failed.append("trial")
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    print("ready")
    return 0
