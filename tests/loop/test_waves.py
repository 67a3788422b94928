"""Waves with real runs: `./run.sh -m ... --queue` into the local executor with 2 slots on CPU
(real bwrap, tiny budgets), `./run.sh --wait`, and the Stop hook deciding the whole wave through
the wired command: every run a ledger row, the best comparable run judged, the tree at the best.
Also: a killed runner is interrupted, a restarted scheduler picks the queue up from disk, and
`autoresearch pause` cancels a wave (never a result)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from autoresearch.program import Metric
from autoresearch.record.metrics import RunMetrics
from autoresearch.record.queue import entries, read_entry, runner_live
from loop_support import PROGRAM, ROOT, Project, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.bwrap]

WAVE_PROGRAM = PROGRAM.replace("sandbox: {backend: none}", "sandbox: {backend: bwrap}\nexecutor: {kind: local, slots: 2}") \
    .replace("grace_seconds: 30", "grace_seconds: 90")


def make(tmp_path, slots: int = 2) -> Project:
    p = Project.create(tmp_path / "proj", program=WAVE_PROGRAM.replace("slots: 2", f"slots: {slots}"))
    shutil.copy2(ROOT / "prepare.py", p.path / "prepare.py")
    p.sh("git", "add", "prepare.py")
    p.sh("git", "commit", "-q", "-m", "add prepare.py")
    return p


def sh(p: Project, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "run.sh"), *args], cwd=p.path, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def queue(p: Project, msg: str) -> str:
    r = sh(p, "-m", msg, "--queue", "--budget", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("queued run ")
    return r.stdout.split()[2]


def wait(p: Project) -> str:
    r = sh(p, "--wait")
    assert r.returncode == 0, r.stderr
    return r.stdout


def until(cond, timeout: float = 120) -> None:
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.2)


@pytest.fixture
def proj(tmp_path, bwrap_available, data_dir) -> Project:
    return make(tmp_path)


def test_a_wave_on_two_slots_is_decided_whole(proj):
    base = queue(proj, "baseline")
    assert "baseline" in wait(proj)
    proj.note("baseline")
    assert "BASELINE" in proj.decide().text
    best_code = proj.read()

    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 6e-3")
    a = queue(proj, "lr 6e-3")
    code_a = proj.read()
    proj.edit("LEARNING_RATE = 6e-3", "LEARNING_RATE = 3e-3")
    proj.edit("def build_model():", "def build_model():\n    raise RuntimeError('boom')")
    b = queue(proj, "a broken model")
    (proj.path / "train.py").write_text(best_code.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3"))
    c = queue(proj, "lr 1e-3")
    code_c = proj.read()
    proj.edit("LEARNING_RATE = 1e-3", "LEARNING_RATE = 9e-3")          # not queued: must not be lost
    t0 = time.monotonic()
    out = wait(proj)
    assert all(r in out for r in (a, b, c)) and "wave finished" in out
    ms = {r: RunMetrics.read(proj.path / "runs" / r) for r in (a, b, c)}
    slots = {read_entry(proj.path / "runs" / r).slot for r in (a, b, c)}
    assert slots == {0, 1}                                            # both slots were used
    assert ms[b].status != "ok" and ms[a].status == "ok" and ms[c].status == "ok"
    assert ms[a].fingerprint.device == ms[c].fingerprint.device == "cpu (1 of 2 cores)" or os.cpu_count() == 1
    # two ran at once: the wave took less than the sum of the runs
    assert time.monotonic() - t0 < sum(m.total_seconds for m in ms.values()), ms

    proj.note("wave: lr 6e-3, a crash, lr 1e-3")
    r = proj.decide()
    rows = {row.run_id: row for row in proj.rows()}
    assert len({a, b, c} - set(rows)) <= 1, rows.keys()    # every run its own row (a winner under a confirming rerun: later)
    assert rows[b].status == "crash" and rows[b].value is None
    best_val = RunMetrics.read(proj.path / "runs" / base).metric_value
    m = Metric()
    win = a if m.better(ms[a].metric_value, ms[c].metric_value) else c
    lose = c if win == a else a
    assert "wave of 3 runs" in r.text and f"run {win} is its best" in r.text
    assert rows[lose].status == "discard" and rows[lose].note.startswith("wave: not the best")
    assert (proj.path / "runs" / lose / "diff.patch").is_file()
    imp = m.improvement(ms[win].metric_value, best_val)
    won_code = code_a if win == a else code_c
    if imp <= 0.01:
        assert rows[win].status == "discard" and proj.read() == best_code
    elif imp < 0.03:
        assert win not in rows and proj.read() == won_code and "onfirm" in r.text
    else:
        assert rows[win].status == "keep" and proj.read() == won_code and proj.committed("train.py").strip() == won_code.strip()
    # the agent's scratchpad may be dirty in every branch; train.py only while its win awaits confirmation
    assert [f for f in proj.dirty() if not f.endswith('scratchpad.md')] == [] or proj.read() == won_code
    kept_aside = proj.path / ".autoresearch" / "reverted" / f"wave-{win}" / "train.py"
    assert "LEARNING_RATE = 9e-3" in kept_aside.read_text()           # the unqueued edit is kept


def test_a_killed_runner_is_interrupted_a_restart_resumes_and_pause_cancels(tmp_path, bwrap_available, data_dir):
    proj = make(tmp_path, slots=1)
    first = queue(proj, "baseline, to be killed")
    second = queue(proj, "baseline again")
    until(lambda: runner_live(proj.path, first))
    sched = int((proj.path / ".autoresearch" / "scheduler.lock").read_text())
    os.kill(sched, signal.SIGKILL)                                     # the session (and scheduler) gone
    os.killpg(read_entry(proj.path / "runs" / first).pid, signal.SIGKILL)   # and the run's runner
    out = wait(proj)                                                   # a new scheduler takes the queue up
    assert read_entry(proj.path / "runs" / first).state == "interrupted"
    assert read_entry(proj.path / "runs" / second).state == "done"
    assert RunMetrics.read(proj.path / "runs" / first).status == "interrupted"
    assert f"{first}   interrupted" in out

    third = queue(proj, "a third")
    fourth = queue(proj, "a fourth")
    until(lambda: runner_live(proj.path, third))
    r = subprocess.run([str(ROOT / ".venv/bin/autoresearch"), "pause", "night over"], cwd=proj.path,
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    assert "wave cancelled" in r.stdout, r.stdout + r.stderr
    wait(proj)
    assert read_entry(proj.path / "runs" / fourth).state == "cancelled"
    until(lambda: not runner_live(proj.path, third))
    for rid in (third, fourth):
        m = RunMetrics.read(proj.path / "runs" / rid)
        assert m.status == "interrupted" and m.metric_value is None
    assert not (proj.path / "runs" / fourth / "out").exists()          # it never ran
    proj.note("a wave, half killed, half cancelled")
    r = proj.decide()
    rows = proj.rows()
    # the row that decided each run: runs of the same code and fingerprint share one (a runner killed
    # before its first record leaves no fingerprint, so run 0001 may share the never-run 0004's)
    covering = {rid: row for row in rows for rid in (row.run_id, *row.runs)}
    assert {first, second, third, fourth} <= set(covering), (r.text, [(x.run_id, x.runs, x.status, x.note) for x in rows])
    assert covering[second].status == "keep" and covering[second].value is not None, covering[second]   # the baseline
    for rid in (first, third, fourth):                 # interrupted or never run: rows of their own, not judged
        assert covering[rid].run_id == rid and covering[rid].value is None and covering[rid].status == "crash"
    assert all(e.state not in ("queued", "running") for e in entries(proj.path))
