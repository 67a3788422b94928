"""One experiment for the current train.py: `./run.sh -m "what changed and why"`.

    TRAIN  a fresh sandbox: the project read-only (runs/ and .autoresearch hidden, train.py
           replaced by the hashed copy in runs/NNNN/, every other editable file by its copy as
           the run started: the snapshot), the train split only, runs/NNNN/out/ writable, its
           work copy in the state folder outside the project; behind a trusted warm-up that is
           not counted, killed from outside at budget + a save margin of agent compute (specs.py,
           startup.py).
    EVAL   two processes. A fresh sandbox runs the model server (`python -m
           autoresearch.inside.model_server`: agent code, the checkpoint read-only, no data
           mounted); the trusted scorer (autoresearch.run.scorer) runs here, holds the
           validation bytes, sends windows over the server's stdin, reads logits from its
           stdout, mixes in hidden checks and computes the loss itself (evaluate.py). What agent
           code prints during EVAL goes to the eval log in the state folder, outside the
           project (layout.eval_log: the human's only); train.log gets only the evaluator's
           own lines.

Nothing the TRAIN stage writes or prints becomes the metric. Artifacts: runs/NNNN/
{metrics.json, train.log, train.py, diff.patch (the whole editable set), out/}. Where each place
is and who may read it: the flow table, autoresearch/record/flows.py. metrics.json is written first
with status `interrupted` and rewritten when the run ends, so a run killed at any
point is marked interrupted. Exit code: 0 when the experiment ran and was recorded
(whatever its status), 130 when interrupted, 2 for harness errors (bad arguments,
program.md, missing backend or data), with the fix in the message, 75 when another run of
this project is in progress (one run at a time: .autoresearch/run.lock), 74 when the disk is
full (one line says so; nothing is half-recorded as a result). The codes: exits.py.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TextIO

from ..digest import sha256_bytes
from ..fsclean import remove_tree
from .. import registry
from ..program import ConfigError, Program, load_program
from ..program.sections import save_margin
from ..sandbox import NONE_WARNING, Backend, SandboxUnavailable, choose_backend, selected_gpus
from .evalcmd import evaluator_id, frozen_code
from .evalstage import EvalJob, eval_stage, evaluator_of
from ..record import (AGENT_CLOCK, Fingerprint, HarnessError, LOG_FILE, Layout, RUNNING, RunMetrics, allocate_run_dir,
                      data_version, device_class, hold_running, host_check, mark_holder, program_code,
                      run_lock, signing_key, snapshot_files, snapshot_of, sweep_scratch)
from .inputs import branch_head, data_folder, derive_seed, evaluator_version, resolve_budget, write_diff
from .logs import steps_per_second
from .outcome import INLINE_WARNING, inline_outcome
from .progress import live_progress
from .interpreter import InterpreterError, resolve
from .specs import StageInputs, base_env, gpu_request, repo_env
from . import warm
from .trainstage import Beside, gb, train_sandbox, train_stage


def _now() -> datetime:
    return datetime.now(timezone.utc)


@contextlib.contextmanager
def signals_as_interrupt(seen: list[str]) -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C, so the sandbox cleans up and the
    run is marked interrupted; `seen` gets the signal's name."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        seen.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is not signal.default_int_handler:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- one experiment

@dataclass
class Prepared:
    """What a run needs before its folder exists: checked here, so a run that cannot start makes none."""
    program: Program
    budget_s: float
    sandbox: Backend
    script: str
    code: bytes
    inline: bool
    data: Path | None
    sha: str
    seed_n: int
    files: dict[str, bytes | None]
    frozen: tuple[str, dict[str, bytes]] | None = None   # eval_command: (base commit, eval.files' bytes)


@dataclass(frozen=True)
class RunOptions:
    """What a caller may set for one run beside its message. `grace` replaces budget.grace_seconds
    (the uncounted start-up's allowance); `program` replaces program.md's (calibrate's run.command
    with the repo's own seed set); `purpose`: calibration and check runs are never decided."""
    budget: float | None = None
    seed: int | None = None
    backend: str | None = None
    purpose: str = "experiment"
    grace: float | None = None
    program: Program | None = None


def prepare(root: Path, opts: RunOptions, files: dict[str, bytes | None] | None = None,
            queued: bool = False) -> Prepared:
    """program.md, the backend, the data, the interpreter and the snapshot (the work tree's editable
    set, or `files`: a queued run's saved snapshot). Raises HarnessError with the fix."""
    budget, seed, backend, grace, program = opts.budget, opts.seed, opts.backend, opts.grace, opts.program
    if program is None:
        try:
            program = load_program(root)
        except ConfigError as e:
            raise HarnessError(str(e)) from None
    if grace is not None:
        program = program.model_copy(update={"budget": program.budget.model_copy(update={"grace_seconds": grace})})
    budget_s = resolve_budget(program, budget)
    signing_key(root)                             # the project's key must be in this HOME (KeyMissing says the fix)
    remote = queued and registry.remote(program.executor.kind)   # queued for a remote node: checked there
    try:
        sandbox = choose_backend(backend or program.sandbox.backend, image=program.sandbox.image)
        if not remote:
            sandbox.runtime()
            selected_gpus(gpu_request(program))  # sandbox.gpus asks for GPUs this host has: else say so now
    except SandboxUnavailable as e:
        raise HarnessError(str(e)) from None
    script = program.run.train_script
    if files is None:
        try:
            code = (root / script).read_bytes()
        except OSError as e:
            raise HarnessError(f"cannot read the training script {root / script}: {e.strerror}") from None
        files = snapshot_files(root, program_code(program, root))
        files[script] = code                      # exactly the bytes that run
    elif files.get(script) is None:
        raise HarnessError(f"the saved snapshot has no {script}")
    code = files[script]                          # type: ignore[assignment]
    ev = evaluator_of(program)
    inline = not ev.stage                         # the metric is read from TRAIN's log
    data = data_folder(root) if ev.data and not remote else None
    frozen = frozen_code(root, program) if program.eval is not None else None   # (base, eval.files' bytes)
    _interpreter(root, program)                   # run.python must run before a run folder is made
    sha = sha256_bytes(code)
    return Prepared(program, budget_s, sandbox, script, code, inline, data, sha,
                    derive_seed(root, program, sha, seed), files, frozen)


def run_experiment(root: Path, message: str, opts: RunOptions = RunOptions(), echo: TextIO | None = None) -> RunMetrics:
    """Run one experiment for root's current train script and record it in runs/NNNN/ (`opts`:
    budget, seed, backend, grace, program, purpose).

    Raises HarnessError before any run folder exists when it cannot run (program.md,
    backend, data, train script); KeyboardInterrupt (also on SIGTERM/SIGHUP) after the
    run is recorded as interrupted and its sandbox cleaned up. `echo` gets progress lines."""
    ask = Asked(message, opts.purpose)
    root = Path(root).resolve()
    p = prepare(root, opts)
    warmable = warm.wanted(p.sandbox.name, opts.program is opts.grace is None and opts.purpose == "experiment")
    with run_lock(root) as lock_fd:
        sweep_scratch(root)                       # a killed runner's .sandbox: no other run is live now
        held = warm.take(root) if warmable else warm.discard_all(root)
        run_dir = held.run_dir if held is not None else allocate_run_dir(root)
        mark_holder(lock_fd, run_dir.name)
        m = run_in(root, p, run_dir, ask, echo, held)
        if warmable:                              # the next run's TRAIN warms up while the agent thinks
            warm.start_next(root, opts.budget, opts.backend, p.program.metric.name)
        return m


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Asked:
    """What the caller asked of this run, beside what prepare() checked: why, for what, since when."""
    message: str
    purpose: str = "experiment"
    started: datetime = field(default_factory=_now)
    t_start: float = field(default_factory=time.monotonic)   # time.monotonic() when asked
    say: Callable[[str], None] = _quiet                       # progress lines (a terminal, or nothing)


def run_in(root: Path, p: Prepared, run_dir: Path, ask: Asked, echo: TextIO | None = None,
           held: warm.Warm | None = None) -> RunMetrics:
    """The run in its (new or queued) folder, marked live by runs/NNNN/.running while it goes;
    `held`: its TRAIN sandbox, warmed while the agent thought (warm.py)."""
    def say(line: str) -> None:
        if echo is not None:
            print(line, file=echo, flush=True)

    running = hold_running(run_dir)
    try:
        with live_progress(echo, run_dir / LOG_FILE, p.budget_s,
                           None if p.inline else p.program.budget.eval_seconds,
                           run_dir.name) as live:     # a terminal only: the agent's output is unchanged
            return _run_locked(root, p, run_dir, replace(ask, say=live.around(say)), held)
    finally:
        if running is not None:
            os.close(running)
        with contextlib.suppress(OSError):
            (run_dir / RUNNING).unlink()


def _run_locked(root: Path, p: Prepared, run_dir: Path, ask: Asked, held: warm.Warm | None = None) -> RunMetrics:
    """The run itself, with the project's run lock held."""
    program, sandbox, files, frozen, data = p.program, p.sandbox, p.files, p.frozen, p.data
    budget_s, seed_n, sha, inline = p.budget_s, p.seed_n, p.sha, p.inline
    message, purpose, started, t_start, say = ask.message, ask.purpose, ask.started, ask.t_start, ask.say
    evaluator = evaluator_id(*frozen, program) if frozen else evaluator_version(root, program)
    fp = Fingerprint(budget_seconds=budget_s, eval_seconds=program.budget.eval_seconds, mode=program.run.mode,
                     metric=f"{program.metric.name}:{program.metric.direction}", backend=sandbox.name,
                     device=device_class([d.index for d in selected_gpus(gpu_request(program))]),
                     data=data_version(None if data is None else data / "val" / "val.bin"),
                     evaluator=evaluator, interpreter=_interpreter(root, program), clock=AGENT_CLOCK)
    lay = Layout(root, run_dir, p.script, files, outputs=tuple(program.run.outputs))
    warm.hold_or_refresh(held, lay)               # a holder holds the scratch until its sandbox ends
    metrics = RunMetrics(
        run_id=run_dir.name, status="interrupted", metric_name=program.metric.name,
        direction=program.metric.direction, train_py_sha256=sha, seed=seed_n, budget_seconds=budget_s,
        grace_seconds=program.budget.grace_seconds, sandbox=sandbox.name,
        sandbox_warning=None if registry.isolates(sandbox.name) else NONE_WARNING,
        mode=program.run.mode, description=message, started_at=started,
        reason="did not finish: interrupted or killed (rewritten when a run ends)",
        snapshot_sha256=snapshot_of(files), fingerprint=fp, purpose=purpose,  # type: ignore[arg-type]
        metric_floor=program.metric.floor, metric_ceiling=program.metric.ceiling)   # host_check, every mode
    if frozen:
        metrics.extra["eval_base"] = frozen[0]
    metrics.write(run_dir)
    signals: list[str] = []
    home_dir: str | None = None
    try:
        with signals_as_interrupt(signals):
            lay.script_copy.write_bytes(p.code)
            lay.out.mkdir()
            lay.log.touch()
            note = write_diff(root, run_dir, files)
            if note:
                metrics.extra["diff"] = note
            if head := branch_head(root):
                metrics.extra["head"] = head
            say(f"run {run_dir.name}: sandbox {sandbox.describe()}")
            if not registry.isolates(sandbox.name):
                home_dir = tempfile.mkdtemp(prefix="autoresearch-home-")
            env = repo_env(base_env(sandbox, lay, home_dir or "/tmp", budget_s, seed_n), program, root)
            _execute(StageInputs(sandbox, program, lay, env, data), budget_s, inline, metrics,
                     frozen[1] if frozen else None, held)
    except KeyboardInterrupt:
        _finish_unmeasured(metrics, run_dir, t_start,
                           f"interrupted by {signals[-1] if signals else 'SIGINT (Ctrl-C)'}; the sandbox was stopped")
        raise
    except (SandboxUnavailable, InterpreterError) as e:
        _finish_unmeasured(metrics, run_dir, t_start, f"harness error: {e}")
        raise HarnessError(str(e)) from None
    except Exception as e:              # a harness bug: keep the run marked unmeasured, never "crash"
        _finish_unmeasured(metrics, run_dir, t_start, f"harness error: {type(e).__name__}: {e}")
        raise
    finally:
        warm.end(held)                           # whatever happened, no holder outlives its run
        if left := lay.cleanup():                # never raises: what stays is set aside and said
            metrics.extra["cleanup"] = left[:500]
        if home_dir:
            remove_tree(home_dir)
    metrics.finished_at = _now()
    metrics.total_seconds = round(time.monotonic() - t_start, 3)
    metrics.steps_per_s = steps_per_second(lay.log, metrics.agent_seconds or metrics.train_seconds)
    metrics.write(run_dir)
    return metrics


def _interpreter(root: Path, program: Program) -> str:
    """run.python's identity for the fingerprint ("-": the harness's own Python, as before)."""
    try:
        interp = resolve(root, program)
    except InterpreterError as e:
        raise HarnessError(str(e)) from None
    return "-" if interp is None else interp.identity


def _finish_unmeasured(m: RunMetrics, run_dir: Path, t_start: float, reason: str) -> None:
    m.status, m.metric_value, m.reason = "interrupted", None, reason
    m.finished_at = _now()
    m.total_seconds = round(time.monotonic() - t_start, 3)
    m.write(run_dir)


def _execute(inp: StageInputs, budget: float, inline: bool, m: RunMetrics,
             frozen: dict[str, bytes] | None = None, held: warm.Warm | None = None) -> None:
    """Both stages; fills m in place (status, metric, timings, memory, device, reason). The
    built-in evaluator's model servers start with TRAIN (their warm-up overlaps it) and import agent
    code only once TRAIN has ended ok (evaluate.Servers)."""
    sandbox, program, lay, data, env = inp.sandbox, inp.program, inp.lay, inp.data, inp.env
    job = EvalJob(sandbox, program, lay, env, data=data, frozen=frozen)
    beside = _beside(job, inp, budget, inline, m, held)
    try:
        status, reason, host_peak = train_stage(inp, budget, inline, m, beside)
    except BaseException:
        if beside.servers is not None:
            beside.servers.finish(go=False)
        raise
    job = replace(job, servers=beside.servers)
    m.mode = program.run.mode
    if inline:
        status, reason, value = inline_outcome(status, reason, lay.log, program.run.metric_regex)
        if value is not None:
            m.metric_value = value
        m.extra["warning"] = INLINE_WARNING
    elif status == "ok":
        status, reason, eval_peak = eval_stage(job, m)
        if eval_peak is not None:
            host_peak = max(host_peak or 0, eval_peak)
    elif job.servers is not None:
        job.servers.finish(go=False)
    m.extra["host_peak_gb"] = gb(host_peak)
    m.peak_memory_gb = m.gpu_peak_gb if m.gpu_peak_gb is not None else gb(host_peak)
    m.status = status  # type: ignore[assignment]
    m.reason = reason
    if (bad := host_check(m)) is not None:           # the evaluator's checks again, outside its process
        m.status, m.reason = bad  # type: ignore[assignment]
    if m.status != "ok":
        m.metric_value = None


def _beside(job: EvalJob, inp: StageInputs, budget: float, inline: bool, m: RunMetrics,
            held: warm.Warm | None) -> Beside:
    """What runs beside TRAIN: a warm run's holder, checked (warm.start_stages), and what gives the
    evaluator's model servers (the built-in's, the split's), whose warm-up overlaps TRAIN's."""
    ev = evaluator_of(inp.program)
    warmer = None if inline or ev.data and inp.data is None else ev.warm
    start = registry.function(warmer) if warmer else None
    train_s = max(inp.program.budget.grace_seconds, 1.0) + budget + save_margin(budget)
    give, held = warm.start_stages(held, inp.lay, lambda work: train_sandbox(inp, budget, inline, work)[2],
                                   None if start is None else lambda *h: start(job, train_s, *h), m.extra)
    return Beside(held, give)  # type: ignore[arg-type]
