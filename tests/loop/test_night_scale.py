"""The simulated night (bench/bench_night.py) in its quick mode: a Stop hook deciding a wave of 16
reads the same number of records, files and queue entries, and starts the same number of git
processes, at 16 and at 48 rows of history -- what keeps the decision flat over a 1,000-experiment
night (the bench prints the times; counts, not seconds, are what a test can assert without flaking)."""
from __future__ import annotations

import sys

from loop_support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_night  # noqa: E402


def test_a_wave_decision_reads_what_the_wave_needs_not_the_history(monkeypatch):
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "AUTORESEARCH_MAX_EXPERIMENTS", "AUTORESEARCH_MAX_IDLE_STOPS"):
        monkeypatch.setenv(var, "")                   # the bench sets them; restored after the test
    small, big = bench_night.night(bench_night.QUICK, quick=True)
    assert (small.history, big.history) == (16, 48)
    for what, n in small.reads.items():
        # 32 more decided runs: reading each once (or a file of each) would add 32 or more
        assert big.reads[what] <= n + 8, (what, small.reads, big.reads)
    assert small.reads["metrics verified"] >= bench_night.WAVE    # the wave's own records are verified
