"""bench/bench_eval.py runs against the current code (it once called run_eval with an old signature
and nobody noticed): the one-process evaluator of before the split and the model servers + scorer
of now score one checkpoint, and must agree to 1e-6 bits per byte."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_eval_runs_and_both_evaluators_agree():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_eval.py"), "--repeat", "1", "--train-seconds", "1",
                        "--backend", "none"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    values = dict(re.findall(r"^(before|after)\s.*val_bpb ([0-9.]+)$", p.stdout, re.M))
    assert set(values) == {"before", "after"}, p.stdout
    assert abs(float(values["before"]) - float(values["after"])) < 1e-6, p.stdout
    assert 0.5 < float(values["after"]) < 9.0, p.stdout
