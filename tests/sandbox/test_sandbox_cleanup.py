"""A short bench/bench_containment.py: Docker runs whose runners are killed with SIGKILL
mid-run leave no container and no cgroup folder (the watchdog removes them at once)."""
from __future__ import annotations

import os
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


@pytest.mark.parametrize("where", ["state", "legacy"])
def test_a_killed_runs_sandbox_folder_is_removed_by_the_next_run_and_a_live_one_kept(tmp_path, where):
    """The scratch in the state folder, and runs/NNNN/.sandbox an older version left in the project."""
    import subprocess
    import time

    from autoresearch.record.layout import SCRATCH_LOCK, state_folder, sweep_scratch
    root = tmp_path / "p"
    for n in ("0001", "0002", "0003"):
        (root / "runs" / n).mkdir(parents=True)
    dead, live, fresh = (root / "runs" / n / ".sandbox" if where == "legacy" else state_folder(root) / "runs" / n
                         for n in ("0001", "0002", "0003"))
    for d in (dead, live, fresh):
        (d / "runs").mkdir(parents=True)
        (d / SCRATCH_LOCK).touch()
    (fresh / SCRATCH_LOCK).unlink()                 # a runner between mkdir and taking its lock
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(live / SCRATCH_LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sweep_scratch(root) == ["0001"]
        assert not dead.exists() and live.exists() and fresh.exists()
        holder.kill()
        holder.wait()
        old = time.time() - 120
        os.utime(fresh, (old, old))
        assert sweep_scratch(root) == ["0002", "0003"]
        assert not live.exists() and not fresh.exists()
    finally:
        holder.kill()
