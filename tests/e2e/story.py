"""The verbs of a research session, for scripts that read like one.

Built on the generic turns in fake_api; these know this project's conventions
(`./run.sh -m`, the scratchpad's sections, the constants at the top of train.py).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.fake_api import Turn, bash, edit


def run_experiment(why: str) -> Turn:
    """The only way the agent runs code: one sandboxed experiment, with a reason."""
    return bash(f'./run.sh -m "{why}"', description="run one experiment")


def change(old: str, new: str) -> Turn:
    """Edit train.py (a hyperparameter line, say)."""
    return edit("train.py", old, new)


def note(line: str) -> Turn:
    """Add a line to the scratchpad's experiment log (just above the Hypotheses section),
    which the Stop hook requires before it decides."""
    return edit("scratchpad.md", "\n## Hypotheses", f"\n{line}\n\n## Hypotheses")


# ---------------------------------------------------------------------------
# Reading what the loop left behind


@dataclass
class Row:
    """One results.tsv row, karpathy's columns first (the second is named after the metric)."""
    commit: str
    value: str
    memory_gb: str
    status: str
    description: str
    extra: dict[str, str]


def results(root: Path, metric: str = "val_bpb") -> list[Row]:
    path = root / "results.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = rows[0], rows[1:]
    assert header[:5] == ["commit", metric, "memory_gb", "status", "description"], header
    return [Row(*r[:5], extra=dict(zip(header[5:], r[5:]))) for r in body]


def runs(root: Path) -> dict[str, dict[str, Any]]:
    """runs/NNNN -> its metrics.json."""
    out: dict[str, dict[str, Any]] = {}
    for d in sorted((root / "runs").glob("[0-9]*")):
        m = d / "metrics.json"
        out[d.name] = json.loads(m.read_text()) if m.is_file() else {}
    return out


def as_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
