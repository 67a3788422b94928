"""Read runs/NNNN/ folders for the loop: which runs exist, what code each ran, how it ended.

A missing, corrupt, unsigned or altered metrics.json is a crash ("missing"), never an error that stops the loop.
A run without `finished_at` (the runner writes metrics.json at the start and again at the end)
that still looks alive is "in progress": the Stop hook asks the agent to wait instead of
deciding on half a run; one that is too old to be alive was killed, and counts as interrupted.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..digest import sha256_file
from ..program.sections import save_margin
from .decide import RunView
from ..ledger import LedgerRow
from ..record import (QueueEntry, RECORD_ALTERED, RUNNING as RUNNING_LOCK, RUNS_DIR, RunMetrics, load_verified,
                      lock_held, read_entry, read_verified, run_ids, runner_live)

FRESH_DIR_S = 5.0                         # a run folder without metrics.json younger than this is being created


class RunRecord(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    run_id: str
    path: Path
    metrics: RunMetrics | None           # None: missing or corrupt metrics.json
    sha: str | None                      # sha256 of the train.py that ran (None: unknown)
    problem: str | None = None           # why metrics is None
    in_progress: bool = False
    wave: bool = False                   # queued into a wave (runs/NNNN/queue.json)

    @property
    def status(self) -> str:
        return self.metrics.status if self.metrics else "missing"

    @property
    def snapshot(self) -> str | None:
        """identity.snapshot of the code that ran (None for runs from before snapshots)."""
        return self.metrics.snapshot_sha256 if self.metrics else None

    @property
    def fingerprint(self) -> str:
        """identity.Fingerprint.key ("" when unknown: comparable with anything, as before)."""
        return self.metrics.fingerprint.key if self.metrics and self.metrics.fingerprint else ""

    def same_code(self, snapshot: str | None, train_sha: str | None) -> bool:
        """Did this run run that code? By snapshot; by train.py's sha256 for runs without one."""
        if self.snapshot and snapshot:
            return self.snapshot == snapshot
        return self.sha is not None and self.sha == train_sha

    def view(self, metric_name: str, direction: str) -> RunView:
        m = self.metrics
        if m is None:
            return RunView(run_id=self.run_id, status="missing")
        status, value = m.status, m.metric_value
        if status == "ok" and (value is None or not math.isfinite(value)
                               or m.metric_name != metric_name or m.direction != direction):
            status, value = "invalid", None  # a result we cannot compare is not a result
        return RunView(run_id=self.run_id, status=status, value=value if status == "ok" else None, seed=m.seed)


def _newest_mtime(path: Path) -> float:
    try:
        return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
    except OSError:
        return 0.0


def _running(path: Path, metrics: RunMetrics | None, wall_limit_s: float, extra_s: float | None = None) -> bool:
    """Is this run still going? The runner writes metrics.json at the start with no finished_at
    (status "interrupted", rewritten at the end). A lock file the runner holds (`.running`, flock)
    answers for sure; without one, a run is live while it is younger than the longest a run can take
    -- by the run's own recorded budget + grace (+ `extra_s` for eval and start-up), not program.md's."""
    if metrics is not None and metrics.finished_at is not None:
        return False
    if metrics is not None and extra_s is not None:
        wall_limit_s = metrics.budget_seconds + save_margin(metrics.budget_seconds) + metrics.grace_seconds + extra_s
    lock = path / RUNNING_LOCK
    if lock.exists():
        return lock_held(lock)                   # nobody holds it: the runner is gone
    if wall_limit_s <= 0:
        return False
    if metrics is None:                          # only in the instant between mkdir and the first write
        return time.time() - _newest_mtime(path) < FRESH_DIR_S
    if time.time() - metrics.started_at.timestamp() >= wall_limit_s:
        return False
    alive = runner_alive(path.parent.parent)
    return True if alive is None else alive


def runner_alive(root: Path) -> bool | None:
    """Is a runner (`python -m autoresearch.run`, what ./run.sh execs) working in `root`?
    None when this cannot be known (no /proc). A runner killed with SIGKILL never writes
    finished_at; without this its run would look alive until the longest run time had passed."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    want = str(Path(root).resolve())
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"autoresearch.run" not in argv and not any(a.endswith(b"run.sh") for a in argv):
            if not (b"autoresearch" in b" ".join(argv[:3]) and b"calibrate" in argv):
                continue
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            return True                          # cannot see where it runs: assume it may be ours
        if cwd == want or cwd.startswith(want + "/"):
            return True
    return False


def load_run(root: Path, run_id: str, train_name: str = "train.py", wall_limit_s: float = 0.0,
             extra_s: float | None = None) -> RunRecord:
    """One run. `wall_limit_s`: how long a run may take; a run without metrics.json whose folder
    changed within that window is still in progress."""
    path = Path(root) / RUNS_DIR / run_id
    metrics, problem = load_verified(path)      # unsigned or altered: None + "result record altered"
    sha = metrics.train_py_sha256 if metrics else None
    if sha is None:
        for name in dict.fromkeys([Path(train_name).name, "train.py"]):
            try:
                sha = sha256_file(path / name)
                break
            except OSError:
                continue
    in_progress = False if problem and problem.startswith(RECORD_ALTERED) else _running(path, metrics, wall_limit_s, extra_s)
    entry = read_entry(path)
    if entry is not None:
        in_progress = wave_live(Path(root), entry)
    return RunRecord(run_id=run_id, path=path, metrics=metrics, sha=sha, problem=problem, in_progress=in_progress,
                     wave=entry is not None)


CLAIM_S = 30.0                            # a claimed run's runner takes its .running lock within this


def wave_live(root: Path, entry: QueueEntry) -> bool:
    """A queued run is in flight while queued, or running with its runner alive (or just claimed).
    One whose runner is gone is over: its record says interrupted, never a result."""
    if entry.state == "queued":
        return True
    if entry.state != "running":
        return False
    if runner_live(root, entry.run_id):
        return True
    return entry.started_at is not None and time.time() - entry.started_at.timestamp() < CLAIM_S


def undecided_runs(root: Path, decided: set[str], train_name: str = "train.py",
                   wall_limit_s: float = 0.0, extra_s: float | None = None) -> list[RunRecord]:
    """Runs not yet covered by a ledger row or a calibration, oldest first (a run whose
    metrics.json says purpose: calibration is a measurement, and purpose: check is init's trial run
    left behind by a killed init: neither is ever decided)."""
    out = [load_run(root, r, train_name, wall_limit_s, extra_s) for r in run_ids(root) if r not in decided]
    return [r for r in out if not (r.metrics and r.metrics.purpose in ("calibration", "check"))]


CONTENDED_SAME_CODE = 0.5                 # below half the median of runs of the same code: contended
CONTENDED_ANY_CODE = 0.25                 # below a quarter of the median of recent comparable runs


def contention(root: Path, run: RunRecord, window: int = 20, rows: "list[LedgerRow] | None" = None) -> str | None:
    """Why `run` looks contended (its steps/s far below comparable peers: same fingerprint, same
    code first, else recent runs), or None. Another job on the machine slows a run without
    changing the code; such a run's metric says nothing about the idea and is never kept.

    With `rows` (the ledger), only the records that can be peers are read: every run no row covers
    (the wave, calibrations), the decided runs of the same code, and the newest decided runs of the
    same fingerprint until `window` are found -- not all of runs/ (a night's history would make
    every decision read 1,000 records). This relies on what the ledger already guarantees: trusted
    code wrote each row from the run's verified record when it was decided (its fingerprint,
    snapshot and run_status are that record's), and a decided run's record is never rewritten. A
    row that does not say (rows from before snapshots, a confirmation's earlier runs) is read."""
    m = run.metrics
    if m is None or m.steps_per_s is None or not run.fingerprint:
        return None
    same, anyc = [], []
    by_run = {x: row for row in rows or [] for x in row.runs + [row.run_id]}
    for rid in reversed(run_ids(root)):                       # newest first: the window is the latest
        if rid == run.run_id:
            continue
        row = by_run.get(rid)
        if row is not None:
            if row.fingerprint and row.fingerprint != run.fingerprint:
                continue
            if row.run_id == rid and row.run_status and row.run_status != "ok":
                continue
            code = not row.snapshot or not run.snapshot or row.snapshot == run.snapshot
            if not code and len(anyc) >= window:
                continue                                      # older than the window, other code
        try:
            o = read_verified(Path(root) / RUNS_DIR / rid)
        except (OSError, ValueError):
            continue
        if o.status != "ok" or o.steps_per_s is None or not o.fingerprint or o.fingerprint.key != run.fingerprint:
            continue
        (same if o.snapshot_sha256 == run.snapshot else anyc).append(o.steps_per_s)
    same.reverse()
    anyc.reverse()
    import statistics
    for peers, factor, what in ((same, CONTENDED_SAME_CODE, "runs of the same code"),
                                (anyc[-window:], CONTENDED_ANY_CODE, "recent comparable runs")):
        if len(peers) >= (1 if peers is same else 3):
            med = statistics.median(peers)
            if m.steps_per_s < factor * med:
                return f"{m.steps_per_s:.1f} steps/s vs a median {med:.1f} over {len(peers)} {what}"
            return None
    return None
