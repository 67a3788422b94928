"""The verdict table, cell by cell (pure function; the hook-level tests are in test_loop.py)."""
from __future__ import annotations

import pytest

from autoresearch.program import Metric, parse_program
from autoresearch.loop.decide import RunView, threshold, verdict

MIN = Metric(name="val_bpb", direction="minimize")
MAX = Metric(name="acc", direction="maximize")
BAD = ["crash", "timeout", "oom", "invalid", "interrupted", "missing"]
T, MARGIN = 0.01, 0.02          # keep needs > 0.01; a win below 0.03 needs confirming


def ok(v: float, rid: str = "0002") -> RunView:
    return RunView(run_id=rid, status="ok", value=v, seed=1)


def bad(status: str, rid: str = "0002") -> RunView:
    return RunView(run_id=rid, status=status)


@pytest.mark.parametrize("status", BAD)
@pytest.mark.parametrize("best", [None, 2.0])
def test_a_run_that_did_not_finish_ok_is_a_crash_whatever_came_before(status, best):
    v = verdict([ok(1.0, "0001"), bad(status)], best, MIN, T, MARGIN, can_confirm=True)
    assert v.action == "crash" and v.value is None and v.delta is None
    assert v.note == status


@pytest.mark.parametrize("status", BAD)
def test_an_ok_status_without_a_value_is_not_a_result(status):
    assert verdict([RunView(run_id="1", status="ok", value=None)], 2.0, MIN, T, 0, True).action == "crash"


def test_the_first_ok_run_is_the_baseline_and_is_kept_whatever_it_scores():
    v = verdict([ok(9.99)], None, MIN, T, MARGIN, True)
    assert (v.action, v.note, v.value, v.delta) == ("keep", "baseline", 9.99, None)


# (metric, best, value, expected) -- minimise: lower is better; maximise: higher is better
CELLS = [
    (MIN, 2.00, 1.95, "keep"),        # better by 0.05 >= T + MARGIN
    (MIN, 2.00, 2.10, "discard"),     # worse
    (MIN, 2.00, 2.00, "discard"),     # equal
    (MIN, 2.00, 1.995, "discard"),    # better by 0.005, within noise (<= T)
    (MIN, 2.00, 1.99, "discard"),     # better by exactly T: not MORE than the threshold
    (MIN, 2.00, 1.98, "confirm"),     # better by 0.02: above T, below T + MARGIN
    (MAX, 0.50, 0.60, "keep"),
    (MAX, 0.50, 0.40, "discard"),
    (MAX, 0.50, 0.505, "discard"),
    (MAX, 0.50, 0.52, "confirm"),
]


@pytest.mark.parametrize("metric,best,value,expected", CELLS)
def test_single_run_cells(metric, best, value, expected):
    v = verdict([ok(value)], best, metric, T, MARGIN, can_confirm=True)
    assert v.action == expected
    assert v.delta == pytest.approx(value - best)
    assert v.improvement == pytest.approx(metric.improvement(value, best))


def test_worse_and_within_noise_say_which():
    assert verdict([ok(2.1)], 2.0, MIN, T, MARGIN, True).note == "worse"
    assert verdict([ok(1.995)], 2.0, MIN, T, MARGIN, True).note == "within noise"


def test_a_narrow_win_confirmed_by_a_second_seed_is_kept_on_the_mean():
    v = verdict([ok(1.98, "0003"), ok(1.975, "0004")], 2.0, MIN, T, MARGIN, True)
    assert v.action == "keep" and v.value == pytest.approx(1.9775) and v.n_ok == 2
    assert v.note.startswith("confirmed")


def test_a_narrow_win_that_the_second_seed_does_not_confirm_is_discarded():
    v = verdict([ok(1.98, "0003"), ok(2.01, "0004")], 2.0, MIN, T, MARGIN, True)
    assert v.action == "discard" and v.value == pytest.approx(1.995)
    assert "not confirmed" in v.note


def test_a_narrow_win_is_not_kept_unconfirmed_when_no_confirmation_is_possible():
    v = verdict([ok(1.98)], 2.0, MIN, T, MARGIN, can_confirm=False)
    assert v.action == "discard" and "unconfirmed" in v.note


def test_a_crashing_confirmation_run_reverts():
    assert verdict([ok(1.98, "0003"), bad("oom", "0004")], 2.0, MIN, T, MARGIN, True).action == "crash"


def test_without_a_margin_nothing_needs_confirming():
    assert verdict([ok(1.985)], 2.0, MIN, T, 0.0, True).action == "keep"


def test_threshold_is_the_larger_of_min_improvement_and_k_sigma():
    prog = parse_program("---\nmin_improvement: 0.003\nnoise: {k_sigma: 2.0}\n---\n")
    assert threshold(prog, None) == 0.003
    assert threshold(prog, 0.001) == 0.003
    assert threshold(prog, 0.01) == pytest.approx(0.02)


def test_no_runs_is_a_programming_error():
    with pytest.raises(ValueError):
        verdict([], 1.0, MIN, T, MARGIN, True)
