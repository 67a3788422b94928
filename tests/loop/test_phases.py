"""phases.py on its own: a spent phase moves program.md's `phase:` line to the next phase (one
line rewritten, atomically, the file still parses), unless `on_phase_end: stop` or it is the last."""
from __future__ import annotations

import pytest

from autoresearch.loop.phases import advance, advance_if_spent, next_phase, set_phase
from autoresearch.loop.allowance import Tally, MAX_EXPERIMENTS_ENV, remaining
from autoresearch.loop.state import LoopState
from autoresearch.program import ConfigError, load_program
from loop_support import PROGRAM


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_EXPERIMENTS_ENV, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM)
    return tmp_path


def test_a_spent_phase_moves_to_the_next(root):
    program = load_program(root)
    assert next_phase(program).name == "arch" and advance(root, program, phase_spent=False) is None
    new = advance(root, program, phase_spent=True)
    assert new.phase == "arch" and load_program(root).phase == "arch"
    text = (root / "program.md").read_text()
    assert "phase: arch   # set by autoresearch" in text and "used its 20 experiments" in text
    changed = [(a, b) for a, b in zip(text.splitlines(), PROGRAM.splitlines()) if a != b]
    assert [b for _, b in changed] == ["phase: tune"] and len(text.splitlines()) == len(PROGRAM.splitlines())
    assert advance(root, new, phase_spent=True) is None                 # the last phase: no next


def test_on_phase_end_stop_never_moves(root):
    (root / "program.md").write_text(PROGRAM.replace("phase: tune\n", "phase: tune\non_phase_end: stop\n"))
    assert advance(root, load_program(root), phase_spent=True) is None
    assert load_program(root).phase == "tune"


def test_set_phase_refuses_an_ambiguous_file(root):
    (root / "program.md").write_text(PROGRAM.replace("phase: tune\n", "phase: tune\nphase: arch\n"))
    with pytest.raises(ConfigError):
        set_phase(root, "arch", "test")


def test_advance_if_spent_gives_the_new_phase_its_allowance(root):
    program = load_program(root)
    from test_allowance import rows
    ledger = rows(20)
    a = remaining(program, LoopState(), Tally(ledger, "autoresearch/a", "s1"), None)
    new, a2, lead = advance_if_spent(root, program, a, LoopState(), Tally(ledger, "autoresearch/a", "s1"))
    assert new.phase == "arch" and not a2.spent and a2.left == 3
    assert lead == "Phase 'tune' has used its 20 experiments; program.md now says phase: arch. "
    few = remaining(program, LoopState(), Tally(rows(3), "autoresearch/a", "s1"), None)
    assert advance_if_spent(root, program, few, LoopState(), Tally(rows(3), "autoresearch/a", "s1"))[2] == ""
