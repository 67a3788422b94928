"""How much loop is left: the phase's experiment count, the deadline, the pause, and the
per-session override. Read-only; the Stop hook asks `remaining()` after every decision.

"Allowance" is how much of the loop is left (experiments, hours); program.md's `budget:` is
something else: the training seconds of ONE run.

- Count: experiments (ledger rows) decided in the current phase on the current run branch,
  against the phase's `max_experiments`. `AUTORESEARCH_MAX_EXPERIMENTS=N` replaces that for
  one Claude Code session: N experiments decided in this session (tests and short runs use it).
- Deadline: `deadline_hours` after `state.started_at`, the loop's clock. The clock starts at the
  first hook call of a loop (SessionStart or Stop), restarts at the next session startup after a
  spent allowance ended the loop, and on `autoresearch resume`. It does not restart on
  resume/compact/clear, nor when a crashed session is restarted, so a flaky night still ends on time.
- Pause: `.autoresearch/PAUSE` (`autoresearch pause`): stop at the next decision.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel

from ..program import ConfigError, Program
from ..ledger import LedgerRow
from .decide import ENV_NOTE
from .state import LoopState, Pause, now

MAX_EXPERIMENTS_ENV = "AUTORESEARCH_MAX_EXPERIMENTS"


class Allowance(BaseModel):
    """What is left of the loop (see `remaining`)."""
    phase: str
    done: int                            # experiments counted against `limit`
    limit: int
    limit_source: str                    # "phase" or MAX_EXPERIMENTS_ENV
    left: int
    deadline_at: datetime | None
    hours_left: float | None
    paused: Pause | None
    spent: bool
    reason: str | None                   # why it is spent (for the human's summary)

    def line(self) -> str:
        """One short line for the agent: experiments and hours left."""
        parts = [f"{self.left} experiment{'s' if self.left != 1 else ''} left"
                 + (f" in phase '{self.phase}'" if self.limit_source == "phase" else " in this session")]
        if self.hours_left is not None:
            parts.append(f"{max(self.hours_left, 0):.1f} h to the deadline")
        return "; ".join(parts)


def session_limit() -> int | None:
    raw = os.environ.get(MAX_EXPERIMENTS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"{MAX_EXPERIMENTS_ENV}={raw!r}: expected a whole number of experiments") from None
    if n < 0:
        raise ConfigError(f"{MAX_EXPERIMENTS_ENV}={raw!r}: must be 0 or more")
    return n


@dataclass(frozen=True)
class Tally:
    """What the allowance counts: the whole ledger, and whose experiments in it are this loop's
    (the run branch's, in program.md's phase; or the session's, under the per-session override)."""
    rows: list[LedgerRow]
    branch: str | None
    session: str | None = None


def remaining(program: Program, st: LoopState, tally: Tally, paused: Pause | None,
              at: datetime | None = None) -> Allowance:
    """The experiments and hours left; `tally.rows` are counted here by branch / phase / session."""
    rows, branch, session = tally.rows, tally.branch, tally.session
    at = at or now()
    limit_env = session_limit()
    if limit_env is not None:
        done = sum(1 for r in rows if session and r.session == session and not r.note.startswith(ENV_NOTE))
        limit, source = limit_env, MAX_EXPERIMENTS_ENV
    else:
        done = sum(1 for r in rows if branch and r.branch == branch and r.phase == program.phase
                   and not r.note.startswith(ENV_NOTE))     # an environment crash is no experiment
        limit, source = program.current.max_experiments, "phase"
    left = max(limit - done, 0)
    deadline_at = hours_left = None
    if program.deadline_hours and st.started_at:
        deadline_at = st.started_at + timedelta(hours=program.deadline_hours)
        hours_left = (deadline_at - at).total_seconds() / 3600
    reason = None
    if paused:
        reason = paused_reason(paused.reason)
    elif left <= 0:
        reason = (session_spent(limit, MAX_EXPERIMENTS_ENV) if source != "phase"
                  else phase_spent(program, limit))
    elif hours_left is not None and hours_left <= 0:
        reason = deadline_passed(program, st.started_at)
    return Allowance(phase=program.phase, done=done, limit=limit, limit_source=source, left=left,
                     deadline_at=deadline_at, hours_left=hours_left, paused=paused,
                     spent=reason is not None, reason=reason)


# --- why it is spent, in words (the loop's messages read the Allowance; this module words its own state)

def paused_reason(reason: str) -> str:
    return "paused" + (f" ({reason})" if reason else "") + ": `autoresearch resume` to go on"


def session_spent(limit: int, env: str) -> str:
    return f"the session's budget of {limit} experiments ({env}) is spent"


def phase_spent(program: Program, limit: int) -> str:
    return (f"phase '{program.phase}' has used its {limit} experiments: edit `phase:` in program.md "
            f"(or raise max_experiments) to go on")


def deadline_passed(program: Program, started_at) -> str:
    return (f"the deadline ({program.deadline_hours:g} h from {started_at:%Y-%m-%d %H:%M} UTC) has passed: "
            f"`autoresearch resume` restarts the clock")
