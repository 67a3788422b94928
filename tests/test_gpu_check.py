"""bench/gpu_check.sh without a GPU: the same table, every GPU row skipped, the CPU-side check run.

In-process (torch is already imported by the suite) so it costs about a second, not a fresh
interpreter's torch import; the .sh only execs bench/gpu_check.py with the repo's .venv."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

GPU_ROWS = ["CUDA baseline (60 s)", "passthrough bwrap", "passthrough docker", "torchrun 2 ranks",
            "wave, 1 slot per GPU"]


def table(capsys, argv) -> tuple[int, dict[str, str]]:
    rc = gpu_check.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GPU check (0 CUDA device(s)") and lines[1].split() == ["check", "|", "result"]
    return rc, {c.strip(): rest for c, rest in (ln.split(" | ", 1) for ln in lines[3:])}


@pytest.mark.parametrize("argv", [["--dry-run"], []], ids=["dry-run", "auto-without-cuda"])
def test_the_dry_run_prints_every_row_and_claims_nothing_for_the_gpu(capsys, argv):
    if not argv and gpu_check.cuda_devices():
        pytest.skip("this machine has CUDA: the automatic dry run does not apply")
    rc, rows = table(capsys, argv)
    assert list(rows) == ["train.py config", *GPU_ROWS]
    assert all(rows[r] == "skipped: no CUDA device" for r in GPU_ROWS)
    assert rows["train.py config"].startswith("ok | CPU model chosen; CPU 132,864 params")   # the CPU baseline, unchanged
    assert rc == 0
    assert os.access(ROOT / "bench" / "gpu_check.sh", os.X_OK)
    assert "bench/gpu_check.py" in (ROOT / "bench" / "gpu_check.sh").read_text()


def test_a_gpu_model_of_the_wrong_size_fails_the_config_row(monkeypatch):
    import train
    monkeypatch.setitem(train.GPU_MODEL, "N_EMBD", 64)          # a CPU-sized model on the GPU: leaves it idle
    row = gpu_check.check_config(cuda=False)
    assert row.status.startswith("FAILED") and "want 30M-150M" in row.status
