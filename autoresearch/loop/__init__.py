"""What the Stop, SessionStart and PreCompact hooks do. hooks/*.py are thin, fail-safe entries
that call `stop_hook`, `session_start_hook` and `pre_compact_hook` here.

Stop, in order, under the loop lock:
  0. rebuild a missing/empty/corrupt/truncated results.tsv from the branch + runs/ (ledger.ensure),
     then finish a decision a killed hook left half done (journal.recover)
  1. a run still writing (by its own recorded budget)?     -> block: wait for it
  2. undecided runs of OTHER code (snapshot) or of another fingerprint than the latest
                                                            -> ledger rows (superseded), no git
  3. undecided runs of the current code (identity.snapshot of the editable set):
       scratchpad.md unchanged since the last decision      -> block: say what to add
       steps/s far below comparable runs                    -> row (contended), no git: run it again
       the branch tip's own code                            -> row (re-measured the best), no git
       no best measured at this fingerprint (budget change) -> not judged: revert; the best's code
                                                               run next starts a new baseline
       decide.decide(): confirm                             -> block: re-run the same code
                        keep | discard | crash              -> journal: commit | revert, row, state
  4. budget spent (count, deadline, pause)                  -> allow the stop, summary for the human
  5. otherwise block with the next step: after a decision, the outcome and what comes next;
     with nothing to decide: "run ./run.sh" (train.py changed) or "form a hypothesis" (idle).
     AUTORESEARCH_MAX_IDLE_STOPS (default 20) consecutive idle stops end the loop: an agent that
     keeps ending its turn without experimenting is burning money, not researching.

Failure semantics (for Stop, letting the stop through ends the overnight loop):
  - program.md invalid (or a bad AUTORESEARCH_MAX_EXPERIMENTS): the loop cannot know what to
    optimise; the agent cannot fix it (program.md is the human's). Allow the stop with a clear
    message for the human -- a deliberate, visible end, not an accident.
  - No git repository / no commit yet: same (a setup problem only the human can fix).
  - Anything else (git refusing, a lock held, a bug): block with a short actionable message and
    log the traceback to .autoresearch/hook-errors.log (hooks/stop.py does this; after
    AUTORESEARCH_MAX_HOOK_ERRORS consecutive errors it lets the stop through, loudly).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from filelock import Timeout as LockTimeout
from pydantic import BaseModel

from ..digest import sha256_bytes, sha256_file
from . import journal
from .allowance import BudgetStatus, budget
from ..program import RUN_OVERHEAD_S, ConfigError, Program, load_program, project_root
from .decide import Verdict, decide, threshold
from ..gitops import (GitError, current_branch, git, head_commit, is_run_branch, locked_index, ref_commit,
                      show_blob, RUN_BRANCH_PREFIX)
from .journal import Journal, LoopError
from .phases import advance
from ..run.identity import program_code, snapshot, snapshot_at
from ..ledger import (REMEASURE, LedgerError, LedgerRow, best_row, best_value, branch_rows, comparable, current_best, decided_runs,
                      kept_rows_from_git, kept_run_ids, read_rows, row_trailers)
from ..run.metrics import read_verified
from .runscan import RunRecord, contention, undecided_runs
from .state import (LastDecision, LoopState, calibrations_from_runs, loop_lock, now, paused, read_state,
                    state_dir, write_state)

SCRATCHPAD = "scratchpad.md"
MAX_IDLE_ENV = "AUTORESEARCH_MAX_IDLE_STOPS"
DEFAULT_MAX_IDLE = 20
log = logging.getLogger("autoresearch.loop")


class SetupError(RuntimeError):
    """The project cannot run the loop at all (no git repository, no commit): the human must act."""


# --- replies -------------------------------------------------------------------------------

def block(reason: str) -> dict:
    return {"decision": "block", "reason": reason}


def allow(message: str) -> dict:
    """Let the agent stop; `systemMessage` is shown to the human."""
    return {"systemMessage": message}


# --- the Stop hook -------------------------------------------------------------------------

def stop_hook(data: dict) -> dict:
    t0 = time.perf_counter()
    try:
        root = project_root(Path(data.get("cwd") or os.getcwd()))
        program = load_program(root)
    except ConfigError as e:
        return allow(f"autoresearch: the loop stopped because program.md is invalid. Fix it, then start "
                     f"the agent again:\n{e}")
    try:
        with loop_lock(root):
            rebuilt = _ensure_ledger(root, program)          # first: a journal appends to it
            done = journal.recover(root)
            if done is not None and done.reply is not None:     # a killed call's decision, now finished
                reply = done.reply_for(done.commit(root))
            else:
                reply = _stop(root, program, data)
            if rebuilt and reply and reply.get("reason"):
                reply["reason"] = f"({rebuilt}) " + reply["reason"]
    except (ConfigError, SetupError) as e:
        reply = allow(f"autoresearch: the loop stopped: {e}")
    except LockTimeout:
        reply = block("autoresearch: another autoresearch command holds the loop lock (.autoresearch/loop.lock). "
                      "Wait a minute, then end your turn again.")
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        reply = allow(disk_full(root, e))
    _trace(root, "stop", reply, time.perf_counter() - t0)
    return reply


def disk_full(root: Path, e: OSError) -> str:
    """ENOSPC: nothing can be recorded, and no retry by the agent can help. Free what is safe (the
    checkpoints of runs that were not kept), then let the session stop with the human's fix."""
    freed = prune_unkept(root)
    return (f"autoresearch: the disk is full (ENOSPC: {e.filename or e.strerror}), so the loop stopped; nothing "
            f"was decided and nothing is lost. Freed {freed / 2**20:.0f} MiB of checkpoints of runs that were not "
            f"kept. A human must free more space (`df -h {root}`), then start the agent again.")


def prune_unkept(root: Path) -> int:
    """Delete runs/NNNN/out/ of every run that no keep covers; returns the bytes freed. Kept
    runs' checkpoints are never touched (`autoresearch final` scores them)."""
    from ..ledger import LedgerError, kept_run_ids
    from .runscan import run_ids
    try:
        kept = kept_run_ids(root)
    except (LedgerError, GitError):
        return 0                                   # cannot tell what is kept: delete nothing
    freed = 0
    for rid in run_ids(root):
        out = Path(root) / "runs" / rid / "out"
        if rid in kept or not out.is_dir():
            continue
        freed += sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        shutil.rmtree(out, ignore_errors=True)
    return freed


def _ensure_ledger(root: Path, program: Program) -> str | None:
    """A missing, empty, corrupt or incomplete results.tsv is rebuilt from the run branches and
    runs/*/decision.json before anything is decided: a kept run is never decided again."""
    from ..ledger import ensure
    return ensure(root, program.metric.name)


class _Ctx(BaseModel):
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


def _stop(root: Path, program: Program, data: dict) -> dict:
    st = read_state(root)
    if st.started_at is None:
        st.started_at = now()
        write_state(root, st)
    ctx = _context(root, program, data, st)
    b = program.budget
    decided = decided_runs(ctx.rows) | set(st.measurement_runs)
    if st.calibration:
        decided |= set(st.calibration.run_ids)
    for cal in st.calibrations.values():
        decided |= set(cal.run_ids)
    runs = undecided_runs(root, decided, ctx.train, b.experiment_seconds(),
                          extra_s=b.eval_seconds + RUN_OVERHEAD_S)
    running = [r for r in runs if r.in_progress]
    if running:
        return block(f"autoresearch: run {running[-1].run_id} is still running. Wait for ./run.sh to finish and "
                     f"print its result (do not run it in the background), then end your turn.")
    cands = [r for r in runs if ctx.cur_sha and r.same_code(ctx.cur_snap, ctx.cur_sha)]
    if cands:                           # only runs comparable with the latest one are averaged
        cands = [r for r in cands if r.fingerprint == cands[-1].fingerprint]
    others = [r for r in runs if r not in cands]
    bud = budget(program, st, ctx.rows, ctx.branch, ctx.session, paused(root))

    if cands:
        nag = _scratchpad_rule(root, program, st, ctx, cands[-1])
        if nag:
            return block(nag)
        _compare_with(root, program, ctx, cands[-1])
        sig = _sigma(root, st, ctx.fingerprint)
        thresh = threshold(program, sig)
        busy = contention(root, cands[-1]) if cands[-1].status == "ok" else None
        if busy:
            return _contended(root, program, st, ctx, cands, others, thresh, busy)
        if ctx.has_keeps and ctx.cur_snap == ctx.head_snap:
            return _remeasure(root, program, st, ctx, cands, others, thresh, sig)
        if ctx.has_keeps and ctx.best is None:
            v = Verdict(action="crash" if cands[-1].view(program.metric.name, program.metric.direction).status != "ok"
                        else "discard", value=None, delta=None, improvement=None, threshold=thresh,
                        note=f"not comparable: no best measured at this fingerprint ({ctx.fp_change})")
            vw = cands[-1].view(program.metric.name, program.metric.direction)
            v.value = vw.value
            if v.action == "crash":
                v.note = vw.status
            return _decide(root, program, st, ctx, cands, others, v, thresh, sig)
        can_confirm = not bud.paused and not (bud.hours_left is not None and bud.hours_left <= 0)
        views = [r.view(program.metric.name, program.metric.direction) for r in cands]
        v = decide(views, ctx.best, program.metric, thresh, program.noise.confirm_margin, can_confirm)
        if v.action == "confirm":
            if others:
                _record(root, program, st, ctx, others, thresh)
            return block(_confirm_message(program, v, cands))
        return _decide(root, program, st, ctx, cands, others, v, thresh, sig)

    if others:
        ctx.rows = ctx.rows + _record(root, program, st, ctx, others, threshold(program, st.sigma))
        bud = budget(program, read_state(root), ctx.rows, ctx.branch, ctx.session, paused(root))
    program, bud, moved = _next_phase_if_spent(root, program, bud, read_state(root), ctx.rows, ctx)
    if bud.spent:
        return _finish(root, program, ctx.branch, ctx.rows, bud.reason or "budget spent")
    if moved:
        return block(moved + f"Its focus: {_short(program.current.focus).rstrip('.')}. {bud.line()}. Next: form ONE "
                     f"hypothesis for this phase, edit train.py, run ./run.sh -m \"<what and why>\", then end your turn.")
    st = read_state(root)
    st.idle_stops += 1
    write_state(root, st)
    max_idle = _int_env(MAX_IDLE_ENV, DEFAULT_MAX_IDLE)
    if st.idle_stops > max_idle:
        return _finish(root, program, ctx.branch, ctx.rows,
                       f"the agent ended {st.idle_stops} turns in a row without a new experiment")
    if ctx.cur_sha is None:
        return block(f"autoresearch: {ctx.train} is missing. Restore it (its last kept version is "
                     f"`git show HEAD:{ctx.train}`), then run ./run.sh -m \"<what and why>\".")
    if ctx.cur_snap != ctx.head_snap:
        return block(f"autoresearch: {ctx.train} has changed but has no run yet. Run it first: "
                     f"./run.sh -m \"<what changed and why>\" -- then update scratchpad.md and end your turn.")
    if not ctx.has_keeps:
        return block("autoresearch: no baseline yet on this run. Run the baseline first: "
                     "./run.sh -m \"baseline\" -- then note the result in scratchpad.md and end your turn.")
    return block(f"autoresearch: nothing to decide: {ctx.train} is unchanged and has no new run. "
                 f"{bud.line()}. Next: form one hypothesis for phase '{program.phase}' "
                 f"({_short(program.current.focus).rstrip('.')}), write it in scratchpad.md, edit {ctx.train}, "
                 f"run ./run.sh -m \"<what and why>\", then end your turn.")


def _sigma(root: Path, st: LoopState, fingerprint: str) -> float | None:
    """sigma for this fingerprint: the state's, else rebuilt from the calibration runs in runs/."""
    sig = st.sigma_for(fingerprint or None)
    if sig is None and fingerprint:
        cal = calibrations_from_runs(root).get(fingerprint)
        sig = cal.sigma if cal else None
    return sig


def _compare_with(root: Path, program: Program, ctx: _Ctx, run: RunRecord) -> None:
    """Set ctx.best to the best measured under `run`'s fingerprint (None: none there yet), and
    say what changed when the branch's best was measured under another one."""
    ctx.fingerprint = run.fingerprint
    ctx.best = best_value(ctx.rows, program.metric, ctx.branch, run.fingerprint or None, ctx.head_snap) \
        if ctx.has_keeps else None
    if ctx.has_keeps and ctx.best is None:
        ctx.fp_change = _fingerprint_change(root, ctx, run)


def _fingerprint_change(root: Path, ctx: _Ctx, run: RunRecord) -> str:
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


def _context(root: Path, program: Program, data: dict, st: LoopState) -> _Ctx:
    p = git(root, "rev-parse", "--is-inside-work-tree", check=False)
    if p.returncode != 0:
        raise SetupError(f"{root} is not a git repository; run `git init` and commit the project first")
    head = head_commit(root)
    if head is None:
        raise SetupError("the repository has no commit yet; commit the project (the baseline) first")
    name = current_branch(root)
    on_run = is_run_branch(name)
    branch = name if on_run else _new_branch_name(root)
    train = program.run.train_script
    head_train = show_blob(root, head, train)
    rows = read_rows(root)
    code = program_code(program)
    has_keeps = on_run and bool([r for r in branch_rows(rows, branch) if r.status == "keep"]
                                or kept_rows_from_git(root, branch))
    return _Ctx(head=head, branch=branch, on_run_branch=on_run, from_name=None if on_run else (name or head[:12]),
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


def _scratchpad_rule(root: Path, program: Program, st: LoopState, ctx: _Ctx, run: RunRecord) -> str | None:
    """The scratchpad must have changed since the last decision (its content then), or since the
    commit the run branch starts from, before a run is decided."""
    if SCRATCHPAD not in program.editable_files():
        return None
    cur = sha256_file(Path(root) / SCRATCHPAD)
    if st.last_decision and st.last_decision.branch == ctx.branch:
        ref = st.last_decision.scratchpad_sha256
    else:
        blob = show_blob(root, ctx.head, SCRATCHPAD)
        ref = sha256_bytes(blob)
    if cur is not None and cur != ref:
        return None
    m = run.metrics
    result = (f"{program.metric.name} {m.metric_value:.6f}" if m and m.status == "ok" and m.metric_value is not None
              else f"{run.status}" + (f" ({m.reason})" if m and m.reason else ""))
    what = "is missing: recreate it" if cur is None else "has not changed since the last decision"
    return (f"autoresearch: {SCRATCHPAD} {what}. Before ending your turn, write down what run {run.run_id} "
            f"showed ({result}): add a line to 'Experiment log' (change | result | your read of it) and update "
            f"'Next experiments'. Then end your turn; the harness decides keep or revert.")


def _run_row(program: Program, ctx: _Ctx, r: RunRecord, exp: int, status: str, value: float | None,
             thresh: float, sigma: float | None, note: str, runs: list[RunRecord] | None = None,
             prev_best: float | None = None, best: float | None = None, description: str | None = None) -> LedgerRow:
    runs = runs or [r]
    m = r.metrics
    return LedgerRow(
        commit=ctx.head[:7], value=value, memory_gb=m.peak_memory_gb if m else None, status=status,
        description=description if description is not None else (m.description if m else r.problem or ""),
        experiment=exp, run_id=r.run_id, runs=[x.run_id for x in runs], run_status=r.status,
        phase=program.phase, branch=ctx.branch, seeds=[x.metrics.seed for x in runs if x.metrics],
        delta=(value - prev_best) if value is not None and prev_best is not None else None,
        prev_best=prev_best, best=best, threshold=thresh, sigma=sigma,
        train_seconds=m.train_seconds if m else None, sandbox=m.sandbox if m else "",
        session=ctx.session, note=note, decided_at=now(), snapshot=r.snapshot or "", fingerprint=r.fingerprint)


def _superseded_rows(program: Program, st: LoopState, ctx: _Ctx, others: list[RunRecord], thresh: float,
                     first_exp: int) -> list[LedgerRow]:
    rows = []
    for i, r in enumerate(others):
        v = r.view(program.metric.name, program.metric.direction)
        ok = v.status == "ok"
        rows.append(_run_row(program, ctx, r, first_exp + i, "discard" if ok else "crash", v.value, thresh,
                             st.sigma, "superseded: the code changed (or the fingerprint differs) before this "
                             "run was decided",
                             prev_best=ctx.best, best=ctx.best))
    return rows


def _journal_base(ctx: _Ctx) -> dict:
    return dict(created_at=now(), branch=ctx.branch, branch_from=None if ctx.on_run_branch else ctx.head,
                from_name=ctx.from_name, parent=ctx.head)


def _record(root: Path, program: Program, st: LoopState, ctx: _Ctx, others: list[RunRecord],
            thresh: float, rows: list[LedgerRow] | None = None, reply: dict | None = None) -> list[LedgerRow]:
    """Ledger rows, no git: for runs whose code is gone (the agent moved on before a decision),
    or the given rows (re-measurements, contended runs)."""
    rows = rows or _superseded_rows(program, st, ctx, others, thresh, len(branch_rows(ctx.rows, ctx.branch)) + 1)
    _preflight(root)
    last = rows[-1]
    ld = LastDecision(run_id=last.run_id, runs=last.runs, experiment=last.experiment, outcome=last.status,
                      branch=ctx.branch, scratchpad_sha256=sha256_file(Path(root) / SCRATCHPAD), at=now()) \
        if reply is not None else None
    j = Journal(action="record", run_id=last.run_id, rows=rows, metric_name=program.metric.name,
                last_decision=ld, reply=reply, **_journal_base(ctx))
    journal.begin(root, j, {})
    journal.apply(root, j)
    _prune_checkpoints(root, program, others)
    ctx.on_run_branch, ctx.from_name = True, None
    return rows


def _prune_checkpoints(root: Path, program: Program, runs: list[RunRecord]) -> None:
    """Delete the out/ folder (checkpoints) of runs that were not kept: a night of GPU-sized
    checkpoints fills a disk. Log, metrics, the train.py copy and the diff stay. A run any keep
    covers (ledger or any run branch's trailers) is never touched, whatever the caller thinks:
    `autoresearch final` scores it. `keep_checkpoints: all` turns this off."""
    if program.keep_checkpoints == "all" or not runs:
        return
    kept = kept_run_ids(root)
    for run in runs:
        if run.run_id not in kept:
            shutil.rmtree(run.path / "out", ignore_errors=True)


def _remeasure(root: Path, program: Program, st: LoopState, ctx: _Ctx, cands: list[RunRecord],
               others: list[RunRecord], thresh: float, sig: float | None) -> dict:
    """Runs of the branch tip's own code: they measure the best again (its mean moves), never a
    keep -- a lucky re-run is not an improvement. Under a new fingerprint they are its baseline."""
    exp0 = len(branch_rows(ctx.rows, ctx.branch)) + 1
    rows = _superseded_rows(program, st, ctx, others, thresh, exp0)
    m = program.metric
    views = [(r, r.view(m.name, m.direction)) for r in cands]
    new_base = ctx.best is None
    lead = f"{REMEASURE}" + (f" (new baseline: {ctx.fp_change})" if new_base else "")
    for i, (r, v) in enumerate(views):
        ok = v.status == "ok"
        rows.append(_run_row(program, ctx, r, exp0 + len(rows), "discard" if ok else "crash", v.value, thresh, sig,
                             lead if ok else f"{REMEASURE} failed: {r.problem or (r.metrics.reason if r.metrics else '')}",
                             prev_best=ctx.best, best=ctx.best))
    after = best_value(ctx.rows + rows, m, ctx.branch, ctx.fingerprint or None, ctx.head_snap)
    n = sum(len(r.runs) or 1 for r in comparable(ctx.rows + rows, ctx.branch, ctx.fingerprint or None, ctx.head_snap))
    for r in rows:
        if r.note.startswith(REMEASURE) and r.value is not None:
            r.best = after
    last = cands[-1]
    if views[-1][1].status != "ok":
        what = f"run {last.run_id} of the best's own code failed ({last.status}); the best is unchanged"
    elif new_base:
        what = (f"run {last.run_id} ran the best's code at a new fingerprint ({ctx.fp_change}); runs are compared "
                f"only within one fingerprint, so this STARTS A NEW BASELINE on the branch: {m.name} {_fmt(after)}")
    else:
        what = (f"run {last.run_id} ran the best's own code again: it RE-MEASURED the best (not a keep; nothing "
                f"changed in the code). Best {m.name} now {_fmt(after)}, the mean of {n} runs")
    reply = block(f"autoresearch: {what}. Next: form ONE hypothesis, edit {ctx.train}, run ./run.sh -m \"<what and "
                  f"why>\", then end your turn.")
    _record(root, program, st, ctx, others + cands, thresh, rows=rows, reply=reply)
    return reply


def _contended(root: Path, program: Program, st: LoopState, ctx: _Ctx, cands: list[RunRecord],
               others: list[RunRecord], thresh: float, why: str) -> dict:
    """A run that trained far slower than its peers (another job shared the machine) is recorded
    as contended and never kept; the code stays as it is, so the agent simply runs it again."""
    exp0 = len(branch_rows(ctx.rows, ctx.branch)) + 1
    rows = _superseded_rows(program, st, ctx, others, thresh, exp0)
    r = cands[-1]
    v = r.view(program.metric.name, program.metric.direction)
    rows.append(_run_row(program, ctx, r, exp0 + len(rows), "discard", v.value, thresh, st.sigma,
                         f"contended: {why}; not judged", prev_best=ctx.best, best=ctx.best))
    reply = block(f"autoresearch: run {r.run_id} was CONTENDED ({why}): something else used the machine, so its "
                  f"{program.metric.name} says nothing about the change. It is recorded, not judged; {ctx.train} is "
                  f"left as it is. Run it again: ./run.sh -m \"rerun: {_short(r.metrics.description if r.metrics else '', 60)}\", "
                  f"then end your turn.")
    _record(root, program, st, ctx, others + [r], thresh, rows=rows, reply=reply)
    return reply


def _decide(root: Path, program: Program, st: LoopState, ctx: _Ctx, cands: list[RunRecord],
            others: list[RunRecord], v: Verdict, thresh: float, sig: float | None) -> dict:
    """Write the decision down (journal), apply it, and return the hook's reply -- which is
    itself in the journal, so a call that finishes a killed one answers the same."""
    _preflight(root)
    exp0 = len(branch_rows(ctx.rows, ctx.branch)) + 1
    rows = _superseded_rows(program, st, ctx, others, thresh, exp0)
    exp = exp0 + len(rows)
    last = cands[-1]
    desc = next((c.metrics.description for c in cands if c.metrics and not c.metrics.description.startswith("confirm")),
                last.metrics.description if last.metrics else last.problem or "")
    status = "crash" if v.action == "crash" else v.action
    best_after = v.value if v.action == "keep" else ctx.best
    note = v.note if v.action != "crash" else (last.problem or (last.metrics.reason if last.metrics else "") or "")
    rows.append(_run_row(program, ctx, last, exp, status, v.value, thresh, sig, note, runs=cands,
                         prev_best=ctx.best, best=best_after, description=desc))
    code = [f for f in program.editable_files() if f != SCRATCHPAD and (Path(root) / f).is_file()]
    if ctx.train not in code:
        code.insert(0, ctx.train)
    snaps: dict[str, bytes] = {}
    commit_files: dict[str, str] = {}
    revert_files: dict[str, str | None] = {}
    message = ""
    if v.action == "keep":
        for i, path in enumerate(code + ([SCRATCHPAD] if (Path(root) / SCRATCHPAD).is_file() else [])):
            data = (_run_copy(last, ctx) if path == ctx.train else None) or (Path(root) / path).read_bytes()
            if path == ctx.train and sha256_bytes(data) != last.sha:
                raise LoopError(f"{ctx.train} changed while run {last.run_id} was being decided; end your turn again")
            snaps[str(i)] = data
            commit_files[path] = str(i)
        message = _commit_message(program, ctx, v, rows[-1], cands, desc)
    else:
        for path in code:
            revert_files[path] = sha256_file(Path(root) / path)
        _preserve(root, ctx, last, code)
    sp = sha256_file(Path(root) / SCRATCHPAD)
    all_rows = ctx.rows + rows
    bud = budget(program, st, all_rows, ctx.branch, ctx.session, paused(root))
    program, bud, moved = _next_phase_if_spent(root, program, bud, st, all_rows, ctx)
    if bud.spent:
        finish = bud.reason or "budget spent"
        reply = allow(summary(program, ctx.branch, all_rows, f"stopping: {finish}."))
    else:
        finish = None
        reply = block(moved + _outcome_message(program, v, rows[-1], journal.COMMIT_MARK, bud, ctx.best))
    j = Journal(action=status, run_id=last.run_id, rows=rows,
                keep_row=len(rows) - 1 if v.action == "keep" else None, commit_files=commit_files,
                revert_files=revert_files, message=message, metric_name=program.metric.name,
                last_decision=LastDecision(run_id=last.run_id, runs=[c.run_id for c in cands], experiment=exp,
                                           outcome=status, branch=ctx.branch, scratchpad_sha256=sp, at=now()),
                reply=reply, finish_reason=finish, **_journal_base(ctx))
    journal.begin(root, j, snaps)
    reply = j.reply_for(journal.apply(root, j))
    _prune_checkpoints(root, program, others + (cands if v.action != "keep" else []))
    return reply


def _run_copy(run: RunRecord, ctx: _Ctx) -> bytes | None:
    """The train.py that ran: the run's own copy when it matches (None when there is none)."""
    for p in (run.path / Path(ctx.train).name, run.path / "train.py"):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if sha256_bytes(data) == run.sha:
            return data
    return None


def _preserve(root: Path, ctx: _Ctx, run: RunRecord, code: list[str]) -> None:
    """Before a revert: every code file's content must exist somewhere besides the work tree."""
    for path in code:
        cur = sha256_file(Path(root) / path)
        if cur is None:
            continue
        if path == ctx.train and _run_copy(run, ctx) is not None:
            continue
        dest = state_dir(root) / "reverted" / run.run_id / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(root) / path, dest)


def _preflight(root: Path) -> None:
    """Git must be free: a lock no live process holds (a killed git's) is cleared; one a live
    git holds means waiting, which a retry does."""
    journal.clear_stale_locks(root)
    lock = locked_index(root)
    if lock is not None:
        raise LoopError(f"git is busy: {lock} is held by a running git command. Nothing was decided and nothing "
                        f"is lost. Wait a minute, then end your turn again.")


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.6f}"


def _commit_message(program: Program, ctx: _Ctx, v: Verdict, row: LedgerRow, cands: list[RunRecord], desc: str) -> str:
    """Subject, description, and trailers with every column of the keep's ledger row (ledger.row_trailers),
    so a lost results.tsv is rebuilt from the branch."""
    m = program.metric.name
    flat = " ".join(desc.split())
    delta = f" ({v.delta:+.6f})" if v.delta is not None else " (baseline)"
    subject = f"autoresearch #{row.experiment}: {m} {v.value:.6f}{delta} {flat}"[:120].rstrip()
    trailers = {"Metric": m, "Direction": program.metric.direction, **row_trailers(row),
                "Train-Sha256": cands[-1].sha or "none"}
    body = f"{flat}\n\n" if flat else ""
    return f"{subject}\n\n{body}" + "\n".join(f"Autoresearch-{k}: {val}" for k, val in trailers.items()) + "\n"


def _short(text: str, n: int = 160) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _confirm_message(program: Program, v: Verdict, cands: list[RunRecord]) -> str:
    last = cands[-1]
    desc = last.metrics.description if last.metrics else ""
    return (f"autoresearch: run {last.run_id} beat the best by {v.improvement:.6f} {program.metric.name}, more than "
            f"the threshold {v.threshold:.6f} but less than threshold + confirm_margin "
            f"({v.threshold + program.noise.confirm_margin:.6f}): not kept yet. Confirm it with another seed: "
            f"leave train.py as it is and run ./run.sh -m \"confirm: {_short(desc, 80)}\", then end your turn; "
            f"the mean of both runs decides.")


def _outcome_message(program: Program, v: Verdict, row: LedgerRow, commit: str | None, bud: BudgetStatus,
                     prev_best: float | None) -> str:
    m = program.metric.name
    head = f"autoresearch: experiment #{row.experiment} (run {row.run_id})"
    if v.action == "keep":
        if prev_best is None:
            what = f"is the BASELINE: {m} {v.value:.6f}, committed {commit or ''}."
        else:
            what = (f"KEPT: {m} {v.value:.6f}, previous best {prev_best:.6f} ({v.delta:+.6f}; threshold "
                    f"{v.threshold:.6f}). Committed {commit or ''}.")
    elif v.action == "discard" and prev_best is None:
        what = (f"was NOT JUDGED ({v.note}): {m} {_fmt(v.value)}. Runs are compared only within one fingerprint, "
                f"so the budget change STARTS A NEW BASELINE on the branch. train.py is back to the best version; "
                f"your change stays in runs/{row.run_id}/diff.patch. Next: run the best's code as it is first "
                f"(./run.sh -m \"baseline at the new fingerprint\"), end your turn, then re-apply your change.")
        return f"{head} {what} {bud.line()}."
    elif v.action == "discard":
        what = (f"DISCARDED ({v.note}): {m} {v.value:.6f} vs best {prev_best:.6f} ({v.delta:+.6f}; "
                f"a keep needs to beat it by more than {v.threshold:.6f}). train.py is back to the best version; "
                f"the change stays in runs/{row.run_id}/diff.patch.")
    else:
        what = (f"CRASHED ({row.run_status}{': ' + _short(row.note, 200) if row.note and row.note != row.run_status else ''}). "
                f"train.py is back to the best version; see runs/{row.run_id}/train.log.")
    best = row.best if row.best is not None else prev_best
    return (f"{head} {what} Best so far: {_fmt(best)}. {bud.line()}. Phase '{program.phase}' focus: "
            f"{_short(program.current.focus).rstrip('.')}. Next: record this in scratchpad.md, form ONE new "
            f"hypothesis, edit train.py, run ./run.sh -m \"<what and why>\", then end your turn.")


def _next_phase_if_spent(root: Path, program: Program, bud: BudgetStatus, st: LoopState, rows: list[LedgerRow],
                         ctx: _Ctx) -> tuple[Program, BudgetStatus, str]:
    """A phase that used its experiments hands over to the next one (program.md's `on_phase_end`),
    unless the loop is paused or past its deadline. Returns the program, its budget and a lead line."""
    phase_spent = (bud.spent and bud.limit_source == "phase" and bud.left <= 0 and not bud.paused
                   and not (bud.hours_left is not None and bud.hours_left <= 0))
    new = advance(root, program, phase_spent)
    if new is None:
        return program, bud, ""
    nbud = budget(new, st, rows, ctx.branch, ctx.session, paused(root))
    return new, nbud, (f"Phase '{program.phase}' has used its {bud.limit} experiments; program.md now says "
                       f"phase: {new.phase}. ")


def _finish(root: Path, program: Program, branch: str, rows: list[LedgerRow], reason: str) -> dict:
    st = read_state(root)
    st.finished_at, st.finish_reason = now(), reason
    write_state(root, st)
    return allow(summary(program, branch, rows, f"stopping: {reason}."))


def summary(program: Program, branch: str | None, rows: list[LedgerRow], lead: str) -> str:
    """A few lines for the human: what the loop did on this branch."""
    mine = branch_rows(rows, branch)
    kept = [r for r in mine if r.status == "keep" and r.value is not None]
    n = {s: sum(r.status == s for r in mine) for s in ("keep", "discard", "crash")}
    lines = [f"autoresearch {lead}",
             f"Run branch {branch}: {len(mine)} experiments ({n['keep']} kept, {n['discard']} discarded, "
             f"{n['crash']} crashed)."]
    if kept:
        best = best_row(kept, program.metric)
        assert best is not None
        base = kept[0]
        lines.append(f"Best {program.metric.name} {best.value:.6f} (experiment #{best.experiment}, run {best.run_id}, "
                     f"commit {best.commit}); baseline {base.value:.6f} ({best.value - base.value:+.6f}).")
    lines.append("`autoresearch status` shows the table.")
    return "\n".join(lines)


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def _trace(root: Path, event: str, reply: dict, seconds: float) -> None:
    """One line per hook call in .autoresearch/loop.log, for the morning after."""
    try:
        what = reply.get("decision") or ("allow" if "systemMessage" in reply else "-")
        text = (reply.get("reason") or reply.get("systemMessage") or "").splitlines()[0][:200] if reply else ""
        with open(state_dir(root) / "loop.log", "a", encoding="utf-8") as f:
            f.write(f"{now().isoformat(timespec='seconds')}\t{event}\t{what}\t{seconds * 1000:.0f}ms\t{text}\n")
    except OSError:
        pass


# --- SessionStart and PreCompact -----------------------------------------------------------

def session_start_hook(data: dict) -> dict:
    root = project_root(Path(data.get("cwd") or os.getcwd()))
    source = str(data.get("source") or "startup")
    text = session_context(root, source, str(data.get("session_id") or ""))
    return {"hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext": text}}


def session_context(root: Path, source: str = "startup", session: str = "") -> str:
    """The compact state summary a (re)started or compacted session needs to go on correctly."""
    try:
        program = load_program(root)
    except ConfigError as e:
        return f"autoresearch: program.md is invalid, so the loop cannot run until a human fixes it:\n{e}"
    try:
        with loop_lock(root, timeout=10):
            _ensure_ledger(root, program)
            journal.recover(root)
            st = read_state(root)
            if st.started_at is None or (source == "startup" and st.finished_at is not None):
                st.started_at, st.finished_at, st.finish_reason, st.idle_stops = now(), None, None, 0
                write_state(root, st)
    except (LockTimeout, LoopError, GitError, LedgerError) as e:
        log.warning("session start could not recover: %s", e)
    st = read_state(root)
    rows = read_rows(root)
    name = current_branch(root)
    branch = name if is_run_branch(name) else None
    mine = branch_rows(rows, branch)
    best = current_best(root, program.metric, branch=branch) if branch else None
    try:
        bud = budget(program, st, rows, branch, session, paused(root))
    except ConfigError as e:
        return f"autoresearch: {e}"
    m = program.metric.name
    thresh = threshold(program, st.sigma)
    lines = ["autoresearch loop state (from the harness; trust it over memory):",
             f"- Phase '{program.phase}': {_short(program.current.focus, 240)}",
             f"- Run branch: {branch or '(none yet: the first decision starts one)'}; best {m}: "
             f"{_fmt(best) if best is not None else 'none yet (the first run is the baseline)'}; "
             f"keep threshold {thresh:.6f}" + (f" (sigma {st.sigma:.6f})" if st.sigma is not None else " (noise not calibrated)")
             + ".",
             f"- Budget: {bud.line()}." + (f" STOP: {bud.reason}." if bud.spent else "")]
    if mine:
        lines.append("- Last results: " + "; ".join(
            f"#{r.experiment} {r.status} {_fmt(r.value) if r.value is not None else r.run_status} {_short(r.description, 60)}"
            for r in mine[-5:]))
    nxt = _next_experiments(root)
    if nxt:
        lines.append("- scratchpad.md 'Next experiments': " + _short(nxt, 400))
    waiting = undecided_line(root, program, st, rows)
    if waiting:
        lines.append(waiting)
    lines.append("Go on with program.md's loop: read scratchpad.md, one hypothesis, edit train.py, "
                 "./run.sh -m \"<what and why>\", update scratchpad.md, end your turn.")
    return "\n".join(lines)


def undecided_line(root: Path, program: Program, st: LoopState, rows: list[LedgerRow]) -> str | None:
    """A finished run nobody decided yet (the session ended or was compacted after ./run.sh): the
    agent must end its turn first, or its next change would be bundled with this one and the
    result credited to the wrong change."""
    decided = decided_runs(rows) | set(st.measurement_runs)
    for cal in [st.calibration, *st.calibrations.values()]:
        decided |= set(cal.run_ids) if cal else set()
    b = program.budget
    runs = [r for r in undecided_runs(root, decided, program.run.train_script,
                                      b.experiment_seconds(),
                                      extra_s=b.eval_seconds + RUN_OVERHEAD_S) if not r.in_progress]
    if not runs:
        return None
    r = runs[-1]
    m = r.metrics
    res = (f"{program.metric.name} {m.metric_value:.6f}" if m and m.status == "ok" and m.metric_value is not None
           else r.status)
    return (f"- UNDECIDED: run {r.run_id} ({_short(m.description if m else r.problem or '', 80)}: {res}) finished but "
            f"is not decided yet. Do not edit anything: note its result in scratchpad.md and END YOUR TURN now, "
            f"so the harness decides it first.")


def _next_experiments(root: Path) -> str:
    try:
        text = (Path(root) / SCRATCHPAD).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    out, on = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            on = "next" in line.lower()
            continue
        if on and line.strip():
            out.append(line.strip())
    return " ".join(out)


def pre_compact_hook(data: dict) -> dict:
    """Before compaction: finish any half-done decision and snapshot the state, so what the
    compacted session is told (SessionStart source=compact) is current, and nothing depends on
    the conversation that is about to be summarised."""
    root = project_root(Path(data.get("cwd") or os.getcwd()))
    with loop_lock(root, timeout=10):
        try:
            _ensure_ledger(root, load_program(root))
        except ConfigError:
            pass
        journal.recover(root)
        st = read_state(root)
    snap_dir = state_dir(root) / "snapshots"
    snap_dir.mkdir(parents=True, exist_ok=True)
    from ..atomic import write_atomic
    import json
    rows = read_rows(root)
    snap = {"at": now().isoformat(), "trigger": data.get("trigger"), "state": json.loads(st.model_dump_json()),
            "last_rows": [json.loads(r.model_dump_json()) for r in rows[-10:]],
            "scratchpad": (Path(root) / SCRATCHPAD).read_text(errors="replace") if (Path(root) / SCRATCHPAD).exists() else None}
    try:
        program = load_program(root)
        waiting = undecided_line(root, program, st, rows)
    except ConfigError:
        waiting = None
    snap["undecided"] = waiting
    write_atomic(snap_dir / f"precompact-{now():%Y%m%d-%H%M%S}.json", json.dumps(snap, indent=2))
    for old in sorted(snap_dir.glob("precompact-*.json"))[:-20]:
        old.unlink(missing_ok=True)
    return {"systemMessage": "autoresearch" + waiting[1:]} if waiting else {}
