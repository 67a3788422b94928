"""Fair, durable decisions (issue 14): one test per fault that made the loop decide wrongly or
lose a result, each reproducing the fault in a real git repository with the real hooks.

Re-measurements, budget changes, sigma per fingerprint, lost or corrupt results.tsv / state.json /
runs/, run id reuse, `final` on the wrong checkpoint, concurrent ./run.sh, contended runs, a
journal the branch moved under, a full disk (a real, small tmpfs), undecided runs at session
start and compaction, and "still running?" by the run's own budget."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.program import load_program
from autoresearch.record.layout import allocate_run_dir
from autoresearch.cli.final import FinalError, check_identity
from autoresearch.record.metrics import RunMetrics
from autoresearch.loop.state import Calibration, now
from loop_support import PROGRAM, ROOT, Project, clean_env, fingerprint

PY = str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


def checkpoint(p: Project, rid: str) -> Path:
    out = p.path / "runs" / rid / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pt").write_bytes(f"weights of {rid}".encode())
    return out / "model.pt"


def keep_trailers(p: Project) -> list[str]:
    return [ln.strip() for ln in p.git("log", "--format=%(trailers:key=Autoresearch-Run,valueonly)").splitlines()
            if ln.strip()]


# --- re-measurements are not wins ------------------------------------------------------------

def test_a_rerun_of_the_best_remeasures_it_and_is_never_kept(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    assert "KEPT" in proj.decide().text
    head = proj.rev()
    lucky = proj.fake_run(value=1.5, desc="same code again")              # unchanged code, a lucky seed
    r = proj.decide()
    assert r.blocked and "RE-MEASURED the best" in r.text and "KEPT" not in r.text
    assert proj.rev() == head and keep_trailers(proj) == ["0002", "0001"]  # no commit for a re-run
    row = proj.rows()[-1]
    assert row.run_id == lucky and row.status == "discard" and row.note.startswith("re-measured the best")
    assert row.best == pytest.approx((1.9 + 1.5) / 2)                      # the best's mean moved
    assert "1.700000" in r.text and "mean of 2 runs" in r.text
    proj.edit("N_EMBD = 96", "N_EMBD = 128")                              # judged against the mean, not 1.5
    proj.fake_run(value=1.6)
    r = proj.decide()
    assert "KEPT" in r.text and "previous best 1.700000" in r.text


# --- like with like: the fingerprint ---------------------------------------------------------

def test_a_budget_change_starts_a_new_baseline_and_is_never_compared_across(proj):
    proj.baseline(2.0)                                                     # at the 2 s budget
    head = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.8, budget=10)                                    # a longer budget, not a better idea
    r = proj.decide()
    assert "NOT JUDGED" in r.text and "budget 2 s -> 10 s" in r.text and "NEW BASELINE" in r.text
    assert proj.rev() == head and "N_EMBD = 64" in proj.read()            # not kept; reverted, diff kept
    assert proj.rows()[-1].status == "discard" and proj.rows()[-1].note.startswith("not comparable")
    base = proj.fake_run(value=1.85, budget=10, desc="baseline at 10 s")  # the best's code at 10 s
    r = proj.decide()
    assert "STARTS A NEW BASELINE" in r.text and proj.rev() == head
    assert proj.rows()[-1].run_id == base and proj.rows()[-1].best == pytest.approx(1.85)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.80, budget=10)                                   # vs 1.85 at 10 s, not 2.0 at 2 s
    assert "KEPT" in proj.decide().text and proj.rows()[-1].prev_best == pytest.approx(1.85)
    from autoresearch.cli.status import gather
    rep = gather(proj.path)
    assert rep.new_baseline and "budget 2 s -> 10 s" in rep.new_baseline and "budget 10 s" in rep.fingerprint


def test_confirmation_runs_are_averaged_only_within_one_fingerprint(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    first = proj.fake_run(value=1.985)                                     # a narrow win: confirm
    assert "Confirm it" in proj.decide().text
    second = proj.fake_run(value=1.5, budget=10)                           # the "confirmation" at another budget
    proj.decide()
    rows = {r.run_id: r for r in proj.rows()}
    assert first in rows and second in rows and rows[first].runs == [first]   # never one mean of both
    assert rows[first].status != "keep"


def test_sigma_applies_only_to_its_fingerprint_and_survives_a_corrupt_state(proj):
    """calibrate at a short budget must not set the threshold of longer runs; a corrupt state.json
    must neither lose sigma nor turn the calibration runs into a kept experiment."""
    proj.baseline(2.0)
    cal_ids = [proj.fake_run(value=v, purpose="calibration", budget=1) for v in (2.0, 2.1, 1.9)]
    fp1 = fingerprint(1).key
    proj.set_state(calibrations={fp1: Calibration(sigma=0.1, values=[2.0, 2.1, 1.9], run_ids=cal_ids,
                                                  budget_seconds=1, fingerprint=fp1, at=now())})
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.95)                                              # at 2 s: sigma(1 s) does not apply
    r = proj.decide()
    assert "KEPT" in r.text and proj.rows()[-1].threshold == pytest.approx(0.01)
    (proj.path / ".autoresearch" / "state.json").write_text("{corrupt")
    r = proj.stop()
    assert not any(row.run_id in cal_ids for row in proj.rows())           # still measurements, never decided
    assert len(keep_trailers(proj)) == 2
    from autoresearch.loop.context import sigma_for
    from autoresearch.loop.state import read_state
    assert sigma_for(proj.path, read_state(proj.path), fp1) == pytest.approx(0.1)   # rebuilt from runs/
    from autoresearch.cli.status import gather
    proj.edit("N_EMBD = 96", "N_EMBD = 128")
    proj.fake_run(value=1.5, budget=1)
    proj.decide()
    rep = gather(proj.path)
    assert rep.sigma == pytest.approx(0.1) and rep.sigma_at == "1 s budget"


# --- the branch is the durable record --------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete", "empty", "corrupt", "truncated"])
def test_a_lost_ledger_is_rebuilt_and_no_kept_run_is_decided_again(proj, damage):
    proj.baseline(2.0)
    ck1 = checkpoint(proj, "0001")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    proj.decide()
    ck2 = checkpoint(proj, "0002")
    proj.edit("N_EMBD = 96", "N_EMBD = 128")
    proj.fake_run(value=2.5)
    proj.decide()                                                          # a discard
    before = [(r.run_id, r.status, r.value, r.experiment, r.commit) for r in proj.rows()]
    ledger = proj.path / "results.tsv"
    if damage == "delete":
        ledger.unlink()
    elif damage == "empty":
        ledger.write_text("")
    elif damage == "truncated":
        ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:2]))   # header + baseline
    else:
        ledger.write_text("commit\tval_bpb\nabc\tnot-a-number\n")
    r = proj.stop()
    assert "rebuilt results.tsv" in r.text and "nothing to decide" in r.text
    after = [(r.run_id, r.status, r.value, r.experiment, r.commit) for r in proj.rows()]
    assert after == before
    assert ck1.read_bytes() == b"weights of 0001" and ck2.read_bytes() == b"weights of 0002"
    if damage == "corrupt":
        assert list(proj.path.glob("results.tsv.corrupt-*"))              # kept aside, not lost
    proj.edit("N_EMBD = 96", "N_EMBD = 80")
    proj.fake_run(value=1.95)                                              # judged against 1.9, not a "baseline"
    assert "DISCARDED" in proj.decide().text


def test_ledger_rebuild_command_uses_the_trailers_when_runs_are_gone(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9, desc="wider")
    proj.decide()
    want = [(r.run_id, r.value, r.experiment, r.description, r.fingerprint, r.snapshot) for r in proj.rows()]
    shutil.rmtree(proj.path / "runs")
    (proj.path / "results.tsv").unlink()
    p = subprocess.run([PY, "-m", "autoresearch", "ledger", "rebuild", "-C", str(proj.path)],
                       capture_output=True, text=True, env=clean_env())
    assert p.returncode == 0 and "2 rows (2 kept" in p.stdout, p.stderr
    assert [(r.run_id, r.value, r.experiment, r.description, r.fingerprint, r.snapshot) for r in proj.rows()] == want


def test_run_ids_are_never_reused_after_runs_is_deleted(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    proj.decide()
    shutil.rmtree(proj.path / "runs")
    assert allocate_run_dir(proj.path).name == "0003"                     # above the trailers' 0001, 0002
    shutil.rmtree(proj.path / "runs")
    (proj.path / ".autoresearch" / "run-counter").unlink()
    (proj.path / "results.tsv").unlink()
    assert allocate_run_dir(proj.path).name == "0003"                     # the trailers alone still say so
    assert allocate_run_dir(proj.path).name == "0004"                     # and the counter moves on


def test_final_refuses_a_checkpoint_that_is_not_the_kept_code(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    checkpoint(proj, rid)
    proj.decide()
    program = load_program(proj.path)
    row = proj.rows()[-1]
    check_identity(proj.path, program, row, rid)                           # the right one passes
    d = proj.path / "runs" / rid
    shutil.rmtree(d)                                                       # runs/ lost, the id taken by other code
    proj.edit("N_EMBD = 96", "N_EMBD = 200")
    other = proj.fake_run(value=3.0)
    checkpoint(proj, other)
    os.rename(proj.path / "runs" / other, d)
    m = RunMetrics.read(d)
    m.run_id = rid
    m.write(d)
    with pytest.raises(FinalError, match="Refusing to score the wrong model"):
        check_identity(proj.path, program, row, rid)


def test_a_kept_run_checkpoint_is_never_pruned_even_if_a_caller_asks(proj):
    from autoresearch.loop.record import prune_checkpoints
    from autoresearch.loop.stop import prune_unkept
    from autoresearch.loop.runscan import load_run
    proj.baseline(2.0)
    kept = checkpoint(proj, "0001")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=2.5)
    junk = checkpoint(proj, rid)
    prune_checkpoints(proj.path, load_program(proj.path), [load_run(proj.path, "0001")])
    assert kept.exists()
    assert prune_unkept(proj.path) == 0 and junk.exists()          # not decided yet: it may still be kept
    assert proj.decide().blocked and proj.rows()[-1].status == "discard"
    junk = checkpoint(proj, rid)                                   # (the decision pruned it; put one back)
    assert prune_unkept(proj.path) == len(f"weights of {rid}") and kept.exists() and not junk.exists()


# --- the journal and the branch ---------------------------------------------------------------

def test_a_journal_whose_branch_moved_is_resolved_once(proj):
    """kill -9 after the decision was written, then the human commits on the run branch: the keep
    can never be applied. It is dropped once, with a clear message, instead of wedging the loop."""
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    proj.note("wider noted")
    r = proj.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": "journal"})
    assert r.rc == 2
    (proj.path / "NOTES.txt").write_text("human\n")
    proj.git("add", "NOTES.txt")
    proj.git("commit", "-q", "-m", "a human's commit on the run branch")
    user_head = proj.rev()
    r = proj.stop()
    assert r.blocked and "could not be applied" in r.text and "moved" in r.text and "once" in r.text
    assert proj.rev() == user_head and "N_EMBD = 96" in proj.read()      # nothing touched
    row = proj.rows()[-1]
    assert row.run_id == rid and row.status == "discard" and "not applied" in row.note
    assert not (proj.path / ".autoresearch" / "pending").exists()
    assert list((proj.path / ".autoresearch" / "abandoned").glob(f"{rid}-*.json"))
    r = proj.stop()
    assert "could not be applied" not in r.text                           # resolved: not retried forever


# --- one run at a time, contention -----------------------------------------------------------

INLINE = PROGRAM.replace("sandbox: {backend: none}", "sandbox: {backend: none}\nrun: {mode: inline, command: "
                         "[python, train.py], metric_regex: 'val_bpb: ([0-9.]+)'}")
TINY_TRAIN = """import os, time
for step in range(1, 6):
    print(f"step {step}", flush=True)
    time.sleep(float(os.environ.get("SLEEP", "0.2")))
print("val_bpb: 2.0")
"""


def runner(p: Project, msg: str, **env) -> subprocess.Popen:
    e = clean_env(CLAUDE_PROJECT_DIR=str(p.path), HOME=str(p.path.parent), **env)
    return subprocess.Popen([PY, "-m", "autoresearch.run", "-m", msg], cwd=p.path, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_sh_says_a_run_is_in_progress_and_exits_75(tmp_path):
    p = Project.create(tmp_path / "inl", program=INLINE)
    (p.path / "train.py").write_text(TINY_TRAIN)
    first = runner(p, "first", SLEEP="1")
    deadline = time.time() + 30
    while not list((p.path / "runs").glob("*/metrics.json")) and time.time() < deadline:
        time.sleep(0.05)
    second = runner(p, "second")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 75 and "a run is in progress" in err and "run 0001" in err, (out, err)
    assert len(err.strip().splitlines()) == 1
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert sorted(d.name for d in (p.path / "runs").iterdir()) == ["0001"]    # the second made no run folder
    m = RunMetrics.read(p.path / "runs" / "0001")
    assert m.status == "ok" and m.steps_per_s and m.snapshot_sha256 and m.fingerprint.backend == "none"
    assert not (p.path / "runs" / "0001" / ".running").exists()
    third = runner(p, "third")                                             # the lock went with the first
    third.communicate(timeout=60)
    assert third.returncode == 0


def test_a_runner_killed_9_leaves_no_stale_run_lock(tmp_path):
    """kill -9 of ./run.sh mid-run: the kernel drops its flocks, so the next run starts and the Stop
    hook sees the killed run as over (interrupted), not as "still running" for the rest of the night."""
    p = Project.create(tmp_path / "inl", program=INLINE)
    (p.path / "train.py").write_text(TINY_TRAIN)
    first = runner(p, "to be killed", SLEEP="2")
    deadline = time.time() + 30
    run = p.path / "runs" / "0001"     # train.log is made after the first metrics.json: the run has started
    while not ((run / ".running").exists() and (run / "train.log").exists()) and time.time() < deadline:
        time.sleep(0.05)
    first.kill()
    first.communicate()
    assert RunMetrics.read(p.path / "runs" / "0001").finished_at is None       # it never finished
    second = runner(p, "after the kill")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    p.note("noted")
    r = p.stop()
    assert "still running" not in r.text and "BASELINE" in r.text
    rows = {row.run_id: row for row in p.rows()}              # decided: the killed run on a row of its own
    assert rows["0002"].status == "keep" and rows["0002"].runs == ["0002"] and rows["0002"].value == 2.0, rows
    assert rows["0001"].status == "crash" and rows["0001"].value is None and "interrupted" in rows["0001"].note


def test_the_run_lock_is_the_kernels_flock(tmp_path):
    """Differential: the util-linux flock(1) holding .autoresearch/run.lock blocks ./run.sh too."""
    if not shutil.which("flock"):
        pytest.skip("flock(1) not installed")
    p = Project.create(tmp_path / "inl", program=INLINE)
    (p.path / "train.py").write_text(TINY_TRAIN)
    (p.path / ".autoresearch").mkdir(exist_ok=True)
    holder = subprocess.Popen(["flock", str(p.path / ".autoresearch" / "run.lock"), "sleep", "30"])
    try:
        time.sleep(0.3)
        r = runner(p, "blocked")
        _, err = r.communicate(timeout=60)
        assert r.returncode == 75 and "in progress" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_contended_run_is_recorded_never_kept_and_the_code_stays(proj):
    proj.baseline(2.0)
    for i in range(3):                                                     # peers at ~50 steps/s (discarded)
        proj.edit("N_EMBD = 64", f"N_EMBD = {65 + i}")
        proj.fake_run(value=2.5, steps_per_s=50 + i)
        proj.decide()
    head = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.5, steps_per_s=5)                          # 10x slower: someone else's job
    r = proj.decide()
    assert "CONTENDED" in r.text and "KEPT" not in r.text and proj.rev() == head
    assert "N_EMBD = 96" in proj.read()                                   # not reverted: run it again
    row = proj.rows()[-1]
    assert row.run_id == rid and row.status == "discard" and row.note.startswith("contended")
    proj.fake_run(value=1.5, steps_per_s=49)
    assert "KEPT" in proj.decide().text


# --- session start, compaction, still running ----------------------------------------------

def test_session_start_and_pre_compact_name_a_finished_undecided_run(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9, desc="wider model")
    s = proj.hook("SessionStart", source="resume")
    ctx = s.reply["hookSpecificOutput"]["additionalContext"]
    assert f"UNDECIDED: run {rid}" in ctx and "wider model" in ctx and "END YOUR TURN" in ctx
    c = proj.hook("PreCompact")
    assert f"run {rid}" in c.reply["systemMessage"] and "END YOUR TURN" in c.reply["systemMessage"]
    snap = sorted((proj.path / ".autoresearch" / "snapshots").glob("precompact-*.json"))[-1]
    assert rid in json.loads(snap.read_text())["undecided"]
    proj.decide()
    ctx = proj.hook("SessionStart", source="resume").reply["hookSpecificOutput"]["additionalContext"]
    assert "UNDECIDED" not in ctx


def test_still_running_uses_the_runs_recorded_budget(proj):
    """program.md says 2 s (wall ~272 s), the run recorded 1000 s: 400 s in, it is still running."""
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=None, status="interrupted", finished=False, age_s=400, budget=1000)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "autoresearch.run"],
                             cwd=proj.path)
    try:
        r = proj.decide()
        assert r.blocked and "still running" in r.text
    finally:
        alive.kill()
        alive.wait()


# --- full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def fill(path: Path) -> None:
    """Write until the kernel says ENOSPC (then smaller, to take the last pages too)."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_full_disk_stop_hook_says_enospc_once_and_lets_the_session_stop(small_disk):
    p = Project.create(small_disk / "proj")
    p.baseline(2.0)
    kept = checkpoint(p, "0001")
    p.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = p.fake_run(value=2.5)
    junk = checkpoint(p, rid)
    p.note("noted")
    fill(small_disk)
    r = p.stop()
    assert r.rc == 0 and not r.blocked, r
    assert "disk is full" in r.text and "ENOSPC" in r.text and "human" in r.text
    assert kept.read_bytes() == b"weights of 0001" and junk.exists()   # undecided: it may still be kept
    assert "N_EMBD = 96" in p.read() and len(p.rows()) == 1                # nothing half-decided


def test_full_disk_run_sh_exits_74_with_one_line(small_disk):
    p = Project.create(small_disk / "proj", program=INLINE)
    (p.path / "train.py").write_text(TINY_TRAIN)
    fill(small_disk)
    r = runner(p, "no room")
    out, err = r.communicate(timeout=60)
    assert r.returncode == 74, (out, err)
    assert err.strip().startswith("run.sh: the disk is full") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out
