"""results.tsv: one row per decision the loop made, kept or not. Written only by trusted code.

Columns, in order (tab-separated, one header line). karpathy/autoresearch's five first, so
his tools read ours:

    commit        short sha. keep: the commit that recorded the change; discard/crash: the
                  commit it was tried on top of (its diff is runs/<run_id>/diff.patch)
    <metric>      the metric, named as in program.md (e.g. val_bpb): the mean over `runs`.
                  EMPTY for a crash -- never 0.0, which would look like the best of a
                  minimised metric
    memory_gb     peak memory of the run (empty when unknown)
    status        keep | discard | crash
    description   the runner's `-m` message (tabs/newlines flattened)
    --- ours ---
    experiment    1-based number on this run branch (the baseline is 1)
    run_id        the runs/NNNN folder that decided it (the last of `runs`)
    runs          every run the decision covers, comma-separated (a confirmed win has 2+)
    run_status    ok | crash | timeout | oom | invalid | interrupted | missing (of run_id)
    phase         program.md's phase at decision time
    branch        the run branch (autoresearch/<date-time>)
    seeds         comma-separated seeds of `runs`
    delta         metric - prev_best (raw; negative is better when minimising); empty if n/a
    prev_best     the best before this decision (empty before the baseline)
    best          the best after this decision
    threshold     the noise threshold used: max(min_improvement, k_sigma * sigma)
    sigma         the calibrated seed noise (empty if not calibrated)
    train_seconds TRAIN's agent compute of run_id (from when its code started; before issue 24 the stage's wall time)
    sandbox       docker | bwrap | none
    session       the Claude Code session that ended its turn
    note          baseline | confirmed | superseded | unconfirmed | re-measured the best | contended | ...
    decided_at    ISO 8601, UTC
    snapshot      identity.snapshot (sha256) of the editable set's code that ran
    fingerprint   identity.Fingerprint.key: rows are compared only within one fingerprint

The branch is the durable record (durable.py: trailers on keep commits, runs/NNNN/decision.json;
a lost results.tsv is rebuilt from them).

Rows are idempotent by run id: a run that appears in any row's `runs` is decided, and
`append_rows` skips rows already there, so a hook killed halfway and run again never
double counts. Every write rewrites the whole file through a temp file + rename
(atomic.write_atomic): a reader or a kill at any instant sees the old or the new file,
never a torn line. Callers hold the loop lock (`state.loop_lock`) around writes.
"""
from __future__ import annotations

import csv
import os
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..atomic import write_atomic
from ..gitops import current_branch, is_run_branch
from ..program import Metric

LEDGER_FILE = "results.tsv"
Outcome = Literal["keep", "discard", "crash"]

KARPATHY = ["commit", "<metric>", "memory_gb", "status", "description"]
OURS = ["experiment", "run_id", "runs", "run_status", "phase", "branch", "seeds", "delta",
        "prev_best", "best", "threshold", "sigma", "train_seconds", "sandbox", "session",
        "note", "decided_at", "snapshot", "fingerprint"]


class LedgerError(ValueError):
    """results.tsv cannot be read; the message names the line and the fix."""


FIX = (" -- `autoresearch ledger rebuild` keeps it aside and writes it again from the run branches and "
       "runs/*/decision.json (the next Stop does the same)")


class LedgerRow(BaseModel):
    """One decision. `value` is the metric column (its header is the metric's name)."""
    model_config = ConfigDict(extra="forbid")

    commit: str
    value: float | None
    memory_gb: float | None = None
    status: Outcome
    description: str = ""
    experiment: int
    run_id: str
    runs: list[str]
    run_status: str
    phase: str
    branch: str
    seeds: list[int] = []
    delta: float | None = None
    prev_best: float | None = None
    best: float | None = None
    threshold: float | None = None
    sigma: float | None = None
    train_seconds: float | None = None
    sandbox: str = ""
    session: str = ""
    note: str = ""
    decided_at: datetime
    snapshot: str = ""                   # "" in rows written before snapshots existed (matches any)
    fingerprint: str = ""                # "" likewise


def columns(metric_name: str) -> list[str]:
    return [metric_name if c == "<metric>" else c for c in KARPATHY] + OURS


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat(timespec="seconds")
    return " ".join(str(v).split())          # no tabs or newlines inside a cell


def _row_cells(row: LedgerRow) -> list[str]:
    d = row.model_dump()
    return [_fmt(d["value"] if c == "<metric>" else d[c]) for c in KARPATHY + OURS]


def _parse(rec: dict[str, str], metric_col: str, line: int) -> LedgerRow:
    def num(k: str) -> float | None:
        s = (rec.get(k) or "").strip()
        return float(s) if s else None

    try:
        runs = [r for r in (rec.get("runs") or rec.get("run_id") or "").split(",") if r]
        return LedgerRow(
            commit=rec.get("commit") or "",
            value=num(metric_col),
            memory_gb=num("memory_gb"),
            status=rec.get("status") or "",
            description=rec.get("description") or "",
            experiment=int(rec.get("experiment") or 0),
            run_id=rec.get("run_id") or (runs[-1] if runs else ""),
            runs=runs,
            run_status=rec.get("run_status") or "",
            phase=rec.get("phase") or "",
            branch=rec.get("branch") or "",
            seeds=[int(s) for s in (rec.get("seeds") or "").split(",") if s.strip()],
            delta=num("delta"), prev_best=num("prev_best"), best=num("best"),
            threshold=num("threshold"), sigma=num("sigma"), train_seconds=num("train_seconds"),
            sandbox=rec.get("sandbox") or "", session=rec.get("session") or "",
            note=rec.get("note") or "",
            decided_at=rec.get("decided_at") or datetime.fromtimestamp(0, timezone.utc),
            snapshot=rec.get("snapshot") or "", fingerprint=rec.get("fingerprint") or "",
        )
    except (ValidationError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise LedgerError(f"{LEDGER_FILE}: line {line}: cannot parse the row: {first}{FIX}") from None


# (path) -> (the file's stat stamp, header, rows): one Stop call reads results.tsv several times
# (context, allowance, pruning, the journal's append), and parsing a night's 1,000 rows costs ~0.1 s
# each time. Every write replaces the file by rename (write_atomic), so a changed file has a new
# inode, mtime or size; an unchanged stamp means the very bytes that were parsed. Callers get their
# own list; the rows themselves are shared and must not be changed in place (none is).
_CACHE: dict[str, tuple[tuple[int, int, int, int], list[str] | None, list[LedgerRow]]] = {}


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def _read(path: Path) -> tuple[list[str] | None, list[LedgerRow]]:
    stamp = _stamp(path)
    hit = _CACHE.get(str(path))
    if stamp is not None and hit is not None and hit[0] == stamp:
        return (list(hit[1]) if hit[1] is not None else None), list(hit[2])
    header, rows = _parse_file(path)
    if stamp is not None and stamp == _stamp(path):        # not replaced while it was parsed
        _CACHE[str(path)] = (stamp, header, rows)
    return (list(header) if header is not None else None), list(rows)


def _parse_file(path: Path) -> tuple[list[str] | None, list[LedgerRow]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, []
    except UnicodeDecodeError as e:
        raise LedgerError(f"{LEDGER_FILE}: byte {e.start} is not UTF-8 (a damaged file){FIX}") from None
    except OSError as e:
        raise LedgerError(f"{LEDGER_FILE}: cannot be read ({e.strerror}){FIX}") from None
    if text.strip() and not text.endswith("\n"):        # every write ends with one: the file was cut short
        raise LedgerError(f"{LEDGER_FILE}: line {text.count(chr(10)) + 1} is cut short (a truncated file){FIX}")
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader, None)
        if not header:
            return None, []
        if len(header) < 2 or header[0] != "commit":
            raise LedgerError(f"{LEDGER_FILE}: line 1: expected a header starting with 'commit'{FIX}")
        rows = [_parse(dict(zip(header, cells)), header[1], i)
                for i, cells in enumerate(reader, start=2) if any(c.strip() for c in cells) and _whole(header, cells, i)]
    except csv.Error as e:
        raise LedgerError(f"{LEDGER_FILE}: line {reader.line_num}: {e}{FIX}") from None
    return header, rows


def _whole(header: list[str], cells: list[str], line: int) -> bool:
    """A row with fewer cells than the header lost its end (a truncated or hand-cut line)."""
    if len(cells) < len(header):
        raise LedgerError(f"{LEDGER_FILE}: line {line} has {len(cells)} of {len(header)} columns{FIX}")
    return True


def ledger_path(root: Path) -> Path:
    return Path(root) / LEDGER_FILE


def read_rows(root: Path) -> list[LedgerRow]:
    """Every row of results.tsv, in file order ([] when it does not exist yet)."""
    return _read(ledger_path(root))[1]


def decided_runs(rows: list[LedgerRow]) -> set[str]:
    return {r for row in rows for r in row.runs}


def append_rows(root: Path, new: list[LedgerRow], metric_name: str) -> list[LedgerRow]:
    """Add the rows whose run_id is not in the ledger yet; returns the ones written.
    The caller holds the loop lock."""
    path = ledger_path(root)
    header, rows = _read(path)
    have = decided_runs(rows) | {r.run_id for r in rows}
    todo = [r for r in new if r.run_id not in have]
    if not todo:
        return []
    _write(path, rows + todo, header[1] if header else metric_name)
    return todo


def begin(root: Path, metric_name: str) -> bool:
    """The ledger's header, when there is no ledger yet (True when this wrote it). A warm run's model
    servers (run/warm.py) hide results.tsv only where it exists when they start, so a ledger made
    after would stop them being used. Never replaces a file: a writer that got there first wins."""
    path = ledger_path(root)
    if path.exists():
        return False
    tmp = path.with_name(f".{LEDGER_FILE}.{os.getpid()}.new")
    tmp.write_text("\t".join(columns(metric_name)) + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)                             # exclusive: never over a row another writer made
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, rows: list[LedgerRow], metric_col: str) -> None:
    out = io.StringIO()
    out.write("\t".join(columns(metric_col)) + "\n")
    for r in rows:
        out.write("\t".join(_row_cells(r)) + "\n")
    write_atomic(path, out.getvalue())


def branch_rows(rows: list[LedgerRow], branch: str | None) -> list[LedgerRow]:
    return [r for r in rows if branch and r.branch == branch]


REMEASURE = "re-measured the best"         # a row's note: a run of the best's own snapshot


def kept_run_ids(root: Path, rows: list[LedgerRow] | None = None) -> set[str]:
    """Every run a keep covers, by the ledger or by any run branch: their checkpoints are never deleted."""
    from .durable import kept_rows_from_git
    rows = read_rows(root) if rows is None else rows
    return {x for r in rows + kept_rows_from_git(root) if r.status == "keep" for x in r.runs + [r.run_id]}


def best_of(values: list[float], metric: Metric) -> float | None:
    best = None
    for v in values:
        if v is not None and not math.isnan(v) and (best is None or metric.better(v, best)):
            best = v
    return best


def best_row(rows: list[LedgerRow], metric: Metric) -> LedgerRow | None:
    """The kept row with the best value (the first of equals): what status, plot and the
    end-of-night summary call "the best". Decisions use best_value (per fingerprint, re-measured)."""
    best = None
    for r in rows:
        if r.status == "keep" and r.value is not None and (best is None or metric.better(r.value, best.value)):
            best = r
    return best


def running_best(rows: list[LedgerRow], metric: Metric) -> list[LedgerRow]:
    """The keeps that set a new best, in order: the frontier."""
    out: list[LedgerRow] = []
    for r in rows:
        if r.status == "keep" and r.value is not None and (not out or metric.better(r.value, out[-1].value)):
            out.append(r)
    return out


def comparable(rows: list[LedgerRow], branch: str | None, fingerprint: str | None,
               snapshot: str | None) -> list[LedgerRow]:
    """The rows that measured the branch's best (its tip's snapshot) under this fingerprint:
    its keep and every re-measurement. Rows from before snapshots existed match anything."""
    def ok(have: str, want: str | None) -> bool:
        return not have or not want or have == want
    return [r for r in branch_rows(rows, branch) if r.value is not None
            and (r.status == "keep" or r.note.startswith(REMEASURE))
            and ok(r.fingerprint, fingerprint) and ok(r.snapshot, snapshot)]


def best_value(rows: list[LedgerRow], metric: Metric, branch: str | None, fingerprint: str | None = None,
               snapshot: str | None = None) -> float | None:
    """The best on `branch` under `fingerprint`: the mean of every measurement of its tip's
    snapshot there (a re-run of the best re-measures it). Without a snapshot, the best kept value."""
    rs = comparable(rows, branch, fingerprint, snapshot)
    if not rs:
        return None
    if snapshot is None:
        return best_of([r.value for r in rs if r.value is not None], metric)
    n = sum(len(r.runs) or 1 for r in rs)
    return sum((r.value or 0.0) * (len(r.runs) or 1) for r in rs) / n


def current_best(root: Path, metric: Metric, branch: str | None = None, fingerprint: str | None = None,
                 snapshot: str | None = None) -> float | None:
    """The best on the current run branch (under `fingerprint`, of `snapshot` when given); None
    before the baseline (or when HEAD is not a run branch: the first decision there starts a
    fresh branch and a baseline). The branch's commits are read too, so a lost results.tsv
    cannot turn the next experiment into a 'baseline' that is kept whatever it scores."""
    branch = branch or current_branch(Path(root))
    if not is_run_branch(branch):
        return None
    from .durable import kept_rows_from_git
    rows = read_rows(root)
    have = {r.run_id for r in rows}
    rows = rows + [r for r in kept_rows_from_git(Path(root), branch) if r.run_id not in have]
    return best_value(rows, metric, branch, fingerprint, snapshot)
