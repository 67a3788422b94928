"""The TRAIN stage: its work copy, its sandbox and what the record keeps of it (runner.py runs it).

A cold TRAIN beside the model servers starts first (issue 27). A run's critical path used to be:
build the model servers (their specs and work copies), build TRAIN's work copy, and only then
start TRAIN's sandbox, whose trusted warm-up (the interpreter, torch: 2-4 s) came last. Now
TRAIN's sandbox starts with its work copy still empty, and while it warms up a set-up thread
fills the work copy in place (as a warm holder's is, warm.py), gives it to the sandbox user,
starts the model servers, and sends GO once their warm-up is over too, so no warm-up takes the
budget's CPU, cold or warm alike.

No agent code runs before GO: the trusted start-up (startup.py `gate`) waits for go/go.json in a
read-only folder, and go.json is written only once the work copy is complete. If the set-up fails,
go.json calls the run off (startup.OFF) and the start-up ends without importing agent code;
the set-up's error is then the run's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import registry
from ..program.sections import save_margin
from ..record import Layout, RunMetrics, clean_out
from ..sandbox import SandboxResult, SandboxSpec, give_writable, selected_gpus
from . import warm
from .evalstage import WarmServers, evaluator_of
from .gpu import GpuPeak
from .logs import append_log
from .outcome import train_status
from .specs import StageInputs, python_of, train_argv, train_spec
from .warmspec import await_warm_up, call_off, gated, send_go
from .workcopy import empty_work, read_only_hint, remove_work_copy, work_copy

GATE_SHARE = 0.8      # GO waits for the model servers at most this share of TRAIN's grace
SET_UP_S = 60.0       # the set-up's own allowance, on top of the grace (it takes about a second)


def gb(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def run_cold(sandbox, spec: SandboxSpec, lay: Layout, fill: Callable[[], object],
             start: Callable[[], WarmServers], started: list[WarmServers]) -> SandboxResult:
    """TRAIN's sandbox (`spec`, its work copy an empty folder that `fill()` fills) run now, while a
    set-up thread fills the work copy and starts the model servers (`start()`, appended to
    `started` at once, so the caller can end them whatever happens). GO after both, and after the
    servers' warm-up, which GO waits for at most GATE_SHARE of the grace. Raises what the set-up
    raised (TRAIN is then called off before agent code)."""
    go = lay.scratch / "go"
    go.mkdir(mode=0o755)
    go.chmod(0o755)                                  # (whatever the umask): the sandbox user reads it
    grace = spec.startup_s
    spec = gated(spec, go, SET_UP_S)
    done = threading.Event()
    failed: list[BaseException] = []

    def set_up() -> None:
        try:
            fill()
            if registry.isolates(sandbox.name):
                give_writable(spec)                  # the work copy just filled: the sandbox user's
            servers = start()
            started.append(servers)
        except BaseException as e:                   # noqa: BLE001 -- re-raised in the caller's thread
            failed.append(e)
            call_off(go)
            return
        await_warm_up(servers, grace * GATE_SHARE, done)
        send_go(go, spec)

    t = threading.Thread(target=set_up, name="train-set-up", daemon=True)
    t.start()
    try:
        res = sandbox.run(spec)
    finally:
        done.set()
        t.join()
    if failed:
        raise failed[0]
    return res


def train_sandbox(inp: StageInputs, budget: float, inline: bool, work: Path) -> tuple[bool, list[str], SandboxSpec]:
    """TRAIN's command and sandbox in the work copy `work`: (is it run.command's own, argv, spec)."""
    sandbox, program, lay = inp.sandbox, inp.program, inp.lay
    own = inline or evaluator_of(program).script and bool(program.run.command)   # run.command, not the script
    argv = train_argv(python_of(sandbox, program, lay.root), program, lay, own, where=work)
    return bool(own), argv, train_spec(inp, budget, argv, work)


@dataclass
class Beside:
    """What runs beside TRAIN: a warm run's holder, what gives the model servers (None: there are
    none), and those servers once started (whatever happens next, the runner ends them)."""
    held: warm.Warm | None = None
    start: Callable[[], WarmServers] | None = None
    started: list[WarmServers] = field(default_factory=list)

    @property
    def servers(self) -> WarmServers | None:
        return self.started[0] if self.started else None


def train_stage(inp: StageInputs, budget: float, inline: bool, m: RunMetrics,
                beside: Beside) -> tuple[str, str | None, int | None]:
    """The TRAIN stage; fills m's train fields. Returns (status, reason, the host's peak memory in
    bytes). A cold TRAIN beside model servers starts first, its work copy filled as it warms up
    (run_cold); a holder's sandbox already mounts its work copy, filled in place too."""
    held, start, started = beside.held, beside.start, beside.started
    sandbox, program, lay = inp.sandbox, inp.program, inp.lay
    first = held is None and start is not None
    work = empty_work(lay, "train") if first else work_copy(lay, "train", in_place=held is not None)
    own, argv, spec = train_sandbox(inp, budget, inline, work)
    gpus = [d.index for d in selected_gpus(spec.gpus, spec.env)]
    try:
        with GpuPeak(gpus) as gpu:
            if first:
                res = run_cold(sandbox, spec, lay, lambda: work_copy(lay, "train", in_place=True), start, started)
            elif held is None:
                res = sandbox.run(spec)
            else:
                if start is not None:
                    started.append(start())             # the holder's servers, or fresh ones
                res, more = held.run(lay, spec, lay.script_copy.read_bytes(), beside.servers)
                m.extra.update(more)
    finally:
        remove_work_copy(work)                        # what TRAIN wrote into its tree ends with it
    m.train_seconds = round(res.wall_seconds, 3)
    m.agent_seconds = None if res.agent_seconds is None else round(res.agent_seconds, 3)
    if res.startup_seconds is not None:
        m.extra["startup_seconds"] = round(res.startup_seconds, 3)   # the trusted warm-up: not counted
    m.extra["save_margin_seconds"] = round(save_margin(budget), 3)
    m.extra["limits"] = res.limits
    m.train_exit_code = res.exit_code
    m.gpu_peak_gb = gb(gpu.peak_bytes)
    m.device = "cuda" if gpus else "cpu"
    what = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3])) if own else lay.script
    status, reason = train_status(res, program, budget, lay.log, what)
    if status == "crash" and reason:
        reason += read_only_hint(lay, reason)
    if res.log_cut_bytes:
        m.extra["log_cut_bytes"] = res.log_cut_bytes
    if removed := clean_out(lay.out):
        m.extra["out_removed"] = ", ".join(removed)[:500] + (f" ({len(removed)} entries)" if len(removed) > 1 else "")
        append_log(lay.log, f"\n[autoresearch: removed from out/ (only regular files and folders are kept): "
                            f"{m.extra['out_removed']}]\n")
    return status, reason, res.peak_memory_bytes
