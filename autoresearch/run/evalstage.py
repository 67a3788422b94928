"""The eval script's stage (run.mode eval_command): the script alone with the agent's model code
(evalcmd.py), or, with eval.model, the evaluator split (evalsplit.py) -- chosen here, once, for a
run's EVAL stage and for `autoresearch final`.
"""
from __future__ import annotations

from pathlib import Path

from ..program import Program
from ..record import Layout, RunMetrics, new_log
from ..sandbox import Backend, SandboxResult
from .evalcmd import evalcmd_outcome, evalcmd_spec, metric_channel, read_metric
from .evalsplit import run_split
from .logs import append_log
from .specs import EVAL_NAME
from .workcopy import remove_work_copy, work_copy


def run_evalcmd(sandbox: Backend, program: Program, lay: Layout, env: dict[str, str], frozen: dict[str, bytes],
                log: Path, stage: str = "eval", figures: dict | None = None
                ) -> tuple[SandboxResult, str, str | None, float | None]:
    """The eval script once, on the checkpoint in lay.out: (sandbox result, status, reason, value).
    With eval.model, the evaluator split (evalsplit.py); its relay's figures go into `figures`."""
    if program.eval is not None and program.eval.model is not None:
        res, status, reason, value, got = run_split(sandbox, program, lay, env, frozen, log, stage)
        if figures is not None:
            figures.update(got)
        return res, status, reason, value
    channel = metric_channel(lay)
    work = work_copy(lay, f"{EVAL_NAME}-cmd")
    try:
        res = sandbox.run(evalcmd_spec(sandbox, program, lay, env, frozen, channel, log, stage, work))
        value, problem = read_metric(channel)
    finally:
        remove_work_copy(channel)
        remove_work_copy(work)                     # what the eval stage wrote into its tree ends with it
    status, reason = evalcmd_outcome(res, value, problem, program, log, log.name)
    return res, status, reason, value if status == "ok" else None


def evalcmd_stage(sandbox: Backend, program: Program, lay: Layout, env: dict[str, str], frozen: dict[str, bytes],
                  m: RunMetrics) -> tuple[str, str | None, int | None]:
    """A run's EVAL stage in eval_command mode, after TRAIN ended ok: fills m (the metric when ok);
    returns (status, reason, peak memory in bytes)."""
    cmd = " ".join(program.eval.command) if program.eval else ""
    append_log(lay.log, f"\n---- EVAL: {cmd} (eval.files as committed at {m.extra.get('eval_base', '?')}); "
                        f"what it prints goes to the eval log, for humans only: {lay.eval_log} ----\n")
    figures: dict = {}
    log = new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}: {cmd}\n")
    res, status, reason, value = run_evalcmd(sandbox, program, lay, env, frozen, log, figures=figures)
    m.extra.update({f"eval_{k}": v for k, v in figures.items()})
    m.eval_seconds = round(res.wall_seconds, 3)
    append_log(lay.log, f"evaluate: ok {program.metric.name} {value}\n" if status == "ok"
               else f"evaluate: {status}: {reason}\n")
    if value is not None:
        m.metric_value = value
    return status, reason, res.peak_memory_bytes
