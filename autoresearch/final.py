"""`autoresearch final`: score the best kept experiment once on the held-out TEST split.

Which model: every run keeps its checkpoint (runs/NNNN/out/model.pt) and the exact train.py
that produced it (runs/NNNN/train.py), so the final evaluation scores the very model the loop
kept -- no re-training, no new seed noise. A confirmed win (several runs) is scored on each
run's checkpoint and reported as the mean. The baseline (experiment 1) is scored the same way,
so the improvement can be read on data the loop never saw.

How: the same trusted EVAL stage as every experiment (autoresearch.evaluate in a fresh
sandbox, no data mounted), with the test bytes on stdin instead of the validation bytes.

Once: the result is recorded in .autoresearch/final.json; asking again prints the record
instead of looking at the test split again (`--again` overrides, and says so in the record).
Deleting runs/ deletes the checkpoints, and with them the possibility of a final evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import secrets
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from .atomic import write_atomic
from .config import Program, load_program
from .ledger import LedgerRow, read_rows
from .status import best_row, shown_branch

FINAL_FILE = "final.json"


class FinalError(RuntimeError):
    """A final evaluation cannot be made; the message says why and what to do."""


class Scored(BaseModel):
    run_id: str
    status: str                        # ok | invalid | crash | timeout | oom
    value: float | None
    reason: str | None = None
    eval_seconds: float | None = None


class Entry(BaseModel):
    """One ledger row scored on the test split."""
    experiment: int
    commit: str
    description: str
    val: float | None                  # what the loop measured on the validation split
    runs: list[Scored]

    @property
    def test(self) -> float | None:
        vals = [r.value for r in self.runs if r.status == "ok" and r.value is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(self.runs) else None


class FinalRecord(BaseModel):
    branch: str
    metric: str
    direction: str
    split: str = "test"
    best: Entry
    baseline: Entry | None
    evaluated_at: datetime
    again: bool = False                # True when the test split had already been looked at

    def key(self) -> str:
        return f"{self.branch}:{','.join(r.run_id for r in self.best.runs)}"


def final_path(root: Path) -> Path:
    return root / ".autoresearch" / FINAL_FILE


def read_records(root: Path) -> list[FinalRecord]:
    try:
        raw = json.loads(final_path(root).read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise FinalError(f"{final_path(root)} is not valid JSON ({e}); move it aside to evaluate again") from None
    return [FinalRecord.model_validate(r) for r in raw]


def score_run(root: Path, program: Program, run_id: str, split: str = "test", backend: str | None = None) -> Scored:
    """One checkpoint through the trusted EVAL stage, with `split`'s bytes on stdin."""
    from .experiment import Layout, data_folder, eval_spec, parse_eval, _crash_reason
    from .sandbox import choose_backend

    run_dir = root / "runs" / run_id
    script = program.run.train_script
    lay = Layout(root, run_dir, script)
    for need in (lay.out / "model.pt", lay.script_copy):
        if not need.is_file():
            raise FinalError(f"{need} is missing: the final evaluation scores the kept run's own checkpoint "
                             f"and train.py (runs/ must not be deleted)")
    data = data_folder(root)
    split_file = data / split / f"{split}.bin"
    if not split_file.is_file():
        raise FinalError(f"{split_file} not found: prepare the data first (.venv/bin/python prepare.py)")
    sandbox = choose_backend(backend or program.sandbox.backend, image=program.sandbox.image)
    from .experiment import base_env
    log = root / ".autoresearch" / f"final-{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"final evaluation of run {run_id} on the {split} split\n")
    try:
        env = base_env(sandbox, lay, "/tmp", 0, 0)
        nonce = secrets.token_hex(16)
        spec = eval_spec(sandbox, program, lay, data, env, nonce)
        spec = dataclasses.replace(spec, stdin_data=nonce.encode() + b"\n" + split_file.read_bytes(), log_path=log)
        res = sandbox.run(spec)
    finally:
        lay.cleanup()
    result = parse_eval(res, nonce)
    secs = round(res.wall_seconds, 3)
    if res.timed_out:
        return Scored(run_id=run_id, status="timeout", value=None, eval_seconds=secs,
                      reason=f"ran past eval_seconds {program.budget.eval_seconds:g} s")
    if res.oom:
        return Scored(run_id=run_id, status="oom", value=None, eval_seconds=secs, reason="over the memory limit")
    if res.exit_code != 0 or result is None:
        return Scored(run_id=run_id, status="crash", value=None, eval_seconds=secs,
                      reason=_crash_reason(res, log, "the evaluator"))
    value = result.get("value")
    status = str(result.get("status"))
    if status == "ok" and not (isinstance(value, (int, float)) and math.isfinite(value)):
        status = "invalid"
    return Scored(run_id=run_id, status=status, value=float(value) if status == "ok" else None,
                  reason=result.get("reason"), eval_seconds=secs)


def _entry(root: Path, program: Program, row: LedgerRow, backend: str | None) -> Entry:
    runs = row.runs or [row.run_id]
    return Entry(experiment=row.experiment, commit=row.commit, description=row.description, val=row.value,
                 runs=[score_run(root, program, r, backend=backend) for r in runs])


def evaluate_final(root: Path, branch: str | None = None, again: bool = False, baseline: bool = True,
                   backend: str | None = None) -> tuple[FinalRecord, bool]:
    """(the record, whether it was evaluated now). Refuses inline mode: no trusted evaluator, no test split."""
    program = load_program(root)
    if program.run.mode == "inline":
        raise FinalError("inline mode has no trusted evaluator and no held-out split: the metric is whatever the "
                         "training code prints, so there is nothing to evaluate once more")
    rows = read_rows(root)
    shown = shown_branch(root, rows, branch)
    rows = [r for r in rows if r.branch == shown] if shown else []
    best = best_row(rows, program)
    if best is None:
        raise FinalError("no kept experiment yet: run the loop first (the baseline is the first keep)")
    records = read_records(root)
    key = f"{shown}:{','.join(best.runs or [best.run_id])}"
    done = [r for r in records if r.key() == key]
    if done and not again:
        return done[-1], False
    first = next((r for r in rows if r.status == "keep"), None)
    base = _entry(root, program, first, backend) if baseline and first is not None and first is not best else None
    rec = FinalRecord(branch=shown or "", metric=program.metric.name, direction=program.metric.direction,
                      best=_entry(root, program, best, backend), baseline=base,
                      evaluated_at=datetime.now(timezone.utc), again=bool(done))
    write_atomic(final_path(root), json.dumps([json.loads(r.model_dump_json()) for r in records + [rec]],
                                              indent=2) + "\n")
    return rec, True


def render(rec: FinalRecord, fresh: bool):
    from rich.table import Table
    t = Table(title=f"final evaluation on the held-out {rec.split} split ({rec.branch})")
    for c, kw in (("", {}), ("#", {"justify": "right"}), ("commit", {}), (f"{rec.metric} (val)", {"justify": "right"}),
                  (f"{rec.metric} ({rec.split})", {"justify": "right"}), ("runs", {}), ("description", {})):
        t.add_column(c, **kw)

    def fmt(v: float | None) -> str:
        return f"{v:.6f}" if v is not None else "-"
    for label, e in (("baseline", rec.baseline), ("best", rec.best)):
        if e is None:
            continue
        runs = ", ".join(f"{r.run_id}: {fmt(r.value) if r.status == 'ok' else r.status}" for r in e.runs)
        t.add_row(label, str(e.experiment), e.commit, fmt(e.val), fmt(e.test), runs, e.description,
                  style="bold green" if label == "best" else "")
    notes = []
    if rec.baseline and rec.baseline.test is not None and rec.best.test is not None:
        d = rec.best.test - rec.baseline.test
        notes.append(f"{rec.split} delta vs baseline: {d:+.6f}")
    for e in (rec.best, rec.baseline):
        for r in (e.runs if e else []):
            if r.status != "ok":
                notes.append(f"run {r.run_id}: {r.status}: {r.reason}")
    when = f"{rec.evaluated_at:%Y-%m-%d %H:%M} UTC"
    notes.append(("evaluated now" if fresh else "already evaluated") + f" ({when}); recorded in .autoresearch/final.json"
                 + ("" if fresh else ": `--again` looks at the test split once more"))
    if rec.again:
        notes.append("note: the test split had been looked at before for this result (--again)")
    t.caption = "\n".join(notes)
    return t


def main(root: Path, branch: str | None = None, again: bool = False, baseline: bool = True,
         backend: str | None = None, as_json: bool = False) -> int:
    from rich.console import Console
    console = Console()
    from .experiment import HarnessError
    from .sandbox import SandboxUnavailable
    try:
        rec, fresh = evaluate_final(root, branch=branch, again=again, baseline=baseline, backend=backend)
    except (FinalError, HarnessError, SandboxUnavailable) as e:
        console.print(f"autoresearch final: {e}", style="red")
        return 2
    if as_json:                                      # the same model as the table
        print(rec.model_dump_json(indent=2))
    else:
        console.print(render(rec, fresh))
    return 0 if rec.best.test is not None else 1
