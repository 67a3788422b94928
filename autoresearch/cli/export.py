"""`autoresearch export mlflow`: every decided experiment as one MLflow run, from trusted host code.

What is exported comes from the ledger (results.tsv) checked against each run's SIGNED record
(run.metrics.load_verified, never a bare metrics.json): a row whose record is unsigned, altered
or disagrees with the ledger's value is skipped with a warning, not exported as a result.
Artifacts are an allow-list -- diff.patch and train.log of each run the row covers -- read
without following links; eval.log is never exported (it may quote held-out bytes).

Idempotent: each MLflow run carries the tag autoresearch.key (the project's first commit, the
run branch, the deciding run id and the decision time); a key already FINISHED in the
experiment is left alone, a half-written one (an export killed midway) is deleted and redone.

The default store is local and needs no server: SQLite at .autoresearch/mlflow/mlflow.db with
artifacts beside it (MLflow >= 3.7 defaults to SQLite and refuses the old ./mlruns file store
unless MLFLOW_ALLOW_FILE_STORE=true). MLflow's usage telemetry is switched off: no network
unless --tracking-uri (or $MLFLOW_TRACKING_URI) names a server.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .. import __version__
from ..gitops import git
from ..ledger import LedgerRow, read_rows
from ..program import load_program
from ..record import RunMetrics, load_verified
from .jsonout import SCHEMA_VERSION

INSTALL = ("autoresearch export mlflow needs the optional `mlflow` extra; install it with:\n"
           "  .venv/bin/python -m pip install -e '.[mlflow]'     (in this checkout)\n"
           "  pip install 'autoresearch[mlflow]'                 (elsewhere)")
ARTIFACTS = ("diff.patch", "train.log")            # never eval.log: it may quote held-out bytes
MAX_ARTIFACT_BYTES = 64 << 20
MAX_PARAM = 6000                                   # MLflow's limit on a param value
STATUS_CODE = {"keep": 1.0, "discard": 0.0, "crash": -1.0}
TOLERANCE = 1e-5                                   # results.tsv keeps 6 decimals


class Exported(BaseModel):
    """What became of one ledger row."""
    experiment: int
    branch: str
    run_id: str
    status: str                                    # keep | discard | crash
    action: Literal["logged", "existing", "skipped"]
    mlflow_run_id: str | None = None
    reason: str | None = None                      # why a row was skipped


class ExportReport(BaseModel):
    schema_version: int = SCHEMA_VERSION             # cli/jsonout.py: bumped when a field changes meaning
    tracking_uri: str
    experiment: str
    project: str                                   # the project's first commit (short)
    logged: int
    existing: int
    skipped: int
    rows: list[Exported]


# --- the trusted side: ledger rows checked against the signed records ------------------------------

def verify(root: Path, row: LedgerRow) -> tuple[dict[str, RunMetrics] | None, str | None]:
    """The signed records of the row's runs, or (None, why the row cannot be trusted). A crash
    whose record was never written (run_status missing) is exported without one."""
    records: dict[str, RunMetrics] = {}
    for rid in row.runs or [row.run_id]:
        m, problem = load_verified(root / "runs" / rid)
        if m is None:
            if row.status == "crash" and problem and problem.endswith("is missing"):
                continue
            return None, problem
        records[rid] = m
    if row.status != "crash":
        oks = [m.metric_value for m in records.values() if m.status == "ok" and m.metric_value is not None]
        if not oks or row.value is None:
            return None, f"results.tsv says {row.status} but the signed records of runs {','.join(row.runs)} " \
                         f"measured no value"
        mean = statistics.fmean(oks)
        if abs(mean - row.value) > TOLERANCE * max(1.0, abs(mean)):
            return None, f"results.tsv's value {row.value:g} is not what the signed records measured ({mean:g})"
    return records, None


def lineage_id(root: Path) -> str:
    """The project's first commit (short): stable when the folder moves, the same in every clone."""
    roots = git(root, "rev-list", "--max-parents=0", "HEAD", check=False).stdout.split()
    return sorted(roots)[0][:12] if roots else Path(root).resolve().name


def row_key(project: str, row: LedgerRow) -> str:
    return f"{project}:{row.branch}:{row.run_id}:{row.decided_at:%Y%m%dT%H%M%SZ}"


def _params(row: LedgerRow, records: dict[str, RunMetrics]) -> dict[str, str]:
    last = records.get(row.run_id)
    p = {"description": row.description, "phase": row.phase, "branch": row.branch, "commit": row.commit,
         "snapshot": row.snapshot, "sandbox": row.sandbox, "seeds": ",".join(map(str, row.seeds)),
         "runs": ",".join(row.runs), "run_status": row.run_status, "note": row.note, "fingerprint": row.fingerprint}
    if last is not None:
        p.update(metric=last.metric_name, direction=last.direction, mode=last.mode,
                 budget_seconds=f"{last.budget_seconds:g}", device=last.device or "")
        if last.fingerprint is not None:
            p.update({f"fingerprint.{k}": str(v) for k, v in last.fingerprint.model_dump().items()})
    return {k: (v if len(v) <= MAX_PARAM else v[:MAX_PARAM - 1] + "…") for k, v in p.items() if v}


def _metrics(row: LedgerRow, records: dict[str, RunMetrics], metric_name: str) -> dict[str, float]:
    last = records.get(row.run_id)
    m: dict[str, float | None] = {
        metric_name: row.value, "status_code": STATUS_CODE[row.status], "delta": row.delta,
        "prev_best": row.prev_best, "best": row.best, "threshold": row.threshold, "sigma": row.sigma,
        "train_seconds": row.train_seconds, "peak_memory_gb": row.memory_gb, "n_runs": float(len(row.runs))}
    if last is not None:
        m.update(eval_seconds=last.eval_seconds, steps_per_s=last.steps_per_s)
        m["peak_memory_gb"] = last.peak_memory_gb if last.peak_memory_gb is not None else row.memory_gb
    return {k: float(v) for k, v in m.items() if v is not None}


def _tags(row: LedgerRow, project: str) -> dict[str, str]:
    return {"autoresearch.key": row_key(project, row), "autoresearch.project": project,
            "autoresearch.status": row.status, "autoresearch.run_id": row.run_id,
            "autoresearch.runs": ",".join(row.runs), "autoresearch.experiment": str(row.experiment),
            "autoresearch.branch": row.branch, "autoresearch.version": __version__,
            "mlflow.runName": f"{row.experiment:03d} {' '.join(row.description.split())[:60]}".strip(),
            "mlflow.note.content": row.description}


def copy_artifact(src: Path, dest_dir: Path) -> tuple[Path | None, str | None]:
    """A regular file from a run folder, read without following a link, into dest_dir."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{src.parent.name}/{src.name} not exported ({e.strerror or e}: a link?)"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, f"{src.parent.name}/{src.name} not exported (not a regular file)"
        if st.st_size > MAX_ARTIFACT_BYTES:
            return None, f"{src.parent.name}/{src.name} not exported ({st.st_size} bytes, over the limit)"
        dest_dir.mkdir(parents=True, exist_ok=True)
        (dest_dir / src.name).write_bytes(f.read())
    return dest_dir / src.name, None


# --- the MLflow side ------------------------------------------------------------------------------

def default_uri(root: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the project's local store."""
    d = (root / ".autoresearch" / "mlflow").resolve()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}", (d / "artifacts").as_uri()


def _experiment(client, name: str, artifacts: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifacts)
    if exp.lifecycle_stage != "active":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _existing(client, eid: str, project: str) -> dict[str, tuple[str, str]]:
    """autoresearch.key -> (MLflow run id, status) of this project's runs in the experiment."""
    found: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_runs([eid], filter_string=f"tags.`autoresearch.project` = '{project}'",
                                  max_results=1000, page_token=token)
        for r in page:
            if (key := r.data.tags.get("autoresearch.key")) is not None:
                found[key] = (r.info.run_id, r.info.status)
        token = page.token
        if not token:
            return found


def _log(client, eid: str, root: Path, row: LedgerRow, records: dict[str, RunMetrics], project: str,
         metric_name: str) -> tuple[str, list[str]]:
    """One MLflow run for the row; FINISHED (FAILED for a crash) only once everything is logged."""
    from mlflow.entities import Metric, Param, RunTag
    first = min((m.started_at for m in records.values()), default=row.decided_at)
    run = client.create_run(eid, start_time=int(first.timestamp() * 1000), tags=_tags(row, project))
    rid = run.info.run_id
    t = int(row.decided_at.timestamp() * 1000)
    client.log_batch(rid, metrics=[Metric(k, v, t, row.experiment) for k, v in _metrics(row, records,
                                                                                          metric_name).items()],
                     params=[Param(k, v) for k, v in _params(row, records).items()])
    for r in records.values():
        if r.metric_value is not None:
            client.log_batch(rid, metrics=[Metric(f"{metric_name}.run", r.metric_value, t, int(r.run_id))])
    warnings = []
    with tempfile.TemporaryDirectory(prefix="autoresearch-export-") as tmp:
        for run_id in row.runs or [row.run_id]:
            for name in ARTIFACTS:
                path, problem = copy_artifact(root / "runs" / run_id / name, Path(tmp) / run_id)
                if problem:
                    warnings.append(problem)
                if path is not None:
                    client.log_artifact(rid, str(path), artifact_path=f"runs/{run_id}")
    end = max((m.finished_at for m in records.values() if m.finished_at), default=row.decided_at)
    client.set_terminated(rid, status="FAILED" if row.status == "crash" else "FINISHED",
                          end_time=int(max(end, row.decided_at).timestamp() * 1000))
    return rid, warnings


def export(root: Path, rows: list[LedgerRow], client, experiment: str, artifacts: str | None,
           metric_name: str, warn=print) -> list[Exported]:
    """Log each row not already in the experiment; returns what became of every row."""
    project = lineage_id(root)
    eid = _experiment(client, experiment, artifacts)
    have = _existing(client, eid, project)
    out = []
    for row in rows:
        base = dict(experiment=row.experiment, branch=row.branch, run_id=row.run_id, status=row.status)
        key = row_key(project, row)
        if key in have and have[key][1] in ("FINISHED", "FAILED"):
            out.append(Exported(action="existing", mlflow_run_id=have[key][0], **base))
            continue
        records, problem = verify(root, row)
        if records is None:
            warn(f"skipped experiment {row.experiment} (run {row.run_id}): {problem}")
            out.append(Exported(action="skipped", reason=problem, **base))
            continue
        if key in have:                                    # half-written by an export that was killed
            client.delete_run(have[key][0])
        rid, notes = _log(client, eid, root, row, records, project, metric_name)
        for n in notes:
            warn(f"experiment {row.experiment}: {n}")
        out.append(Exported(action="logged", mlflow_run_id=rid, **base))
    return out


def main(root: Path, tracking_uri: str | None = None, experiment: str | None = None, branch: str | None = None,
         as_json: bool = False) -> int:
    program = load_program(root)
    rows = [r for r in read_rows(root) if branch is None or r.branch == branch]
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"         # no usage pings from trusted host code
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        import sqlalchemy  # noqa: F401  (the local SQLite store needs it)
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 2
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri, artifacts = (tracking_uri, None) if tracking_uri else \
        (os.environ["MLFLOW_TRACKING_URI"], None) if os.environ.get("MLFLOW_TRACKING_URI") else default_uri(root)
    name = experiment or f"autoresearch/{root.resolve().name}"

    def warn(msg: str) -> None:
        print(f"autoresearch export: {msg}", file=sys.stderr)
    try:
        done = export(root, rows, MlflowClient(tracking_uri=uri), name, artifacts, program.metric.name, warn)
    except MlflowException as e:
        print(f"autoresearch export: MLflow at {uri}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    count = {a: sum(1 for d in done if d.action == a) for a in ("logged", "existing", "skipped")}
    rep = ExportReport(tracking_uri=uri, experiment=name, project=lineage_id(root), rows=done, **count)
    if as_json:
        print(json.dumps(rep.model_dump(mode="json"), indent=2))
    else:
        print(f"{rep.logged} logged, {rep.existing} already there, {rep.skipped} skipped "
              f"-> MLflow experiment {name!r} at {uri}")
        if rep.skipped:
            print("skipped rows are not exported as results: their signed records do not vouch for them")
    return 0
