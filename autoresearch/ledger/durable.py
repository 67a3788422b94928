"""The branch is the durable record: every keep commit carries Autoresearch-* trailers with every
column of its row, and every decided run gets runs/NNNN/decision.json (its row). A missing, empty
or corrupt results.tsv is rebuilt from those two (`ensure`, under the loop lock, on every hook
call; `autoresearch ledger rebuild` by hand); a corrupt one is moved aside first, never lost.
"""
from __future__ import annotations

import json
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


def _decision_rows(root: Path, skip: set[str] | frozenset[str] = frozenset(),
                   good: list[str] | None = None) -> list[LedgerRow]:
    """Every runs/*/decision.json (but those of the runs in `skip`). One that cannot be parsed
    (truncated, not UTF-8) is moved aside (decision.json.corrupt-<time>), so the run's decision is
    written again from the ledger or the branch, and is never read as "undecided" forever.
    `good` collects the names of the run folders whose file parsed."""
    runs = Path(root) / "runs"
    out = []
    for d in sorted(runs.iterdir(), key=lambda p: p.name) if runs.is_dir() else []:
        if d.name in skip:
            continue
        try:
            out.append(LedgerRow.model_validate_json((d / DECISION_FILE).read_bytes()))
        except OSError:
            continue
        except (ValidationError, ValueError):
            set_aside(d / DECISION_FILE)
            continue
        if good is not None:
            good.append(d.name)
    return out


# .autoresearch/ (the loop's trusted state; the ledger may not import record.layout's name for it)
STAMPS_FILE = Path(".autoresearch") / "decision-stamps.json"


def _stamp(path: Path) -> list[int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return [s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]   # ctime: no one can set it back


def _checked(root: Path, decided: set[str]) -> tuple[set[str], dict[str, list[int]], dict]:
    """The decided runs whose decision.json is exactly the file that parsed at an earlier check
    (same inode, size, mtime and ctime, as .autoresearch/decision-stamps.json recorded): ensure() need not
    parse those again, so a Stop at 1,000 rows of history stats 1,000 files instead of parsing them.
    The stamps are trusted state (written here, under the loop lock; the agent cannot write
    .autoresearch/); a stamp that no longer matches -- the file was truncated, replaced, set aside --
    means the file is parsed again. A lost or unreadable stamps file means everything is parsed."""
    try:
        old = json.loads((Path(root) / STAMPS_FILE).read_text())
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    runs = Path(root) / "runs"
    same, now = set(), {}
    for rid in decided:
        st = _stamp(runs / rid / DECISION_FILE)
        if st is not None:
            now[rid] = st
            if old.get(rid) == st:
                same.add(rid)
    return same, now, old


def _save_stamps(root: Path, stamps: dict[str, list[int]]) -> None:
    try:
        write_atomic(Path(root) / STAMPS_FILE, json.dumps(stamps, separators=(",", ":")) + "\n")
    except OSError:
        pass                                   # only a cache: the next call parses again


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
    was fine). The caller holds the loop lock.

    Each call reads what can have changed, not the whole history: the decision.json of runs the
    ledger does not cover (a truncated ledger), and of covered runs only those whose file changed
    since it last parsed (_checked); a damaged one is set aside and written again from its row."""
    try:
        rows = read_rows(root)
    except LedgerError:
        return rebuild(root, metric_name)[1]
    have = {r.run_id for r in rows if r.status == "keep"}
    decided = decided_runs(rows)
    missing = [r for r in kept_rows_from_git(root) if r.run_id not in have]
    same, stamps, old = _checked(root, decided)
    good: list[str] = []
    lost = [r for r in _decision_rows(root, same, good) if r.run_id not in decided]
    if not missing and not lost:
        runs = Path(root) / "runs"
        for r in rows:                         # a decision.json set aside (damaged) is written again
            if any(x not in same and (runs / x).is_dir() and not (runs / x / DECISION_FILE).exists()
                   for x in r.runs):
                write_decision(root, r)
        fresh = {rid: st for rid in same | (set(good) & decided)
                 if (st := stamps.get(rid) if rid in same else _stamp(runs / rid / DECISION_FILE)) is not None}
        if fresh != old:
            _save_stamps(root, fresh)
        return None
    return rebuild(root, metric_name)[1]
