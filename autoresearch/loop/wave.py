"""A wave at the Stop hook: several queued runs (`./run.sh -m ... --queue`), decided together.

    some run still queued or running   -> block: `./run.sh --wait`, then end the turn (a wave is
                                          judged whole: the best of half a wave is not the best)
    all ended                          -> the best comparable candidate is picked: the best ok run
                                          measured under the fingerprint of the best so far (none
                                          there: the best ok run; none ok: the newest run)
    its code goes back into the work tree (the snapshot saved when it was queued; the tree's own
    code is kept in .autoresearch/reverted/wave-NNNN/ first), and from there the one-experiment
    rules decide it (stop.py: keep, discard, crash, a confirmation rerun for a close call, a new
    baseline); every other run of the wave gets its own ledger row, a discard (or crash), its
    diff.patch kept. A keep commits exactly the winner's snapshot; any other outcome reverts to the
    branch head: the tree is left at the new best either way.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_atomic
from ..ledger import branch_rows
from ..program import Program
from ..record import RUNS_DIR, eval_log, program_code, read_entry, saved_files, snapshot_files, snapshot_intact
from ..gitops import show_blob
from .context import Context
from .journal import crash_point
from .runscan import RunRecord
from .state import state_dir

from .record import WAVE_NOT_BEST as NOT_BEST  # noqa: F401  (one wording)


def best_fingerprint(ctx: Context) -> str | None:
    """The fingerprint the best so far was measured under (the branch's last keep)."""
    keeps = [r for r in branch_rows(ctx.rows, ctx.branch) if r.status == "keep"]
    return keeps[-1].fingerprint if keeps and keeps[-1].fingerprint else None


def restorable(root: Path, r: RunRecord) -> bool:
    """Does runs/NNNN/snapshot/ still hold exactly the code this run measured? (A lost or changed
    file there: its code cannot be put back, so it can never be kept.)"""
    entry = read_entry(Path(root) / RUNS_DIR / r.run_id)
    return entry is not None and r.snapshot is not None and snapshot_intact(root, entry, r.snapshot)


def pick(program: Program, ctx: Context, wave: list[RunRecord], root: Path | None = None) -> RunRecord:
    """The wave's candidate: the best ok run comparable with the best so far, else the best ok run,
    else the newest run (a wave of crashes is decided as a crash). With `root`, only runs whose
    saved snapshot is still the code they measured can be the candidate."""
    m = program.metric
    oks = [(r, v.value) for r in wave if (v := r.view(m.name, m.direction)).status == "ok" and v.value is not None
           and (root is None or restorable(root, r))]
    fp = best_fingerprint(ctx)
    pool = [x for x in oks if fp and x[0].fingerprint == fp] or oks
    if not pool:
        return wave[-1]
    best = pool[0]
    for x in pool[1:]:
        if m.better(x[1], best[1]):
            best = x
    return best[0]


def materialize(root: Path, program: Program, ctx: Context, winner: RunRecord) -> bool:
    """Put the winner's code into the work tree (True when anything changed): its saved snapshot,
    when that is still the code it measured; else (a lost snapshot file, a wave of crashes without
    one) the branch head's, so the tree is at the best either way. Editable files the snapshot does
    not know (made after it was queued) are removed. The tree's own code is copied to
    .autoresearch/reverted/wave-NNNN/ first: nothing the agent wrote is lost."""
    entry = read_entry(Path(root) / RUNS_DIR / winner.run_id)
    want = saved_files(root, entry) if entry is not None else {}
    if not (entry is not None and winner.snapshot and snapshot_intact(root, entry, winner.snapshot)
            and want.get(program.run.train_script) is not None):
        code = program_code(program, root)
        want = {rel: show_blob(root, ctx.head, rel) for rel in code}
    cur = snapshot_files(root, list(dict.fromkeys(program_code(program, root) + list(want))))
    for rel in cur:
        want.setdefault(rel, None)                # not in the snapshot: it did not exist then
    if all(cur.get(k) == v for k, v in want.items()):
        return False
    keep = state_dir(root) / "reverted" / f"wave-{winner.run_id}"
    for rel, data in cur.items():
        if data is not None:
            write_atomic(keep / rel, data)
    script = program.run.train_script
    for rel, data in want.items():
        if rel != script and not program.editable_matches(rel):
            continue                              # never write outside the editable set
        p = Path(root) / rel
        if data is None:
            p.unlink(missing_ok=True)
        elif cur.get(rel) != data:
            write_atomic(p, data)
        crash_point("materialize")                # tests: a hook killed while the tree is being restored
    return True


STUCK_ENV = "AUTORESEARCH_WAVE_STUCK_S"
STUCK_SLACK_S = 300.0


def stuck_for(root: Path, program: Program, live: list[RunRecord]) -> float | None:
    """How long the wave in flight has made no progress, when that is past the bound (else None):
    no queue entry, record or log of its live runs changed for twice the longest a run can take
    (budget, grace, eval) plus a slack; AUTORESEARCH_WAVE_STUCK_S overrides it. A wave whose
    scheduler never comes back, or whose runner hangs, must not block the loop forever."""
    import os
    import time
    budget = max([(r.metrics.budget_seconds if r.metrics else 0.0) for r in live]
                 + [program.budget.train_seconds])
    bound = 2 * (budget + program.budget.grace_seconds + program.budget.eval_seconds) + STUCK_SLACK_S
    try:
        bound = float(os.environ.get(STUCK_ENV, "") or bound)
    except ValueError:
        pass
    newest = 0.0
    for r in live:
        for p in [r.path / n for n in ("queue.json", "metrics.json", "train.log", "")] + [
                eval_log(r.path.parent.parent, r.path.name)]:
            try:
                newest = max(newest, p.stat().st_mtime)
            except OSError:
                continue
    idle = time.time() - newest
    return idle if idle > bound else None


def announce(reply: dict, program: Program, wave: list[RunRecord], winner: RunRecord) -> dict:
    """Say what the wave was, before the decision's own words."""
    if not wave or "reason" not in reply and "systemMessage" not in reply:
        return reply
    m = program.metric
    parts = []
    for r in wave:
        v = r.view(m.name, m.direction)
        parts.append(f"{r.run_id} {v.value:.6f}" if v.value is not None else f"{r.run_id} {v.status}")
    n = f"{len(wave)} run{'s' if len(wave) != 1 else ''}"
    head = (f"autoresearch: wave of {n} ({', '.join(parts)}): run {winner.run_id} is its best "
            f"comparable candidate and was judged; the others are discards (diffs kept in runs/NNNN/diff.patch).\n")
    key = "reason" if "reason" in reply else "systemMessage"
    reply[key] = head + reply[key]
    return reply
