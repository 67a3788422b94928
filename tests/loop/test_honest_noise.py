"""Issue 29, honest noise: a repo that fixes its own seed gives bit-identical calibration runs.
That is no measurement of noise: calibrate stores no sigma, names where the seed is fixed, and
status says the noise is unknown -- never "calibrated" with sigma 0. Real runs (inline mode, no
sandbox: the seed logic is what is tested), the real CLI."""
from __future__ import annotations

import subprocess
import sys

from autoresearch.loop.state import Calibration, calibrations_from_runs
from autoresearch.run.seeds import fixed_seeds, overriders
from loop_support import PROGRAM, Project, clean_env

INLINE = PROGRAM.replace("sandbox: {backend: none}", "sandbox: {backend: none}\nrun: {mode: inline, command: "
                         "[python, train.py], metric_regex: 'val_bpb: ([0-9.]+)'}")
FIXED = """import random
random.seed(1337)
print(f"val_bpb: {2 + random.random() / 100:.6f}")
"""
READS = """import os, random
random.seed(int(os.environ["AUTORESEARCH_SEED"]))
print(f"val_bpb: {2 + random.random() / 100:.6f}")
"""


def _project(tmp_path, train: str) -> Project:
    p = Project.create(tmp_path / "proj", program=INLINE)
    (p.path / "train.py").write_text(train)
    p.sh("git", "commit", "-qam", "train")
    return p


def cli(p: Project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args, "-C", str(p.path)], capture_output=True,
                          text=True, env=clean_env(HOME=str(p.path.parent), COLUMNS="200"), timeout=300)


def test_bit_identical_seeds_are_not_a_calibration_and_the_fixed_seed_is_named(tmp_path):
    p = _project(tmp_path, FIXED)
    r = cli(p, "calibrate", "-n", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "ignores the seed" in out and "train.py:2: random.seed(1337)" in out and "UNKNOWN, not zero" in out
    st = p.state()
    assert st.calibration is None and st.calibrations == {} and st.sigma_for("anything") is None
    assert st.seed_ignored is not None and st.seed_ignored.where == ["train.py:2: random.seed(1337)"]
    assert sorted(st.measurement_runs) == ["0001", "0002"]           # still measurements, never experiments
    assert calibrations_from_runs(p.path) == {}                      # a lost state.json does not resurrect sigma 0
    s = " ".join(cli(p, "status").stdout.split())
    assert "ignores the seed" in s and "not calibrated" in s and "sigma 0" not in s
    ctx = p.hook("SessionStart").reply["hookSpecificOutput"]["additionalContext"]
    assert "noise UNKNOWN" in ctx or "noise not calibrated" in ctx


def test_a_repo_that_reads_the_seed_is_calibrated(tmp_path):
    p = _project(tmp_path, READS)
    r = cli(p, "calibrate", "-n", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    st = p.state()
    assert st.calibration is not None and st.calibration.sigma > 0 and st.seed_ignored is None
    assert "ignores the seed" not in cli(p, "status").stdout


def test_an_old_state_with_sigma_zero_is_not_shown_as_calibrated(tmp_path):
    from datetime import datetime, timezone
    p = _project(tmp_path, FIXED)
    p.set_state(calibration=Calibration(sigma=0.0, values=[2.0, 2.0], run_ids=["0001", "0002"],
                                        at=datetime.now(timezone.utc)))
    s = " ".join(cli(p, "status").stdout.split())
    assert "sigma 0" in s and "ignores the seed" in s and "sigma 0.0000" not in s


def test_fixed_seed_scan_finds_constants_and_skips_the_harness_seed(tmp_path):
    p = _project(tmp_path, FIXED)
    (p.path / "cfg.yaml").write_text("lr: 3e-4\nseed: 42\n")
    (p.path / "good.py").write_text("import os, torch\ntorch.manual_seed(int(os.environ['AUTORESEARCH_SEED']))\n")
    (p.path / "bad.py").write_text("import numpy as np\nnp.random.seed(0)\n")
    (p.path / "cli.py").write_text("ap.add_argument('--seed', type=int, default=3)\n")
    p.sh("git", "add", "-A")
    found = fixed_seeds(p.path, ["train.py"], ["python", "train.py", "--seed", "7"])
    assert found[0] == "run.command: --seed 7" and "train.py:2: random.seed(1337)" in found
    assert "cfg.yaml:2: seed: 42" in found and "bad.py:2: np.random.seed(0)" in found
    assert "cli.py:1: ap.add_argument('--seed', type=int, default=3)" in found
    assert not any(f.startswith("good.py") for f in found)
    assert overriders(p.path, ["python", "train.py", "cfg.yaml", "--lr", "1e-3", "model.width=64"]) == \
        ["config file cfg.yaml", "flag --lr 1e-3", "override model.width=64"]
