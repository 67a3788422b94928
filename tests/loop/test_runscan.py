"""runscan.py on its own, over real runs/ folders (signed metrics.json as the runner writes them):
which runs exist, which are undecided, which are still running, and which were contended."""
from __future__ import annotations

import fcntl
import json
import os

import pytest

from autoresearch.loop.runscan import RUNNING_LOCK, contention, load_run, run_ids, undecided_runs
from loop_support import Project


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj", venv=False)


def test_run_ids_are_the_numbered_folders_in_order(proj):
    assert run_ids(proj.path) == []
    for _ in range(3):
        proj.fake_run(value=2.0)
    os.rename(proj.path / "runs" / "0003", proj.path / "runs" / "0010")
    (proj.path / "runs" / "notes").mkdir()
    (proj.path / "runs" / "0042").write_text("a file, not a run")
    assert run_ids(proj.path) == ["0001", "0002", "0010"]


def test_undecided_skips_decided_runs_and_measurements(proj):
    a = proj.fake_run(value=2.0)
    cal = proj.fake_run(value=2.0, purpose="calibration")
    b = proj.fake_run(status="crash")
    runs = undecided_runs(proj.path, {a})
    assert [r.run_id for r in runs] == [b] and cal not in [r.run_id for r in runs]
    r = runs[0]
    assert r.status == "crash" and r.view("val_bpb", "minimize").status == "crash"
    assert r.sha == proj.sha() and r.same_code(r.snapshot, None) and not r.in_progress


def test_a_result_for_another_metric_is_invalid(proj):
    r = load_run(proj.path, proj.fake_run(value=2.0))
    assert r.view("val_bpb", "minimize").value == 2.0
    assert r.view("val_bpb", "maximize").status == "invalid" and r.view("loss", "minimize").value is None


def test_a_run_without_finished_at_is_running_while_its_lock_is_held(proj):
    rid = proj.fake_run(value=None, status="interrupted", finished=False, age_s=1)
    lock = proj.path / "runs" / rid / RUNNING_LOCK
    lock.touch()
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert load_run(proj.path, rid, wall_limit_s=100).in_progress
    finally:
        os.close(fd)
    assert not load_run(proj.path, rid, wall_limit_s=100).in_progress    # nobody holds it: the runner is gone
    lock.unlink()
    old = proj.fake_run(value=None, status="interrupted", finished=False, age_s=500)
    assert not load_run(proj.path, old, wall_limit_s=100).in_progress    # older than any run can take


def test_an_altered_record_is_a_problem_not_a_result(proj):
    rid = proj.fake_run(value=2.0)
    path = proj.path / "runs" / rid / "metrics.json"
    data = json.loads(path.read_text())
    data["metric_value"] = 0.1                                         # the agent "improves" its result
    path.write_text(json.dumps(data))
    r = load_run(proj.path, rid)
    assert r.metrics is None and r.problem and r.status == "missing" and not r.in_progress


def test_contention_compares_steps_per_second_with_peers(proj):
    proj.fake_run(value=2.0, steps_per_s=50.0)
    slow = load_run(proj.path, proj.fake_run(value=2.0, steps_per_s=10.0))
    why = contention(proj.path, slow)
    assert why and "10.0 steps/s vs a median 50.0 over 1 runs of the same code" == why
    assert contention(proj.path, load_run(proj.path, proj.fake_run(value=2.0, steps_per_s=40.0))) is None
