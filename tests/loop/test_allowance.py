"""allowance.py on its own: how much loop is left -- the phase's count on this run branch, the
per-session override, the deadline, the pause -- from real ledger rows and a real program.md."""
from __future__ import annotations

from datetime import timedelta

import pytest

from autoresearch.ledger import LedgerRow
from autoresearch.loop.allowance import Tally, MAX_EXPERIMENTS_ENV, remaining
from autoresearch.loop.state import LoopState, Pause, now
from autoresearch.program import ConfigError, parse_program
from loop_support import PROGRAM

BRANCH = "autoresearch/a"


@pytest.fixture
def program():
    return parse_program(PROGRAM)                  # phase tune: 20 experiments; deadline 10 h


def rows(n: int, branch: str = BRANCH, phase: str = "tune", session: str = "s1") -> list[LedgerRow]:
    return [LedgerRow(commit="", value=1.0, status="discard", experiment=i + 1, run_id=f"{i + 1:04d}",
                      runs=[f"{i + 1:04d}"], run_status="ok", phase=phase, branch=branch, session=session,
                      decided_at=now()) for i in range(n)]


def test_counts_this_phase_on_this_branch_only(program, monkeypatch):
    monkeypatch.delenv(MAX_EXPERIMENTS_ENV, raising=False)
    ledger = rows(5) + rows(7, branch="autoresearch/other") + rows(2, phase="arch")
    a = remaining(program, LoopState(), Tally(ledger, BRANCH, "s1"), None)
    assert (a.done, a.limit, a.left, a.limit_source, a.spent) == (5, 20, 15, "phase", False)
    assert a.line() == "15 experiments left in phase 'tune'"
    spent = remaining(program, LoopState(), Tally(rows(20), BRANCH, "s1"), None)
    assert spent.spent and spent.left == 0 and "phase 'tune' has used its 20 experiments" in spent.reason


def test_the_session_override_counts_this_session(program, monkeypatch):
    monkeypatch.setenv(MAX_EXPERIMENTS_ENV, "3")
    a = remaining(program, LoopState(), Tally(rows(2) + rows(5, session="s0"), BRANCH, "s1"), None)
    assert (a.done, a.left, a.limit_source) == (2, 1, MAX_EXPERIMENTS_ENV)
    assert a.line() == "1 experiment left in this session"
    monkeypatch.setenv(MAX_EXPERIMENTS_ENV, "many")
    with pytest.raises(ConfigError):
        remaining(program, LoopState(), Tally([], BRANCH, "s1"), None)


def test_the_deadline_and_the_pause(program, monkeypatch):
    monkeypatch.delenv(MAX_EXPERIMENTS_ENV, raising=False)
    st = LoopState(started_at=now() - timedelta(hours=4))
    a = remaining(program, st, Tally([], BRANCH, "s1"), None)
    assert a.hours_left == pytest.approx(6, abs=0.01) and not a.spent and "6.0 h to the deadline" in a.line()
    late = remaining(program, st, Tally([], BRANCH, "s1"), None, at=now() + timedelta(hours=7))
    assert late.spent and "deadline (10 h from" in late.reason
    p = remaining(program, st, Tally([], BRANCH, "s1"), Pause(reason="bed"))
    assert p.spent and p.reason == "paused (bed): `autoresearch resume` to go on"
