"""The decision table, as a pure function: given the runs of one train.py and the best so far,
keep, discard, crash, or ask for a confirming run. No I/O here, so every cell is a unit test.

    latest run not ok (crash|timeout|oom|invalid|interrupted|missing) -> crash (revert)
    no best yet on this run branch                                     -> keep  (the baseline)
    improvement <= threshold                                           -> discard
        (bit-identical to the best: "no effect", the change never reached the run)
    improvement >= threshold + confirm_margin                          -> keep
    threshold < improvement < threshold + confirm_margin (a narrow win):
        2+ ok runs of this train.py (confirmed; the mean decided)     -> keep
        one run, and the allowance allows another                      -> confirm
        one run, no allowance left for a confirmation                  -> discard (unconfirmed)

`improvement` is measured on the mean of the ok runs, in the metric's better direction;
threshold = max(min_improvement, k_sigma * sigma).
"""
from __future__ import annotations

import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..program import Metric, Program

Action = Literal["keep", "discard", "crash", "confirm"]
NO_EFFECT = "no effect"   # bit-identical to the best: the change never reached the run (overridden?)
ENV_NOTE = "environment:"  # a ledger row's note: a crash the environment caused (blame.py), not counted
EPS = 1e-9          # float noise: 2.00 - 1.99 is 0.010000000000000009, which is not "more than 0.01"


class RunView(BaseModel):
    """What the decision needs from one run (built from runs/NNNN/metrics.json)."""
    model_config = ConfigDict(frozen=True)
    run_id: str
    status: str                          # ok | crash | timeout | oom | invalid | interrupted | missing
    value: float | None = None           # only for ok
    seed: int | None = None


class Verdict(BaseModel):
    action: Action
    value: float | None                  # the mean of the ok runs (None for a crash)
    delta: float | None                  # value - best, raw (None for a crash or the baseline)
    improvement: float | None            # in the better direction (positive = better)
    threshold: float
    note: str                            # baseline | worse | within noise | confirmed | unconfirmed | ...
    n_ok: int = 0


def threshold(program: Program, sigma: float | None) -> float:
    return max(program.min_improvement, program.noise.k_sigma * (sigma or 0.0))


def verdict(runs: list[RunView], best: float | None, metric: Metric, thresh: float,
            confirm_margin: float, can_confirm: bool) -> Verdict:
    """Decide the experiment whose runs (same train.py, oldest first) are `runs`."""
    if not runs:
        raise ValueError("verdict() needs at least one run")
    latest = runs[-1]
    oks = [r.value for r in runs if r.status == "ok" and r.value is not None]
    if latest.status != "ok" or latest.value is None:
        return Verdict(action="crash", value=None, delta=None, improvement=None, threshold=thresh,
                       note=latest.status, n_ok=len(oks))
    value = statistics.fmean(oks)
    if best is None:
        return Verdict(action="keep", value=value, delta=None, improvement=None, threshold=thresh,
                       note="baseline", n_ok=len(oks))
    imp = metric.improvement(value, best)
    common = dict(value=value, delta=value - best, improvement=imp, threshold=thresh, n_ok=len(oks))
    if imp <= thresh + EPS:
        note = "worse" if imp < 0 else NO_EFFECT if value == best else "within noise"
        if len(oks) > 1:
            note = f"not confirmed (mean of {len(oks)})"
        return Verdict(action="discard", note=note, **common)
    if imp >= thresh + confirm_margin - EPS:
        return Verdict(action="keep", note=f"confirmed (mean of {len(oks)})" if len(oks) > 1 else "", **common)
    if len(oks) > 1:
        return Verdict(action="keep", note=f"confirmed (mean of {len(oks)})", **common)
    if can_confirm:
        return Verdict(action="confirm", note="narrow win: needs a confirming run", **common)
    return Verdict(action="discard", note="unconfirmed narrow win, no budget to confirm", **common)
