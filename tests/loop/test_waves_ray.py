"""Waves on a real Ray cluster started here (tests/ray_support.py): a head with {"slot": 2} and a
second node with its own {"slot": 2}; each run asks for {"slot": 2}, so one run per node at a time.

A wave of 4 runs spreads over both nodes (both node ids in the records, results re-signed on the
head), all submitted by the scheduler's one Ray driver (one job id in every record), and the Stop
hook decides it whole. A node killed in the middle of a wave: its run is recorded interrupted
(never a result), the other runs are decided."""
from __future__ import annotations

import subprocess
import time

import pytest

from autoresearch.record.layout import eval_log
from autoresearch.record.metrics import RunMetrics, load_verified
from autoresearch.record.queue import read_entry
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
        assert m.extra["dispatch_s"] >= 0
        assert (proj.path / "runs" / r / "train.log").stat().st_size > 0
        assert (proj.path / "runs" / r / "diff.patch").is_file()
        assert eval_log(proj.path, r).is_file() and not (proj.path / "runs" / r / "eval.log").exists(), \
            "the node's eval log comes back into the head's state folder, outside the project"
    jobs = {load_verified(proj.path / "runs" / r)[0].extra["ray_job"] for r in runs}
    assert len(jobs) == 1, f"one Ray driver (the scheduler's) submits every run of the wave: {jobs}"
    assert "LEARNING_RATE = 6e-3" in (proj.path / "runs" / runs[1] / "diff.patch").read_text()
    proj.note("wave of 4 learning rates on ray")
    r = proj.decide()
    rows = {row.run_id for row in proj.rows()}
    assert set(runs) <= rows, rows
    assert "wave of 4 runs" in r.text, r.text


def test_a_node_killed_mid_wave_leaves_its_run_interrupted(tmp_path, cluster, data_dir):
    proj = ray_project(tmp_path, cluster)
    runs = [queue(proj, f"run {i}", budget=15, seed=10 + i) for i in range(3)]   # killed 3 s into 15
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
    r = proj.decide()
    rows = {row.run_id: row for row in proj.rows()}
    covered = {rid for row in rows.values() for rid in (row.run_id, *row.runs)}  # same code: seeds share a row
    assert set(runs) <= covered, (r.text, [(x.run_id, x.runs, x.status, x.note) for x in rows.values()])
    assert rows[victim].value is None and rows[victim].status == "crash"
    assert "lost on the Ray cluster" in rows[victim].note


def test_a_frozen_eval_script_repo_runs_on_ray_from_the_nodes_commit(tmp_path, cluster):
    """run.mode eval_command on a node: the shipped base is committed there, so the frozen eval.py
    runs as committed and the work copy holds the tracked tree, writable (a legacy repo writes into
    it), as on the head. The mounts are the same paths on both nodes (one machine here)."""
    import sys
    sys.path.insert(0, str(ROOT / "tests" / "run"))
    from test_eval_command import legacy_repo
    proj = legacy_repo(tmp_path, extra=f"executor: {{kind: ray, slots: 1, address: '{cluster.address}', "
                                       "resources: {slot: 2}}\n")
    (proj / "outputs").mkdir()
    (proj / "outputs" / ".keep").write_text("")
    (proj / "train.py").write_text((proj / "train.py").read_text() + "\nattempt('tree write', lambda: "
                                   "open('outputs/run.txt', 'w').write('x'))\n")
    from experiment_support import git_env
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True, env=git_env())
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "outputs/"], cwd=proj, check=True, env=git_env())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    r = subprocess.run([str(ROOT / "run.sh"), "-m", "on ray", "--queue"], cwd=proj, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rid = r.stdout.split()[2]
    out = subprocess.run([str(ROOT / "run.sh"), "--wait"], cwd=proj, env=clean_env(), capture_output=True,
                         text=True, timeout=600).stdout
    assert rid in out, out
    m, problem = load_verified(proj / "runs" / rid)
    assert problem is None and m is not None, problem
    assert (m.status, m.metric_value, m.mode) == ("ok", 0.8, "eval_command"), m.reason
    assert m.extra["executor"] == "ray" and m.extra["eval_base"] == head
    assert m.fingerprint is not None and m.fingerprint.evaluator.startswith("eval_command:")
    log = (proj / "runs" / rid / "train.log").read_text()
    assert "PROBE read held-out: FileNotFoundError" in log and "PROBE write channel: done" not in log, log
    assert "PROBE tree write: done" in log, log                    # the node's work copy is writable
    assert not (proj / "outputs" / "run.txt").exists()


def test_a_lost_queue_file_keeps_a_ray_runs_base(tmp_path):
    """queue.json lost: the rebuilt entry ships the same commit (kept in the signed record)."""
    from autoresearch.record.queue import QUEUE_FILE
    from autoresearch.run.enqueue import queue_experiment
    p = make(tmp_path)
    text = (p.path / "program.md").read_text().replace(
        "executor: {kind: local, slots: 2}", "executor: {kind: ray, slots: 2, address: '127.0.0.1:1'}")
    (p.path / "program.md").write_text(text)
    p.sh("git", "commit", "-q", "-am", "ray executor")
    head = p.sh("git", "rev-parse", "HEAD").strip()
    e = queue_experiment(p.path, "a variant", budget=2)
    assert e.base == head
    (p.path / "runs" / e.run_id / QUEUE_FILE).unlink()
    again = read_entry(p.path / "runs" / e.run_id)
    assert again is not None and (again.state, again.base) == ("queued", head)


def test_status_names_the_node_while_it_runs_and_pause_stops_the_task_on_it(tmp_path, cluster, data_dir):
    """The node is known as soon as the task starts (status shows it in flight); `autoresearch
    pause` cancels the task: its sandbox and unpacked run are gone from the node, it is interrupted."""
    from autoresearch.run.raynode import sweep
    for n in (cluster.head, cluster.worker):                   # what an earlier test's killed node left
        sweep(n.tmpdir)
    proj = ray_project(tmp_path, cluster)
    first = queue(proj, "to be paused", budget=40, seed=3)
    t0 = time.monotonic()
    while not (on := [n for n in (cluster.head, cluster.worker) if first in cluster.runs_on(n)]):
        assert time.monotonic() - t0 < 240, "the run never started on a node"
        time.sleep(0.5)
    assert read_entry(proj.path / "runs" / first).node == on[0].node_id       # in flight, not after
    st = subprocess.run([str(ROOT / ".venv/bin/autoresearch"), "status", "--json"], cwd=proj.path, env=clean_env(),
                        capture_output=True, text=True, timeout=60)
    assert on[0].node_id in st.stdout, st.stdout[-2000:]
    r = subprocess.run([str(ROOT / ".venv/bin/autoresearch"), "pause", "night over"], cwd=proj.path,
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    assert "wave cancelled" in r.stdout, r.stdout + r.stderr
    wait(proj)
    t0 = time.monotonic()
    while cluster.runs_on(on[0]) or list(on[0].tmpdir.glob("autoresearch-ray-*")):
        assert time.monotonic() - t0 < 60, ("the paused run is still on its node",
                                            sorted(str(x) for x in on[0].tmpdir.glob("autoresearch-ray-*/*")))
        time.sleep(0.5)
    bw = subprocess.run(["pgrep", "-f", f"bwrap.*{on[0].tmpdir}"], capture_output=True, text=True).stdout
    assert not bw.strip(), bw
    m = RunMetrics.read(proj.path / "runs" / first)
    assert m.status == "interrupted" and m.metric_value is None
    assert read_entry(proj.path / "runs" / first).state == "interrupted"


def test_a_node_sweeps_what_killed_tasks_left_but_never_a_live_tasks_folder(tmp_path):
    import fcntl
    import os

    from autoresearch.run.raynode import LOCK, PREFIX, STALE_S, sweep
    dead, live, young, old = (tmp_path / f"{PREFIX}{n}" for n in ("dead", "live", "young", "old"))
    for d in (dead, live, young, old):
        (d / "project" / "runs" / "0001").mkdir(parents=True)
        (d / "project" / "runs" / "0001" / "train.log").write_text("x")
    (dead / LOCK).write_text("")                                # its task's worker is gone: lock free
    fd = os.open(live / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)                              # a running task holds it
    (old / "project" / "runs" / "0001" / "locked").mkdir()
    (old / "project" / "runs" / "0001" / "locked").chmod(0)     # agent code made it unreadable
    os.utime(old, (0, 0))
    try:
        got = sweep(tmp_path)
        assert sorted(got) == [dead.name, old.name] and not dead.exists() and not old.exists()
        assert live.exists() and young.exists()
    finally:
        os.close(fd)
    assert sweep(tmp_path) == [live.name] and young.exists()
    assert STALE_S >= 60


def test_an_unreachable_cluster_interrupts_each_run_at_once_with_the_fix(tmp_path):
    """ray.init retries a cluster that is down for ever: the wave hung. Now the address is probed
    first: the run is interrupted in seconds, its reason names the fix, and doctor says it too."""
    from autoresearch.cli.envcheck import check_executor
    from autoresearch.program import load_program
    p = make(tmp_path)
    text = (p.path / "program.md").read_text().replace(
        "executor: {kind: local, slots: 2}", "executor: {kind: ray, slots: 1, address: '127.0.0.1:9'}")
    (p.path / "program.md").write_text(text)
    p.sh("git", "commit", "-q", "-am", "ray executor, cluster down")
    t0 = time.monotonic()
    rid = queue(p, "cluster down")
    out = wait(p)
    assert time.monotonic() - t0 < 60 and "wave finished" in out, out
    m = RunMetrics.read(p.path / "runs" / rid)
    assert m.status == "interrupted" and m.metric_value is None
    e = read_entry(p.path / "runs" / rid)
    assert e.state == "interrupted" and "cannot be reached" in e.note and "ray start --head" in e.note, e.note
    got = check_executor(p.path, load_program(p.path))
    assert got.level == "fail" and "cannot be reached" in got.found and "executor.address" in got.fix


def test_a_run_no_node_can_take_is_interrupted_after_the_start_bound(tmp_path, cluster, data_dir):
    """resources no node has (a GPU on a CPU cluster): the task would wait for ever. After
    AUTORESEARCH_RAY_START_S it is cancelled and interrupted, naming what it asked and what the
    nodes have."""
    p = ray_project(tmp_path, cluster)
    text = (p.path / "program.md").read_text().replace("resources: {slot: 2}", "resources: {GPU: 1}")
    (p.path / "program.md").write_text(text)
    p.sh("git", "commit", "-q", "-am", "asks for a GPU")
    r = subprocess.run([str(ROOT / "run.sh"), "-m", "wants a GPU", "--queue", "--budget", "2"], cwd=p.path,
                       env=clean_env(AUTORESEARCH_RAY_START_S="5"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rid = r.stdout.split()[2]
    out = wait(p)
    assert "wave finished" in out, out
    e = read_entry(p.path / "runs" / rid)
    assert e.state == "interrupted" and "no node of the Ray cluster took it within 5 s" in e.note, e.note
    assert "'GPU': 1" in e.note and "'GPU': 0.0" in e.note, e.note
    assert RunMetrics.read(p.path / "runs" / rid).status == "interrupted"


PRINT_FILES = '''import pathlib as _p
for _n in ("kept.txt", "subst.txt", "eol.txt", "link.txt"):
    print("FILE", _n, repr(_p.Path(_n).read_bytes()) if _p.Path(_n).exists() else "MISSING", flush=True)
'''


def test_a_node_runs_the_committed_bytes_whatever_the_repos_gitattributes_say(tmp_path, cluster, data_dir):
    """git archive would drop an export-ignore file and expand export-subst, and `git add` on the
    node would apply eol rules: the node's work copy must hold the blobs as committed, as a local
    run's does."""
    p = ray_project(tmp_path, cluster)
    (p.path / ".gitattributes").write_text("kept.txt export-ignore\nsubst.txt export-subst\neol.txt text eol=crlf\n")
    for name, text in (("kept.txt", "KEPT\n"), ("subst.txt", "$Format:%H$\n"), ("eol.txt", "a\nb\n")):
        (p.path / name).write_text(text)
    (p.path / "link.txt").symlink_to("kept.txt")                # a committed symlink stays one
    p.sh("git", "add", "-A")
    p.sh("git", "commit", "-q", "-m", "files with export and eol attributes")
    (p.path / "train.py").write_text(PRINT_FILES + p.read())
    rid = queue(p, "prints the files")
    wait(p)
    log = (p.path / "runs" / rid / "train.log").read_text()
    for want in ("FILE kept.txt b'KEPT\\n'", "FILE subst.txt b'$Format:%H$\\n'", "FILE eol.txt b'a\\nb\\n'",
                 "FILE link.txt b'KEPT\\n'"):
        assert want in log, log[:2000]
