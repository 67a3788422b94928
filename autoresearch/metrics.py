"""runs/NNNN/metrics.json: what one experiment measured, written only by trusted code."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .atomic import write_atomic
from .identity import Fingerprint

Status = Literal["ok", "crash", "timeout", "oom", "invalid", "interrupted"]
METRICS_FILE = "metrics.json"


class RunMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str                                   # "0007": the runs/ folder name
    status: Status
    metric_name: str
    metric_value: float | None = None             # None unless status == "ok"
    direction: Literal["minimize", "maximize"]
    train_py_sha256: str                          # of the train.py that ran
    seed: int
    budget_seconds: float
    grace_seconds: float
    train_seconds: float | None = None            # wall time of the TRAIN stage
    eval_seconds: float | None = None             # wall time of the EVAL stage
    total_seconds: float | None = None
    peak_memory_gb: float | None = None
    device: str | None = None                     # "cpu" or e.g. "cuda:0 (NVIDIA H100)"
    sandbox: str                                  # docker | bwrap | none
    sandbox_warning: str | None = None            # set when the run was not sandboxed
    mode: Literal["two_stage", "inline"] = "two_stage"
    description: str = ""
    reason: str | None = None                     # one line on why a run is not ok
    eval_bytes: int | None = None
    started_at: datetime
    finished_at: datetime | None = None
    extra: dict[str, float | int | str | None] = Field(default_factory=dict)
    # identity (issue 14): what ran, and what it may be compared with (None in runs made before)
    snapshot_sha256: str | None = None            # identity.snapshot over the editable set's code files
    fingerprint: Fingerprint | None = None        # budget, eval, backend, device class, data version
    purpose: Literal["experiment", "calibration"] = "experiment"   # calibration runs are never decided
    steps_per_s: float | None = None              # training steps / train_seconds (from the log; contention check)

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / METRICS_FILE, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> "RunMetrics":
        """Raises (OSError, pydantic.ValidationError) when missing or corrupt: callers treat that as a crash."""
        return cls.model_validate_json((run_dir / METRICS_FILE).read_text())
