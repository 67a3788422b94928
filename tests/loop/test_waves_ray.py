"""Waves on a real Ray cluster started here (tests/ray_support.py): a head with {"slot": 2} and a
second node with its own {"slot": 2}; each run asks for {"slot": 2}, so one run per node at a time.

A wave of 4 runs spreads over both nodes (both node ids in the records, results re-signed on the
head) and the Stop hook decides it whole. A node killed in the middle of a wave: its run is recorded
interrupted (never a result), the other runs are decided."""
from __future__ import annotations

import subprocess
import time

import pytest

from autoresearch.run.metrics import load_verified
from autoresearch.run.queue import read_entry
from loop_support import ROOT, Project, clean_env
from ray_support import Cluster, start_cluster
from test_waves import make, wait

pytestmark = [pytest.mark.slow, pytest.mark.bwrap, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster(ray_available, bwrap_available) -> Cluster:
    c = start_cluster()
    yield c
    c.stop()


def ray_project(tmp_path, cluster: Cluster) -> Project:
    p = make(tmp_path)
    text = (p.path / "program.md").read_text().replace(
        "executor: {kind: local, slots: 2}",
        f"executor: {{kind: ray, slots: 2, address: '{cluster.address}', resources: {{slot: 2}}}}")
    (p.path / "program.md").write_text(text)
    p.sh("git", "commit", "-q", "-am", "ray executor")
    return p


def queue(p: Project, msg: str, budget: float = 2, seed: int | None = None) -> str:
    extra = [] if seed is None else ["--seed", str(seed)]
    r = subprocess.run([str(ROOT / "run.sh"), "-m", msg, "--queue", "--budget", str(budget), *extra], cwd=p.path,
                       env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[2]


def test_a_wave_of_four_spreads_over_both_nodes_and_is_decided(tmp_path, cluster, data_dir):
    proj = ray_project(tmp_path, cluster)
    lrs = ("3e-3", "6e-3", "1e-3", "9e-3")
    base = proj.read()
    runs = []
    for lr in lrs:
        (proj.path / "train.py").write_text(base.replace("LEARNING_RATE = 3e-3", f"LEARNING_RATE = {lr}"))
        runs.append(queue(proj, f"lr {lr}"))
    out = wait(proj)
    assert all(r in out for r in runs) and "wave finished" in out, out
    nodes = {getattr(read_entry(proj.path / "runs" / r), "node", r) for r in runs}
    assert nodes == {cluster.head.node_id, cluster.worker.node_id}, nodes      # both nodes ran runs
    for r in runs:
        m, problem = load_verified(proj.path / "runs" / r)          # re-signed here with the project's key
        assert problem is None and m is not None and m.status == "ok", (r, problem, m and m.reason)
        assert m.extra["node"] in nodes and m.extra["executor"] == "ray"
        assert (proj.path / "runs" / r / "train.log").stat().st_size > 0
        assert (proj.path / "runs" / r / "diff.patch").is_file()
    assert "LEARNING_RATE = 6e-3" in (proj.path / "runs" / runs[1] / "diff.patch").read_text()
    proj.note("wave of 4 learning rates on ray")
    r = proj.decide()
    rows = {row.run_id for row in proj.rows()}
    assert set(runs) <= rows, rows
    assert "wave of 4 runs" in r.text, r.text


def test_a_node_killed_mid_wave_leaves_its_run_interrupted(tmp_path, cluster, data_dir):
    proj = ray_project(tmp_path, cluster)
    runs = [queue(proj, f"run {i}", budget=25, seed=10 + i) for i in range(3)]
    t0 = time.monotonic()
    while not cluster.runs_on(cluster.worker):
        assert time.monotonic() - t0 < 240, "no run reached the second node"
        time.sleep(0.5)
    victim = cluster.runs_on(cluster.worker)[0]
    time.sleep(3)                                                      # mid-training
    cluster.kill(cluster.worker)
    out = wait(proj)
    m, problem = load_verified(proj.path / "runs" / victim)
    assert problem is None and m.status == "interrupted" and m.metric_value is None, (m, problem)
    assert "lost on the Ray cluster" in (m.reason or ""), m.reason
    assert read_entry(proj.path / "runs" / victim).state == "interrupted"
    rest = [r for r in runs if r != victim]
    for r in rest:
        mr, _ = load_verified(proj.path / "runs" / r)
        assert mr.status == "ok" and mr.extra["node"] == cluster.head.node_id, (r, mr.reason)
    assert f"{victim}   interrupted" in out, out
    proj.note("a wave that lost a node")
    proj.decide()
    rows = {row.run_id: row for row in proj.rows()}
    covered = {rid for row in rows.values() for rid in (row.run_id, *row.runs)}  # same code: seeds share a row
    assert set(runs) <= covered, rows.keys()
    assert rows[victim].value is None and rows[victim].status == "crash"
    assert "lost on the Ray cluster" in rows[victim].note
