"""The EVAL stage: two model servers (agent code, each in a fresh sandbox with no data mounted)
served at once by one trusted scorer (autoresearch.run.scorer) here, which holds the split's
bytes, sends windows over the servers' stdin, reads logits from their stdout, mixes in hidden
checks and computes the loss itself. What agent code prints goes to the eval log, in the state
folder outside the project (the human's only: neither the agent nor a later stage can read it);
train.log gets only the evaluator's own lines."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path

from ..program import Program
from ..sandbox import Backend, SandboxResult
from .inputs import load_prepare
from ..record import Layout, RunMetrics, new_log
from .logs import EVAL_BANNER, append_log
from .evalstage import EvalJob
from .outcome import eval_outcome
from .specs import eval_spec
from .workcopy import remove_work_copy


def run_eval(sandbox: Backend, program: Program, lay: Layout, data: Path | None, env: dict[str, str],
             split_file: Path, log: Path, stage: str = "eval") -> tuple[SandboxResult, dict]:
    """The EVAL stage on `split_file`'s bytes: two model servers, each in its own sandbox, run at
    once and served by one trusted scorer. Returns (the servers' sandbox results merged: the
    longest wall time, the summed peak memory, the first failure; the scorer's result)."""
    import numpy as np

    from .scorer import SERVERS, Scorer
    m = program.metric
    scorer = Scorer(np.fromfile(split_file, dtype=np.uint8), load_prepare(lay.root), floor=m.floor,
                    direction=m.direction, metric=m.name)
    specs = [eval_spec(sandbox, program, lay, data, env, scorer.session(k), log, stage, k) for k in range(SERVERS)]
    try:
        return _serve(sandbox, specs, scorer)
    finally:
        for spec in specs:                             # no writable storage outlives a model server
            remove_work_copy(Path(spec.cwd))


def _serve(sandbox: Backend, specs: list, scorer) -> tuple[SandboxResult, dict]:
    from .scorer import SERVERS
    results: list[SandboxResult | None] = [None] * SERVERS
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            results[k] = sandbox.run(specs[k])
        except BaseException as e:                     # noqa: BLE001 -- re-raised in the caller's thread
            errors.append(e)
            scorer.aborted = True

    others = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(1, SERVERS)]
    for t in others:
        t.start()
    try:
        results[0] = sandbox.run(specs[0])
    except BaseException:
        scorer.aborted = True
        raise
    finally:
        for t in others:
            t.join()
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    failed = next((r for r in done if r.timed_out or r.oom or r.exit_code not in (0, None)), done[0])
    peaks = [r.peak_memory_bytes for r in done if r.peak_memory_bytes is not None]
    merged = dataclasses.replace(failed, wall_seconds=max(r.wall_seconds for r in done),
                                 timed_out=any(r.timed_out for r in done), oom=any(r.oom for r in done),
                                 peak_memory_bytes=sum(peaks) if peaks else None)
    return merged, scorer.finish()


def eval_line(status: str, reason: str | None, result: dict | None, metric: str) -> str:
    """The evaluator's own line for train.log (never anything agent code printed)."""
    if status != "ok":
        return f"evaluate: {status}: {reason}\n"
    r = result or {}
    return (f"evaluate: ok {metric} {r.get('value')} ({r.get('bytes')} bytes, {r.get('requests')} requests with "
            f"{r.get('check_windows')} hidden check windows, load {r.get('load_seconds')} s, "
            f"score {r.get('score_seconds')} s, device {r.get('device')})\n")


def measure_bpb(job: EvalJob) -> tuple[SandboxResult, str, str | None, float | None, dict]:
    """The built-in evaluation once: job.split's bytes of prepare.py's data, scored by the trusted
    scorer (the checkpoint and its script copy must be there: HarnessError says which is missing)."""
    from ..record import HarnessError
    lay, data = job.lay, job.data
    for need in (lay.out / "model.pt", lay.script_copy):
        if not need.is_file():
            raise HarnessError(f"{need} is missing: the evaluation scores the run's own checkpoint "
                               f"and train.py (runs/ must not be deleted)")
    assert data is not None and job.log is not None
    split_file = data / job.split / f"{job.split}.bin"
    if not split_file.is_file():
        raise HarnessError(f"{split_file} not found: prepare the data first (.venv/bin/python prepare.py)")
    res, result = run_eval(job.sandbox, job.program, lay, data, job.env, split_file, job.log, job.stage)
    status, reason, value = eval_outcome(res, result, job.program)
    return res, status, reason, value, result or {}


def eval_stage(job: EvalJob, m: RunMetrics) -> tuple[str, str | None, int | None]:
    """A run's EVAL stage on the validation split, after TRAIN ended ok: fills m's eval fields (and
    the metric when ok); returns (status, reason, the servers' peak memory in bytes)."""
    lay, program = job.lay, job.program
    with contextlib.suppress(Exception):         # what the host re-checks the evaluator's byte count against
        m.extra["eval_bytes_expected"] = int(load_prepare(lay.root).EVAL_BYTES)
    append_log(lay.log, f"\n{EVAL_BANNER} (autoresearch.run.scorer); what the model prints "
                        f"goes to the eval log, for humans only: {lay.eval_log} ----\n")
    log = new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}\n")
    assert job.data is not None
    eres, result = run_eval(job.sandbox, program, lay, job.data, job.env, job.data / "val" / "val.bin", log)
    m.eval_seconds = round(eres.wall_seconds, 3)
    status, reason, value = eval_outcome(eres, result, program)
    append_log(lay.log, eval_line(status, reason, result, program.metric.name))
    if result is not None:
        m.device = result.get("device") or m.device
        m.eval_bytes = result.get("bytes")
        for k in ("load_seconds", "score_seconds", "servers", "requests", "check_windows",
                  "max_request_seconds"):
            if k in result:
                m.extra[f"eval_{k}"] = result[k]
    if value is not None:
        m.metric_value = value
    return status, reason, eres.peak_memory_bytes
