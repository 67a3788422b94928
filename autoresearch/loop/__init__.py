"""The loop stage: after each turn of the agent, decide the experiment it ran (keep: commit; discard
or crash: revert; a row in results.tsv either way), then let it stop or send it on. hooks/loop_hook.py
calls the three hooks here as `loop.<handler>`.

- stop.py       the Stop hook's flow (its overview and failure semantics are at its top)
- session.py    the SessionStart and PreCompact hooks
- context.py    what one Stop call knows (HEAD, run branch, code snapshots, pending runs, sigma)
- decide.py     the verdict table, a pure function
- record.py     writing a decision down (ledger rows, commit or revert) through the journal
- journal.py    a decision applied so that a kill at any instant is finished by the next call
- tipcheck.py   the branch tip holds its last keep's code (a commit from a stale index is undone)
- messages.py   every word the loop says to the agent and to the human
- allowance.py  how much loop is left (experiments, deadline, pause)
- phases.py     moving to the next phase when one is spent
- runscan.py    the runs in runs/: undecided, still running, contended
- state.py      .autoresearch/state.json, the pause file and the loop lock

Contract: every write to the ledger, the state and the run branch happens under the loop lock
(state.loop_lock); a hook never raises for a setup problem the human must fix, it says so.
"""
from .session import pre_compact_hook, session_start_hook
from .stop import stop_hook

__all__ = ["stop_hook", "session_start_hook", "pre_compact_hook"]
