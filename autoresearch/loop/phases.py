"""Moving on to the next phase when one has used its experiments.

An overnight loop must not end at 2 a.m. because the first phase is done. When
`on_phase_end: next` (the default), the Stop hook sets program.md's `phase:` to
the next phase in the list: one line of the human's file is rewritten, with a
comment saying when and why, so the file stays the single source of truth that
the guard, the hooks and the human all read. `on_phase_end: stop` ends the loop
instead, as does the last phase. The Stop hook asks `advance_if_spent` after every decision.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_atomic
from ..program import PROGRAM_FILE, ConfigError, Phase, Program, parse_program, split_front_matter
from . import messages
from .allowance import Allowance, Tally, remaining
from .state import LoopState, paused

_PHASE_LINE = re.compile(r"^phase:[^\n]*$", re.MULTILINE)


def next_phase(program: Program) -> Phase | None:
    names = [p.name for p in program.phases]
    i = names.index(program.phase)
    return program.phases[i + 1] if i + 1 < len(program.phases) else None


def set_phase(root: Path, name: str, why: str) -> Program:
    """Rewrite the top-level `phase:` line of program.md (atomically, nothing else touched)."""
    path = root / PROGRAM_FILE
    text = path.read_text(encoding="utf-8")
    front, _, _ = split_front_matter(text)
    if len(_PHASE_LINE.findall(front)) != 1:
        raise ConfigError(f"{PROGRAM_FILE}: cannot move to phase {name!r}: expected exactly one top-level "
                          "`phase:` line in the front matter")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    start = text.index(front)
    new_front = _PHASE_LINE.sub(lambda _: f"phase: {name}   # set by autoresearch {stamp}: {why}", front)
    new_text = text[:start] + new_front + text[start + len(front):]
    program = parse_program(new_text)          # never write a program.md that does not parse
    if program.phase != name:
        raise ConfigError(f"{PROGRAM_FILE}: rewriting `phase:` did not select {name!r}")
    write_atomic(path, new_text, path.stat().st_mode & 0o7777)
    return program


def advance(root: Path, program: Program, phase_spent: bool) -> Program | None:
    """If the current phase is spent and the program says so, move to the next phase; the new Program."""
    if not phase_spent or program.on_phase_end != "next":
        return None
    nxt = next_phase(program)
    if nxt is None:
        return None
    done = program.current.max_experiments
    return set_phase(root, nxt.name, f"phase '{program.phase}' used its {done} experiments")


def advance_if_spent(root: Path, program: Program, allowance: Allowance, st: LoopState,
                     tally: Tally) -> tuple[Program, Allowance, str]:
    """A phase that used its experiments hands over to the next one (program.md's `on_phase_end`),
    unless the loop is paused or past its deadline. Returns the program, its allowance and a lead line."""
    a = allowance
    phase_spent = (a.spent and a.limit_source == "phase" and a.left <= 0 and not a.paused
                   and not (a.hours_left is not None and a.hours_left <= 0))
    new = advance(root, program, phase_spent)
    if new is None:
        return program, allowance, ""
    return new, remaining(new, st, tally, paused(root)), messages.phase_moved(program, a.limit, new)
