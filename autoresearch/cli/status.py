"""`autoresearch status`: the morning table. Read-only: it never takes the loop lock or writes.

Gathering (`gather`) is separate from drawing (`render`) so tests check the numbers, not the pixels.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ..program import Program, load_program
from ..loop.decide import threshold
from ..gitops import current_branch, is_run_branch
from ..ledger import LedgerRow, best_row, decided_runs, read_rows
from .wavestatus import WaveRun, render_wave, wave_in_flight
from .jsonout import SCHEMA_VERSION


TOP_KEPT = 5


class KeptChange(BaseModel):
    """A kept experiment and how much it improved on the best before it (positive = better)."""
    experiment: int
    commit: str
    value: float
    improvement: float
    description: str


class CrashInfo(BaseModel):
    """A crashed experiment and why (runs/NNNN/metrics.json's reason, else the ledger's note)."""
    experiment: int
    run_id: str
    run_status: str                    # crash | timeout | oom | invalid | interrupted | ...
    reason: str
    description: str


class AwaitingDecision(BaseModel):
    """A run that has finished (its metrics.json is final, or its runner is gone) but that the Stop
    hook has not decided yet: no ledger row covers it. The agent decides it by ending its turn."""
    run_id: str
    run_status: str                    # ok | crash | timeout | ... | missing (no readable metrics.json)
    value: float | None                # the measured metric, for an ok run
    description: str
    finished_at: str | None            # ISO time, when the runner recorded one


class Summary(BaseModel):
    """karpathy/autoresearch's closing numbers: how the night went, in a few figures."""
    experiments: int
    kept: int
    keep_rate: float | None            # kept / experiments (the baseline counts as a keep)
    baseline: float | None             # the first kept value on the branch
    best: float | None
    total_improvement: float | None    # from the baseline to the best, positive = better
    relative_improvement: float | None  # total_improvement / |baseline|
    top_kept: list[KeptChange]         # the largest improvements, best first


class Report(BaseModel):
    """Everything the status table shows; also `autoresearch status --json`."""
    schema_version: int = SCHEMA_VERSION             # cli/jsonout.py: bumped when a field changes meaning
    root: str
    metric: str
    direction: str
    branch: str | None                 # the run branch shown (None: no experiment yet)
    phase: str
    focus: str
    rows: list[LedgerRow]              # the branch's rows, in order
    best: LedgerRow | None
    kept: int
    discarded: int
    crashed: int
    phase_done: int                    # experiments decided in the current phase on this branch
    phase_max: int
    budget_left: int | None            # experiments left in the phase (None when unknown)
    deadline: str | None               # ISO time the loop stops, when one is set
    sigma: float | None
    threshold: float | None
    paused: str | None                 # the pause reason, when paused
    finished: str | None = None        # why and when a spent budget let the agent stop
    spent: str | None = None           # why the budget is spent now (loop/allowance.py's words)
    fingerprint: str | None = None     # what the latest runs are compared under (budget, backend, device...)
    new_baseline: str | None = None    # set when the fingerprint changed on this branch: what and since when
    sigma_at: str | None = None        # the budget sigma was calibrated at
    seed_ignored: str | None = None    # calibrate saw bit-identical seeds: noise unknown, and where the seed is fixed
    summary: Summary | None = None
    crashes: list[CrashInfo] = []
    awaiting_decision: list[AwaitingDecision] = []   # finished runs the Stop hook has not decided yet
    wave: list[WaveRun] = []           # queued and running runs of the wave in flight


def shown_branch(root: Path, rows: list[LedgerRow], branch: str | None = None) -> str | None:
    """The branch asked for; else the checked-out run branch; else the branch of the latest row."""
    if branch:
        return branch
    here = current_branch(root)
    if is_run_branch(here) and any(r.branch == here for r in rows):
        return here
    return rows[-1].branch if rows else (here if is_run_branch(here) else None)


def summarize(rows: list[LedgerRow], program: Program, top: int = TOP_KEPT) -> Summary:
    kept = [r for r in rows if r.status == "keep" and r.value is not None]
    base = kept[0].value if kept else None
    best = best_row(rows, program.metric)
    total = program.metric.improvement(best.value, base) if best is not None and base is not None else None
    changes = [KeptChange(experiment=r.experiment, commit=r.commit, value=r.value,
                          improvement=program.metric.improvement(r.value, r.prev_best),
                          description=" ".join(r.description.split()))
               for r in kept[1:] if r.prev_best is not None]
    changes.sort(key=lambda c: c.improvement, reverse=True)
    return Summary(experiments=len(rows), kept=len(kept), keep_rate=len(kept) / len(rows) if rows else None,
                   baseline=base, best=best.value if best else None, total_improvement=total,
                   relative_improvement=total / abs(base) if total is not None and base else None,
                   top_kept=changes[:top])


def crash_reasons(root: Path, rows: list[LedgerRow]) -> list[CrashInfo]:
    """Why each crash happened, from its run's metrics.json (trusted: written by the runner)."""
    from ..record import RunMetrics
    out = []
    for r in rows:
        if r.status != "crash":
            continue
        try:
            reason = RunMetrics.read(Path(root) / "runs" / r.run_id).reason or ""
        except Exception:                  # missing or corrupt: the ledger's note is all there is
            reason = ""
        out.append(CrashInfo(experiment=r.experiment, run_id=r.run_id, run_status=r.run_status,
                             reason=" ".join((reason or r.note or "no reason recorded").split())[:300],
                             description=" ".join(r.description.split())))
    return out


def awaiting_decision(root: Path, program: Program, rows: list[LedgerRow]) -> list[AwaitingDecision]:
    """Finished runs no ledger row (nor a calibration) covers yet, by the loop's own test
    (loop/context.pending_runs), so status and the Stop hook never disagree on what is pending."""
    from ..loop import state
    from ..loop.context import pending_runs
    out = []
    for rec in pending_runs(root, program, state.read_state(root), rows):
        if rec.in_progress:
            continue
        m = rec.metrics
        out.append(AwaitingDecision(
            run_id=rec.run_id, run_status=rec.status, value=m.metric_value if m and m.status == "ok" else None,
            description=" ".join((m.description if m else rec.problem or "").split()),
            finished_at=m.finished_at.isoformat(timespec="seconds") if m and m.finished_at else None))
    return out


def _loop_state(root: Path, program: Program, rows: list[LedgerRow], branch: str | None) -> dict:
    """What the loop itself knows: sigma, the pause, the deadline clock and the budget (loop/allowance.py)."""
    from ..loop import state
    from ..loop.allowance import Tally, remaining
    st = state.read_state(root)
    pause = state.paused(root)
    bud = remaining(program, st, Tally(rows, branch), pause)
    out: dict = {"sigma": st.sigma, "paused": (pause.reason or "paused") if pause else None,
                 "seed_ignored": st.seed_ignored,
                 "calibration": st.calibration,
                 "left": bud.left, "done": bud.done, "limit": bud.limit, "deadline": bud.deadline_at,
                 "spent": bud.reason}
    if st.finished_at is not None:
        out["finished"] = f"{st.finish_reason or 'finished'} at {st.finished_at:%Y-%m-%d %H:%M} UTC"
    return out


def gather(root: Path, branch: str | None = None) -> Report:
    program = load_program(root)
    all_rows = read_rows(root)
    shown = shown_branch(root, all_rows, branch)
    rows = [r for r in all_rows if r.branch == shown] if shown else []
    best = best_row(rows, program.metric)
    st = _loop_state(root, program, all_rows, shown)
    sigma = st["sigma"]
    if sigma is None:                         # state.json lost: the ledger still says what was used
        sigma = next((r.sigma for r in reversed(rows) if r.sigma is not None), None)
    deadline = st["deadline"]
    fp, new_base, sig_fp, sig_at = _fingerprints(root, rows, all_rows)
    if sig_fp is not None:
        sigma = sig_fp
    elif sigma is not None and st["calibration"] is not None and st["calibration"].sigma == sigma:
        sig_at = _measured_at(st["calibration"])          # no ledger row yet: the latest calibration
    ignored = _seed_ignored(st["seed_ignored"], sigma, program.metric.name)
    if ignored:
        sigma = None                          # sigma 0 from bit-identical seeds is no measurement
    return Report(
        root=str(root), metric=program.metric.name, direction=program.metric.direction, branch=shown,
        phase=program.phase, focus=" ".join(program.current.focus.split()), rows=rows, best=best,
        kept=sum(r.status == "keep" for r in rows), discarded=sum(r.status == "discard" for r in rows),
        crashed=sum(r.status == "crash" for r in rows), phase_done=st["done"],
        phase_max=st["limit"], budget_left=st["left"], spent=st["spent"],
        deadline=f"{deadline:%Y-%m-%d %H:%M} UTC" if deadline else None,
        sigma=sigma, threshold=threshold(program, sigma), paused=st["paused"], finished=st.get("finished"),
        fingerprint=fp, new_baseline=new_base, sigma_at=sig_at, seed_ignored=ignored,
        summary=summarize(rows, program) if rows else None, crashes=crash_reasons(root, rows),
        awaiting_decision=awaiting_decision(root, program, all_rows),
        wave=wave_in_flight(root),
    )


def _seed_ignored(note, sigma: float | None, metric: str) -> str | None:
    """Why noise is unknown although calibrate ran: its seeds gave bit-identical results (or an
    old state holds sigma exactly 0, which only such runs give)."""
    if note is not None and not sigma:
        where = f"; fixed at {'; '.join(note.where[:3])}" if note.where else ""
        return (f"unknown: the repo ignores the seed ({len(note.run_ids)} seeds gave the bit-identical {metric} "
                f"{note.value:.6g}{where}); make it read AUTORESEARCH_SEED and calibrate again")
    if sigma == 0:
        return ("unknown: sigma 0 means every calibration seed gave the bit-identical result (the repo ignores "
                "the seed); make it read AUTORESEARCH_SEED and calibrate again")
    return None


def _fingerprints(root: Path, rows: list[LedgerRow], all_rows: list[LedgerRow] | None = None
                  ) -> tuple[str | None, str | None, float | None, str | None]:
    """(the latest fingerprint in words, the new-baseline note, sigma for it, the budget sigma was
    measured at). Runs are compared only within one fingerprint, so a change is worth a line.
    `all_rows`: the whole ledger (its runs are decided, so none is a calibration to read)."""
    from ..record import read_verified
    from ..loop.state import calibrations_from_runs, read_state

    def fp_of(run_id: str):
        try:
            return read_verified(root / "runs" / run_id).fingerprint
        except (OSError, ValueError):
            return None
    keyed = [r for r in rows if r.fingerprint]
    if not keyed:
        return None, None, None, None
    last = keyed[-1]
    cur = fp_of(last.run_id)
    words = (f"{cur.key}: budget {cur.budget_seconds:g} s, eval {cur.eval_seconds:g} s, {cur.backend}, {cur.device}, "
             f"data {cur.data}" + (f", budget clock {cur.clock}" if cur.clock != "-" else "")) if cur else last.fingerprint
    start = len(keyed) - 1
    while start > 0 and keyed[start - 1].fingerprint == last.fingerprint:
        start -= 1
    note = None
    if start > 0:
        prev = fp_of(keyed[start - 1].run_id)
        change = cur.differs(prev) if cur and prev else "fingerprint changed"
        note = f"{change}: a new baseline since experiment #{keyed[start].experiment}; earlier runs are not compared"
    st = read_state(root)
    cal = st.calibrations.get(last.fingerprint) or calibrations_from_runs(root, decided_runs(all_rows or rows)).get(last.fingerprint)
    if cal is None and st.calibration is not None and st.calibration.fingerprint is None:
        cal = st.calibration
    return words, note, cal.sigma if cal else None, _measured_at(cal)


def _measured_at(cal) -> str | None:
    """The budget a calibration was measured at, and how when not by the harness's seed."""
    at = f"{cal.budget_seconds:g} s budget" if cal and cal.budget_seconds else None
    if cal is not None and cal.method == "repo-seed":
        at = f"{at or 'its'}, with the repo's own seed varied (it ignores AUTORESEARCH_SEED)"
    return at


def _num(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


STYLE = {"keep": "bold green", "discard": "dim", "crash": "red"}


def _notes(head, rep: Report) -> None:
    """The summary's conditional lines: a new baseline, a spent budget, a pause, runs waiting."""
    from rich.text import Text
    if rep.new_baseline:
        head.add_row("new baseline", Text(rep.new_baseline, style="yellow"))
    if rep.spent and not rep.paused:
        head.add_row("budget spent", Text(rep.spent, style="yellow"))
    if rep.paused:
        head.add_row("paused", Text(rep.paused, style="bold yellow"))
    if rep.finished:
        head.add_row("finished", rep.finished)
    for w in rep.awaiting_decision:
        what = f"{w.run_status}, {rep.metric} {_num(w.value)}" if w.value is not None else w.run_status
        head.add_row("waiting for decision", Text(f"run {w.run_id} ({what}): {w.description}"
                                                  " -- decided when the agent ends its turn", style="bold yellow"))


def render(rep: Report, last: int | None = 20) -> "object":
    """A rich renderable: a summary grid over the experiments table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    best = (f"{_num(rep.best.value)} {rep.metric} (experiment {rep.best.experiment}, {rep.best.commit})"
            if rep.best else "none yet")
    head.add_row("project", rep.root)
    head.add_row("branch", rep.branch or "no run branch yet")
    head.add_row("metric", f"{rep.metric} ({'lower' if rep.direction == 'minimize' else 'higher'} is better)")
    head.add_row("best", Text(best, style="bold green" if rep.best else ""))
    head.add_row("experiments", f"{len(rep.rows)}: {rep.kept} kept, {rep.discarded} discarded, {rep.crashed} crashed"
                 + (f" (keep rate {rep.summary.keep_rate:.0%})" if rep.summary and rep.summary.keep_rate is not None
                    else ""))
    sm = rep.summary
    if sm and sm.kept < 2:
        head.add_row("improvement", "none yet: only the baseline is kept")
    elif sm and sm.total_improvement is not None and sm.baseline is not None:
        rel = f", {sm.relative_improvement:.1%}" if sm.relative_improvement is not None else ""
        head.add_row("improvement", f"{_num(sm.baseline)} -> {_num(sm.best)}: {_num(sm.total_improvement)} better "
                                    f"than the baseline{rel}")
    head.add_row("phase", f"{rep.phase}: {rep.focus}" if rep.focus else rep.phase)
    budget = f"{rep.budget_left} of {rep.phase_max} experiments left in this phase"
    if rep.deadline:
        budget += f"; deadline {rep.deadline}"
    head.add_row("budget left", budget)
    noise = (f"sigma {rep.sigma:.4f}" + (f" (calibrated at a {rep.sigma_at})" if rep.sigma_at else "")
             + f", keep threshold {rep.threshold:.4f}" if rep.sigma is not None
             else f"not calibrated (run `autoresearch calibrate`); keep threshold {_num(rep.threshold)}")
    if rep.seed_ignored:
        noise = f"{rep.seed_ignored}; not calibrated, keep threshold {_num(rep.threshold)}"
    head.add_row("noise", Text(noise, style="yellow") if rep.seed_ignored else noise)
    if rep.fingerprint:
        head.add_row("compared under", rep.fingerprint)
    _notes(head, rep)

    table = Table(title=None, show_lines=False, expand=False)
    for col, kw in (("#", {"justify": "right"}), ("commit", {}), (rep.metric, {"justify": "right"}),
                    ("delta", {"justify": "right"}), ("status", {}), ("phase", {}), ("run", {}),
                    ("description", {"overflow": "fold", "max_width": 60})):
        table.add_column(col, **kw)
    rows = rep.rows[-last:] if last else rep.rows
    if len(rows) < len(rep.rows):
        table.caption = f"last {len(rows)} of {len(rep.rows)} (--all for every row)"
    for r in rows:
        style = "bold green" if rep.best is not None and r.run_id == rep.best.run_id else STYLE.get(r.status, "")
        table.add_row(str(r.experiment), r.commit, _num(r.value), _num(r.delta, signed=True),
                      r.status + (f" ({r.run_status})" if r.status == "crash" and r.run_status not in ("", "crash") else ""),
                      r.phase, r.run_id, r.description, style=style)
    parts: list = [head]
    if sm and sm.top_kept:
        top = Table(title="top kept changes", title_justify="left", show_edge=False)
        for col, kw in (("#", {"justify": "right"}), ("commit", {}), ("improvement", {"justify": "right"}),
                        ("description", {"overflow": "fold", "max_width": 70})):
            top.add_column(col, **kw)
        for c in sm.top_kept:
            top.add_row(str(c.experiment), c.commit, f"{c.improvement:+.4f}", c.description, style="green")
        parts.append(top)
    if rep.crashes:
        cr = Table(title="crashes", title_justify="left", show_edge=False)
        for col, kw in (("#", {"justify": "right"}), ("run", {}), ("status", {}),
                        ("reason", {"overflow": "fold", "max_width": 80})):
            cr.add_column(col, **kw)
        for c in rep.crashes[-(last or len(rep.crashes)):]:
            cr.add_row(str(c.experiment), c.run_id, c.run_status, c.reason, style="red")
        parts.append(cr)
    if rep.wave:
        parts.append(render_wave(rep.wave))
    parts.append(table)
    return Group(*parts)


def main(root: Path, branch: str | None = None, show_all: bool = False, as_json: bool = False) -> int:
    from rich.console import Console
    rep = gather(root, branch)
    if as_json:
        print(rep.model_dump_json(indent=2))
        return 0
    console = Console()
    if not rep.rows:
        console.print(render(rep, last=None))
        if rep.awaiting_decision:
            ids = ", ".join(w.run_id for w in rep.awaiting_decision)
            console.print(f"No decided experiments yet: {ids} finished and wait for a decision (the Stop hook keeps "
                          "or reverts when the agent ends its turn).")
        else:
            console.print("No experiments yet: run the baseline with `./run.sh -m \"baseline\"` and let the loop start.")
        return 0
    console.print(render(rep, last=None if show_all else 20))
    return 0
