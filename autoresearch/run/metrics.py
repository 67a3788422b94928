"""runs/NNNN/metrics.json: what one experiment measured, written and signed only by trusted code.

The runner signs every record with an HMAC-SHA256 under a per-project key kept OUTSIDE the
project (`${XDG_CONFIG_HOME:-~/.config}/autoresearch/keys/<sha256 of the project's real
path>.key`, mode 0600, made on first use), where neither the sandbox (not mounted) nor the
agent (the guard denies it) can read it. `load_verified` is the one way to read a run's
result: a missing, unsigned or hand-edited record comes back as a crash with the reason
RECORD_ALTERED, and a signed "ok" is re-checked on the host (finite, past no floor, every
byte scored) so a slip in the evaluator cannot record a value that is impossible.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import write_atomic
from .identity import Fingerprint

Status = Literal["ok", "crash", "timeout", "oom", "invalid", "interrupted"]
METRICS_FILE = "metrics.json"
RECORD_ALTERED = "result record altered"
KEY_ENV = "XDG_CONFIG_HOME"


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
    agent_seconds: float | None = None            # TRAIN's agent compute: from when its code started to its end
    eval_seconds: float | None = None             # wall time of the EVAL stage
    total_seconds: float | None = None
    peak_memory_gb: float | None = None
    device: str | None = None                     # "cpu" or e.g. "cuda:0 (NVIDIA H100)"
    sandbox: str                                  # docker | bwrap | none
    sandbox_warning: str | None = None            # set when the run was not sandboxed
    mode: Literal["two_stage", "eval_command", "inline"] = "two_stage"
    description: str = ""
    reason: str | None = None                     # one line on why a run is not ok
    eval_bytes: int | None = None
    started_at: datetime
    finished_at: datetime | None = None
    extra: dict[str, float | int | str | None] = Field(default_factory=dict)
    # identity (issue 14): what ran, and what it may be compared with (None in runs made before)
    snapshot_sha256: str | None = None            # identity.snapshot over the editable set's code files
    fingerprint: Fingerprint | None = None        # budget, eval, backend, device class, data version
    purpose: Literal["experiment", "calibration", "check"] = "experiment"  # calibration/check runs are never decided
    steps_per_s: float | None = None              # training steps / train_seconds (from the log; contention check)
    signature: str | None = None                  # HMAC-SHA256 (hex) of the rest, by the runner

    def write(self, run_dir: Path) -> None:
        """Sign and write atomically. The project is run_dir's grandparent (root/runs/NNNN)."""
        body = self.model_dump(mode="json", exclude={"signature"})
        body["signature"] = _mac(project_key(Path(run_dir).parent.parent), body)
        self.signature = body["signature"]
        write_atomic(Path(run_dir) / METRICS_FILE, json.dumps(body, indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> "RunMetrics":
        """UNVERIFIED parse (raises OSError, ValidationError). Decisions use load_verified."""
        return cls.model_validate_json((Path(run_dir) / METRICS_FILE).read_text())


# ---------------------------------------------------------------- the key and the MAC

def key_path(root: Path) -> Path:
    base = Path(os.environ.get(KEY_ENV) or Path.home() / ".config")
    tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:32]
    return base / "autoresearch" / "keys" / f"{tag}.key"


def project_key(root: Path) -> bytes:
    """The project's signing key, made (32 random bytes, mode 0600, folder 0700) on first use."""
    path = key_path(root)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:                        # another runner made it first
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


def _mac(key: bytes, body: dict) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hmac.new(key, canon.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the host's re-check

def host_check(m: RunMetrics) -> tuple[str, str | None] | None:
    """Re-apply the sanity checks outside the evaluator's process, from the signed record, in every
    mode (two-stage, eval_command, inline): a finite value, not below `extra.metric_floor` nor above
    `extra.metric_ceiling` (a forged or leaked number), and for the scorer at least
    `extra.eval_bytes_expected` bytes scored. None when an "ok" passes (or the run is not "ok"),
    else ("invalid", reason)."""
    if m.status != "ok":
        return None
    v = m.metric_value
    if v is None or not math.isfinite(v):
        return "invalid", f"host check: the value {v!r} is not finite"
    floor, ceiling = m.extra.get("metric_floor"), m.extra.get("metric_ceiling")
    if isinstance(floor, (int, float)) and v < floor:
        return "invalid", f"host check: {m.metric_name} {v:.6g} is below metric.floor {floor:g} (a leak, a forgery or a bug)"
    if isinstance(ceiling, (int, float)) and v > ceiling:
        return "invalid", f"host check: {m.metric_name} {v:.6g} is above metric.ceiling {ceiling:g} (a leak, a forgery or a bug)"
    want = m.extra.get("eval_bytes_expected")
    if m.mode == "two_stage" and isinstance(want, int) and (m.eval_bytes is None or m.eval_bytes < want):
        return "invalid", f"host check: {m.eval_bytes} bytes were scored, the evaluation needs {want}"
    return None


def load_verified(run_dir: Path) -> tuple[RunMetrics | None, str | None]:
    """The one way to read a run's result: (metrics, None) when present, signed with this
    project's key and unaltered (an "ok" that fails host_check comes back "invalid");
    else (None, problem), which callers count as a crash. Never raises for bad input."""
    run_dir = Path(run_dir)
    rel = f"runs/{run_dir.name}/{METRICS_FILE}"
    try:
        raw = json.loads((run_dir / METRICS_FILE).read_text())
    except FileNotFoundError:
        return None, f"{rel} is missing"
    except (OSError, ValueError) as e:
        return None, f"{RECORD_ALTERED}: {rel} is unreadable ({str(e).splitlines()[0][:120]})"
    if not isinstance(raw, dict) or not isinstance(sig := raw.pop("signature", None), str):
        return None, f"{RECORD_ALTERED}: {rel} is not signed"
    try:
        key = project_key(run_dir.parent.parent)
    except (OSError, ValueError) as e:
        return None, f"{RECORD_ALTERED}: the signing key cannot be read ({e})"
    if not hmac.compare_digest(_mac(key, raw), sig):
        return None, f"{RECORD_ALTERED}: {rel} does not match its signature (edited by hand?)"
    try:
        m = RunMetrics.model_validate({**raw, "signature": sig})
    except ValidationError as e:
        return None, f"{RECORD_ALTERED}: {rel} is signed but invalid ({str(e).splitlines()[0]})"
    if m.run_id != run_dir.name:
        return None, f"{RECORD_ALTERED}: {rel} is the record of run {m.run_id}"
    if (bad := host_check(m)) is not None:
        m = m.model_copy(update={"status": bad[0], "reason": bad[1], "metric_value": None})
    return m, None


def read_verified(run_dir: Path) -> RunMetrics:
    """load_verified for callers that skip what they cannot trust: raises ValueError (with the
    problem) for a missing, unsigned or altered record."""
    m, problem = load_verified(run_dir)
    if m is None:
        raise ValueError(problem)
    return m
