"""train.py runs end to end on CPU and leaves a checkpoint the evaluator can score."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_runs_for_a_few_seconds_and_the_checkpoint_scores(tmp_path, data_dir):
    env = dict(os.environ, AUTORESEARCH_TRAIN_SECONDS="8", AUTORESEARCH_SEED="3",   # set-up counts (train.py STARTED)
               AUTORESEARCH_OUT=str(tmp_path), AUTORESEARCH_DATA=str(data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "seed 3" in proc.stdout and "checkpoint saved" in proc.stdout
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "model.pt.tmp").exists()

    sys.path.insert(0, str(ROOT))
    import prepare
    import train
    model = train.build_model()
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    bpb, n = prepare.evaluate_bpb(model, prepare.load_split("val", data_dir))
    assert n == prepare.EVAL_BYTES
    assert bpb < 7.0, "a few seconds of training should beat the uniform 8 bits per byte"


def test_lr_schedule_warms_up_and_decays():
    sys.path.insert(0, str(ROOT))
    import train
    assert train.lr_at(0.0) == 0.0
    peak = train.lr_at(train.WARMUP_FRACTION)
    assert peak == pytest.approx(train.LEARNING_RATE)
    assert train.lr_at(1.0) == pytest.approx(train.LEARNING_RATE * train.FINAL_LR_FRACTION)
    assert train.lr_at(0.5) < peak
