"""`autoresearch export mlflow` on a real project whose runs were decided by the real Stop hook,
exported to a local MLflow store (SQLite, and the legacy file store) and read back with MLflow's own
client: one run per ledger row, the right params/metrics/tags, the diff but never eval.log, nothing
duplicated by a second export, and a record that does not verify skipped rather than exported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoresearch.cli import export as export_mod
from autoresearch.record.metrics import RunMetrics
from loop_support import Project, clean_env

if os.environ.get("CI"):
    import mlflow                        # the test extra carries it: in CI a missing one fails, never skips
else:
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

HELD_OUT = "HELD-OUT TEST BYTES: the quick brown fox"


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Project:
    """Four decisions: the baseline (keep), a win (keep), a worse idea (discard), a crash."""
    p = Project.create(tmp_path_factory.mktemp("export") / "proj")
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 96")
    p.fake_run(value=1.9, desc="wider: 96")
    assert "KEPT" in p.decide().text
    p.edit("N_HEAD = 4", "N_HEAD = 8")
    p.fake_run(value=2.2, desc="more heads")
    assert "DISCARD" in p.decide().text.upper()
    p.edit("MLP_RATIO = 4", "MLP_RATIO = 3")
    p.fake_run(status="crash", desc="narrow mlp")
    p.decide()
    for rid in ("0001", "0002", "0003", "0004"):              # what the runner writes beside them
        (p.path / "runs" / rid / "eval.log").write_text(HELD_OUT + "\n")
    assert [r.status for r in p.rows()] == ["keep", "keep", "discard", "crash"]
    return p


def cli(p: Project, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    e = clean_env(HOME=str(p.path.parent), **(env or {}))
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "autoresearch", "export", "mlflow", "-C", str(p.path), *args],
                          capture_output=True, text=True, env=e, timeout=300)


def runs_of(uri: str, name: str) -> dict[str, "mlflow.entities.Run"]:
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r} at {uri}"
    return {r.data.tags["autoresearch.run_id"]: r for r in c.search_runs([exp.experiment_id], max_results=1000)}


def artifacts(uri: str, run_id: str, path: str) -> list[str]:
    return sorted(f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path))


def test_every_decision_is_one_run_with_its_record_and_a_second_export_adds_nothing(night, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli(night, "--tracking-uri", uri, "--experiment", "night", "--json")
    assert r.returncode == 0, r.stderr
    rep = export_mod.ExportReport.model_validate_json(r.stdout)
    assert (rep.logged, rep.existing, rep.skipped) == (4, 0, 0) and rep.tracking_uri == uri
    runs = runs_of(uri, "night")
    assert sorted(runs) == ["0001", "0002", "0003", "0004"]
    rows = {row.run_id: row for row in night.rows()}

    win = runs["0002"]
    assert win.data.tags["autoresearch.status"] == "keep" and win.info.status == "FINISHED"
    assert win.data.params["description"] == "wider: 96" and win.data.params["phase"] == "tune"
    assert win.data.params["branch"] == rows["0002"].branch and win.data.params["commit"] == rows["0002"].commit
    assert win.data.params["fingerprint.budget_seconds"] == "2.0" and win.data.params["fingerprint.backend"] == "none"
    assert win.data.params["fingerprint"] == rows["0002"].fingerprint and win.data.params["seeds"] == "2"
    assert win.data.params["snapshot"] == rows["0002"].snapshot and win.data.params["budget_seconds"] == "2"
    assert win.data.metrics["val_bpb"] == pytest.approx(1.9)
    assert win.data.metrics["delta"] == pytest.approx(-0.1) and win.data.metrics["status_code"] == 1.0
    assert win.data.metrics["peak_memory_gb"] == pytest.approx(0.25) and win.data.metrics["train_seconds"] == 2.0
    assert win.data.tags["autoresearch.version"] == export_mod.__version__
    assert runs["0003"].data.tags["autoresearch.status"] == "discard" and runs["0003"].data.metrics["status_code"] == 0
    crash = runs["0004"]
    assert crash.data.tags["autoresearch.status"] == "crash" and crash.info.status == "FAILED"
    assert "val_bpb" not in crash.data.metrics and crash.data.metrics["status_code"] == -1.0

    got = artifacts(uri, win.info.run_id, "runs/0002")
    assert got == ["runs/0002/diff.patch", "runs/0002/train.log"]             # eval.log never leaves
    local = mlflow.artifacts.download_artifacts(run_id=win.info.run_id, artifact_path="runs/0002/diff.patch",
                                                tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    assert "N_EMBD = 96" in open(local).read()

    again = cli(night, "--tracking-uri", uri, "--experiment", "night", "--json")
    rep2 = export_mod.ExportReport.model_validate_json(again.stdout)
    assert (rep2.logged, rep2.existing, rep2.skipped) == (0, 4, 0)
    assert len(runs_of(uri, "night")) == 4


def test_the_default_store_is_local_sqlite_under_the_project(night):
    r = cli(night)
    assert r.returncode == 0, r.stderr
    assert "4 logged" in r.stdout
    db = night.path / ".autoresearch" / "mlflow" / "mlflow.db"
    assert db.is_file()
    runs = runs_of(f"sqlite:///{db}", "autoresearch/proj")
    assert len(runs) == 4
    art = night.path / ".autoresearch" / "mlflow" / "artifacts"
    files = [p.name for p in art.rglob("*") if p.is_file()]
    assert "diff.patch" in files and "eval.log" not in files
    assert all(HELD_OUT not in p.read_text() for p in art.rglob("*") if p.is_file())


def test_the_legacy_file_store_works_when_mlflow_allows_it(night, tmp_path):
    store = tmp_path / "mlruns"
    r = cli(night, "--tracking-uri", store.as_uri(), env={"MLFLOW_ALLOW_FILE_STORE": "true"})
    assert r.returncode == 0, r.stderr
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        assert len(runs_of(store.as_uri(), "autoresearch/proj")) == 4
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]


def test_an_altered_or_unsigned_record_is_skipped_with_a_warning(tmp_path):
    p = Project.create(tmp_path / "proj")
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 96")
    p.fake_run(value=1.9, desc="wider: 96")
    p.decide()
    p.edit("N_HEAD = 4", "N_HEAD = 8")
    p.fake_run(value=1.8, desc="more heads")
    p.decide()
    assert [r.status for r in p.rows()] == ["keep", "keep", "keep"]
    f2 = p.path / "runs" / "0002" / "metrics.json"           # a better number written by hand
    body = json.loads(f2.read_text())
    body["metric_value"] = 1.0
    f2.write_text(json.dumps(body))
    f3 = p.path / "runs" / "0003" / "metrics.json"           # the same record, the signature dropped
    m = RunMetrics.read(f3.parent)
    f3.write_text(m.model_dump_json(exclude={"signature"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli(p, "--tracking-uri", uri, "--json")
    assert r.returncode == 0, r.stderr
    rep = export_mod.ExportReport.model_validate_json(r.stdout)
    assert (rep.logged, rep.skipped) == (1, 2)
    assert "skipped experiment 2 (run 0002): result record altered" in r.stderr and "signature" in r.stderr
    assert "skipped experiment 3 (run 0003): result record altered" in r.stderr and "not signed" in r.stderr
    assert sorted(runs_of(uri, "autoresearch/proj")) == ["0001"]


def test_a_hand_edited_ledger_value_is_not_exported(tmp_path):
    p = Project.create(tmp_path / "proj")
    p.baseline(2.0)
    tsv = p.path / "results.tsv"
    tsv.write_text(tsv.read_text().replace("2.000000", "1.500000"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli(p, "--tracking-uri", uri)
    assert r.returncode == 0 and "skipped experiment 1" in r.stderr and "not what the signed records" in r.stderr


def test_a_linked_artifact_is_not_followed(night, tmp_path):
    (tmp_path / "secret").write_text("outside the run folder")
    link = tmp_path / "run"
    link.mkdir()
    (link / "train.log").symlink_to(tmp_path / "secret")
    path, problem = export_mod.copy_artifact(link / "train.log", tmp_path / "out")
    assert path is None and "not exported" in problem and not (tmp_path / "out").exists()


def test_without_the_extra_it_says_how_to_install_it(night, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)          # what a missing package looks like to import
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.exceptions", None)
    assert export_mod.main(night.path) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[mlflow]'" in err and "autoresearch[mlflow]" in err


def test_a_run_left_half_written_by_a_killed_export_is_redone_once(tmp_path):
    p = Project.create(tmp_path / "proj")
    p.baseline(2.0)
    row = p.rows()[0]
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    eid = c.create_experiment("night")
    project = export_mod.lineage_id(p.path)
    half = c.create_run(eid, tags={"autoresearch.key": export_mod.row_key(project, row),
                                   "autoresearch.project": project, "autoresearch.run_id": row.run_id})
    done = export_mod.export(p.path, p.rows(), c, "night", None, "val_bpb", warn=lambda m: None)
    assert [d.action for d in done] == ["logged"] and done[0].mlflow_run_id != half.info.run_id
    live = c.search_runs([eid])
    assert [r.info.run_id for r in live] == [done[0].mlflow_run_id] and live[0].info.status == "FINISHED"
