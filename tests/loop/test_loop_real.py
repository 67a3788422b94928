"""The loop with real experiments: ./run.sh trains and evaluates in a bwrap sandbox (tiny
budgets), then the Stop hook decides through the wired command. Also `autoresearch calibrate`."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from autoresearch.program import Metric
from autoresearch.loop.decide import EPS
from autoresearch.record.exits import for_status
from autoresearch.record.metrics import RunMetrics
from loop_support import ROOT, Project, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.bwrap]


@pytest.fixture
def proj(tmp_path, bwrap_available, data_dir) -> Project:
    p = Project.create(tmp_path / "proj")
    shutil.copy2(ROOT / "prepare.py", p.path / "prepare.py")
    p.sh("git", "add", "prepare.py")
    p.sh("git", "commit", "-q", "-m", "add prepare.py")
    return p


def run_sh(p: Project, msg: str, budget: str = "2") -> RunMetrics:
    r = subprocess.run([str(ROOT / "run.sh"), "-m", msg, "--backend", "bwrap", "--budget", budget], cwd=p.path,
                       env=clean_env(), capture_output=True, text=True, timeout=300)
    rid = sorted((p.path / "runs").iterdir())[-1]
    m = RunMetrics.read(rid)
    assert r.returncode == for_status(m.status), (m.status, r.stderr)     # 0 ok, 1 crash (exits.py)
    return m


def test_real_runs_baseline_crash_and_a_decided_change(proj):
    base = run_sh(proj, "baseline")
    assert base.status == "ok" and base.metric_value is not None
    r = proj.decide()
    assert "BASELINE" in r.text and proj.rows()[-1].value == pytest.approx(base.metric_value, abs=1e-6)

    best_code = proj.read()
    proj.edit("def build_model():", "def build_model():\n    raise RuntimeError('boom')")
    crash = run_sh(proj, "a broken model")
    assert crash.status != "ok"
    r = proj.decide()
    assert "CRASHED" in r.text and proj.read() == best_code
    row = proj.rows()[-1]
    assert row.status == "crash" and row.value is None and row.run_id == crash.run_id

    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 6e-3")
    m = run_sh(proj, "double the learning rate")
    assert m.status == "ok"
    r = proj.decide()
    imp = Metric().improvement(m.metric_value, base.metric_value)
    if imp <= 0.01 + EPS:                                      # min_improvement in loop_support.PROGRAM
        assert "DISCARDED" in r.text and proj.read() == best_code
    elif imp < 0.03:                                          # + confirm_margin
        assert "confirm" in r.text and "6e-3" in proj.read()   # waits for a second seed
    else:
        assert "KEPT" in r.text and "6e-3" in proj.committed("train.py") and proj.dirty() == []


def test_calibrate_stores_sigma_and_its_runs_are_not_experiments(proj):
    r = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "autoresearch", "calibrate", "-n", "2", "--budget", "1",
                        "--backend", "bwrap", "-C", str(proj.path)], capture_output=True, text=True,
                       env=clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    st = proj.state()
    assert st.calibration is not None and len(st.calibration.values) == 2 and st.calibration.sigma >= 0
    assert st.calibration.run_ids == st.measurement_runs == ["0001", "0002"]
    assert len(set(st.calibration.seeds)) == 2                 # different seeds for the same train.py
    assert "sigma" in r.stdout and "threshold" in r.stdout
    s = proj.stop()
    assert s.blocked and "baseline" in s.text and proj.rows() == []   # the calibration runs are not decided
    assert "keep threshold" in proj.hook("SessionStart").reply["hookSpecificOutput"]["additionalContext"]


def test_a_background_run_is_waited_for_and_a_sigkilled_one_is_interrupted(proj):
    import os
    import signal
    import time
    proj.baseline(2.0)                                        # a fabricated baseline is enough here
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    runner = subprocess.Popen([str(ROOT / "run.sh"), "-m", "wider", "--backend", "bwrap", "--budget", "60"],
                              cwd=proj.path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (proj.path / "runs" / "0002" / "metrics.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        r = proj.decide()
        assert r.blocked and "still running" in r.text and len(proj.rows()) == 1
    finally:
        os.killpg(runner.pid, signal.SIGKILL)                 # no chance to write finished_at
        runner.wait()
    r = proj.stop()
    assert "CRASHED (interrupted" in r.text and "N_EMBD = 96" not in proj.read()
    assert "N_EMBD = 96" in (proj.path / "runs" / "0002" / "train.py").read_text()
