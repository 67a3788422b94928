"""Everything the loop says: the Stop hook's replies and block reasons, the SessionStart context,
the PreCompact note, and the summary for the human when the loop ends. The flow (stop.py,
record.py, session.py) decides; this module only words it. Tests compare these texts: a change
here is a change the agent sees.

A reply is `block(reason)` (the agent must go on; `reason` tells it how) or `allow(message)`
(the agent may stop; the message is shown to the human).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ledger import LedgerRow, best_row, branch_rows
from ..program import Program
from .decide import NO_EFFECT, Verdict

if TYPE_CHECKING:                         # types only
    from ..record import RunMetrics
    from .allowance import Allowance
    from .runscan import RunRecord

SCRATCHPAD = "scratchpad.md"


# --- replies -------------------------------------------------------------------------------

def block(reason: str) -> dict:
    return {"decision": "block", "reason": reason}


def allow(message: str) -> dict:
    """Let the agent stop; `systemMessage` is shown to the human."""
    return {"systemMessage": message}


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.6f}"


def short(text: str, n: int = 160) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _train(program: Program) -> str:
    return program.run.train_script


def _code(program: Program) -> str:
    """The code a revert puts back, by name: the training script, and the rest of the editable set."""
    rest = [p for p in program.editable_patterns() if p not in (program.run.train_script, SCRATCHPAD)]
    return _train(program) + (f" (and the editable {', '.join(rest[:4])})" if rest else "")


def _focus(program: Program) -> str:
    return short(program.current.focus).rstrip('.')


# --- the loop cannot run (the human must act) ---------------------------------------------

def program_invalid(e: Exception) -> str:
    return f"autoresearch: the loop stopped because program.md is invalid. Fix it, then start the agent again:\n{e}"


def loop_stopped(e: Exception) -> str:
    return f"autoresearch: the loop stopped: {e}"


def not_a_repository(root) -> str:
    return f"{root} is not a git repository; run `git init` and commit the project first"


NO_COMMIT = "the repository has no commit yet; commit the project (the baseline) first"

LOCK_HELD = ("autoresearch: another autoresearch command holds the loop lock (.autoresearch/loop.lock). "
             "Wait a minute, then end your turn again.")


def disk_full(root, e: OSError, freed: int) -> str:
    return (f"autoresearch: the disk is full (ENOSPC: {e.filename or e.strerror}), so the loop stopped; nothing "
            f"was decided and nothing is lost. Freed {freed / 2**20:.0f} MiB of checkpoints of runs that were not "
            f"kept. A human must free more space (`df -h {root}`), then start the agent again.")


def disk_low(root, free: int, freed: int, would: str, run_sh: bool = False) -> str:
    """A block the agent could only fail at: the disk is too full for another run (`run_sh`: ./run.sh
    said ENOSPC since the last stop)."""
    what = "./run.sh found the disk full (ENOSPC" if run_sh else "the disk is full ("
    return (f"autoresearch: {what}; {free / 2**20:.0f} MiB free at {root}), so the agent stops here "
            f"instead of being sent to run again (it would have been told: {short(would, 200)}). Decisions made "
            f"so far are recorded; nothing is lost. Freed {freed / 2**20:.0f} MiB of checkpoints of runs decided "
            f"as not kept. A human must free space (`df -h {root}`), then start the agent again.")


def key_missing(problem: str) -> str:
    """The project's signing key is not in this HOME: no run can be signed, only a human can fix it."""
    return f"autoresearch: the loop stopped: {problem}."


def runs_key_missing(run_ids: list[str], problem: str) -> str:
    return (f"autoresearch: the loop stopped: run{'s' if len(run_ids) > 1 else ''} {', '.join(run_ids)} cannot be "
            f"verified here, so {'they are' if len(run_ids) > 1 else 'it is'} not decided (nothing was altered, "
            f"nothing is lost). {problem}.")


def git_busy(lock) -> str:
    return (f"git is busy: {lock} is held by a running git command. Nothing was decided and nothing "
            f"is lost. Wait a minute, then end your turn again.")


def abandoned(run_id: str, action: str, why: str) -> str:
    """A decision that can never be applied (journal.Conflict), dropped once."""
    return (f"autoresearch: run {run_id}'s decision ({action}) could not be applied and was dropped, once: {why}. "
            f"It is recorded in results.tsv as not kept; its code is in runs/{run_id}/. Nothing else changed. "
            f"Next: check `git status` shows what you expect, then go on with the loop.")


def changed_while_deciding(train: str, run_id: str) -> str:
    return f"{train} changed while run {run_id} was being decided; end your turn again"


# --- Stop: before a decision ---------------------------------------------------------------

def still_running(run_id: str) -> str:
    return (f"autoresearch: run {run_id} is still running. Wait for ./run.sh to finish and "
            f"print its result (do not run it in the background), then end your turn.")


def wave_in_flight(run_ids: list[str]) -> str:
    return (f"autoresearch: the wave is still running (runs {', '.join(run_ids)}). Run ./run.sh --wait, which "
            f"returns when every queued run has ended, then end your turn: the wave is decided whole.")


def wave_stuck(run_ids: list[str], idle_s: float) -> str:
    return (f"autoresearch: the wave made no progress for {idle_s / 60:.0f} min (runs {', '.join(run_ids)} never "
            f"ended): they are cancelled and recorded interrupted, never results; the rest of the wave is decided. "
            f"If this repeats, see .autoresearch/scheduler.log.\n")


def _result(program: Program, m: RunMetrics | None, status: str, with_reason: bool) -> str:
    if m and m.status == "ok" and m.metric_value is not None:
        return f"{program.metric.name} {m.metric_value:.6f}"
    return f"{status}" + (f" ({m.reason})" if with_reason and m and m.reason else "")


def scratchpad_unchanged(program: Program, run: RunRecord, missing: bool) -> str:
    result = _result(program, run.metrics, run.status, with_reason=True)
    what = "is missing: recreate it" if missing else "has not changed since the last decision"
    return (f"autoresearch: {SCRATCHPAD} {what}. Before ending your turn, write down what run {run.run_id} "
            f"showed ({result}): add a line to 'Experiment log' (change | result | your read of it) and update "
            f"'Next experiments'. Then end your turn; the harness decides keep or revert.")


def confirm(program: Program, v: Verdict, cands: list[RunRecord]) -> str:
    last = cands[-1]
    desc = last.metrics.description if last.metrics else ""
    return (f"autoresearch: run {last.run_id} beat the best by {v.improvement:.6f} {program.metric.name}, more than "
            f"the threshold {v.threshold:.6f} but less than threshold + confirm_margin "
            f"({v.threshold + program.noise.confirm_margin:.6f}): not kept yet. Confirm it with another seed: "
            f"leave {_train(program)} as it is and run ./run.sh -m \"confirm: {short(desc, 80)}\", then end your turn; "
            f"the mean of both runs decides.")


# --- Stop: after a decision ----------------------------------------------------------------

def _overridden(program: Program, overriders: list[str] | None) -> str:
    if overriders:
        return (f"The training command (program.md run.command) passes {', '.join(overriders)}: a value there "
                f"wins over a default edited in code; change the setting where it takes effect.")
    return ("Something sets it after your edit (a config file the code loads, a command-line flag, a later "
            "assignment): change it where it takes effect.")


def outcome(program: Program, v: Verdict, row: LedgerRow, commit: str | None, allowance: Allowance,
            overriders: list[str] | None = None) -> str:
    """The decision as the agent reads it; the best it was judged against is the row's prev_best."""
    m, prev_best = program.metric.name, row.prev_best
    head = f"autoresearch: experiment #{row.experiment} (run {row.run_id})"
    if v.action == "keep":
        if prev_best is None:
            what = f"is the BASELINE: {m} {v.value:.6f}, committed {commit or ''}."
        else:
            what = (f"KEPT: {m} {v.value:.6f}, previous best {prev_best:.6f} ({v.delta:+.6f}; threshold "
                    f"{v.threshold:.6f}). Committed {commit or ''}.")
    elif v.action == "discard" and prev_best is None:
        what = (f"was NOT JUDGED ({v.note}): {m} {_fmt(v.value)}. Runs are compared only within one fingerprint, "
                f"so the budget change STARTS A NEW BASELINE on the branch. {_code(program)} is back to the best version; "
                f"your change stays in runs/{row.run_id}/diff.patch. Next: run the best's code as it is first "
                f"(./run.sh -m \"baseline at the new fingerprint\"), end your turn, then re-apply your change.")
        return f"{head} {what} {allowance.line()}."
    elif v.action == "discard" and v.note == NO_EFFECT:
        what = (f"had NO EFFECT: {m} {v.value:.6f} is bit-identical to the best, so the change did not reach the "
                f"run at all. Is this setting overridden? {_overridden(program, overriders)} {_code(program)} is "
                f"back to the best version; the change stays in runs/{row.run_id}/diff.patch.")
    elif v.action == "discard":
        what = (f"DISCARDED ({v.note}): {m} {v.value:.6f} vs best {prev_best:.6f} ({v.delta:+.6f}; "
                f"a keep needs to beat it by more than {v.threshold:.6f}). {_code(program)} is back to the best "
                f"version; the change stays in runs/{row.run_id}/diff.patch.")
    else:
        what = (f"CRASHED ({row.run_status}{': ' + short(row.note, 200) if row.note and row.note != row.run_status else ''}). "
                f"A crash is never kept, so {_code(program)} is back to the best version; your change stays in "
                f"runs/{row.run_id}/diff.patch; see runs/{row.run_id}/train.log.")
    best = row.best if row.best is not None else prev_best
    return (f"{head} {what} Best so far: {_fmt(best)}. {allowance.line()}. Phase '{program.phase}' focus: "
            f"{_focus(program)}. Next: record this in scratchpad.md, form ONE new "
            f"hypothesis, edit {_train(program)}, run ./run.sh -m \"<what and why>\", then end your turn.")


def remeasured(program: Program, run: RunRecord, ok: bool, new_fp: str | None, after: float | None,
               n: int) -> str:
    """Runs of the branch tip's own code: the best measured again, or (`new_fp`: what changed in the
    fingerprint) a new baseline at a new fingerprint."""
    m, train = program.metric, _train(program)
    if not ok:
        what = f"run {run.run_id} of the best's own code failed ({run.status}); the best is unchanged"
    elif new_fp is not None:
        what = (f"run {run.run_id} ran the best's code at a new fingerprint ({new_fp}); runs are compared "
                f"only within one fingerprint, so this STARTS A NEW BASELINE on the branch: {m.name} {_fmt(after)}")
    else:
        what = (f"run {run.run_id} ran the best's own code again: it RE-MEASURED the best (not a keep; nothing "
                f"changed in the code). Best {m.name} now {_fmt(after)}, the mean of {n} runs")
    return (f"autoresearch: {what}. Next: form ONE hypothesis, edit {train}, run ./run.sh -m \"<what and "
            f"why>\", then end your turn.")


def unkeepable(program: Program, run: RunRecord, missing: str, value: float | None, train: str) -> str:
    return (f"autoresearch: run {run.run_id} would be kept ({program.metric.name} {_fmt(value)}), but its checkpoint "
            f"{missing} is missing, and `autoresearch final` scores kept checkpoints: it is NOT kept, recorded as "
            f"not judged. {train} is left as it is. Run it again: ./run.sh -m \"rerun: "
            f"{short(run.metrics.description if run.metrics else '', 60)}\", then end your turn.")


def contended(program: Program, run: RunRecord, why: str, train: str) -> str:
    return (f"autoresearch: run {run.run_id} was CONTENDED ({why}): something else used the machine, so its "
            f"{program.metric.name} says nothing about the change. It is recorded, not judged; {train} is "
            f"left as it is. Run it again: ./run.sh -m \"rerun: {short(run.metrics.description if run.metrics else '', 60)}\", "
            f"then end your turn.")


def env_crash(program: Program, run: RunRecord, cause) -> str:
    """A crash blamed on the environment (blame.py), the first time: not the agent's fault."""
    desc = short(run.metrics.description if run.metrics else "", 60)
    return (f"autoresearch: run {run.run_id} CRASHED because of the ENVIRONMENT, not your change: {cause.what}. "
            f"It is recorded but not counted as an experiment, and nothing was reverted: {_code(program)} is left "
            f"as it is. The fix is a setting a human changes: {cause.fix}. Run it once more as it is "
            f"(./run.sh -m \"rerun: {desc}\"), then end your turn; if it crashes the same way, the loop stops "
            f"for the human.")


def env_crash_stop(program: Program, run: RunRecord, cause) -> str:
    """The same environment crash again: the agent stops; the human has the fix."""
    return (f"autoresearch: the loop stopped: run {run.run_id} crashed because of the ENVIRONMENT again "
            f"({cause.what}), so every further run would too. Nothing was reverted and nothing is lost; "
            f"{_code(program)} is as the agent left it. Fix: {cause.fix}. Then start the agent again.")


def phase_moved(old: Program, limit: int, new: Program) -> str:
    """The lead line when a spent phase handed over to the next one."""
    return f"Phase '{old.phase}' has used its {limit} experiments; program.md now says phase: {new.phase}. "


def new_phase_next(program: Program, allowance: Allowance) -> str:
    return (f"Its focus: {_focus(program)}. {allowance.line()}. Next: form ONE "
            f"hypothesis for this phase, edit {_train(program)}, run ./run.sh -m \"<what and why>\", then end your turn.")


# --- Stop: nothing to decide ---------------------------------------------------------------

def idle_too_long(n: int) -> str:
    return f"the agent ended {n} turns in a row without a new experiment"


def train_missing(train: str) -> str:
    return (f"autoresearch: {train} is missing. Restore it (its last kept version is "
            f"`git show HEAD:{train}`), then run ./run.sh -m \"<what and why>\".")


def changed_without_run(train: str) -> str:
    return (f"autoresearch: {train} has changed but has no run yet. Run it first: "
            f"./run.sh -m \"<what changed and why>\" -- then update scratchpad.md and end your turn.")


NO_BASELINE = ("autoresearch: no baseline yet on this run. Run the baseline first: "
               "./run.sh -m \"baseline\" -- then note the result in scratchpad.md and end your turn.")


def nothing_to_decide(program: Program, train: str, allowance: Allowance) -> str:
    return (f"autoresearch: nothing to decide: {train} is unchanged and has no new run. "
            f"{allowance.line()}. Next: form one hypothesis for phase '{program.phase}' "
            f"({_focus(program)}), write it in scratchpad.md, edit {train}, "
            f"run ./run.sh -m \"<what and why>\", then end your turn.")


# --- the end of the loop (for the human) ---------------------------------------------------

def stopping(reason: str) -> str:
    return f"stopping: {reason}."


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


# --- SessionStart and PreCompact -----------------------------------------------------------

def session_invalid_program(e: Exception) -> str:
    return f"autoresearch: program.md is invalid, so the loop cannot run until a human fixes it:\n{e}"


def session_problem(e: Exception) -> str:
    return f"autoresearch: {e}"


@dataclass(frozen=True)
class Standing:
    """Where the loop stands, for a (re)started session: state, ledger, run branch and its best,
    the keep threshold, the allowance left."""
    st: Any
    rows: list[LedgerRow]
    branch: str | None
    best: float | None
    thresh: float
    allowance: Allowance


def session_context(program: Program, where: Standing, next_experiments: str, waiting: str | None) -> str:
    """The compact state summary a (re)started or compacted session needs to go on correctly."""
    st, rows, branch, best, thresh, allowance = (where.st, where.rows, where.branch, where.best, where.thresh,
                                                 where.allowance)
    mine = branch_rows(rows, branch)
    m = program.metric.name
    lines = ["autoresearch loop state (from the harness; trust it over memory):",
             f"- Phase '{program.phase}': {short(program.current.focus, 240)}",
             f"- Run branch: {branch or '(none yet: the first decision starts one)'}; best {m}: "
             f"{_fmt(best) if best is not None else 'none yet (the first run is the baseline)'}; "
             f"keep threshold {thresh:.6f}" + (f" (sigma {st.sigma:.6f})" if st.sigma else
                                                 " (noise UNKNOWN: the repo ignores the seed)"
                                                 if st.sigma == 0 or getattr(st, "seed_ignored", None)
                                                 else " (noise not calibrated)")
             + ".",
             f"- Budget: {allowance.line()}." + (f" STOP: {allowance.reason}." if allowance.spent else "")]
    if mine:
        lines.append("- Last results: " + "; ".join(
            f"#{r.experiment} {r.status} {_fmt(r.value) if r.value is not None else r.run_status} {short(r.description, 60)}"
            for r in mine[-5:]))
    if next_experiments:
        lines.append("- scratchpad.md 'Next experiments': " + short(next_experiments, 400))
    if waiting:
        lines.append(waiting)
    lines.append(f"Go on with program.md's loop: read scratchpad.md, one hypothesis, edit {_train(program)}, "
                 "./run.sh -m \"<what and why>\", update scratchpad.md, end your turn.")
    return "\n".join(lines)


def undecided(program: Program, r: RunRecord) -> str:
    """A finished run nobody decided yet: the agent must end its turn before it edits anything."""
    m = r.metrics
    res = _result(program, m, r.status, with_reason=False)
    return (f"- UNDECIDED: run {r.run_id} ({short(m.description if m else r.problem or '', 80)}: {res}) finished but "
            f"is not decided yet. Do not edit anything: note its result in scratchpad.md and END YOUR TURN now, "
            f"so the harness decides it first.")


def precompact_note(waiting: str | None) -> dict:
    """PreCompact's reply: the undecided run, for the human, if there is one."""
    return {"systemMessage": "autoresearch" + waiting[1:]} if waiting else {}
