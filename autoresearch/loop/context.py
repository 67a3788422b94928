"""What one Stop call knows about the project, read once before anything is decided: HEAD, the run
branch (or the name a new one will get), train.py and the editable code in the work tree and at
HEAD (identity.snapshot), the ledger, and -- per deciding run -- the best it is compared with.
Also: which finished runs are still undecided, and sigma for a fingerprint.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from ..digest import sha256_bytes, sha256_file
from ..gitops import RUN_BRANCH_PREFIX, current_branch, git, head_commit, is_run_branch, ref_commit, show_blob
from ..ledger import LedgerRow, best_value, branch_rows, decided_runs, read_rows
from ..ledger.durable import kept_rows_from_git
from ..program import RUN_OVERHEAD_S, Program
from ..record import program_code, read_verified, snapshot, snapshot_at
from . import messages
from .runscan import RunRecord, undecided_runs
from .state import LoopState, calibrations_from_runs


class SetupError(RuntimeError):
    """The project cannot run the loop at all (no git repository, no commit): the human must act."""


class Context(BaseModel):
    """What one Stop call knows about the project."""
    model_config = {"arbitrary_types_allowed": True}
    head: str
    branch: str                         # the run branch (planned name if HEAD is not one yet)
    on_run_branch: bool
    from_name: str | None
    session: str
    train: str
    cur_sha: str | None                 # train.py in the work tree
    head_sha: str | None                # train.py at HEAD
    cur_snap: str                       # identity.snapshot of the work tree's editable code
    head_snap: str                      # ... and of HEAD's
    rows: list[LedgerRow]
    best: float | None                  # the best under the deciding run's fingerprint (set per decision)
    has_keeps: bool = False             # the run branch has a baseline (under any fingerprint)
    fingerprint: str = ""               # the deciding run's
    fp_change: str = ""                 # "budget 5 s -> 10 s" when it differs from the last keep's


def read_context(root: Path, program: Program, data: dict) -> Context:
    p = git(root, "rev-parse", "--is-inside-work-tree", check=False)
    if p.returncode != 0:
        raise SetupError(messages.not_a_repository(root))
    head = head_commit(root)
    if head is None:
        raise SetupError(messages.NO_COMMIT)
    name = current_branch(root)
    on_run = is_run_branch(name)
    branch = name if on_run else _new_branch_name(root)
    train = program.run.train_script
    head_train = show_blob(root, head, train)
    rows = read_rows(root)
    code = program_code(program, root)
    has_keeps = on_run and bool([r for r in branch_rows(rows, branch) if r.status == "keep"]
                                or kept_rows_from_git(root, branch))
    return Context(head=head, branch=branch, on_run_branch=on_run, from_name=None if on_run else (name or head[:12]),
                   session=str(data.get("session_id") or ""), train=train,
                   cur_sha=sha256_file(Path(root) / train),
                   head_sha=sha256_bytes(head_train),
                   cur_snap=snapshot(root, code), head_snap=snapshot_at(root, head, code),
                   rows=rows, best=None, has_keeps=has_keeps)


def _new_branch_name(root: Path) -> str:
    base = f"{RUN_BRANCH_PREFIX}{datetime.now():%Y%m%d-%H%M%S}"
    name, i = base, 2
    while ref_commit(root, f"refs/heads/{name}"):
        name, i = f"{base}-{i}", i + 1
    return name


def pending_runs(root: Path, program: Program, st: LoopState, rows: list[LedgerRow]) -> list[RunRecord]:
    """Runs in runs/ that no ledger row decided and that are not measurements (calibration), oldest
    first; a run still writing is among them (`in_progress`, judged by its own recorded budget)."""
    decided = decided_runs(rows) | set(st.measurement_runs)
    for cal in [st.calibration, *st.calibrations.values()]:
        decided |= set(cal.run_ids) if cal else set()
    b = program.budget
    return undecided_runs(root, decided, program.run.train_script, b.experiment_seconds(),
                          extra_s=b.eval_seconds + RUN_OVERHEAD_S)


def sigma_for(root: Path, st: LoopState, fingerprint: str, rows: list[LedgerRow] | None = None) -> float | None:
    """sigma for this fingerprint: the state's, else rebuilt from the calibration runs in runs/
    (those no ledger row covers: `rows`)."""
    sig = st.sigma_for(fingerprint or None)
    if sig is None and fingerprint:
        cal = calibrations_from_runs(root, decided_runs(rows or [])).get(fingerprint)
        sig = cal.sigma if cal else None
    return sig


def compare_with(root: Path, program: Program, ctx: Context, run: RunRecord) -> None:
    """Set ctx.best to the best measured under `run`'s fingerprint (None: none there yet), and
    say what changed when the branch's best was measured under another one."""
    ctx.fingerprint = run.fingerprint
    ctx.best = best_value(ctx.rows, program.metric, ctx.branch, run.fingerprint or None, ctx.head_snap) \
        if ctx.has_keeps else None
    if ctx.has_keeps and ctx.best is None:
        ctx.fp_change = _fingerprint_change(root, ctx, run)


def _fingerprint_change(root: Path, ctx: Context, run: RunRecord) -> str:
    last = next((r for r in reversed(branch_rows(ctx.rows, ctx.branch)) if r.status == "keep"), None)
    old = None
    if last is not None:
        try:
            old = read_verified(Path(root) / "runs" / last.run_id).fingerprint
        except (OSError, ValueError):
            old = None
    new = run.metrics.fingerprint if run.metrics else None
    if new is None:
        return "fingerprint changed"
    return new.differs(old) if old is not None else f"fingerprint {last.fingerprint if last else '?'} -> {new.key}"
