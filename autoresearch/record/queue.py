"""A wave's queue, on disk: `./run.sh -m "why" --queue` snapshots the editable set into a new
runs/NNNN/ and marks it queued; the scheduler (scheduler.py, a trusted host process) runs it later
from that snapshot, whatever the work tree holds by then.

    runs/NNNN/queue.json      the run's place in the wave (QueueEntry; atomic writes)
    runs/NNNN/snapshot/<rel>  every file of the editable set as it was when queued (absent ones listed)
    runs/NNNN/metrics.json    written at queue time, signed, status `interrupted` ("queued, not
                              started"): a run lost at any point is interrupted, never a result

State moves queued -> running -> done, or queued -> cancelled (`autoresearch pause`), or running ->
interrupted (its runner died). Every transition out of `queued` happens under .autoresearch/queue.lock,
so the scheduler and a cancel never both take the same run. The state is on disk: a restarted
session (or scheduler) finds the wave where it was.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict

from ..atomic import write_atomic
from .layout import RUNNING, RUNS_DIR, STATE_DIR, lock_held, run_dirs
from .identity import program_code, snapshot_of
from .metrics import RunMetrics, load_verified

QUEUE_FILE = "queue.json"
SNAPSHOT_DIR = "snapshot"
QUEUE_LOCK = "queue.lock"
State = Literal["queued", "running", "done", "cancelled", "interrupted"]
LIVE: tuple[State, ...] = ("queued", "running")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class QueueEntry(BaseModel):
    """One queued run: what to run (the snapshot is beside it) and where it stands."""
    model_config = ConfigDict(extra="forbid")
    run_id: str
    state: State = "queued"
    message: str
    budget_seconds: float
    seed: int
    backend: str | None = None
    absent: list[str] = []                      # editable files that did not exist when queued
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    slot: int | None = None
    node: str | None = None                     # ray: the node that ran it
    base: str | None = None                     # ray: the commit shipped with the snapshot
    pid: int | None = None                      # the runner process (its own process group)
    note: str | None = None
    snapshot: str | None = None                 # identity.snapshot_of the saved snapshot when queued

    def write(self, root: Path) -> None:
        write_atomic(Path(root) / RUNS_DIR / self.run_id / QUEUE_FILE, self.model_dump_json(indent=2) + "\n")


def read_entry(run_dir: Path) -> QueueEntry | None:
    """The run's queue entry; None for a run that was not queued. A queued run (it has snapshot/)
    whose queue.json is lost or unreadable (deleted, truncated, invalid) is rebuilt from its signed
    record and snapshot (rebuilt_entry, below): never dropped from its wave, never run twice."""
    try:
        return QueueEntry.model_validate_json((Path(run_dir) / QUEUE_FILE).read_text())
    except (OSError, ValueError):
        if not (Path(run_dir) / SNAPSHOT_DIR).is_dir():
            return None
    return rebuilt_entry(Path(run_dir))


def snapshot_intact(root: Path, e: QueueEntry, measured: str | None = None) -> bool:
    """Does runs/NNNN/snapshot/ still hold the code that was queued (and, given `measured`, the
    code that was measured)? A lost or changed file there must never run, or be committed."""
    want = [x for x in (e.snapshot, measured) if x]
    if not want:
        return True
    try:
        have = snapshot_of(saved_files(root, e))
    except OSError:
        return False
    return all(have == w for w in want)


def entries(root: Path, skip: set[str] | frozenset[str] = frozenset()) -> list[QueueEntry]:
    """Every queued run's entry, oldest first (but those of the runs in `skip`)."""
    return [e for d in run_dirs(root) if d.name not in skip and (e := read_entry(d)) is not None]


def live_entries(root: Path) -> list[QueueEntry]:
    return [e for e in entries(root) if e.state in LIVE]


@contextlib.contextmanager
def queue_lock(root: Path) -> Iterator[None]:
    d = Path(root) / STATE_DIR
    d.mkdir(exist_ok=True)
    fd = os.open(d / QUEUE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pending_record(root: Path, e: QueueEntry, sha: str, program, reason: str,
                   finished: datetime | None = None) -> None:
    """The signed record of a run that has not run (queued) or never will (cancelled): interrupted."""
    from .identity import snapshot_of
    RunMetrics(run_id=e.run_id, status="interrupted", metric_name=program.metric.name,
               direction=program.metric.direction, train_py_sha256=sha, seed=e.seed,
               budget_seconds=e.budget_seconds, grace_seconds=program.budget.grace_seconds,
               sandbox=e.backend or program.sandbox.backend, description=e.message, reason=reason,
               started_at=e.queued_at, finished_at=finished,
               snapshot_sha256=e.snapshot or snapshot_of(saved_files(root, e)),
               extra={"wave": "queued", **({"base": e.base} if e.base else {})}   # ray: kept if queue.json is lost
               ).write(Path(root) / RUNS_DIR / e.run_id)


def saved_files(root: Path, e: QueueEntry) -> dict[str, bytes | None]:
    """The snapshot saved when the run was queued: {path: bytes, or None for an absent file}."""
    snap = Path(root) / RUNS_DIR / e.run_id / SNAPSHOT_DIR
    files: dict[str, bytes | None] = dict.fromkeys(e.absent)
    for f in sorted(snap.rglob("*")):
        if f.is_file() and not f.is_symlink():
            files[str(f.relative_to(snap))] = f.read_bytes()
    return files


def claim(root: Path, run_id: str, slot: int) -> QueueEntry | None:
    """queued -> running on `slot` (None when it is no longer queued: cancelled meanwhile)."""
    with queue_lock(root):
        e = read_entry(Path(root) / RUNS_DIR / run_id)
        if e is None or e.state != "queued":
            return None
        e.state, e.slot, e.started_at = "running", slot, _now()
        e.write(root)
        return e


def finish(root: Path, run_id: str, state: State, note: str | None = None, pid: int | None = None) -> None:
    """running -> done | interrupted (or just note the pid), under the queue lock."""
    with queue_lock(root):
        e = read_entry(Path(root) / RUNS_DIR / run_id)
        if e is None or e.state not in LIVE:
            return
        if pid is not None:
            e.pid = pid
        else:
            e.state, e.finished_at, e.note = state, _now(), note
        e.write(root)


def set_node(root: Path, run_id: str, node: str) -> None:
    """Ray: note the node that ran the run (status shows it)."""
    with queue_lock(root):
        e = read_entry(Path(root) / RUNS_DIR / run_id)
        if e is not None:
            e.node = node
            e.write(root)


def runner_live(root: Path, run_id: str) -> bool:
    """Does a runner hold runs/NNNN/.running (flock) right now?"""
    return lock_held(Path(root) / RUNS_DIR / run_id / RUNNING)


def slot_lock(root: Path, slot: int) -> Path:
    return Path(root) / STATE_DIR / f"slot-{slot}.lock"


def slot_free(root: Path, slot: int) -> bool:
    """Does no slot runner hold .autoresearch/slot-K.lock (it takes it before anything else)?"""
    return not lock_held(slot_lock(root, slot), exclusive=True)


def settle_lost(root: Path, mine: set[str], decided: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Runs marked running whose runner is gone (killed, or the machine restarted) and is not one of
    `mine` (the caller's live children): done when the runner had recorded the run's end (a kill
    between metrics.json and queue.json), else interrupted. Returns their ids. `decided`: runs a
    ledger row covers, not read (the Stop hook settles a wave before deciding it, and nothing moves
    a decided run's entry again: a night's history is not re-read at every Stop)."""
    lost = []
    for e in entries(root, decided):
        if e.state == "running" and e.run_id not in mine and not runner_live(root, e.run_id) \
                and e.slot is not None and slot_free(root, e.slot):
            m, _ = load_verified(Path(root) / RUNS_DIR / e.run_id)
            if m is not None and m.finished_at is not None and not m.queued:
                finish(root, e.run_id, "done", "its runner was lost after it recorded the run's end")
            else:
                finish(root, e.run_id, "interrupted", "its runner was lost (killed, or the machine restarted)")
            lost.append(e.run_id)
    return lost


def cancel_wave(root: Path, why: str = "cancelled by autoresearch pause",
                force: bool = False) -> tuple[list[str], list[str]]:
    """Cancel the wave: queued runs -> cancelled (signed record: interrupted, never a result);
    running ones get SIGTERM (their runner records them interrupted and stops the sandbox), or with
    `force` (a stuck wave: its runner may be hung) SIGKILL and interrupted here.
    Returns (cancelled, interrupted) run ids."""
    from ..program import load_program
    program = load_program(root)
    cancelled, stopped = [], []
    with queue_lock(root):
        for e in live_entries(root):
            if e.state == "queued":
                e.state, e.finished_at, e.note = "cancelled", _now(), why
                m, _ = load_verified(Path(root) / RUNS_DIR / e.run_id)
                pending_record(root, e, m.train_py_sha256 if m else "-", program, f"{why} (never started)",
                               finished=e.finished_at)
                e.write(root)
                cancelled.append(e.run_id)
            elif e.pid or force:
                if e.pid:
                    with contextlib.suppress(OSError):
                        os.killpg(e.pid, signal.SIGKILL if force else signal.SIGTERM)
                if force:
                    e.state, e.finished_at, e.note = "interrupted", _now(), why
                    e.write(root)
                stopped.append(e.run_id)
    return cancelled, stopped


# --- a lost queue.json, rebuilt ----------------------------------------------------------
# A queued run whose runs/NNNN/queue.json is lost or unreadable, rebuilt from what is left.
#
# queue.json is written atomically, but a disk error, a human's `rm`, or a kill between the signed
# record and the entry (queue_experiment writes the record first) can leave a run folder with its
# snapshot/ and no readable entry. Dropping it would take the run out of its wave: a queued run would
# never run, and a finished one would be decided as a plain run, outside the wave it was the best of.
# So the entry is rebuilt from the signed metrics.json and the saved snapshot:
#
#     record written at queue time, not finished   -> queued (the scheduler runs it from its snapshot)
#     record finished by the runner                -> done (its result stands)
#     record finished at queue time (cancelled)    -> cancelled
#     record of a started run, no live runner      -> interrupted (running while one holds .running)
#     no trustworthy record                        -> interrupted: nothing is known, nothing is a result
#
# The first writer under the queue lock (claim, finish) persists the rebuilt entry.

LOST = "its queue.json was lost or unreadable; rebuilt from its signed record and snapshot"


def rebuilt_entry(run_dir: Path):
    """The QueueEntry rebuilt for run_dir (which has snapshot/ but no readable queue.json)."""
    root = run_dir.parent.parent
    m, _ = load_verified(run_dir)
    if m is None:
        t = datetime.fromtimestamp(run_dir.stat().st_mtime, timezone.utc)
        return QueueEntry(run_id=run_dir.name, state="interrupted", message="", budget_seconds=0, seed=0,
                          queued_at=t, finished_at=t, note=LOST + " (no signed record either)")
    queued = m.queued
    if m.finished_at is not None:
        state = "cancelled" if queued else "done"
    elif queued:
        state = "queued"
    else:
        state = "running" if runner_live(root, run_dir.name) else "interrupted"
    e = QueueEntry(run_id=run_dir.name, state=state, message=m.description, budget_seconds=m.budget_seconds,
                   seed=m.seed, queued_at=m.started_at, note=LOST, base=m.queued_base,
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
