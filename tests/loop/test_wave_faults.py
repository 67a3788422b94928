"""Waves under targeted faults, each a regression test for a bug the fault injector found: a lost
queue.json, a kill between a run's record and its queue state, a changed snapshot, a file made
after queueing, a stuck wave, a plain run beside a wave, a Stop hook killed while the winner is
being restored. Fake runs (the real queue, records and Stop hook), as in test_wave_properties."""
from __future__ import annotations

import os
import random
import shutil
import time

import pytest

from autoresearch.run.main import main as run_main
from autoresearch.record.metrics import RunMetrics
from autoresearch.record.queue import QUEUE_FILE, SNAPSHOT_DIR, entries, read_entry
from loop_support import PROGRAM, Project
from test_wave_properties import Waves


def world(tmp_path, program: str = PROGRAM, lib: bool = False) -> Waves:
    w = Waves(Project.create(tmp_path / "proj", program=program), random.Random(0))
    if lib:                                                  # an editable folder with one file
        (w.p.path / "lib").mkdir()
        (w.p.path / "lib" / "base.py").write_text("BASE = 0\n")
        w.p.sh("git", "add", "lib")
        w.p.sh("git", "commit", "-q", "-m", "lib")
    w.p.baseline(2.0)
    return w


def variant(w: Waves, lr: str) -> str:
    (w.p.path / "train.py").write_text(w.p.committed("train.py").replace("LEARNING_RATE = 3e-3", lr))
    return w.queue()


def decide(w: Waves) -> dict:
    w.p.note(f"wave noted {time.time()}")
    return w.stop()


def rows(w: Waves) -> dict:
    return {r.run_id: r for r in w.p.rows()}


@pytest.mark.parametrize("damage", ["deleted", "truncated", "invalid"])
def test_a_lost_queue_file_keeps_the_run_in_its_wave(tmp_path, damage):
    w = world(tmp_path)
    a, b = variant(w, "LEARNING_RATE = 6e-3"), variant(w, "LEARNING_RATE = 1e-3")
    code_a = (w.p.path / "runs" / a / SNAPSHOT_DIR / "train.py").read_text()

    def hurt(rid: str) -> None:
        f = w.p.path / "runs" / rid / QUEUE_FILE
        {"deleted": lambda: f.unlink(), "truncated": lambda: f.write_text(f.read_text()[:25]),
         "invalid": lambda: f.write_text("{not json")}[damage]()

    hurt(a)                                                  # while queued: it must still run
    assert [e.run_id for e in entries(w.p.path) if e.state == "queued"] == [a, b]
    w.sched(value=1.5)
    w.sched(value=1.9)
    hurt(a)                                                  # after it ran: still its wave's best
    assert read_entry(w.p.path / "runs" / a).state == "done"
    r = decide(w)
    got = rows(w)
    assert got[a].status == "keep" and got[b].status == "discard", r
    assert w.p.read() == code_a == w.p.committed("train.py")


def test_a_runner_killed_between_its_record_and_queue_state_is_done_not_lost(tmp_path):
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")
    w.sched(fault="kill_measured", value=1.5)
    w.sched()                                                # a new scheduler settles it
    e = read_entry(w.p.path / "runs" / a)
    assert e.state == "done" and "recorded" in (e.note or "")
    decide(w)
    assert rows(w)[a].status == "keep"


def test_a_runner_lost_before_it_measured_is_interrupted_at_the_stop(tmp_path):
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")
    w.sched(fault="kill_claimed")                            # claimed, its runner gone, no scheduler since
    decide(w)
    assert rows(w)[a].status == "crash" and read_entry(w.p.path / "runs" / a).state == "interrupted"


def test_a_slot_runner_notes_its_own_pid_so_pause_can_stop_it(tmp_path):
    """The scheduler killed between starting a runner and noting its pid: the runner notes it
    itself (here it then fails fast: this project has no prepare.py), so `pause` could signal it."""
    import subprocess
    import sys

    from autoresearch.record.queue import claim
    from loop_support import clean_env
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")
    assert claim(w.p.path, a, 0) is not None
    p = subprocess.Popen([sys.executable, "-m", "autoresearch.run", "--execute", a, "--slot", "0"], cwd=w.p.path,
                         env=clean_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.wait(timeout=120)
    e = read_entry(w.p.path / "runs" / a)
    assert e.pid == p.pid and e.state == "interrupted" and "prepare.py" in (e.note or ""), e


def test_a_changed_snapshot_is_never_put_back_nor_kept(tmp_path):
    w = world(tmp_path)
    a, b = variant(w, "LEARNING_RATE = 6e-3"), variant(w, "LEARNING_RATE = 1e-3")
    w.sched(value=1.5)
    w.sched(value=1.9)
    snap = w.p.path / "runs" / a / SNAPSHOT_DIR / "train.py"
    snap.write_text(snap.read_text() + "\nALTERED = True\n")   # not the code that was measured
    r = decide(w)
    assert "ALTERED" not in w.p.read() and "ALTERED" not in w.p.committed("train.py"), r
    got = rows(w)
    assert got[a].status != "keep" and got[b].status == "keep"
    assert "LEARNING_RATE = 1e-3" in w.p.committed("train.py")


def test_a_file_made_after_queueing_is_not_part_of_the_winner(tmp_path):
    lib = PROGRAM.replace("editable: [train.py, scratchpad.md]", "editable: [train.py, scratchpad.md, lib/]")
    w = world(tmp_path, lib, lib=True)
    a = variant(w, "LEARNING_RATE = 6e-3")
    (w.p.path / "lib" / "extra.py").write_text("X = 1\n")      # made after a was queued
    b = variant(w, "LEARNING_RATE = 1e-3")
    w.sched(value=1.5)
    w.sched(value=1.9)
    r = decide(w)
    got = rows(w)
    assert got[a].status == "keep", r
    assert not (w.p.path / "lib" / "extra.py").exists() and got[b].status == "discard"
    assert (w.p.path / ".autoresearch" / "reverted" / f"wave-{a}" / "lib" / "extra.py").read_text() == "X = 1\n"


def test_a_stuck_wave_is_cancelled_after_a_bound_with_a_clear_message(tmp_path, monkeypatch):
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")                   # queued; no scheduler ever runs it
    r = decide(w)
    assert r["decision"] == "block" and "--wait" in r["reason"]
    monkeypatch.setenv("AUTORESEARCH_WAVE_STUCK_S", "60")
    old = time.time() - 120
    for f in (w.p.path / "runs" / a).rglob("*"):
        os.utime(f, (old, old))
    os.utime(w.p.path / "runs" / a, (old, old))
    r = decide(w)
    assert "no progress" in r["reason"] and a in r["reason"], r
    assert read_entry(w.p.path / "runs" / a).state == "cancelled"
    assert rows(w)[a].status == "crash" and rows(w)[a].value is None


def test_a_plain_run_while_a_wave_waits_is_refused(tmp_path, monkeypatch, capsys):
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")
    monkeypatch.chdir(w.p.path)
    assert run_main(["-m", "a plain run beside the wave"]) == 75
    err = capsys.readouterr().err
    assert "wave is in flight" in err and a in err and "--wait" in err
    assert [e.run_id for e in entries(w.p.path)] == [a] and len(list((w.p.path / "runs").iterdir())) == 2


@pytest.mark.parametrize("step", ["materialize", "journal", "commit", "ledger"])
def test_a_hook_killed_while_restoring_the_winner_finishes_it_once(tmp_path, step):
    w = world(tmp_path)
    a, b = variant(w, "LEARNING_RATE = 6e-3"), variant(w, "LEARNING_RATE = 1e-3")
    code_a = (w.p.path / "runs" / a / SNAPSHOT_DIR / "train.py").read_text()
    (w.p.path / "train.py").write_text(w.p.read() + "# unqueued edit\n")
    w.sched(value=1.5)
    w.sched(value=1.9)
    w.p.note("wave noted")
    killed = w.p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": step})
    assert killed.rc != 0
    r = w.stop()
    got = rows(w)
    assert got[a].status == "keep" and got[b].status == "discard", r
    assert [x.run_id for x in w.p.rows()].count(a) == 1
    assert w.p.read() == code_a == w.p.committed("train.py")
    assert "# unqueued edit" in (w.p.path / ".autoresearch" / "reverted" / f"wave-{a}" / "train.py").read_text()


def test_a_wave_of_crashes_leaves_the_tree_at_the_best(tmp_path):
    w = world(tmp_path)
    best = w.p.read()
    a, b = variant(w, "LEARNING_RATE = 6e-3"), variant(w, "LEARNING_RATE = 1e-3")
    w.sched(ok=False)
    w.sched(ok=False)
    r = decide(w)
    got = rows(w)
    assert got[a].status == got[b].status == "crash" and "wave of 2 runs" in r["reason"]
    assert w.p.read() == best and len(w.p.rows()) == 3


def test_a_wave_mixing_fingerprints_judges_only_the_comparable_run(tmp_path):
    w = world(tmp_path)
    w.budget = 4.0
    a = variant(w, "LEARNING_RATE = 6e-3")                   # another budget: not comparable, however good
    w.budget = 2.0
    b = variant(w, "LEARNING_RATE = 1e-3")
    w.sched(value=1.0)
    w.sched(value=1.8)
    r = decide(w)
    got = rows(w)
    assert f"run {b} is its best" in r["reason"]
    assert got[b].status == "keep" and got[a].status == "discard" and got[a].note.startswith("wave: not the best")
    assert "LEARNING_RATE = 1e-3" in w.p.committed("train.py")


def test_a_close_winner_is_confirmed_before_it_is_kept(tmp_path):
    w = world(tmp_path)                                      # best 2.0; threshold 0.01, confirm margin 0.02
    a, b = variant(w, "LEARNING_RATE = 6e-3"), variant(w, "LEARNING_RATE = 1e-3")
    w.sched(value=1.98)
    w.sched(value=2.1)
    code_a = (w.p.path / "runs" / a / SNAPSHOT_DIR / "train.py").read_text()
    r = decide(w)
    assert "Confirm it" in r["reason"] and a not in rows(w) and rows(w)[b].status == "discard"
    assert w.p.read() == code_a                              # the winner is in the tree, to be rerun
    c = w.queue()                                            # the confirming rerun, queued
    w.sched(value=1.975)
    r = decide(w)
    got = rows(w)
    assert got[c].status == "keep" and got[c].runs == [a, c] and a not in got, r      # the mean of both kept
    assert w.p.committed("train.py") == code_a == w.p.read()


def test_two_queues_at_once_get_two_whole_runs(tmp_path, data_dir):
    """Two `./run.sh --queue` at once (the real queue_experiment, in two processes' worth of
    threads): distinct run ids, each a whole snapshot and a readable entry."""
    from concurrent.futures import ThreadPoolExecutor

    from autoresearch.run.enqueue import queue_experiment
    from loop_support import ROOT
    w = world(tmp_path)
    shutil.copy2(ROOT / "prepare.py", w.p.path / "prepare.py")
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: queue_experiment(w.p.path, f"variant {i}", budget=2.0), range(4)))
    ids = [e.run_id for e in got]
    assert len(set(ids)) == 4
    for rid in ids:
        e = read_entry(w.p.path / "runs" / rid)
        assert e is not None and e.state == "queued" and e.note is None
        assert (w.p.path / "runs" / rid / SNAPSHOT_DIR / "train.py").read_text() == w.p.read()
        assert not (w.p.path / "runs" / rid / (SNAPSHOT_DIR + ".part")).exists()


def test_a_run_killed_while_being_queued_is_never_half_run(tmp_path):
    """Killed after its record, before its queue.json: rebuilt as queued, runs whole. Killed while
    its snapshot was being copied (snapshot.part/, no record): not a wave run, a crash, never run."""
    w = world(tmp_path)
    a = variant(w, "LEARNING_RATE = 6e-3")
    (w.p.path / "runs" / a / QUEUE_FILE).unlink()            # the kill before the entry was written
    b = variant(w, "LEARNING_RATE = 1e-3")
    d = w.p.path / "runs" / b
    (d / QUEUE_FILE).unlink()
    (d / "metrics.json").unlink()
    (d / SNAPSHOT_DIR).rename(d / (SNAPSHOT_DIR + ".part"))  # the kill mid-copy
    old = time.time() - 60
    for f in [*d.rglob("*"), d]:
        os.utime(f, (old, old))                              # a while ago
    assert [e.run_id for e in entries(w.p.path)] == [a]
    w.sched(value=1.8)
    r = decide(w)
    got = rows(w)
    assert got[a].value is not None and got[b].status == "crash" and got[b].value is None, r


def test_the_best_is_judged_when_the_newest_run_of_its_code_never_measured(tmp_path):
    """Two runs of one code (seeds, or the same idea queued twice); the newer one's runner died before
    its first record (no fingerprint, interrupted). The wave's best is the older one: it must be
    judged (and kept), not written off as "not the best of its wave" beside a crash row."""
    w = world(tmp_path)
    a1 = variant(w, "LEARNING_RATE = 6e-3")
    a2 = w.queue()                                           # the same code again
    w.sched(value=1.5)
    w.sched(fault="kill_claimed")
    w.sched()                                                # a new scheduler settles the lost one
    assert read_entry(w.p.path / "runs" / a2).state == "interrupted"
    r = decide(w)
    covering = {rid: row for row in w.p.rows() for rid in (row.run_id, *row.runs)}
    assert covering[a1].status == "keep" and covering[a1].value == 1.5, (r, covering[a1])
    assert a2 in covering and covering[a2].value is None
    assert "6e-3" in w.p.committed("train.py")


def test_a_same_code_run_interrupted_after_the_best_does_not_crash_the_best(tmp_path):
    """A run of the best's code measured, then another run of that code was interrupted (paused,
    killed, its node lost) after its first record: an interruption says nothing of the code, so
    the measured run is judged (kept) and the interrupted one gets a row of its own."""
    w = world(tmp_path)
    a1 = variant(w, "LEARNING_RATE = 6e-3")
    a2 = w.queue()
    w.sched(value=1.5)
    w.sched(value=1.6)
    m = RunMetrics.read(w.p.path / "runs" / a2)            # as the runner records a run stopped mid-way
    m.status, m.metric_value, m.reason = "interrupted", None, "interrupted by the test"
    m.write(w.p.path / "runs" / a2)
    r = decide(w)
    covering = {rid: row for row in w.p.rows() for rid in (row.run_id, *row.runs)}
    assert covering[a1].status == "keep" and covering[a1].value == 1.5, (r, covering[a1])
    assert covering[a2].run_id == a2 and covering[a2].status == "crash" and covering[a2].value is None
