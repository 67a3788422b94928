"""The EVAL stage's seam (EvalJob) and the one dispatch through registry.EVALUATORS, for a run's
EVAL stage and for `autoresearch final`; and the eval script's stage (run.mode eval_command): the
script alone with the agent's model code (evalcmd.py), or, with eval.model, the evaluator split
(evalsplit.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..program import Program
from ..registry import Evaluator, evaluator, function
from ..record import Layout, RunMetrics, new_log
from ..sandbox import Backend, SandboxResult
from .evalcmd import ScriptRun, evalcmd_outcome, evalcmd_spec, metric_channel, read_metric
from .evalsplit import SplitServers, run_split
from .logs import append_log
from .specs import EVAL_NAME, StageInputs
from .workcopy import remove_work_copy, work_copy


class WarmServers(Protocol):
    """Model servers started with TRAIN (evaluate.Servers): told GO once TRAIN ended ok (they then
    score the checkpoint), or hung up on (they exit without running agent code)."""

    def finish(self, go: bool) -> tuple[SandboxResult, dict]: ...

    def warmed(self) -> bool: ...               # their warm-up is over (a warm TRAIN's GO waits for it)


@dataclass(frozen=True)
class EvalJob:
    """What an evaluator needs to score a checkpoint (lay.out), in a run's EVAL stage or in final."""
    sandbox: Backend
    program: Program
    lay: Layout
    env: dict[str, str]
    log: Path | None = None                    # the eval log (a run's EVAL stage starts its own)
    stage: str = "eval"                        # "final": the final evaluation's mounts and split
    data: Path | None = None                   # prepare.py's data folder (Evaluator.data)
    frozen: dict[str, bytes] | None = None     # eval.files as committed (Evaluator.script)
    split: str = "val"
    servers: WarmServers | None = None         # started with TRAIN (the built-in's warm start)

    @property
    def inputs(self) -> StageInputs:
        """What the stage's sandboxes are built from (specs.stage_spec)."""
        return StageInputs(self.sandbox, self.program, self.lay, self.env, self.data)


def evaluator_of(program: Program) -> Evaluator:
    """The evaluator program.md asks for: run.mode, and eval.model within it."""
    return evaluator(program.run.mode, program.eval is not None and program.eval.model is not None)


def measure(job: EvalJob) -> tuple[SandboxResult, str, str | None, float | None, dict]:
    """Score job.lay's checkpoint once with program.md's evaluator: (sandbox result, status, reason,
    value when ok, figures for metrics.json). `final` calls it; so does each EVAL stage."""
    return function(evaluator_of(job.program).measure)(job)


def eval_stage(job: EvalJob, m: RunMetrics) -> tuple[str, str | None, int | None]:
    """A run's EVAL stage, after TRAIN ended ok: fills m; (status, reason, peak memory in bytes)."""
    return function(evaluator_of(job.program).stage)(job, m)


def measure_command(job: EvalJob) -> tuple[SandboxResult, str, str | None, float | None, dict]:
    """eval.command once, alone with the agent's model code, on the checkpoint in lay.out."""
    lay, program, sandbox = job.lay, job.program, job.sandbox
    assert job.frozen is not None and job.log is not None
    channel = metric_channel(lay)
    work = work_copy(lay, f"{EVAL_NAME}-cmd")
    try:
        res = sandbox.run(evalcmd_spec(job.inputs, ScriptRun(job.frozen, channel, job.log, job.stage), work))
        value, problem = read_metric(channel)
    finally:
        remove_work_copy(channel)
        remove_work_copy(work)                     # what the eval stage wrote into its tree ends with it
    status, reason = evalcmd_outcome(res, value, problem, program, job.log)
    return res, status, reason, value if status == "ok" else None, {}


def measure_split(job: EvalJob) -> tuple[SandboxResult, str, str | None, float | None, dict]:
    """eval.command without the project, its model() served by the agent's code (evalsplit.py)."""
    assert job.frozen is not None and job.log is not None
    servers = job.servers if isinstance(job.servers, SplitServers) else None     # started with TRAIN, or now
    return run_split(job.inputs, job.frozen, job.log, job.stage, servers)


def evalcmd_stage(job: EvalJob, m: RunMetrics) -> tuple[str, str | None, int | None]:
    """A run's EVAL stage in eval_command mode, after TRAIN ended ok: fills m (the metric when ok);
    returns (status, reason, peak memory in bytes)."""
    program, lay = job.program, job.lay
    cmd = " ".join(program.eval.command) if program.eval else ""
    append_log(lay.log, f"\n---- EVAL: {cmd} (eval.files as committed at {m.extra.get('eval_base', '?')}); "
                        f"what it prints goes to the eval log, for humans only: {lay.eval_log} ----\n")
    log = job.servers.log if isinstance(job.servers, SplitServers) else \
        new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}: {cmd}\n")      # split servers began it
    res, status, reason, value, figures = measure(replace(job, log=log))
    m.extra.update({f"eval_{k}": v for k, v in figures.items()})
    m.eval_seconds = round(res.wall_seconds, 3)
    append_log(lay.log, f"evaluate: ok {program.metric.name} {value}\n" if status == "ok"
               else f"evaluate: {status}: {reason}\n")
    if value is not None:
        m.metric_value = value
    return status, reason, res.peak_memory_bytes
