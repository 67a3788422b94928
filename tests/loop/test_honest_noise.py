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


FLAG = """import argparse, random
ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=0)
random.seed(ap.parse_args().seed)
print(f"val_bpb: {2 + random.random() / 100:.6f}")
"""


def test_the_repos_own_seed_gives_the_noise_estimate_decisions_use(tmp_path):
    """Issue 29's other way to estimate noise: the harness's seed is ignored (the command fixes
    --seed 7), so calibrate re-runs with the repo's own seed changed on its command line, stores
    that sigma (method repo-seed) for decisions, and a lost state.json rebuilds it from those runs
    alone (the bit-identical harness-seed runs measured nothing)."""
    p = Project.create(tmp_path / "proj", program=INLINE.replace("command: [python, train.py]",
                                                                 "command: [python, train.py, --seed, '7']"))
    (p.path / "train.py").write_text(FLAG)
    p.sh("git", "commit", "-qam", "train")
    r = cli(p, "calibrate", "-n", "2")
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ignores the seed" in out and "python train.py --seed {seed}" in out and "calibrated with the repo's own" in out
    st = p.state()
    cal = st.calibration
    assert cal is not None and cal.method == "repo-seed" and cal.sigma > 0 and cal.seeds == [1, 2]
    assert cal.command == ["python", "train.py", "--seed", "{seed}"] and len(set(cal.values)) == 2
    assert st.sigma_for(cal.fingerprint) == cal.sigma and sorted(st.measurement_runs) == ["0001", "0002", "0003", "0004"]
    logs = [(p.path / "runs" / r / "train.log").read_text() for r in ("0003", "0004")]
    assert logs[0] != logs[1]
    rebuilt = calibrations_from_runs(p.path)[cal.fingerprint]
    assert rebuilt.method == "repo-seed" and rebuilt.values == cal.values and rebuilt.run_ids == ["0003", "0004"]
    s = " ".join(cli(p, "status").stdout.split())
    assert "the repo's own seed varied" in s and "not calibrated" not in s, s


def test_seed_override_reaches_only_seeds_the_command_line_can_set(tmp_path):
    from autoresearch.run.seeds import seed_override, with_seed
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("lr: 1\ntrain:\n  epochs: 3\n  seed: 42\n")
    hydra = ["python", "train.py", "trainer.devices=2"]
    assert seed_override(tmp_path, hydra, ["conf/config.yaml:4: seed: 42"]) == [*hydra, "train.seed={seed}"]
    # a plain command: the repo is not known to take key=value overrides
    assert seed_override(tmp_path, ["python", "train.py"], ["conf/config.yaml:4: seed: 42"]) is None
    assert seed_override(tmp_path, ["python", "train.py", "+seed=3"], []) == ["python", "train.py", "+seed={seed}"]
    argparse_hit = ["train.py:3: ap.add_argument('--seed', type=int, default=0)"]
    assert seed_override(tmp_path, ["python", "train.py"], argparse_hit) == ["python", "train.py", "--seed", "{seed}"]
    assert seed_override(tmp_path, ["python", "other.py"], argparse_hit) is None      # not the training script
    assert seed_override(tmp_path, ["python", "train.py"], ["train.py:2: torch.manual_seed(1337)"]) is None
    assert with_seed(["python", "train.py", "--seed", "{seed}"], 5) == ["python", "train.py", "--seed", "5"]
