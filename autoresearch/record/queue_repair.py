"""A queued run whose runs/NNNN/queue.json is lost or unreadable, rebuilt from what is left.

queue.json is written atomically, but a disk error, a human's `rm`, or a kill between the signed
record and the entry (queue_experiment writes the record first) can leave a run folder with its
snapshot/ and no readable entry. Dropping it would take the run out of its wave: a queued run would
never run, and a finished one would be decided as a plain run, outside the wave it was the best of.
So the entry is rebuilt from the signed metrics.json and the saved snapshot:

    record written at queue time, not finished   -> queued (the scheduler runs it from its snapshot)
    record finished by the runner                -> done (its result stands)
    record finished at queue time (cancelled)    -> cancelled
    record of a started run, no live runner      -> interrupted (running while one holds .running)
    no trustworthy record                        -> interrupted: nothing is known, nothing is a result

The first writer under the queue lock (claim, finish) persists the rebuilt entry.
"""
from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path

from .identity import program_code, snapshot_of
from .metrics import load_verified

LOST = "its queue.json was lost or unreadable; rebuilt from its signed record and snapshot"


def rebuilt_entry(run_dir: Path):
    """The QueueEntry rebuilt for run_dir (which has snapshot/ but no readable queue.json)."""
    from .queue import QueueEntry, runner_live, saved_files
    root = run_dir.parent.parent
    m, _ = load_verified(run_dir)
    if m is None:
        t = datetime.fromtimestamp(run_dir.stat().st_mtime, timezone.utc)
        return QueueEntry(run_id=run_dir.name, state="interrupted", message="", budget_seconds=0, seed=0,
                          queued_at=t, finished_at=t, note=LOST + " (no signed record either)")
    queued = m.extra.get("wave") == "queued"
    if m.finished_at is not None:
        state = "cancelled" if queued else "done"
    elif queued:
        state = "queued"
    else:
        state = "running" if runner_live(root, run_dir.name) else "interrupted"
    e = QueueEntry(run_id=run_dir.name, state=state, message=m.description, budget_seconds=m.budget_seconds,
                   seed=m.seed, queued_at=m.started_at, note=LOST, base=m.extra.get("base"),
                   finished_at=m.finished_at if state in ("done", "cancelled") else None)
    for absent in _absent_candidates(root, run_dir, saved_files(root, e)):
        e.absent = absent
        if snapshot_of(saved_files(root, e)) == m.snapshot_sha256:
            break
    if queued:
        e.snapshot = m.snapshot_sha256          # the code as queued: a lost snapshot file is never run
    return e


def _absent_candidates(root: Path, run_dir: Path, saved: dict[str, bytes | None]) -> list[list[str]]:
    """The absent-file lists to try: none, or every code file of the program not in the snapshot."""
    out: list[list[str]] = [[]]
    with contextlib.suppress(Exception):
        from ..program import load_program
        program = load_program(root)
        out.append(sorted(f for f in program_code(program, root) if f not in saved))
    return out
