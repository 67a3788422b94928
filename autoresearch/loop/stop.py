"""The Stop hook: decide the experiment the agent just ran, then let it stop or send it on.
hooks/loop_hook.py calls `stop_hook` (through the package, `loop.stop_hook`).

Stop, in order, under the loop lock:
  0. set aside a pending journal that cannot be read (noted for the reply), rebuild a missing/empty/
     corrupt/truncated/non-UTF-8 results.tsv from the branch + runs/ (ledger.durable.ensure), finish a
     decision a killed hook left half done (journal.recover), and restore the last keep's code when a
     commit made from a stale index reverted it (tipcheck)
  0b. the project's signing key is not in this HOME, or an undecided run was signed with a key that
     is not here                                           -> allow the stop: the human imports the key
  1. a run still writing (by its own recorded budget)?     -> block: wait for it
     a wave run queued or running?                         -> block: ./run.sh --wait (a wave is decided whole),
                                                               unless it made no progress for a bound (wave.stuck_for):
                                                               then its live runs are cancelled, recorded interrupted
  1b. a finished wave (wave.py): its best comparable run's code goes back into the work tree, and
     the steps below decide it; the wave's other runs are rows of their own (discards, diffs kept)
  2. undecided runs of OTHER code (snapshot) or of another fingerprint than the latest
                                                            -> ledger rows (superseded), no git
  3. undecided runs of the current code (identity.snapshot of the editable set):
       scratchpad.md unchanged since the last decision      -> block: say what to add
       steps/s far below comparable runs                    -> row (contended), no git: run it again
       a crash the environment caused (blame.py)            -> row (not counted), no git: the human's
                                                               setting; the same cause twice: allow the stop
       the branch tip's own code                            -> row (re-measured the best), no git
       no best measured at this fingerprint (budget change) -> not judged: revert; the best's code
                                                               run next starts a new baseline
       decide.verdict(): confirm                            -> block: re-run the same code
                         keep | discard | crash             -> journal: commit | revert, row, state
       a keep whose checkpoint (runs/NNNN/out) is gone      -> row (not judged), no git: run it again
  4. allowance spent (count, deadline, pause)               -> allow the stop, summary for the human
  5. otherwise block with the next step: after a decision, the outcome and what comes next;
     with nothing to decide: "run ./run.sh" (train.py changed) or "form a hypothesis" (idle).
     AUTORESEARCH_MAX_IDLE_STOPS (default 20) consecutive idle stops end the loop: an agent that
     keeps ending its turn without experimenting is burning money, not researching.

Every block is checked for free space last (`_full_disk`): with a full disk, or after ./run.sh hit
ENOSPC, the stop goes through once with the human's fix instead of sending the agent to fail again.

The steps are the functions below, in that order; record.py writes decisions down, messages.py
words every reply.

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
import os
import contextlib
import shutil
import time
from pathlib import Path

from filelock import Timeout as LockTimeout

from ..digest import sha256_bytes, sha256_file
from ..fsclean import remove_tree
from ..gitops import GitError, show_blob
from ..ledger import LedgerError, LedgerRow, decided_runs, kept_run_ids, read_rows
from ..ledger.durable import ensure
from ..program import ConfigError, Program, load_program, project_root
from ..record import DISK_FULL_MARK, KEY_MISSING, cancel_wave, key_problem, program_code, settle_lost
from . import journal, messages, record, wave
from .allowance import Allowance, Tally, remaining
from .blame import environment_cause
from .context import Context, SetupError, compare_with, pending_runs, read_context, sigma_for
from .decide import Verdict, threshold, verdict
from .messages import SCRATCHPAD, allow, block
from .phases import advance_if_spent
from .runscan import RunRecord, contention, run_ids
from .state import LoopState, loop_lock, now, paused, read_state, state_dir, take_notices, write_state
from .tipcheck import restore_reverted

MAX_IDLE_ENV = "AUTORESEARCH_MAX_IDLE_STOPS"
DEFAULT_MAX_IDLE = 20


def stop_hook(data: dict) -> dict:
    t0 = time.perf_counter()
    try:
        root = project_root(Path(data.get("cwd") or os.getcwd()))
        program = load_program(root)
    except ConfigError as e:
        return allow(messages.program_invalid(e))
    try:
        with loop_lock(root):
            reply = _locked(root, program, data)
    except (ConfigError, SetupError) as e:
        reply = allow(messages.loop_stopped(e))
    except LockTimeout:
        reply = block(messages.LOCK_HELD)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        reply = allow(disk_full(root, e))
    _trace(root, "stop", reply, time.perf_counter() - t0)
    return reply


def _locked(root: Path, program: Program, data: dict) -> dict:
    """Step 0, then the decision: a killed call's decision is finished (and answered) first.
    Damaged files found on the way are set aside and said; a block with a full disk becomes a stop."""
    journal.load(root)                                  # a journal that cannot be read is set aside (noted)
    rebuilt = ensure_ledger(root, program)              # first: a journal appends to it
    done = journal.recover(root)
    restored = restore_reverted(root)                   # a commit from a stale index reverted the last keep
    if done is not None and done.reply is not None:     # a killed call's decision, now finished
        reply = done.reply_for(done.commit(root))
    elif (missing := key_problem(root)) is not None:    # no run can be signed here: only a human can fix it
        reply = allow(messages.key_missing(missing))
    else:
        reply = _stop(root, program, data)
    leads = take_notices(root) + ([f"({rebuilt})"] if rebuilt else []) + ([restored] if restored else [])
    return _full_disk(root, _lead(reply, " ".join(leads)))


def _lead(reply: dict, lead: str) -> dict:
    key = "reason" if "reason" in reply else "systemMessage"
    if lead and reply and key in reply:
        reply[key] = f"{lead} {reply[key]}"
    return reply


MIN_FREE_ENV = "AUTORESEARCH_MIN_FREE_MB"


def low_disk(root: Path) -> tuple[int, int] | None:
    """(free, needed) bytes when the project's disk is too full to run another experiment: less
    than AUTORESEARCH_MIN_FREE_MB, by default 2% of the disk up to 1 GiB. None when there is room."""
    try:
        u = shutil.disk_usage(root)
    except OSError:
        return None
    need = min_free(u.total)
    return (u.free, need) if u.free < need else None


def min_free(total: int) -> int:
    """The free bytes below which the Stop hook ends the night: AUTORESEARCH_MIN_FREE_MB, by
    default 2% of the disk up to 1 GiB."""
    env = os.environ.get(MIN_FREE_ENV, "")
    try:
        return int(float(env) * 2**20) if env else min(2**30, total // 50)
    except ValueError:
        return min(2**30, total // 50)


def _full_disk(root: Path, reply: dict) -> dict:
    """Every way the Stop hook sends the agent on is checked for free space first: with a full disk
    (too little room, or ./run.sh said ENOSPC since the last stop) the agent could only fail and be
    sent on again, forever. The stop goes through once, with the human's fix; checkpoints of runs
    decided as not kept are freed."""
    mark = state_dir(root) / DISK_FULL_MARK
    hit = mark.exists()
    mark.unlink(missing_ok=True)
    if reply.get("decision") != "block":
        return reply
    low = low_disk(root)
    if low is None and not hit:
        return reply
    free = low[0] if low else shutil.disk_usage(root).free
    return allow(messages.disk_low(root, free, prune_unkept(root), reply.get("reason", ""), run_sh=low is None))


def ensure_ledger(root: Path, program: Program) -> str | None:
    """A missing, empty, corrupt or incomplete results.tsv is rebuilt from the run branches and
    runs/*/decision.json before anything is decided: a kept run is never decided again."""
    return ensure(root, program.metric.name)


def disk_full(root: Path, e: OSError) -> str:
    """ENOSPC: nothing can be recorded, and no retry by the agent can help. Free what is safe (the
    checkpoints of runs that were not kept), then let the session stop with the human's fix."""
    return messages.disk_full(root, e, prune_unkept(root))


def prune_unkept(root: Path) -> int:
    """Delete runs/NNNN/out/ of every run DECIDED as not kept; returns the bytes freed. Kept runs'
    checkpoints are never touched (`autoresearch final` scores them), nor those of runs not decided
    yet or in a decision being applied: they may still be kept."""
    try:
        rows = read_rows(root)
        kept = kept_run_ids(root, rows)
        j = journal.load(root)
    except (LedgerError, GitError):
        return 0                                   # cannot tell what is kept: delete nothing
    pending = {x for r in (j.rows if j else []) for x in r.runs + [r.run_id]}
    gone = {x for r in rows if r.status != "keep" for x in r.runs + [r.run_id]} - kept - pending
    freed = 0
    for rid in run_ids(root):
        out = Path(root) / "runs" / rid / "out"
        if rid not in gone or not out.is_dir():
            continue
        with contextlib.suppress(OSError, RecursionError):     # out/ as agent code left it
            freed += sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        remove_tree(out)
    return freed


def _stop(root: Path, program: Program, data: dict) -> dict:
    st = _start_clock(root)
    ctx = read_context(root, program, data)
    runs = pending_runs(root, program, st, ctx.rows)
    if unverifiable := [r for r in runs if r.problem and r.problem.startswith(KEY_MISSING)]:
        return allow(messages.runs_key_missing([r.run_id for r in unverifiable], unverifiable[-1].problem or ""))
    running = [r for r in runs if r.in_progress]
    lead = ""
    if running and all(r.wave for r in running):                       # 1. a wave in flight, or stuck
        idle = wave.stuck_for(root, program, running)
        if idle is None:
            return block(messages.wave_in_flight([r.run_id for r in running]))
        cancel_wave(root, f"stuck: the wave made no progress for {idle:.0f} s", force=True)
        lead = messages.wave_stuck([r.run_id for r in running], idle)
        runs = pending_runs(root, program, st, ctx.rows)
        running = [r for r in runs if r.in_progress]
    if running:
        if any(r.wave for r in running):
            return block(messages.wave_in_flight([r.run_id for r in running]))
        return block(messages.still_running(running[-1].run_id))
    reply = _stop_wave(root, program, data, st, ctx, runs)
    key = "reason" if "reason" in reply else "systemMessage"
    if lead and key in reply:
        reply[key] = lead + reply[key]
    return reply


def _stop_wave(root: Path, program: Program, data: dict, st: LoopState, ctx: Context,
               runs: list[RunRecord]) -> dict:
    """Step 1b, else steps 2-5."""
    waved = [r for r in runs if r.wave]
    if waved:                                                          # 1b. a whole wave: its best is judged
        settle_lost(root, set(), decided_runs(ctx.rows))   # a lost runner's entry says so, not "running" forever
        winner = wave.pick(program, ctx, waved, root)
        nag = scratchpad_problem(root, program, st, ctx, winner)
        if nag:
            return block(nag)
        if wave.materialize(root, program, ctx, winner):
            ctx = read_context(root, program, data)
        reply = _decide(root, program, st, ctx, runs)
        return wave.announce(reply, program, waved, winner)
    return _decide(root, program, st, ctx, runs)


def _decide(root: Path, program: Program, st: LoopState, ctx: Context, runs: list[RunRecord]) -> dict:
    """Steps 2-5 over the finished runs."""
    cands = [r for r in runs if ctx.cur_sha and r.same_code(ctx.cur_snap, ctx.cur_sha)]
    if cands:                           # only runs comparable with the latest that measured are averaged
        ref = next((r for r in reversed(cands) if r.status == "ok" and r.fingerprint), cands[-1])
        cands = [r for r in cands if r.fingerprint == ref.fingerprint]   # a run that never measured (no
        #   fingerprint: killed before its first record, cancelled, lost on a node) is not the reference
        if ref.status == "ok":          # an interrupted run (a pause, a kill, a lost node) says nothing of
            cands = [r for r in cands if r.status != "interrupted"]   # the code and has no checkpoint for
            #   `final`: a row of its own, never bundled into (or crashing) the judgement of the measured runs
    others = [r for r in runs if r not in cands]                       # 2.
    allowance = remaining(program, st, Tally(ctx.rows, ctx.branch, ctx.session), paused(root))
    if cands:                                                          # 3.
        return _decide_current(root, program, st, ctx, cands, others, allowance)
    return _nothing_to_decide(root, program, st, ctx, others, allowance)   # 2., 4., 5.


def _start_clock(root: Path) -> LoopState:
    """The deadline clock starts at the first hook call of a loop."""
    st = read_state(root)
    if st.started_at is None:
        st.started_at = now()
        write_state(root, st)
    return st


def _decide_current(root: Path, program: Program, st: LoopState, ctx: Context, cands: list[RunRecord],
                    others: list[RunRecord], allowance: Allowance) -> dict:
    """Step 3: the runs of the code in the work tree (`cands`, oldest first)."""
    nag = scratchpad_problem(root, program, st, ctx, cands[-1])
    if nag:
        return block(nag)
    compare_with(root, program, ctx, cands[-1])
    sig = sigma_for(root, st, ctx.fingerprint, ctx.rows)
    thresh = threshold(program, sig)
    d = record.Deciding(root, program, st, ctx, cands, others, thresh)
    busy = contention(root, cands[-1], rows=ctx.rows) if cands[-1].status == "ok" else None
    if busy:
        return record.contended(d, busy)
    cause = environment_cause(root, program, cands[-1], ctx.head, program_code(program, root),
                              best_code=not ctx.has_keeps or ctx.cur_snap == ctx.head_snap)
    if cause:
        return record.env_crash(d, cause)
    if ctx.has_keeps and ctx.cur_snap == ctx.head_snap:
        return record.remeasure(d, sig)
    if ctx.has_keeps and ctx.best is None:
        v = _not_comparable(program, ctx, cands[-1], thresh)
        return record.apply_verdict(d, v, sig)
    can_confirm = not allowance.paused and not (allowance.hours_left is not None and allowance.hours_left <= 0)
    views = [r.view(program.metric.name, program.metric.direction) for r in cands]
    v = verdict(views, ctx.best, program.metric, thresh, program.noise.confirm_margin, can_confirm)
    if v.action == "keep" and (gone := record.checkpoint_missing(program, cands)):
        return record.unkeepable(d, gone)
    if v.action == "confirm":
        if others:
            record.record(d, others)
        return block(messages.confirm(program, v, cands))
    return record.apply_verdict(d, v, sig)


def _not_comparable(program: Program, ctx: Context, run: RunRecord, thresh: float) -> Verdict:
    """No best measured at this run's fingerprint (the budget changed): not judged, reverted; a
    crash is still a crash."""
    vw = run.view(program.metric.name, program.metric.direction)
    crashed = vw.status != "ok"
    return Verdict(action="crash" if crashed else "discard", value=vw.value, delta=None, improvement=None,
                   threshold=thresh, note=vw.status if crashed else
                   f"not comparable: no best measured at this fingerprint ({ctx.fp_change})")


def scratchpad_problem(root: Path, program: Program, st: LoopState, ctx: Context, run: RunRecord) -> str | None:
    """The scratchpad must have changed since the last decision (its content then), or since the
    commit the run branch starts from, before a run is decided."""
    if not program.editable_matches(SCRATCHPAD):
        return None
    cur = sha256_file(Path(root) / SCRATCHPAD)
    if st.last_decision and st.last_decision.branch == ctx.branch:
        ref = st.last_decision.scratchpad_sha256
    else:
        ref = sha256_bytes(show_blob(root, ctx.head, SCRATCHPAD))
    if cur is not None and cur != ref:
        return None
    return messages.scratchpad_unchanged(program, run, missing=cur is None)


def _nothing_to_decide(root: Path, program: Program, st: LoopState, ctx: Context, others: list[RunRecord],
                       allowance: Allowance) -> dict:
    """Steps 2, 4 and 5 when no run of the current code waits: record superseded runs, end the loop
    if its allowance is spent (moving to the next phase first if the program says so), else say
    what to do next."""
    if others:
        d = record.Deciding(root, program, st, ctx, [], others, threshold(program, st.sigma))
        ctx.rows = ctx.rows + record.record(d, others)
        allowance = remaining(program, read_state(root), Tally(ctx.rows, ctx.branch, ctx.session), paused(root))
    program, allowance, moved = advance_if_spent(root, program, allowance, read_state(root),
                                                 Tally(ctx.rows, ctx.branch, ctx.session))
    if allowance.spent:
        return finish(root, program, ctx.branch, ctx.rows, allowance.reason or "budget spent")
    if moved:
        return block(moved + messages.new_phase_next(program, allowance))
    st = read_state(root)
    st.idle_stops += 1
    write_state(root, st)
    if st.idle_stops > _int_env(MAX_IDLE_ENV, DEFAULT_MAX_IDLE):
        return finish(root, program, ctx.branch, ctx.rows, messages.idle_too_long(st.idle_stops))
    if ctx.cur_sha is None:
        return block(messages.train_missing(ctx.train))
    if ctx.cur_snap != ctx.head_snap:
        return block(messages.changed_without_run(ctx.train))
    if not ctx.has_keeps:
        return block(messages.NO_BASELINE)
    return block(messages.nothing_to_decide(program, ctx.train, allowance))


def finish(root: Path, program: Program, branch: str, rows: list[LedgerRow], reason: str) -> dict:
    """The allowance is spent: note why in the state and let the agent stop, with a summary."""
    st = read_state(root)
    st.finished_at, st.finish_reason = now(), reason
    write_state(root, st)
    return allow(messages.summary(program, branch, rows, messages.stopping(reason)))


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
