"""The loop's own state, .autoresearch/state.json: the deadline clock, the calibrated noise, the
last decision (for the scratchpad rule), and the pause file. Written only by trusted code, under
the loop lock, atomically.

The ledger (results.tsv) and the run branch's commits are the record of what happened; this file
holds only what they cannot: when the loop started, sigma, and what the scratchpad looked like at
the last decision. Losing it is survivable: the clock restarts, sigma falls back to 0 (threshold =
min_improvement) and the scratchpad rule compares with the committed scratchpad.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import set_aside, write_atomic

STATE_DIR = ".autoresearch"
STATE_FILE = "state.json"
PAUSE_FILE = "PAUSE"
LOCK_FILE = "loop.lock"
LOCK_TIMEOUT_S = 30.0


def now() -> datetime:
    return datetime.now(timezone.utc)


REPO_SEED = "calibrate (repo seed)"      # the description of calibrate's runs with the repo's own seed varied


class Calibration(BaseModel):
    """`autoresearch calibrate`: the baseline run N times with different seeds."""
    model_config = ConfigDict(extra="ignore")
    sigma: float = Field(ge=0)               # sample standard deviation (ddof=1) of `values`
    values: list[float]
    run_ids: list[str]                       # these runs are measurements, never decisions
    seeds: list[int] = []
    train_py_sha256: str = ""
    budget_seconds: float | None = None      # the budget it was measured at (sigma holds only there)
    fingerprint: str | None = None           # identity.Fingerprint.key of its runs
    at: datetime
    # harness-seed: AUTORESEARCH_SEED varied; repo-seed: the harness's seed is ignored, so the repo's
    # own seed was varied on its command line (`command`, {seed} the placeholder). Decisions use either.
    method: Literal["harness-seed", "repo-seed"] = "harness-seed"
    command: list[str] = []


class SeedIgnored(BaseModel):
    """`autoresearch calibrate` saw bit-identical results over different seeds: the repo ignores
    AUTORESEARCH_SEED. Noise is unknown (never stored as sigma 0); `where` names the constant seeds."""
    model_config = ConfigDict(extra="ignore")
    value: float
    run_ids: list[str]
    seeds: list[int] = []
    where: list[str] = []                    # file:line of constant seeds (run/seeds.py)
    fingerprint: str | None = None
    at: datetime


class LastDecision(BaseModel):
    model_config = ConfigDict(extra="ignore")
    run_id: str
    runs: list[str]
    experiment: int
    outcome: str                             # keep | discard | crash
    branch: str
    scratchpad_sha256: str | None            # the scratchpad as it was when this was decided
    at: datetime


class LoopState(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: int = 1
    started_at: datetime | None = None       # the deadline clock (see allowance.py)
    finished_at: datetime | None = None      # set when a spent allowance let the agent stop
    finish_reason: str | None = None
    calibration: Calibration | None = None   # the latest one (any fingerprint)
    calibrations: dict[str, Calibration] = {}   # fingerprint key -> its calibration
    seed_ignored: SeedIgnored | None = None  # the latest calibrate found the seed has no effect
    last_decision: LastDecision | None = None
    idle_stops: int = 0                      # consecutive stops with nothing to decide
    measurement_runs: list[str] = []         # calibration runs: measurements, never decisions
    branches: dict[str, str] = {}            # run branch -> the branch (or commit) it was started from

    @property
    def sigma(self) -> float | None:
        return self.calibration.sigma if self.calibration else None

    def sigma_for(self, fingerprint: str | None) -> float | None:
        """sigma measured under this fingerprint (a calibration at another budget says nothing here).
        A calibration from before fingerprints existed counts for every fingerprint."""
        if fingerprint and fingerprint in self.calibrations:
            return self.calibrations[fingerprint].sigma
        if self.calibration and self.calibration.fingerprint is None:
            return self.calibration.sigma
        return None


class Pause(BaseModel):
    reason: str = ""
    at: datetime | None = None


def state_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR


def state_path(root: Path) -> Path:
    return state_dir(root) / STATE_FILE


def read_state(root: Path) -> LoopState:
    """The state; a fresh one when there is none. A corrupt file is moved aside (kept, not lost)
    and a fresh state returned, so a damaged file cannot wedge the loop."""
    path = state_path(root)
    try:
        return LoopState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return LoopState()
    except (ValidationError, ValueError, OSError):
        aside = set_aside(path)
        note_damage(root, f"{STATE_DIR}/{STATE_FILE} could not be read and was kept as {aside.name}; a fresh "
                          f"state is used (the deadline clock restarts, sigma comes from the calibration runs). "
                          f"Nothing to do")
        return LoopState()


# --- notices: damaged files set aside, said once in the next reply -----------------------------

NOTICES_FILE = "notices"


def note_damage(root: Path, text: str) -> None:
    """Remember that a damaged file was set aside; the next Stop reply says so (take_notices)."""
    try:
        state_dir(root).mkdir(parents=True, exist_ok=True)
        with open(state_dir(root) / NOTICES_FILE, "a", encoding="utf-8") as f:
            f.write(" ".join(text.split()) + "\n")
    except OSError:
        pass


def take_notices(root: Path) -> list[str]:
    """The notices since the last reply (each once); the caller holds the loop lock."""
    path = state_dir(root) / NOTICES_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        path.unlink()
    except OSError:
        return []
    return list(dict.fromkeys(line for line in lines if line.strip()))


def write_state(root: Path, st: LoopState) -> None:
    write_atomic(state_path(root), st.model_dump_json(indent=2) + "\n")


def loop_lock(root: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The one lock around every write to the ledger, the state and the run branch."""
    state_dir(root).mkdir(parents=True, exist_ok=True)
    return FileLock(str(state_dir(root) / LOCK_FILE), timeout=timeout)


# --- pause -------------------------------------------------------------------------------

def pause_path(root: Path) -> Path:
    return state_dir(root) / PAUSE_FILE


def paused(root: Path) -> Pause | None:
    """The pause, if `.autoresearch/PAUSE` exists (its content, JSON or text, is the reason)."""
    p = pause_path(root)
    try:
        text = p.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return Pause(reason="(unreadable pause file)")
    try:
        return Pause.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return Pause(reason=text[:200])


def pause(root: Path, reason: str = "") -> Pause:
    """Ask the loop to stop at the next decision (the experiment in flight is still decided)."""
    p = Pause(reason=reason, at=now())
    write_atomic(pause_path(root), p.model_dump_json() + "\n")
    return p


def request_pause(root: Path, reason: str = "", update: bool = False) -> tuple[Pause, Pause | None]:
    """`autoresearch pause`: (the pause now in force, the one that was already there). An existing
    pause is kept as it is unless `update`, so a second pause never silently replaces the first."""
    with loop_lock(root):
        before = paused(root)
        if before is not None and not update:
            return before, before
        return pause(root, reason), before


def lift_pause(root: Path, restart_clock: bool = False) -> tuple[Pause | None, LoopState]:
    """`autoresearch resume`: (the pause lifted, or None when there was none; the state). The
    deadline clock restarts only when the human asks (`restart_clock`)."""
    with loop_lock(root):
        before = paused(root)
        try:
            pause_path(root).unlink()
        except FileNotFoundError:
            pass
        st = read_state(root)
        if restart_clock:
            st.started_at, st.finished_at, st.finish_reason, st.idle_stops = now(), None, None, 0
            write_state(root, st)
        return before, st


def add_measurement_run(root: Path, run_id: str) -> None:
    """Mark a run as a measurement (calibration) as soon as it exists, so the Stop hook never
    mistakes it for an experiment, even if calibration is interrupted halfway."""
    with loop_lock(root):
        st = read_state(root)
        if run_id not in st.measurement_runs:
            st.measurement_runs.append(run_id)
            write_state(root, st)


@dataclass(frozen=True)
class Sample:
    """What calibration measured: the baseline's values over seeds, their runs, the code (sha) and
    budget they ran, and the fingerprint they share."""
    values: list[float]
    run_ids: list[str]
    seeds: list[int]
    sha: str
    budget_seconds: float | None
    fingerprint: str | None = None


def record_calibration(root: Path, sample: Sample, method: str = "harness-seed",
                       command: list[str] | None = None) -> Calibration:
    """Store sigma = the sample standard deviation of the baseline's metric over seeds, for the
    fingerprint (budget, eval, device...) it was measured under."""
    values, fingerprint = sample.values, sample.fingerprint
    if len(values) < 2:
        raise ValueError(f"calibration needs at least 2 successful runs, got {len(values)}")
    if len(set(values)) == 1:
        raise ValueError("bit-identical values over different seeds measure no noise: record_seed_ignored")
    cal = Calibration(sigma=statistics.stdev(values), values=values, run_ids=sample.run_ids, seeds=sample.seeds,
                      train_py_sha256=sample.sha, budget_seconds=sample.budget_seconds, fingerprint=fingerprint, at=now(),
                      method=method, command=command or [])
    with loop_lock(root):
        st = read_state(root)
        st.calibration = cal
        st.seed_ignored = None                  # (repo-seed: the harness's seed is still ignored; cal says how)
        if fingerprint:
            st.calibrations[fingerprint] = cal
        write_state(root, st)
    return cal


def record_seed_ignored(root: Path, value: float, run_ids: list[str], seeds: list[int], where: list[str],
                        fingerprint: str | None) -> SeedIgnored:
    """Calibration runs were bit-identical: no sigma is stored (any earlier one for this
    fingerprint is dropped: it measured other code), and status says why."""
    note = SeedIgnored(value=value, run_ids=run_ids, seeds=seeds, where=where, fingerprint=fingerprint, at=now())
    with loop_lock(root):
        st = read_state(root)
        st.seed_ignored = note
        if fingerprint:
            st.calibrations.pop(fingerprint, None)
        if st.calibration is not None and st.calibration.fingerprint in (None, fingerprint):
            st.calibration = None
        write_state(root, st)
    return note


def calibrations_from_runs(root: Path, decided: set[str] | frozenset[str] = frozenset()) -> dict[str, Calibration]:
    """sigma per fingerprint rebuilt from runs/ (their metrics.json say purpose: calibration), so
    a lost or corrupt state.json does not silently lose it. `decided`: runs a ledger row covers,
    not read -- a calibration run is a measurement and never decided (pending_runs leaves it out),
    so no row covers one, and a night's history of experiments is not read at every Stop."""
    from ..record import RunMetrics, read_verified
    groups: dict[str, list[RunMetrics]] = {}
    runs = Path(root) / "runs"
    for d in sorted(runs.iterdir(), key=lambda p: p.name) if runs.is_dir() else []:
        if d.name in decided:
            continue
        try:
            m = read_verified(d)
        except (OSError, ValueError):
            continue
        if m.purpose == "calibration" and m.status == "ok" and m.metric_value is not None and m.fingerprint:
            groups.setdefault(m.fingerprint.key, []).append(m)
    out = {}
    for key, ms in groups.items():
        own = [m for m in ms if m.description.startswith(REPO_SEED)]
        ms = own or ms          # the repo's own seed varied: the harness-seed runs were bit-identical
        vals = [m.metric_value for m in ms if m.metric_value is not None]
        if len(vals) >= 2 and len(set(vals)) > 1:     # bit-identical: the seed is ignored, no noise measured
            out[key] = Calibration(sigma=statistics.stdev(vals), values=vals, run_ids=[m.run_id for m in ms],
                                   seeds=[m.seed for m in ms], train_py_sha256=ms[-1].train_py_sha256,
                                   budget_seconds=ms[-1].budget_seconds, fingerprint=key, at=ms[-1].started_at,
                                   method="repo-seed" if own else "harness-seed")
    return out
