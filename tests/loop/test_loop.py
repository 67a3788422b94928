"""The Stop / SessionStart / PreCompact hooks, driven through the exact command line wired in
.claude/settings.json with the JSON Claude Code sends, in real git repositories. Runs are
fabricated as runs/NNNN/ folders (the runner's format) so every cell of the decision table is
cheap; test_loop_real.py does the same with real training runs."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from autoresearch.program import load_program

from autoresearch.gitops import show_blob
from autoresearch.loop.state import now
from loop_support import PROGRAM, ROOT, Project, hold_open


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


# --- wiring --------------------------------------------------------------------------------

def test_settings_wire_the_loop_hooks_and_env():
    s = json.loads((ROOT / ".claude" / "settings.json").read_text())
    for event, script in (("Stop", "stop.py"), ("SessionStart", "session_start.py"), ("PreCompact", "pre_compact.py")):
        cmd = s["hooks"][event][0]["hooks"][0]["command"]
        assert f"$CLAUDE_PROJECT_DIR/hooks/{script}" in cmd and "||" in cmd   # a defined outcome if python is missing
    assert int(s["env"]["CLAUDE_CODE_STOP_HOOK_BLOCK_CAP"]) >= 100
    wall_ms = (300 + 60 + 300 + 60) * 1000                                     # train + grace + eval + overhead
    assert int(s["env"]["BASH_DEFAULT_TIMEOUT_MS"]) > wall_ms
    assert int(s["env"]["BASH_MAX_TIMEOUT_MS"]) >= int(s["env"]["BASH_DEFAULT_TIMEOUT_MS"])
    assert s["hooks"]["Stop"][0]["hooks"][0]["timeout"] > 100                # above the hook's own alarm


def test_a_missing_interpreter_ends_the_session_with_the_human_fix(tmp_path):
    """Without .venv the guard denies every tool call, so the agent cannot repair it: blocking the
    stop would only spin until the block cap. The session ends, telling the human what to run."""
    p = Project.create(tmp_path / "novenv", venv=False)
    r = p.stop()
    assert r.rc == 0 and r.reply["continue"] is False and "scripts/bootstrap.sh" in r.reply["stopReason"]
    s = p.hook("SessionStart")
    assert s.rc == 0 and "scripts/bootstrap.sh" in s.reply["hookSpecificOutput"]["additionalContext"]


# --- the baseline and the run branch --------------------------------------------------------

def test_first_decision_starts_a_run_branch_and_keeps_the_baseline_user_branch_untouched(proj):
    main_before = proj.rev("main")
    rid = proj.fake_run(value=2.0, desc="baseline")
    r = proj.decide()
    assert r.blocked and "BASELINE" in r.text and "2.000000" in r.text and proj.rev()[:7] in r.text
    assert proj.branch().startswith("autoresearch/")
    assert proj.rev("main") == main_before                            # the user's branch never moves
    assert proj.commits("main") == ["the user's project"]
    assert proj.rev("HEAD~1") == main_before
    t = proj.head_trailers()
    assert (t["Autoresearch-Run"], t["Autoresearch-Value"], t["Autoresearch-Experiment"]) == (rid, "2.000000", "1")
    assert t["Autoresearch-Previous-Best"] == "none" and t["Autoresearch-Branch"] == proj.branch()
    assert "noted" in proj.committed("scratchpad.md")                 # the scratchpad is committed too
    [row] = proj.rows()
    assert (row.status, row.value, row.note, row.experiment, row.commit) == ("keep", 2.0, "baseline", 1, proj.rev()[:7])
    assert row.branch == proj.branch() and row.session == "s1"
    assert proj.dirty() == []                                          # index and work tree agree with HEAD
    assert proj.state().branches[proj.branch()] == "main"


def test_a_crashed_first_run_is_not_the_baseline(proj):
    proj.fake_run(status="crash")
    r = proj.decide()
    assert "CRASHED" in r.text
    assert proj.rows()[0].status == "crash"
    proj.fake_run(value=2.5, desc="baseline again")
    assert "BASELINE" in proj.decide().text


# --- the decision table through the hook -------------------------------------------------------

def test_better_by_more_than_threshold_plus_margin_is_kept_with_exactly_the_code_that_ran(proj):
    proj.baseline(2.0)
    base = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9, desc="wider: 96")
    r = proj.decide()
    assert r.blocked and "KEPT" in r.text and "-0.100000" in r.text
    assert proj.rev("HEAD~1") == base
    assert "N_EMBD = 96" in proj.committed("train.py")
    committed = show_blob(proj.path, "HEAD", "train.py")
    assert hashlib.sha256(committed).hexdigest() == proj.sha() == json.loads(
        (proj.path / "runs" / rid / "metrics.json").read_text())["train_py_sha256"]
    t = proj.head_trailers()
    assert t["Autoresearch-Train-Sha256"] == proj.sha()
    assert (t["Autoresearch-Delta"], t["Autoresearch-Previous-Best"], t["Autoresearch-Phase"]) == ("-0.100000", "2.000000", "tune")
    row = proj.rows()[-1]
    assert (row.status, row.run_id, row.value, row.prev_best, row.best) == ("keep", rid, 1.9, 2.0, 1.9)
    assert row.delta == pytest.approx(-0.1) and row.threshold == pytest.approx(0.01)
    assert proj.dirty() == []


@pytest.mark.parametrize("value,note", [(2.2, "worse"), (1.995, "within noise"), (1.99, "within noise")])
def test_worse_or_within_noise_is_discarded_and_train_py_restored(proj, value, note):
    proj.baseline(2.0)
    head, best_code = proj.rev(), proj.read()
    proj.edit("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")
    rid = proj.fake_run(value=value)
    r = proj.decide()
    assert "DISCARDED" in r.text and f"runs/{rid}/diff.patch" in r.text
    assert proj.read() == best_code and proj.rev() == head
    assert "LEARNING_RATE = 1e-2" in (proj.path / "runs" / rid / "train.py").read_text()   # nothing lost
    assert "noted" in proj.read("scratchpad.md")                                          # notes are never reverted
    row = proj.rows()[-1]
    assert (row.status, row.value, row.note, row.commit) == ("discard", value, note, head[:7])


@pytest.mark.parametrize("status", ["crash", "timeout", "oom", "invalid", "interrupted"])
def test_every_failed_status_reverts_and_records_no_metric(proj, status):
    proj.baseline(2.0)
    head, best_code = proj.rev(), proj.read()
    proj.edit("N_LAYER = 2", "N_LAYER = 64")
    rid = proj.fake_run(status=status)
    r = proj.decide()
    assert r.blocked and "CRASHED" in r.text and status in r.text
    assert proj.read() == best_code and proj.rev() == head
    row = proj.rows()[-1]
    assert (row.status, row.run_status, row.value, row.delta) == ("crash", status, None, None)
    header, *lines = proj.ledger_lines()
    assert header[1] == "val_bpb" and lines[-1][1] == ""     # never 0.000000, which would look like the best
    assert "N_LAYER = 64" in (proj.path / "runs" / rid / "train.py").read_text()


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_missing_or_corrupt_metrics_json_is_a_crash_and_nothing_is_lost(proj, how):
    proj.baseline(2.0)
    best_code = proj.read()
    proj.edit("N_HEAD = 4", "N_HEAD = 2")
    rid = proj.fake_run(metrics=None if how == "missing" else "corrupt")
    r = proj.decide()
    assert r.blocked and "CRASHED" in r.text
    assert proj.read() == best_code
    assert "N_HEAD = 2" in (proj.path / "runs" / rid / "train.py").read_text()
    row = proj.rows()[-1]
    assert (row.status, row.run_status, row.value) == ("crash", "missing", None)
    assert "metrics.json" in row.note


def test_a_narrow_win_asks_for_a_confirming_run_then_the_mean_decides_keep(proj):
    proj.baseline(2.0)
    proj.edit("BATCH_SIZE = 16", "BATCH_SIZE = 32")
    first = proj.fake_run(value=1.98, desc="batch 32")
    r = proj.decide()
    assert r.blocked and "confirm" in r.text and './run.sh -m "confirm: batch 32"' in r.text
    assert len(proj.rows()) == 1 and "BATCH_SIZE = 32" in proj.read()          # not decided, nothing reverted
    second = proj.fake_run(value=1.975, desc="confirm: batch 32")
    r = proj.stop()                                                            # the scratchpad already had its note
    assert "KEPT" in r.text
    row = proj.rows()[-1]
    assert row.runs == [first, second] and row.value == pytest.approx(1.9775) and row.description == "batch 32"
    assert row.seeds == [int(first), int(second)] and row.note.startswith("confirmed")
    assert proj.head_trailers()["Autoresearch-Runs"] == f"{first},{second}"


def test_a_narrow_win_that_does_not_confirm_is_discarded_on_the_mean(proj):
    proj.baseline(2.0)
    best_code = proj.read()
    proj.edit("BATCH_SIZE = 16", "BATCH_SIZE = 32")
    proj.fake_run(value=1.98)
    assert "confirm" in proj.decide().text
    proj.fake_run(value=2.01)
    r = proj.stop()
    assert "DISCARDED" in r.text and proj.read() == best_code
    assert proj.rows()[-1].value == pytest.approx(1.995)


def test_a_narrow_win_while_paused_is_not_kept_unconfirmed(proj):
    proj.baseline(2.0)
    proj.edit("BATCH_SIZE = 16", "BATCH_SIZE = 32")
    proj.fake_run(value=1.98)
    proj.sh(str(ROOT / ".venv/bin/python"), "-m", "autoresearch", "pause", "-C", str(proj.path), "bedtime")
    r = proj.decide()
    assert not r.blocked and "paused" in r.text
    assert proj.rows()[-1].status == "discard" and "unconfirmed" in proj.rows()[-1].note


def test_runs_of_an_earlier_train_py_are_recorded_as_superseded(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 80")
    a = proj.fake_run(value=1.5)
    proj.edit("N_EMBD = 80", "N_EMBD = 96")
    b = proj.fake_run(value=1.9)
    r = proj.decide()
    assert "KEPT" in r.text and "#3" in r.text
    sup, kept = proj.rows()[-2:]
    assert (sup.run_id, sup.status, sup.experiment) == (a, "discard", 2) and sup.note.startswith("superseded")
    assert (kept.run_id, kept.status, kept.experiment) == (b, "keep", 3)
    assert "N_EMBD = 96" in proj.committed("train.py")


# --- the rules before a decision -----------------------------------------------------------------

def test_an_unchanged_scratchpad_blocks_and_says_what_to_add(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    r = proj.stop()
    assert r.blocked and "scratchpad.md" in r.text and rid in r.text and "1.900000" in r.text
    assert "Experiment log" in r.text and "Next experiments" in r.text
    assert len(proj.rows()) == 1 and "N_EMBD = 96" in proj.read()               # nothing decided or reverted
    proj.note("wider helps")
    assert "KEPT" in proj.stop().text


def test_changed_train_py_without_a_run_blocks_run_it_first(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    r = proj.stop()
    assert r.blocked and "./run.sh" in r.text and "no run" in r.text
    assert len(proj.rows()) == 1 and "N_EMBD = 96" in proj.read()


def test_no_baseline_yet_asks_for_the_baseline(proj):
    r = proj.stop()
    assert r.blocked and "baseline" in r.text and proj.rows() == []
    assert proj.branch() == "main"                                                # nothing to decide: no branch yet


def test_idle_stops_block_without_counting_and_end_the_loop_after_the_limit(proj):
    proj.baseline(2.0)
    env = {"AUTORESEARCH_MAX_IDLE_STOPS": "2"}
    for _ in range(2):
        r = proj.stop(env=env)
        assert r.blocked and "nothing to decide" in r.text and "edit train.py" in r.text
    assert len(proj.rows()) == 1
    r = proj.stop(env=env)
    assert not r.blocked and "without a new experiment" in r.text
    proj.edit("N_EMBD = 64", "N_EMBD = 96")                                       # a decision resets the count
    proj.fake_run(value=1.9)
    assert "KEPT" in proj.decide(env=env).text
    assert proj.state().idle_stops == 0


def test_a_run_still_in_progress_is_waited_for_not_decided(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(status="interrupted", finished=False, age_s=1)    # the runner's first write
    # a live process that looks like the runner (./run.sh execs `python -m autoresearch.run`)
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "autoresearch.run"],
                              cwd=proj.path)
    try:
        r = proj.decide()
        assert r.blocked and "still running" in r.text
        assert len(proj.rows()) == 1 and "N_EMBD = 96" in proj.read()
    finally:
        runner.kill()
        runner.wait()
    r = proj.stop()                                                   # killed with SIGKILL: no finished_at
    assert "CRASHED (interrupted" in r.text


def test_a_run_killed_long_ago_without_finishing_is_interrupted(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(status="interrupted", finished=False, age_s=3600)
    assert "CRASHED" in proj.decide().text


# --- budgets -----------------------------------------------------------------------------------

def test_env_override_limits_experiments_per_session(proj):
    env = {"AUTORESEARCH_MAX_EXPERIMENTS": "2"}
    proj.fake_run(value=2.0)
    r = proj.decide(env=env)
    assert r.blocked and "1 experiment left in this session" in r.text
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    r = proj.decide(env=env)
    assert not r.blocked and r.rc == 0
    assert "AUTORESEARCH_MAX_EXPERIMENTS" in r.text and "2 experiments" in r.text and "Best val_bpb 1.900000" in r.text
    assert len(proj.rows()) == 2 and proj.state().finished_at is not None
    assert proj.stop(env=env, session="s2").blocked                      # another session has its own count


def test_phase_budget_spent_allows_the_stop_with_a_summary(tmp_path):
    p = Project.create(tmp_path / "p", program=PROGRAM.replace("phase: tune", "phase: arch"))
    p.baseline(2.0)
    for v in (2.1, 2.2):
        p.edit("N_EMBD = 64", "N_EMBD = 65")
        p.fake_run(value=v)
        r = p.decide()
    assert not r.blocked and "phase 'arch' has used its 3 experiments" in r.text
    assert "3 experiments (1 kept, 2 discarded, 0 crashed)" in r.text
    assert not p.stop().blocked                                            # stays stopped


def test_a_spent_phase_moves_on_to_the_next_one_in_program_md(tmp_path):
    """Overnight, the first phase running out must not end the night: program.md's `phase:`
    moves to the next phase (one line rewritten, the rest intact) and the agent is sent on."""
    prog = PROGRAM.replace("max_experiments: 20", "max_experiments: 2")
    p = Project.create(tmp_path / "p", program=prog)
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 65")
    p.fake_run(value=2.1)
    r = p.decide()
    assert r.blocked and "program.md now says phase: arch" in r.text and "Change the architecture" in r.text
    text = (p.path / "program.md").read_text()
    assert text.count("phase: arch   # set by autoresearch") == 1 and "phase: tune" not in text
    assert text.replace(text.splitlines()[8], "phase: tune") == prog                 # nothing else touched
    assert load_program(p.path).phase == "arch"
    assert p.rows()[-1].phase == "tune"                                            # the experiment's own phase
    p.edit("N_EMBD = 64", "N_EMBD = 66")
    p.fake_run(value=2.2)
    r = p.decide()
    assert r.blocked and p.rows()[-1].phase == "arch" and "2 experiments left in phase 'arch'" in r.text


def test_on_phase_end_stop_ends_the_loop_instead(tmp_path):
    prog = PROGRAM.replace("max_experiments: 20", "max_experiments: 2").replace("phase: tune", "on_phase_end: stop\nphase: tune")
    p = Project.create(tmp_path / "p", program=prog)
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 65")
    p.fake_run(value=2.1)
    r = p.decide()
    assert not r.blocked and "phase 'tune' has used its 2 experiments" in r.text
    assert (p.path / "program.md").read_text() == prog


def _with_checkpoint(p, rid: str) -> Path:
    d = p.path / "runs" / rid
    t = d.stat().st_mtime
    (d / "out").mkdir(exist_ok=True)
    (d / "out" / "model.pt").write_bytes(b"weights" * 1000)
    os.utime(d, (t, t))
    return d / "out" / "model.pt"


def test_checkpoints_of_runs_not_kept_are_pruned(proj):
    """A night of GPU-sized checkpoints must not fill the disk: only kept runs keep out/."""
    base = _with_checkpoint(proj, proj.fake_run(value=2.0, desc="baseline"))
    assert "BASELINE" in proj.decide().text
    proj.edit("N_EMBD = 64", "N_EMBD = 65")
    worse = _with_checkpoint(proj, proj.fake_run(value=2.3))
    assert proj.decide().blocked and proj.rows()[-1].status == "discard"
    proj.edit("N_EMBD = 64", "N_EMBD = 66")
    crashed = _with_checkpoint(proj, proj.fake_run(status="crash"))
    assert proj.decide().blocked and proj.rows()[-1].status == "crash"
    assert base.exists() and not worse.exists() and not crashed.exists()
    assert (worse.parent.parent / "train.log").exists() and (worse.parent.parent / "diff.patch").exists()


def test_keep_checkpoints_all_keeps_them(tmp_path):
    p = Project.create(tmp_path / "p", program=PROGRAM.replace("phase: tune", "keep_checkpoints: all\nphase: tune"))
    p.baseline(2.0)
    p.edit("N_EMBD = 64", "N_EMBD = 65")
    worse = _with_checkpoint(p, p.fake_run(value=2.3))
    assert p.decide().blocked and p.rows()[-1].status == "discard" and worse.exists()


def test_deadline_passed_allows_the_stop_after_deciding(proj):
    proj.baseline(2.0)
    proj.set_state(started_at=now() - timedelta(hours=10, minutes=1))
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    r = proj.decide()
    assert not r.blocked and "deadline" in r.text
    assert proj.rows()[-1].status == "keep"                                  # the last experiment still counts


def test_deadline_clock_restarts_on_the_next_startup_after_the_loop_ended(proj):
    proj.baseline(2.0)
    proj.set_state(started_at=now() - timedelta(hours=11))
    assert not proj.stop().blocked                                           # deadline: the loop ends
    old = proj.state().started_at
    proj.hook("SessionStart", source="resume")                               # a resume keeps the clock
    assert proj.state().started_at == old
    proj.hook("SessionStart", source="startup")                              # a new loop restarts it
    assert proj.state().started_at > old and proj.stop().blocked


def test_pause_and_resume(proj):
    proj.baseline(2.0)
    py = str(ROOT / ".venv/bin/python")
    out = proj.sh(py, "-m", "autoresearch", "pause", "-C", str(proj.path), "checking", "something")
    assert "paused" in out
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    r = proj.decide()
    assert not r.blocked and "paused (checking something)" in r.text and "autoresearch resume" in r.text
    assert proj.rows()[-1].status == "keep"                                  # decided before stopping
    assert not proj.stop().blocked
    proj.sh(py, "-m", "autoresearch", "resume", "-C", str(proj.path))
    assert proj.stop().blocked


# --- failures ----------------------------------------------------------------------------------

def test_a_broken_program_md_stops_the_loop_cleanly_with_the_field_and_line(proj):
    proj.baseline(2.0)
    (proj.path / "program.md").write_text(PROGRAM.replace("min_improvement: 0.01", "min_improvement: -1"))
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    r = proj.decide()
    assert r.rc == 0 and not r.blocked
    assert "program.md" in r.text and "min_improvement" in r.text and "line" in r.text
    assert "N_EMBD = 96" in proj.read() and len(proj.rows()) == 1            # nothing decided, nothing lost


def test_a_git_index_lock_held_by_a_live_git_waits_and_loses_no_work(proj):
    proj.baseline(2.0)
    head = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=2.5)                                                 # a discard would revert train.py
    lock = proj.path / ".git" / "index.lock"
    with hold_open(lock):                                                    # a live git has it open
        r = proj.decide()
        assert r.blocked and "index.lock" in r.text and "nothing is lost" in r.text.lower()
        assert "end your turn again" in r.text                              # waiting helps: say so
        assert "N_EMBD = 96" in proj.read() and proj.rev() == head and len(proj.rows()) == 1
        assert lock.exists()                                                 # never taken from a live owner
    lock.unlink()
    assert "DISCARDED" in proj.stop().text


def test_a_stale_git_lock_left_by_a_killed_git_is_cleared(proj):
    """kill -9 of git (or of the hook while git held its lock) leaves index.lock / a ref lock with
    no owner: without clearing, every later git call refuses and the loop is wedged for good."""
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    proj.note("wider noted")
    r = proj.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": "journal"})   # killed: the decision is pending
    assert r.rc == 2
    gd = proj.path / ".git"
    locks = [gd / "index.lock", gd / "refs" / "heads" / (proj.branch() + ".lock"), gd / "HEAD.lock",
             proj.path / ".autoresearch" / "pending" / "index.tmp.lock"]  # ...and the private index's lock
    holder = subprocess.Popen(["sh", "-c", " ".join(f"exec {3 + i}>{p};" for i, p in enumerate(locks)) + " exec sleep 60"])
    try:
        deadline = time.time() + 10
        while not all(p.exists() for p in locks) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        holder.kill()                                                        # kill -9: the locks stay behind
        holder.wait()
    assert all(p.exists() for p in locks)
    r = proj.stop()
    assert "KEPT" in r.text and proj.rows()[-1].run_id == rid
    assert not any(p.exists() for p in locks) and proj.dirty() == []


def test_git_refusing_mid_decision_keeps_the_journal_and_finishes_later(proj):
    """The branch ref is locked (by a live git) when the keep commit is moved in: the hook blocks
    with git's words, nothing is reverted, and once git works again the same decision completes,
    counted once."""
    proj.baseline(2.0)
    head = proj.rev()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    ref_lock = proj.path / ".git" / "refs" / "heads" / (proj.branch() + ".lock")
    with hold_open(ref_lock):
        r = proj.decide()
        assert r.blocked and "update-ref" in r.text and "nothing is lost" in r.text
        assert "N_EMBD = 96" in proj.read() and proj.rev() == head and len(proj.rows()) == 1
        assert (proj.path / ".autoresearch" / "pending" / "journal.json").exists()
    r = proj.stop()                                                          # the holder is gone: its lock is stale
    assert "KEPT" in r.text and proj.rows()[-1].run_id == rid and len(proj.rows()) == 2
    assert "N_EMBD = 96" in proj.committed("train.py") and proj.dirty() == []


def test_an_internal_error_blocks_and_logs_then_gives_up_loudly(proj):
    proj.baseline(2.0)
    shutil.rmtree(proj.path / "runs")
    (proj.path / "runs").write_text("not a folder\n")                       # a bug-like failure on every call
    env = {"AUTORESEARCH_MAX_HOOK_ERRORS": "2"}
    for _ in range(2):
        r = proj.stop(env=env)
        assert r.blocked and "runs" in r.text and "hook-errors.log" in r.text
    log = (proj.path / ".autoresearch" / "hook-errors.log").read_text()
    assert "Traceback" in log and "NotADirectoryError" in log
    r = proj.stop(env=env)
    assert not r.blocked and "failed 3 times in a row" in r.text


def test_a_corrupt_state_file_is_set_aside_not_fatal(proj):
    proj.baseline(2.0)
    (proj.path / ".autoresearch" / "state.json").write_text("{not json")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    assert "KEPT" in proj.decide().text
    assert list((proj.path / ".autoresearch").glob("state.json.corrupt-*"))       # kept for a human to read
    assert proj.state().last_decision.outcome == "keep"


def test_no_program_md_lets_the_stop_through_with_the_reason(proj):
    (proj.path / "program.md").unlink()
    r = proj.stop()
    assert r.rc == 0 and not r.blocked and "program.md" in r.text


def test_stop_hook_active_does_not_change_the_decision(proj):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    proj.note("wider")
    assert "KEPT" in proj.stop(stop_hook_active=True).text


# --- SessionStart and PreCompact ----------------------------------------------------------------

@pytest.mark.parametrize("source", ["startup", "resume", "compact", "clear"])
def test_session_start_injects_the_state(proj, source):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=2.3, desc="wider embeddings")
    proj.decide()
    (proj.path / "scratchpad.md").write_text(proj.read("scratchpad.md").replace(
        "1. Run the baseline as it is", "1. Try RMSNorm"))
    r = proj.hook("SessionStart", source=source)
    out = r.reply["hookSpecificOutput"]
    assert out["hookEventName"] == "SessionStart"
    ctx = out["additionalContext"]
    for needle in ("Phase 'tune'", "Tune the learning rate", "best val_bpb: 2.000000", "#2 discard 2.300000",
                   "wider embeddings", "18 experiments left", "Try RMSNorm", proj.branch()):
        assert needle in ctx, needle
    assert len(ctx) < 2000


def test_pre_compact_snapshots_the_state(proj):
    proj.baseline(2.0)
    r = proj.hook("PreCompact")
    assert r.rc == 0
    [snap] = (proj.path / ".autoresearch" / "snapshots").glob("precompact-*.json")
    data = json.loads(snap.read_text())
    assert data["state"]["last_decision"]["outcome"] == "keep" and data["last_rows"][0]["value"] == 2.0
    assert "noted" in data["scratchpad"]
