"""The branch is the durable record: every keep commit carries Autoresearch-* trailers with every
column of its row, and every decided run gets runs/NNNN/decision.json (its row). A missing, empty
or corrupt results.tsv is rebuilt from those two (`ensure`, under the loop lock, on every hook
call; `autoresearch ledger rebuild` by hand); a corrupt one is moved aside first, never lost.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ..atomic import set_aside, write_atomic
from ..gitops import git, trailers
from . import KARPATHY, LEDGER_FILE, OURS, LedgerError, LedgerRow, _parse, _read, _row_cells, _write, decided_runs, \
    ledger_path, read_rows

DECISION_FILE = "decision.json"
TRAILER_PREFIX = "Autoresearch-"

_TRAILER_NAMES = {"<metric>": "Value", "run_id": "Run", "prev_best": "Previous-Best"}


def _trailer_name(col: str) -> str:
    return _TRAILER_NAMES.get(col) or "-".join(w.capitalize() for w in col.split("_"))


def row_trailers(row: LedgerRow) -> dict[str, str]:
    """Every column of a keep row as commit trailers (commit and status excepted: the commit is
    the keep). Empty cells are `none` (numbers) or `-`."""
    cells = dict(zip(KARPATHY + OURS, _row_cells(row)))
    return {_trailer_name(k): v or ("-" if k in ("description", "note", "session", "sandbox") else "none")
            for k, v in cells.items() if k not in ("commit", "status")}


def _row_from_trailers(commit: str, t: dict[str, str]) -> LedgerRow | None:
    rec = {}
    for k in KARPATHY + OURS:
        v = t.get(TRAILER_PREFIX + _trailer_name(k))
        rec[k] = "" if v is None or v == "-" or (v == "none" and k not in ("description", "note")) else v
    rec.update(commit=commit[:7], status="keep")
    if not rec.get("run_id") or not rec.get("branch"):
        return None
    try:
        return _parse(rec, "<metric>", 0)
    except LedgerError:
        return None


def kept_rows_from_git(root: Path, branch: str | None = None) -> list[LedgerRow]:
    """The keep rows the run branches' commits record (oldest first): `branch`, or every run branch."""
    args = ["log", "--format=%H%x00%B%x01"] + ([branch] if branch else ["--branches=autoresearch/*"])
    p = git(Path(root), *args, "--", check=False)
    out = []
    for rec in p.stdout.split("\x01"):
        sha, _, msg = rec.strip().partition("\x00")
        t = trailers(msg)
        if sha and t.get(TRAILER_PREFIX + "Run") and t.get(TRAILER_PREFIX + "Branch"):
            row = _row_from_trailers(sha, t)
            if row is not None and (branch is None or row.branch == branch):
                out.append(row)
    return list(reversed(out))


def write_decision(root: Path, row: LedgerRow) -> None:
    """runs/NNNN/decision.json for every run the row covers (idempotent; a run folder that is gone
    is skipped). With the trailers, this is what a lost results.tsv is rebuilt from."""
    data = row.model_dump_json(indent=2) + "\n"
    for rid in dict.fromkeys(row.runs + [row.run_id]):
        d = Path(root) / "runs" / rid
        if d.is_dir() and not (d / DECISION_FILE).exists():
            write_atomic(d / DECISION_FILE, data)


def _decision_rows(root: Path) -> list[LedgerRow]:
    """Every runs/*/decision.json. One that cannot be parsed (truncated, not UTF-8) is moved aside
    (decision.json.corrupt-<time>), so the run's decision is written again from the ledger or the
    branch, and is never read as "undecided" forever."""
    runs = Path(root) / "runs"
    out = []
    for d in sorted(runs.iterdir(), key=lambda p: p.name) if runs.is_dir() else []:
        try:
            out.append(LedgerRow.model_validate_json((d / DECISION_FILE).read_bytes()))
        except OSError:
            continue
        except (ValidationError, ValueError):
            set_aside(d / DECISION_FILE)
    return out


def rebuild(root: Path, metric_name: str) -> tuple[list[LedgerRow], str]:
    """results.tsv from the run branches (keep rows, authoritative) and runs/*/decision.json (the
    rest). A file that cannot be read is moved aside first. Returns (rows, what was done).
    The caller holds the loop lock."""
    path = ledger_path(root)
    aside = ""
    try:
        header, old = _read(path)
    except LedgerError:
        header, old = None, []
        target = set_aside(path)
        aside = f"; the unreadable file was kept as {target.name}"
    by_run: dict[str, LedgerRow] = {}
    for r in old + _decision_rows(root):
        by_run.setdefault(r.run_id, r)
    kept = kept_rows_from_git(root)
    for r in kept:
        prev = by_run.get(r.run_id)
        by_run[r.run_id] = prev.model_copy(update={"status": "keep", "commit": r.commit}) if prev else r
    covered: set[str] = set()
    rows = []
    for r in sorted(by_run.values(), key=lambda r: (r.decided_at, int(r.run_id) if r.run_id.isdigit() else 0)):
        if r.run_id in covered:
            continue
        covered.update(r.runs)
        rows.append(r)
    if rows:
        _write(path, rows, header[1] if header else metric_name)
        for r in rows:                         # a decision.json set aside (or never written) comes back
            write_decision(root, r)
    return rows, (f"rebuilt {LEDGER_FILE}: {len(rows)} rows ({sum(r.status == 'keep' for r in rows)} kept, "
                  f"from {len(kept)} keep commits and runs/*/{DECISION_FILE}){aside}")


def ensure(root: Path, metric_name: str) -> str | None:
    """Rebuild results.tsv when it is missing, empty, unreadable, or lacks a keep the branches
    record or a decision runs/ records (a truncated file). Returns what was done (None when it
    was fine). The caller holds the loop lock."""
    try:
        rows = read_rows(root)
    except LedgerError:
        return rebuild(root, metric_name)[1]
    have = {r.run_id for r in rows if r.status == "keep"}
    decided = decided_runs(rows)
    missing = [r for r in kept_rows_from_git(root) if r.run_id not in have]
    lost = [r for r in _decision_rows(root) if r.run_id not in decided]
    if not missing and not lost:
        runs = Path(root) / "runs"
        for r in rows:                         # a decision.json set aside (damaged) is written again
            if any((runs / x).is_dir() and not (runs / x / DECISION_FILE).exists() for x in r.runs):
                write_decision(root, r)
        return None
    return rebuild(root, metric_name)[1]
