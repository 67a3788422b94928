"""Putting a run into the wave's queue and running it from there: `./run.sh -m "why" --queue`
snapshots the editable set into a new runs/NNNN/ (queue_experiment); the scheduler's child for a slot
runs it later from that snapshot (execute_queued). The entries themselves, and every state change,
are the record's (record/queue.py).
"""
from __future__ import annotations

from pathlib import Path

from ..record import (HarnessError, QueueEntry, RUNS_DIR, RunMetrics, SNAPSHOT_DIR, allocate_run_dir, pending_record,
                      read_entry, saved_files, snapshot_intact, snapshot_of)
from ..registry import remote


def queue_experiment(root: Path, message: str, budget: float | None = None, seed: int | None = None,
                     backend: str | None = None) -> QueueEntry:
    """Snapshot the editable set now into a new runs/NNNN/ and queue it (the same checks as a run:
    a run that could not start is refused now, with the fix, and makes no folder)."""
    from .runner import RunOptions, _now as now, prepare
    root = Path(root).resolve()
    p = prepare(root, RunOptions(budget, seed, backend), queued=True)
    if remote(kind := p.program.executor.kind):
        from .inputs import branch_head
        if (base := branch_head(root)) is None:
            raise HarnessError(f"executor kind: {kind} ships the committed project to the node: commit it first "
                               "(git add -A && git commit)")
    else:
        base = None
    run_dir = allocate_run_dir(root)
    snap = run_dir / (SNAPSHOT_DIR + ".part")      # renamed once whole: snapshot/ implies a full copy
    for rel, data in p.files.items():
        if data is not None:
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            (snap / rel).write_bytes(data)
    snap.mkdir(exist_ok=True)
    (run_dir / Path(p.script).name).write_bytes(p.code)   # earlier_runs_of and the Stop hook read it
    entry = QueueEntry(run_id=run_dir.name, message=message, budget_seconds=p.budget_s, seed=p.seed_n,
                       backend=backend, base=base, absent=sorted(r for r, d in p.files.items() if d is None),
                       queued_at=now(), snapshot=snapshot_of(p.files))
    pending_record(root, entry, p.sha, p.program, "queued, not started yet (rewritten when it runs)")
    snap.rename(run_dir / SNAPSHOT_DIR)            # then the entry: a kill between leaves a rebuildable run
    entry.write(root)
    return entry


def execute_queued(root: Path, run_id: str, slot: int, program=None) -> RunMetrics:
    """Run a claimed queued run in its folder, from its saved snapshot (called by the scheduler's
    child for `slot`, with program.md's sandbox.gpus already narrowed to the slot's GPU)."""
    from .runner import Asked, RunOptions, prepare, run_in
    root = Path(root).resolve()
    e = read_entry(root / RUNS_DIR / run_id)
    if e is None:
        raise HarnessError(f"run {run_id} is not a queued run")
    if not snapshot_intact(root, e):
        raise HarnessError(f"runs/{run_id}/snapshot/ no longer holds the code that was queued (a file lost or "
                           "changed): it is not run; queue the variant again")
    p = prepare(root, RunOptions(e.budget_seconds, e.seed, e.backend, program=program), files=saved_files(root, e))
    return run_in(root, p, root / RUNS_DIR / run_id, Asked(e.message))
