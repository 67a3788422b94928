"""runs/NNNN/metrics.json: what one experiment measured, written and signed only by trusted code.

The runner signs every record with an HMAC-SHA256 under the project's key (keys.py: found by the
project's identity in .git/config, not its path; kept OUTSIDE the project, where neither the
sandbox nor the agent can read it), and the record names that key (`key_id`). `load_verified` is
the one way to read a run's result: a missing, unsigned or hand-edited record comes back as a
crash with the reason RECORD_ALTERED; a record whose key is not in this HOME comes back with
KEY_MISSING and the fix (never "altered": the loop does not decide such a run); a signed "ok" is
re-checked on the host (finite, past no floor, every byte scored) so a slip in the evaluator
cannot record a value that is impossible.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..atomic import write_atomic
from ..registry import DEFAULT_MODE, MODES, evaluator
from .identity import Fingerprint
from .keys import find_key, identity, is_lost, key_dir, missing_key_text, project_keys, signing_key

Status = Literal["ok", "crash", "timeout", "oom", "invalid", "interrupted"]
METRICS_FILE = "metrics.json"
RECORD_ALTERED = "result record altered"
KEY_MISSING = "signing key missing"        # the record is fine as far as anyone knows; its key is not here
KEY_LOST = "signing key lost"              # retired with `keys new --forget`: the run cannot be verified, ever
TYPED_EXTRA = ("metric_floor", "metric_ceiling", "eval_bytes_expected", "train_exit_code", "gpu_peak_gb")


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
    mode: Literal[MODES] = DEFAULT_MODE  # type: ignore[valid-type]  (registry.py)
    description: str = ""
    reason: str | None = None                     # one line on why a run is not ok
    eval_bytes: int | None = None
    started_at: datetime
    finished_at: datetime | None = None
    # what the host re-checks an "ok" against (host_check), and reads back: typed, not in `extra`
    metric_floor: float | None = None             # program.md's metric.floor when the run started
    metric_ceiling: float | None = None           # metric.ceiling
    eval_bytes_expected: int | None = None        # prepare.EVAL_BYTES: the scorer must score at least these
    train_exit_code: int | None = None            # TRAIN's exit status (None: killed at its limit)
    gpu_peak_gb: float | None = None              # TRAIN's peak GPU memory, polled from outside
    extra: dict[str, float | int | str | None] = Field(default_factory=dict)   # the rest: for humans
    # identity (issue 14): what ran, and what it may be compared with (None in runs made before)
    snapshot_sha256: str | None = None            # identity.snapshot over the editable set's code files
    fingerprint: Fingerprint | None = None        # budget, eval, backend, device class, data version
    purpose: Literal["experiment", "calibration", "check"] = "experiment"  # calibration/check runs are never decided
    steps_per_s: float | None = None              # training steps / train_seconds (from the log; contention check)
    key_id: str | None = None                     # keys.key_id_of the signing key (None: signed before key ids)
    signature: str | None = None                  # HMAC-SHA256 (hex) of the rest, by the runner

    @model_validator(mode="before")
    @classmethod
    def _typed_from_extra(cls, data):
        """Records written before these fields carry them in `extra`: read them from there. The
        signature covers the JSON as written (load_verified checks it before parsing), so such a
        record verifies unchanged."""
        if isinstance(data, dict) and isinstance(data.get("extra"), dict):
            extra = dict(data["extra"])
            lifted = {k: extra.pop(k) for k in TYPED_EXTRA if k in extra and data.get(k) is None}
            if lifted:
                data = {**data, **lifted, "extra": extra}
        return data

    @property
    def queued(self) -> bool:
        """A queued run's pending record (record/queue.py), not yet started. Kept in `extra` ("wave":
        "queued", its "base" commit) as written: tests and older readers read it there."""
        return self.extra.get("wave") == "queued"

    @property
    def queued_base(self) -> str | None:
        """The commit a queued run for a remote executor ships (None: none recorded)."""
        base = self.extra.get("base")
        return base if isinstance(base, str) else None

    def write(self, run_dir: Path) -> None:
        """Sign and write atomically. The project is run_dir's grandparent (root/runs/NNNN).
        Raises keys.KeyMissing when the project's key is not in this HOME."""
        kid, key = signing_key(Path(run_dir).parent.parent)
        self.key_id = kid
        body = self.model_dump(mode="json", exclude={"signature"})
        body["signature"] = _mac(key, body)
        self.signature = body["signature"]
        write_atomic(Path(run_dir) / METRICS_FILE, json.dumps(body, indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> "RunMetrics":
        """UNVERIFIED parse (raises OSError, ValidationError). Decisions use load_verified."""
        return cls.model_validate_json((Path(run_dir) / METRICS_FILE).read_text())


# ---------------------------------------------------------------- the key and the MAC

def key_path(root: Path) -> Path:
    """The file of the key new records of `root` are signed with (made on first use)."""
    kid, _ = signing_key(root)
    return key_dir(identity(root)) / f"{kid}.key"


def _mac(key: bytes, body: dict) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hmac.new(key, canon.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the host's re-check

def host_check(m: RunMetrics) -> tuple[str, str | None] | None:
    """Re-apply the sanity checks outside the evaluator's process, from the signed record, in every
    mode (two-stage, eval_command, inline): a finite value, not below `metric_floor` nor above
    `metric_ceiling` (a forged or leaked number), and for the scorer at least
    `eval_bytes_expected` bytes scored. None when an "ok" passes (or the run is not "ok"),
    else ("invalid", reason)."""
    if m.status != "ok":
        return None
    v = m.metric_value
    if v is None or not math.isfinite(v):
        return "invalid", f"host check: the value {v!r} is not finite"
    floor, ceiling = m.metric_floor, m.metric_ceiling
    if floor is not None and v < floor:
        return "invalid", f"host check: {m.metric_name} {v:.6g} is below metric.floor {floor:g} (a leak, a forgery or a bug)"
    if ceiling is not None and v > ceiling:
        return "invalid", f"host check: {m.metric_name} {v:.6g} is above metric.ceiling {ceiling:g} (a leak, a forgery or a bug)"
    want = m.eval_bytes_expected
    if evaluator(m.mode).data and want is not None and (m.eval_bytes is None or m.eval_bytes < want):
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
    problem = _check_signature(run_dir.parent.parent, rel, raw, sig)
    if problem is not None:
        return None, problem
    try:
        m = RunMetrics.model_validate({**raw, "signature": sig})
    except ValidationError as e:
        return None, f"{RECORD_ALTERED}: {rel} is signed but invalid ({str(e).splitlines()[0]})"
    if m.run_id != run_dir.name:
        return None, f"{RECORD_ALTERED}: {rel} is the record of run {m.run_id}"
    if (bad := host_check(m)) is not None:
        m = m.model_copy(update={"status": bad[0], "reason": bad[1], "metric_value": None})
    return m, None


def _check_signature(root: Path, rel: str, raw: dict, sig: str) -> str | None:
    """None when the record's own key (by its key_id) signed exactly this; a record from before
    key ids is checked against every key of the project. Else the problem: a key not here is
    KEY_MISSING (or KEY_LOST once retired), never "altered"."""
    kid = raw.get("key_id")
    try:
        if isinstance(kid, str):
            if is_lost(root, kid):
                return (f"{KEY_LOST}: {rel} was signed with key {kid}, retired as lost (`autoresearch keys new "
                        f"--forget`): it cannot be verified")
            key = find_key(root, kid)
            if key is None:
                return f"{KEY_MISSING}: {rel} names key {kid}: " + missing_key_text(root, kid)
            keys = [key]
        else:
            keys = list(project_keys(root).values())
            if not keys:
                return (f"{KEY_MISSING}: {rel} was signed before records named their key, and no key of this "
                        f"project is here (was it moved before the upgrade? `autoresearch keys import` the old "
                        f"key, or move it back once)")
    except OSError as e:
        return f"{KEY_MISSING}: the signing keys cannot be read ({e})"
    if not any(hmac.compare_digest(_mac(k, raw), sig) for k in keys):
        return f"{RECORD_ALTERED}: {rel} does not match its signature (edited by hand?)"
    return None


def read_verified(run_dir: Path) -> RunMetrics:
    """load_verified for callers that skip what they cannot trust: raises ValueError (with the
    problem) for a missing, unsigned or altered record."""
    m, problem = load_verified(run_dir)
    if m is None:
        raise ValueError(problem)
    return m
