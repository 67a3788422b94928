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
import time
from pathlib import Path

from ..sandbox import SandboxResult
from .inputs import load_prepare
from ..record import RunMetrics, new_log
from .logs import EVAL_BANNER, append_log, join_servers, servers_warmed
from .evalstage import EvalJob
from .outcome import eval_outcome
from .specs import ServerSlot, StageInputs, eval_spec
from .workcopy import remove_work_copy


def bpb_scorer(inp: StageInputs, split_file: Path):
    """The built-in scorer (scorer.Scorer) on `split_file`'s bytes, waiting for GO."""
    import numpy as np

    from .scorer import Scorer
    m = inp.program.metric
    return Scorer(np.fromfile(split_file, dtype=np.uint8), load_prepare(inp.lay.root), floor=m.floor,
                  direction=m.direction, metric=m.name, go=threading.Event())


def run_eval(inp: StageInputs, split_file: Path, log: Path, stage: str = "eval") -> tuple[SandboxResult, dict]:
    """The EVAL stage on `split_file`'s bytes: two model servers, each in its own sandbox, run at
    once and served by one trusted scorer. Returns (the servers' sandbox results merged: the
    longest wall time, the summed peak memory, the first failure; the scorer's result)."""
    ev = Servers(inp, bpb_scorer(inp, split_file), log, stage)
    return ev.finish(go=True)


class Servers:
    """The EVAL stage, started early: the model servers' sandboxes start (and warm up: interpreter,
    torch) at once, and wait for the scorer's GO before any agent code is imported. The runner
    starts them with TRAIN and calls finish(go=True) once TRAIN ended ok and its checkpoint is
    final, or finish(go=False) (they exit without running agent code)."""

    def __init__(self, inp: StageInputs, scorer, log: Path, stage: str = "eval", wait_s: float = 0.0,
                 held=None):
        """`scorer`: what serves the model servers' sessions (scorer.Scorer: session(k), go, aborted,
        finish()); another built-in metric over the model's logits brings its own. `held`: a warm
        holder's (warm.Warm) servers, already warm: their work copies are filled in place, their
        sessions relayed (it raises warm.NotThisRun when they are not the ones this run needs)."""
        from .scorer import SERVERS
        self.scorer = scorer
        self.log = log
        self.sandbox = inp.sandbox if held is None else held.backend()
        self.specs: list = []
        self.results: list[SandboxResult | None] = [None] * SERVERS
        self.errors: list[BaseException] = []
        try:
            for k in range(SERVERS):
                self.specs.append(eval_spec(inp, ServerSlot(self.scorer.session(k), log, stage, k, wait_s,
                                                            "fresh" if held is None else "fill")))
            if held is not None:
                held.check_servers(self.specs, inp.lay)
        except BaseException:
            self._remove()
            raise
        self.threads = [threading.Thread(target=self._one, args=(k,), daemon=True) for k in range(SERVERS)]
        for t in self.threads:
            t.start()

    def _one(self, k: int) -> None:
        try:
            self.results[k] = self.sandbox.run(self.specs[k])
        except BaseException as e:                     # noqa: BLE001 -- re-raised in the caller's thread
            self.errors.append(e)
            self.scorer.aborted = True

    def warmed(self) -> bool:
        return servers_warmed(self.log, self.threads)

    def _remove(self) -> None:
        for spec in self.specs:                        # no writable storage outlives a model server
            remove_work_copy(Path(spec.cwd))

    def finish(self, go: bool) -> tuple[SandboxResult, dict]:
        """GO (or, go=False, hang up: the servers exit without running agent code), wait for both
        servers, remove their work copies. Returns the merged sandbox result and the scorer's
        result; after go=False nothing is measured, and it returns (None, {})."""
        if go:
            self.scorer.go.set()
        else:
            for spec in self.specs:                    # stopped at once, not after its warm-up ends
                spec.session_grace_s = 0.0
            self.scorer.aborted = True
        try:
            join_servers(self.threads, lambda: setattr(self.scorer, "aborted", True))
        finally:
            self._remove()
        if self.errors:
            raise self.errors[0]
        if not go:
            return None, {}                            # type: ignore[return-value]
        done = [r for r in self.results if r is not None]
        failed = next((r for r in done if r.timed_out or r.oom or r.exit_code not in (0, None)), done[0])
        peaks = [r.peak_memory_bytes for r in done if r.peak_memory_bytes is not None]
        # what the stage took: from GO (the servers' clock) to the last server's end
        agent = [r.agent_seconds for r in done if r.agent_seconds is not None]
        merged = dataclasses.replace(failed, wall_seconds=max(agent) if agent else max(r.wall_seconds for r in done),
                                     timed_out=any(r.timed_out for r in done), oom=any(r.oom for r in done),
                                     peak_memory_bytes=sum(peaks) if peaks else None)
        return merged, self.scorer.finish()


def eval_line(status: str, reason: str | None, result: dict | None, metric: str) -> str:
    """The evaluator's own line for train.log (never anything agent code printed)."""
    if status != "ok":
        return f"evaluate: {status}: {reason}\n"
    r = result or {}
    return (f"evaluate: ok {metric} {r.get('value')} ({r.get('bytes')} bytes, {r.get('requests')} requests with "
            f"{r.get('check_windows')} hidden check windows, load {r.get('load_seconds')} s, "
            f"score {r.get('score_seconds')} s, device {r.get('device')})\n")


def start_servers(job: EvalJob, train_s: float, held=None) -> Servers:
    """A run's model servers, started before TRAIN (they warm up while it trains; `train_s`: TRAIN's
    longest, which they may wait for GO); `held`: a warm holder's, warmed while the agent thought."""
    lay = job.lay
    assert job.data is not None
    log = lay.eval_log if held is not None else new_log(lay.eval_log, f"eval log of run {lay.run_dir.name}\n")
    return Servers(job.inputs, bpb_scorer(job.inputs, job.data / "val" / "val.bin"), log, wait_s=train_s, held=held)


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
    res, result = run_eval(job.inputs, split_file, job.log, job.stage)
    status, reason, value = eval_outcome(res, result, job.program)
    return res, status, reason, value, result or {}


def eval_stage(job: EvalJob, m: RunMetrics) -> tuple[str, str | None, int | None]:
    """A run's EVAL stage on the validation split, after TRAIN ended ok: GO to the servers started
    with TRAIN (job.servers; started now when there are none); fills m's eval fields (and the metric
    when ok); returns (status, reason, the servers' peak memory in bytes)."""
    lay, program = job.lay, job.program
    servers = job.servers if job.servers is not None else start_servers(job, 0.0)
    with contextlib.suppress(Exception):         # what the host re-checks the evaluator's byte count against
        m.eval_bytes_expected = int(load_prepare(lay.root).EVAL_BYTES)
    append_log(lay.log, f"\n{EVAL_BANNER} (autoresearch.run.scorer); what the model prints "
                        f"goes to the eval log, for humans only: {lay.eval_log} ----\n")
    t0 = time.monotonic()
    eres, result = servers.finish(go=True)
    m.eval_seconds = round(eres.wall_seconds, 3)
    m.extra["eval_wall_seconds"] = round(time.monotonic() - t0, 3)   # GO to both sandboxes gone
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
