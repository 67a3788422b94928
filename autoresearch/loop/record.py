"""Writing a decision down: the ledger rows, the keep commit's files and message or the revert's
files, and the hook's reply, all into one journal (journal.py) that is then applied. The reply is
in the journal too, so a call that finishes a killed one answers the same.

- `apply_verdict`: keep | discard | crash of the current code (commit or revert, rows, state)
- `remeasure`:     runs of the branch tip's own code (rows only: the best measured again)
- `contended`:     a run slowed down by another job (a row only: run it again)
- `record`:        rows only, for runs whose code is gone (superseded)

Each takes a `Deciding`: the inputs one Stop decision works from, whichever way it goes.

Before a revert every code file's content exists somewhere besides the work tree (runs/NNNN/ or
.autoresearch/reverted/); checkpoints of runs no keep covers are pruned afterwards.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..digest import sha256_bytes, sha256_file
from ..fsclean import remove_tree
from ..gitops import locked_index
from ..ledger import REMEASURE, LedgerRow, best_value, branch_rows, comparable, kept_run_ids
from ..ledger.durable import row_trailers
from ..program import Program
from ..record import CHECKPOINT, program_code, snapshot_of
from ..registry import from_log
from . import journal, messages
from .allowance import Tally, remaining
from .blame import EnvCause, consecutive
from .context import Context
from ..run import overriders
from .decide import NO_EFFECT, Verdict
from .journal import Journal, LoopError
from .messages import SCRATCHPAD, allow, block
from .phases import advance_if_spent
from .runscan import RunRecord
from .state import LastDecision, LoopState, now, paused, read_state, state_dir, write_state

WAVE_NOT_BEST = "wave: not the best of its wave (its best comparable run was judged)"
INTERRUPTED_BESIDE = "interrupted: never a result (the runs of its code that measured were judged)"


def run_row(program: Program, ctx: Context, r: RunRecord, exp: int, status: str, value: float | None,
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
        train_seconds=(m.agent_seconds or m.train_seconds) if m else None, sandbox=m.sandbox if m else "",
        session=ctx.session, note=note, decided_at=now(), snapshot=r.snapshot or "", fingerprint=r.fingerprint)


def superseded_rows(program: Program, st: LoopState, ctx: Context, others: list[RunRecord], thresh: float,
                    first_exp: int) -> list[LedgerRow]:
    rows = []
    for i, r in enumerate(others):
        v = r.view(program.metric.name, program.metric.direction)
        ok = v.status == "ok"
        why = WAVE_NOT_BEST if r.wave else (INTERRUPTED_BESIDE if r.status == "interrupted" else
                                            "superseded: the code changed (or the fingerprint differs) before "
                                            "this run was decided")
        if not ok and r.wave:
            why += f"; {r.problem or (r.metrics.reason if r.metrics else '')}"
        rows.append(run_row(program, ctx, r, first_exp + i, "discard" if ok else "crash", v.value, thresh,
                            st.sigma, why, prev_best=ctx.best, best=ctx.best))
    return rows


def _journal_base(ctx: Context) -> dict:
    return dict(created_at=now(), branch=ctx.branch, branch_from=None if ctx.on_run_branch else ctx.head,
                from_name=ctx.from_name, parent=ctx.head)


def _next_exp(ctx: Context) -> int:
    return len(branch_rows(ctx.rows, ctx.branch)) + 1


@dataclass
class Deciding:
    """What one Stop decision works from, whichever way it goes: the project and its program, the
    loop state, the context read at the start, the runs of the current code (`cands`, oldest first),
    the other undecided runs and the keep threshold."""
    root: Path
    program: Program
    st: LoopState
    ctx: Context
    cands: list[RunRecord]
    others: list[RunRecord]
    thresh: float

    def parts(self) -> tuple[Path, Program, LoopState, Context, list[RunRecord], list[RunRecord], float]:
        return self.root, self.program, self.st, self.ctx, self.cands, self.others, self.thresh


def record(d: Deciding, others: list[RunRecord], rows: list[LedgerRow] | None = None,
           reply: dict | None = None) -> list[LedgerRow]:
    """Ledger rows, no git: for runs whose code is gone (the agent moved on before a decision),
    or the given rows (re-measurements, contended runs); `others`: the runs they record."""
    root, program, st, ctx, _, _, thresh = d.parts()
    rows = rows or superseded_rows(program, st, ctx, others, thresh, _next_exp(ctx))
    preflight(root)
    last = rows[-1]
    ld = LastDecision(run_id=last.run_id, runs=last.runs, experiment=last.experiment, outcome=last.status,
                      branch=ctx.branch, scratchpad_sha256=sha256_file(Path(root) / SCRATCHPAD), at=now()) \
        if reply is not None else None
    j = Journal(action="record", run_id=last.run_id, rows=rows, metric_name=program.metric.name,
                last_decision=ld, reply=reply, **_journal_base(ctx))
    journal.begin(root, j, {})
    journal.apply(root, j)
    prune_checkpoints(root, program, others)
    ctx.on_run_branch, ctx.from_name = True, None
    return rows


def prune_checkpoints(root: Path, program: Program, runs: list[RunRecord]) -> None:
    """Delete the out/ folder (checkpoints) of runs that were not kept: a night of GPU-sized
    checkpoints fills a disk. Log, metrics, the train.py copy and the diff stay. A run any keep
    covers (ledger or any run branch's trailers) is never touched, whatever the caller thinks:
    `autoresearch final` scores it. `keep_checkpoints: all` turns this off."""
    if program.keep_checkpoints == "all" or not runs:
        return
    kept = kept_run_ids(root)
    for run in runs:
        if run.run_id not in kept:
            remove_tree(run.path / "out")


def remeasure(d: Deciding, sig: float | None) -> dict:
    """Runs of the branch tip's own code: they measure the best again (its mean moves), never a
    keep -- a lucky re-run is not an improvement. Under a new fingerprint they are its baseline."""
    root, program, st, ctx, cands, others, thresh = d.parts()
    exp0 = _next_exp(ctx)
    rows = superseded_rows(program, st, ctx, others, thresh, exp0)
    m = program.metric
    views = [(r, r.view(m.name, m.direction)) for r in cands]
    new_base = ctx.best is None
    lead = f"{REMEASURE}" + (f" (new baseline: {ctx.fp_change})" if new_base else "")
    for r, v in views:
        ok = v.status == "ok"
        rows.append(run_row(program, ctx, r, exp0 + len(rows), "discard" if ok else "crash", v.value, thresh, sig,
                            lead if ok else f"{REMEASURE} failed: {r.problem or (r.metrics.reason if r.metrics else '')}",
                            prev_best=ctx.best, best=ctx.best))
    after = best_value(ctx.rows + rows, m, ctx.branch, ctx.fingerprint or None, ctx.head_snap)
    n = sum(len(r.runs) or 1 for r in comparable(ctx.rows + rows, ctx.branch, ctx.fingerprint or None, ctx.head_snap))
    for r in rows:
        if r.note.startswith(REMEASURE) and r.value is not None:
            r.best = after
    reply = block(messages.remeasured(program, cands[-1], views[-1][1].status == "ok",
                                      ctx.fp_change if new_base else None, after, n))
    record(d, others + cands, rows=rows, reply=reply)
    return reply


def contended(d: Deciding, why: str) -> dict:
    """A run that trained far slower than its peers (another job shared the machine) is recorded
    as contended and never kept; the code stays as it is, so the agent simply runs it again."""
    r = d.cands[-1]
    return _not_judged(d, f"contended: {why}; not judged", [r], messages.contended(d.program, r, why, d.ctx.train))


def _not_judged(d: Deciding, note: str, runs: list[RunRecord], text: str) -> dict:
    """The latest run recorded as a discard that was not judged (`runs`: what its row covers); the
    code stays as it is and `text` sends the agent to run it again."""
    root, program, st, ctx, cands, others, thresh = d.parts()
    exp0 = _next_exp(ctx)
    rows = superseded_rows(program, st, ctx, others, thresh, exp0)
    v = cands[-1].view(program.metric.name, program.metric.direction)
    rows.append(run_row(program, ctx, cands[-1], exp0 + len(rows), "discard", v.value, thresh, st.sigma, note,
                        runs=runs, prev_best=ctx.best, best=ctx.best))
    reply = block(text)
    record(d, others + runs, rows=rows, reply=reply)
    return reply


def env_crash(d: Deciding, cause: EnvCause) -> dict:
    """A crash the environment caused (blame.py): a row that counts as no experiment, no git --
    the code stays as it is, with the setting a human changes. The same cause twice in a row lets
    the agent stop: another run could only crash the same way."""
    root, program, st, ctx, cands, others, thresh = d.parts()
    exp0 = _next_exp(ctx)
    rows = superseded_rows(program, st, ctx, others, thresh, exp0)
    r = cands[-1]
    rows.append(run_row(program, ctx, r, exp0 + len(rows), "crash", None, thresh, st.sigma,
                        f"{cause.note}; not counted, nothing reverted; fix: {cause.fix}", runs=cands,
                        prev_best=ctx.best, best=ctx.best))
    again = consecutive(ctx.rows, ctx.branch, cause.kind) >= 1
    reply = (allow(messages.env_crash_stop(program, r, cause)) if again
             else block(messages.env_crash(program, r, cause)))
    record(d, others + cands, rows=rows, reply=reply)
    if again:                          # a finish, as a spent budget's: overnight ends instead of sending it on
        done = read_state(root)
        done.finished_at, done.finish_reason = now(), f"environment crash twice: {cause.kind}; fix: {cause.fix}"
        write_state(root, done)
    return reply


def checkpoint_missing(program: Program, runs: list[RunRecord]) -> str | None:
    """The first missing checkpoint among `runs` (what `autoresearch final` scores: out/model.pt, or
    with eval.command whatever TRAIN saved in out/), or None. Inline mode keeps none."""
    if from_log(program.run.mode):
        return None
    for r in runs:
        out = r.path / "out"
        if not ((out / CHECKPOINT).is_file() if program.eval is None else out.is_dir()):
            return f"runs/{r.run_id}/out/" + (CHECKPOINT if program.eval is None else "")
    return None


def unkeepable(d: Deciding, missing: str) -> dict:
    """A run that would be kept but whose checkpoint is gone is never kept (final could not score
    it): a row, no git, the code stays so the agent runs it again."""
    r, program = d.cands[-1], d.program
    value = r.view(program.metric.name, program.metric.direction).value
    return _not_judged(d, f"checkpoint missing ({missing}): not kept, not judged", d.cands,
                       messages.unkeepable(program, r, missing, value, d.ctx.train))


def apply_verdict(d: Deciding, v: Verdict, sig: float | None) -> dict:
    """Write the decision down (journal), apply it, and return the hook's reply -- which is
    itself in the journal, so a call that finishes a killed one answers the same."""
    root, program, st, ctx, cands, others, thresh = d.parts()
    preflight(root)
    exp0 = _next_exp(ctx)
    rows = superseded_rows(program, st, ctx, others, thresh, exp0)
    last = cands[-1]
    desc = next((c.metrics.description for c in cands if c.metrics and not c.metrics.description.startswith("confirm")),
                last.metrics.description if last.metrics else last.problem or "")
    status = "crash" if v.action == "crash" else v.action
    best_after = v.value if v.action == "keep" else ctx.best
    note = v.note if v.action != "crash" else (last.problem or (last.metrics.reason if last.metrics else "") or "")
    rows.append(run_row(program, ctx, last, exp0 + len(rows), status, v.value, thresh, sig, note, runs=cands,
                        prev_best=ctx.best, best=best_after, description=desc))
    snaps, commit_files, revert_files = _decision_files(root, program, ctx, last, v.action == "keep")
    message = commit_message(program, v, rows[-1], cands, desc) if v.action == "keep" else ""
    all_rows = ctx.rows + rows
    tally = Tally(all_rows, ctx.branch, ctx.session)
    allowance = remaining(program, st, tally, paused(root))
    program, allowance, moved = advance_if_spent(root, program, allowance, st, tally)
    if allowance.spent:
        finish = allowance.reason or "budget spent"
        reply = allow(messages.summary(program, ctx.branch, all_rows, messages.stopping(finish)))
    else:
        finish = None
        hint = overriders(root, program.run.command) if v.note == NO_EFFECT else None
        reply = block(moved + messages.outcome(program, v, rows[-1], journal.COMMIT_MARK, allowance, hint))
    j = Journal(action=status, run_id=last.run_id, rows=rows,
                keep_row=len(rows) - 1 if v.action == "keep" else None, commit_files=commit_files,
                revert_files=revert_files, message=message, metric_name=program.metric.name,
                last_decision=LastDecision(run_id=last.run_id, runs=[c.run_id for c in cands], experiment=rows[-1].experiment,
                                           outcome=status, branch=ctx.branch,
                                           scratchpad_sha256=sha256_file(Path(root) / SCRATCHPAD), at=now()),
                reply=reply, finish_reason=finish, **_journal_base(ctx))
    journal.begin(root, j, snaps)
    reply = j.reply_for(journal.apply(root, j))
    prune_checkpoints(root, program, others + (cands if v.action != "keep" else []))
    return reply


def _decision_files(root: Path, program: Program, ctx: Context, last: RunRecord,
                    keep: bool) -> tuple[dict[str, bytes], dict[str, str], dict[str, str | None]]:
    """(snapshots, commit_files, revert_files) for the journal. A keep commits the code that ran --
    every file of the editable set (the run's own copy of train.py), checked against the run's
    snapshot, so the commit holds exactly what was measured -- and the scratchpad; a revert notes
    each code file's sha256 now (newer edits are left alone) and first preserves what would be lost."""
    code_set = program_code(program, root)
    code = [f for f in code_set if (Path(root) / f).is_file()]
    if ctx.train in code:
        code.remove(ctx.train)
    code.insert(0, ctx.train)
    snaps: dict[str, bytes] = {}
    commit_files: dict[str, str] = {}
    revert_files: dict[str, str | None] = {}
    if keep:
        measured: dict[str, bytes | None] = dict.fromkeys(code_set)
        for i, path in enumerate(code + ([SCRATCHPAD] if (Path(root) / SCRATCHPAD).is_file() else [])):
            data = (run_copy(last, ctx) if path == ctx.train else None) or (Path(root) / path).read_bytes()
            if path == ctx.train and sha256_bytes(data) != last.sha:
                raise LoopError(messages.changed_while_deciding(ctx.train, last.run_id))
            if path in measured:
                measured[path] = data
            snaps[str(i)] = data
            commit_files[path] = str(i)
        if last.snapshot and snapshot_of(measured) != last.snapshot:
            raise LoopError(messages.changed_while_deciding("the editable set", last.run_id))
    else:
        for path in code:
            revert_files[path] = sha256_file(Path(root) / path)
        preserve(root, ctx, last, code)
    return snaps, commit_files, revert_files


def run_copy(run: RunRecord, ctx: Context) -> bytes | None:
    """The train.py that ran: the run's own copy when it matches (None when there is none)."""
    for p in (run.path / Path(ctx.train).name, run.path / "train.py"):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if sha256_bytes(data) == run.sha:
            return data
    return None


def preserve(root: Path, ctx: Context, run: RunRecord, code: list[str]) -> None:
    """Before a revert: every code file's content must exist somewhere besides the work tree."""
    for path in code:
        cur = sha256_file(Path(root) / path)
        if cur is None:
            continue
        if path == ctx.train and run_copy(run, ctx) is not None:
            continue
        dest = state_dir(root) / "reverted" / run.run_id / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(root) / path, dest)


def preflight(root: Path) -> None:
    """Git must be free: a lock no live process holds (a killed git's) is cleared; one a live
    git holds means waiting, which a retry does."""
    journal.clear_stale_locks(root)
    lock = locked_index(root)
    if lock is not None:
        raise LoopError(messages.git_busy(lock))


def commit_message(program: Program, v: Verdict, row: LedgerRow, cands: list[RunRecord], desc: str) -> str:
    """Subject, description, and trailers with every column of the keep's ledger row (ledger.durable.row_trailers),
    so a lost results.tsv is rebuilt from the branch."""
    m = program.metric.name
    flat = " ".join(desc.split())
    delta = f" ({v.delta:+.6f})" if v.delta is not None else " (baseline)"
    subject = f"autoresearch #{row.experiment}: {m} {v.value:.6f}{delta} {flat}"[:120].rstrip()
    trailers = {"Metric": m, "Direction": program.metric.direction, **row_trailers(row),
                "Train-Sha256": cands[-1].sha or "none"}
    body = f"{flat}\n\n" if flat else ""
    return f"{subject}\n\n{body}" + "\n".join(f"Autoresearch-{k}: {val}" for k, val in trailers.items()) + "\n"
