"""The SessionStart and PreCompact hooks: a (re)started or compacted session is told where the loop
stands (from the harness's records, not the conversation), after any half-done decision is
finished. hooks/loop_hook.py calls `session_start_hook` and `pre_compact_hook` (as `loop.<name>`).

SessionStart also (re)starts the deadline clock: at the first hook call of a loop, and at a
startup after a spent allowance ended the previous loop. Both hooks only warn when the loop lock
or git is busy: the session goes on, and the next Stop call recovers.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from filelock import Timeout as LockTimeout

from ..atomic import write_atomic
from ..gitops import GitError, current_branch, is_run_branch
from ..ledger import LedgerError, LedgerRow, current_best, read_rows
from ..program import ConfigError, Program, load_program, project_root
from . import journal, messages
from .allowance import Tally, remaining
from .context import pending_runs
from .decide import threshold
from .journal import LoopError
from .messages import SCRATCHPAD
from .state import LoopState, loop_lock, now, paused, read_state, state_dir, write_state
from .stop import ensure_ledger

log = logging.getLogger("autoresearch.loop")
KEEP_SNAPSHOTS = 20


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
        return messages.session_invalid_program(e)
    try:
        with loop_lock(root, timeout=10):
            ensure_ledger(root, program)
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
    best = current_best(root, program.metric, branch=branch) if branch else None
    try:
        allowance = remaining(program, st, Tally(rows, branch, session), paused(root))
    except ConfigError as e:
        return messages.session_problem(e)
    where = messages.Standing(st, rows, branch, best, threshold(program, st.sigma), allowance)
    return messages.session_context(program, where, _next_experiments(root), undecided_line(root, program, st, rows))


def undecided_line(root: Path, program: Program, st: LoopState, rows: list[LedgerRow]) -> str | None:
    """A finished run nobody decided yet (the session ended or was compacted after ./run.sh): the
    agent must end its turn first, or its next change would be bundled with this one and the
    result credited to the wrong change."""
    runs = [r for r in pending_runs(root, program, st, rows) if not r.in_progress]
    return messages.undecided(program, runs[-1]) if runs else None


def _next_experiments(root: Path) -> str:
    """scratchpad.md's 'Next experiments' section, on one line."""
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
            ensure_ledger(root, load_program(root))
        except ConfigError:
            pass
        journal.recover(root)
        st = read_state(root)
    snap_dir = state_dir(root) / "snapshots"
    snap_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(root)
    pad = Path(root) / SCRATCHPAD
    snap = {"at": now().isoformat(), "trigger": data.get("trigger"), "state": json.loads(st.model_dump_json()),
            "last_rows": [json.loads(r.model_dump_json()) for r in rows[-10:]],
            "scratchpad": pad.read_text(errors="replace") if pad.exists() else None}
    try:
        waiting = undecided_line(root, load_program(root), st, rows)
    except ConfigError:
        waiting = None
    snap["undecided"] = waiting
    write_atomic(snap_dir / f"precompact-{now():%Y%m%d-%H%M%S}.json", json.dumps(snap, indent=2))
    for old in sorted(snap_dir.glob("precompact-*.json"))[:-KEEP_SNAPSHOTS]:
        old.unlink(missing_ok=True)
    return messages.precompact_note(waiting)
