"""`autoresearch ledger rebuild`: write results.tsv again from the durable record (the run branches'
keep commits and runs/*/decision.json), under the loop's lock; a corrupt file is kept aside."""
from __future__ import annotations

from pathlib import Path


def rebuild(root: Path) -> int:
    from ..ledger.durable import rebuild as rebuild_ledger
    from ..loop.state import loop_lock
    from ..program import load_program
    program = load_program(root)
    with loop_lock(root):
        rows, what = rebuild_ledger(root, program.metric.name)
    print(what)
    return 0
