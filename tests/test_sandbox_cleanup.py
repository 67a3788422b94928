"""A short bench/bench_containment.py: Docker runs whose runners are killed with SIGKILL
mid-run leave no container and no cgroup folder (the watchdog removes them at once)."""
from __future__ import annotations

import sys

import pytest

from experiment_support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from bench_containment import trial  # noqa: E402


@pytest.mark.docker
def test_killed_runners_leave_no_container_and_no_cgroup(docker_available):
    r = trial(runs=4, kill_every=2, sleep_s=3)
    assert r["killed"] == 2
    assert (r["containers_left"], r["cgroup_dirs_left"]) == (0, 0), r
