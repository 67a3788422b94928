"""`autoresearch final`: the kept checkpoints, scored once by the trusted evaluator on the test split."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autoresearch.record.layout import final_log
from autoresearch.run.runner import RunOptions, run_experiment
from autoresearch.cli.final import FinalError, FinalRecord, evaluate_final, read_records
from autoresearch.ledger import LedgerRow, append_rows

ROOT = Path(__file__).resolve().parents[2]
BRANCH = "autoresearch/20260102-010000"

_XDG = {k: os.environ[k] for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME")}   # the session's keys and state


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def project(tmp: Path) -> Path:
    root = tmp / "proj"
    root.mkdir()
    for f in ("program.md", "prepare.py", "train.py"):
        shutil.copy(ROOT / f, root / f)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "base")
    _git(root, "checkout", "-qb", BRANCH)
    return root


def keep(root: Path, n: int, value: float, desc: str, runs: list[str]) -> LedgerRow:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()       # the code the runs ran (final checks it)
    row = LedgerRow(commit=head, value=value, status="keep", description=desc, experiment=n,
                    run_id=runs[-1], runs=runs, run_status="ok", phase="hyperparameters", branch=BRANCH,
                    decided_at=datetime.now(timezone.utc))
    append_rows(root, [row], "val_bpb")
    return row


def test_final_refuses_without_a_kept_experiment(tmp_path):
    root = project(tmp_path)
    with pytest.raises(FinalError, match="no kept experiment"):
        evaluate_final(root)


def test_final_refuses_inline_mode(tmp_path):
    root = project(tmp_path)
    text = (root / "program.md").read_text().replace(
        "deadline_hours: 10", "deadline_hours: 10\nrun:\n  mode: inline\n  command: [python, train.py]\n"
                              "  metric_regex: 'val_bpb=([0-9.]+)'")
    (root / "program.md").write_text(text)
    with pytest.raises(FinalError, match="inline mode has no trusted evaluator"):
        evaluate_final(root)


def test_final_names_a_missing_checkpoint(tmp_path, data_dir):
    root = project(tmp_path)
    keep(root, 1, 2.5, "baseline", ["0001"])
    with pytest.raises(FinalError, match="model.pt is missing"):
        evaluate_final(root, backend="none")


@pytest.mark.slow
def test_final_scores_best_and_baseline_on_test_once(tmp_path, data_dir, bwrap_available):
    root = project(tmp_path)
    a = run_experiment(root, "baseline", RunOptions(budget=2, seed=1, backend="bwrap"))
    b = run_experiment(root, "same code, another seed", RunOptions(budget=2, seed=2, backend="bwrap"))
    assert a.status == b.status == "ok", (a.reason, b.reason)
    worse, better = sorted([a, b], key=lambda m: -m.metric_value)
    keep(root, 1, worse.metric_value, "baseline", [worse.run_id])
    keep(root, 2, better.metric_value, "the better seed", [better.run_id])

    p = subprocess.run([sys.executable, "-m", "autoresearch", "final", "--backend", "bwrap"], cwd=root,
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",
                                                            "HOME": str(Path.home()), **_XDG})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "held-out test split" in p.stdout and "evaluated now" in p.stdout
    recs = read_records(root)
    assert len(recs) == 1
    rec = recs[0]
    assert rec.best.experiment == 2 and rec.baseline is not None and rec.baseline.experiment == 1
    for e in (rec.best, rec.baseline):
        assert e.test is not None and 0.5 < e.test < 8.5          # bits per byte of a real model on real text
        assert e.test != e.val                                   # a different split gives a different number
    assert rec.best.test != rec.baseline.test
    assert final_log(root, better.run_id).is_file(), "what the model printed: the human's log, in the state folder"
    assert not list((root / ".autoresearch").glob("*.log")), "nothing the model printed is in the project"

    # once: asking again prints the record and does not evaluate again
    p2 = subprocess.run([sys.executable, "-m", "autoresearch", "final", "--backend", "bwrap"], cwd=root,
                        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",
                                                             "HOME": str(Path.home()), **_XDG})
    assert p2.returncode == 0 and "already evaluated" in p2.stdout
    assert len(read_records(root)) == 1
    assert json.loads((root / ".autoresearch" / "final.json").read_text())[0]["again"] is False
    # --json: the same record, validated against the model the table is drawn from
    p3 = subprocess.run([sys.executable, "-m", "autoresearch", "final", "--json", "--backend", "bwrap"], cwd=root,
                        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert p3.returncode == 0, p3.stderr
    assert FinalRecord.model_validate_json(p3.stdout) == rec
