#!/usr/bin/env python3
"""Claude Code SessionStart hook (startup, resume, compact, clear): inject the loop's state
(phase, best, last results, budget, the scratchpad's next steps, a finished run not decided yet)
as additionalContext, and
finish any decision a killed Stop hook left half done. Never blocks a session: on an error it
says so in the context and logs the traceback."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loop_hook import run  # noqa: E402


def on_error(root, exc, n):
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return {"hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext":
            f"autoresearch: the loop state could not be read ({first}); read scratchpad.md and results.tsv, "
            f"then follow program.md."}}


if __name__ == "__main__":
    run("SessionStart", "session_start_hook", on_error)
