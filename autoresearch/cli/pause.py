"""`autoresearch pause [REASON]` and `autoresearch resume`: let the agent stop at its next turn end,
and lift that pause again (the deadline clock moves only with --restart-clock)."""
from __future__ import annotations

from pathlib import Path


def pause(root: Path, reason: str, update: bool) -> int:
    from ..loop.state import request_pause
    from ..record import cancel_wave
    from ..run import discard_all
    now, before = request_pause(root, reason, update=update)
    cancelled, stopped = cancel_wave(root)
    discard_all(root)                                 # no warm next run waits through a pause
    if cancelled or stopped:
        print(f"wave cancelled: {len(cancelled)} queued runs cancelled ({', '.join(cancelled) or '-'}), "
              f"{len(stopped)} running ones interrupted ({', '.join(stopped) or '-'}); none becomes a result.")
    since = f" since {before.at:%Y-%m-%d %H:%M} UTC" if before and before.at else ""
    if before is not None and not update:
        print(f"already paused{since} (reason: {before.reason or 'none given'}); the pause is unchanged. "
              "`autoresearch pause --update [REASON]` replaces its reason; `autoresearch resume` lifts it.")
    elif before is not None:
        print(f"still paused{since}; reason updated: {before.reason or 'none'} -> {now.reason or 'none'}")
    else:
        print("paused: the agent may stop at its next turn end (a finished run is still decided first). "
              "`autoresearch resume` to go on.")
    return 0


def resume(root: Path, restart_clock: bool) -> int:
    from ..ledger import read_rows
    from ..loop.allowance import Tally, remaining
    from ..loop.state import lift_pause, paused
    from ..program import load_program
    from .status import shown_branch
    lifted, st = lift_pause(root, restart_clock=restart_clock)
    first = ("resumed: the pause is lifted." if lifted is not None
             else "not paused: there was no pause to lift.")
    program = load_program(root)
    rows = read_rows(root)
    bud = remaining(program, st, Tally(rows, shown_branch(root, rows)), paused(root))
    if restart_clock:
        clock = (f" The deadline clock restarted at {st.started_at:%Y-%m-%d %H:%M} UTC"
                 + (f": the loop stops at {bud.deadline_at:%Y-%m-%d %H:%M} UTC." if bud.deadline_at else "."))
    elif bud.deadline_at is not None:
        clock = f" The deadline is unchanged: {bud.deadline_at:%Y-%m-%d %H:%M} UTC"
        if bud.hours_left is not None and bud.hours_left <= 0:
            clock += " (already passed: `autoresearch resume --restart-clock` gives the loop a new one)"
        clock += "."
    else:
        clock = " The deadline clock is unchanged."
    tail = " Start the agent again if it stopped (e.g. `claude -c`)." if lifted is not None or restart_clock else ""
    print(first + clock + tail)
    return 0
