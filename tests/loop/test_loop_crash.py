"""A Stop hook killed at any point of a decision is finished by the next hook call, without
double counting: one ledger row, one commit, the right train.py. The kill is real (os._exit at
a named step, the way SIGKILL leaves things); the hook runs through the wired command."""
from __future__ import annotations

import pytest

from loop_support import Project

CRASH = "AUTORESEARCH_TEST_CRASH_AT"
KEEP_STEPS = ["journal", "branch", "commit", "index", "ledger", "decision", "state"]
DISCARD_STEPS = ["journal", "branch", "revert", "ledger", "decision", "state"]


@pytest.fixture
def proj(tmp_path) -> Project:
    return Project.create(tmp_path / "proj")


def killed(proj: Project, step: str, event: str = "Stop"):
    r = proj.hook(event, env={CRASH: step})
    assert r.rc == 2 and r.reply is None, r        # died mid-decision: the wired fallback blocks the stop
    return r


def runs_in_commits(proj: Project, rid: str) -> int:
    return sum(1 for line in proj.git("log", "--format=%(trailers:key=Autoresearch-Run,valueonly)").splitlines()
               if line.strip() == rid)


@pytest.mark.parametrize("step", KEEP_STEPS)
def test_baseline_on_a_fresh_branch_killed_at_each_step(proj, step):
    main = proj.rev("main")
    rid = proj.fake_run(value=2.0, desc="baseline")
    proj.note("baseline noted")
    killed(proj, step)
    assert (proj.path / ".autoresearch" / "pending" / "journal.json").exists()
    r = proj.stop()
    assert r.blocked and "BASELINE" in r.text and proj.rev()[:7] in r.text       # the same answer, finished
    assert [row.run_id for row in proj.rows()] == [rid]
    assert runs_in_commits(proj, rid) == 1 and proj.rev("HEAD~1") == main and proj.rev("main") == main
    assert proj.branch().startswith("autoresearch/") and proj.dirty() == []
    assert proj.state().last_decision.run_id == rid
    assert not (proj.path / ".autoresearch" / "pending").exists()
    assert "nothing to decide" in proj.stop().text                              # and it stays decided


@pytest.mark.parametrize("step", ["commit", "index", "ledger"])
def test_keep_killed_then_finished_by_session_start(proj, step):
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    proj.note("wider")
    killed(proj, step)
    proj.hook("SessionStart", source="startup")
    assert [r.status for r in proj.rows()] == ["keep", "keep"] and proj.rows()[-1].run_id == rid
    assert runs_in_commits(proj, rid) == 1 and "N_EMBD = 96" in proj.committed("train.py")
    assert proj.dirty() == [] and proj.rows()[-1].commit == proj.rev()[:7]


@pytest.mark.parametrize("step", DISCARD_STEPS)
def test_discard_killed_at_each_step(proj, step):
    proj.baseline(2.0)
    head, best = proj.rev(), proj.read()
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=2.5)
    proj.note("wider was worse")
    killed(proj, step)
    r = proj.stop()
    assert r.blocked and "DISCARDED" in r.text
    assert [row.run_id for row in proj.rows()][-1] == rid and len(proj.rows()) == 2
    assert proj.read() == best and proj.rev() == head
    assert "N_EMBD = 96" in (proj.path / "runs" / rid / "train.py").read_text()


def test_agent_edits_after_a_killed_discard_are_not_reverted(proj):
    """Killed before the revert; the agent then starts its next idea. Finishing the old decision
    must not throw the new work away."""
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=2.5)
    proj.note("worse")
    killed(proj, "branch")
    proj.edit("N_EMBD = 96", "N_EMBD = 128")
    proj.stop()
    assert "N_EMBD = 128" in proj.read() and proj.rows()[-1].status == "discard"


def test_killed_before_the_journal_exists_leaves_nothing_half_done(proj):
    """A leftover pending folder without a journal (killed while writing snapshots) is cleared,
    and the decision is simply made again."""
    proj.baseline(2.0)
    (proj.path / ".autoresearch" / "pending" / "files").mkdir(parents=True)
    (proj.path / ".autoresearch" / "pending" / "files" / "0").write_text("half")
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    proj.fake_run(value=1.9)
    assert "KEPT" in proj.decide().text
    assert len(proj.rows()) == 2


def test_two_hooks_at_once_decide_once(proj):
    """The loop lock: concurrent Stop hooks (two sessions) never decide the same run twice."""
    import subprocess
    from loop_support import clean_env, hook_command
    import json
    proj.baseline(2.0)
    proj.edit("N_EMBD = 64", "N_EMBD = 96")
    rid = proj.fake_run(value=1.9)
    proj.note("wider")
    env = clean_env(CLAUDE_PROJECT_DIR=str(proj.path))
    data = json.dumps({"session_id": "s1", "cwd": str(proj.path), "hook_event_name": "Stop", "stop_hook_active": False})
    procs = [subprocess.Popen(["/bin/sh", "-c", hook_command(proj.path, "Stop")], cwd=proj.path, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(data, timeout=60)[0] for p in procs]
    assert sum("KEPT" in o for o in outs) == 1
    assert [r.run_id for r in proj.rows()].count(rid) == 1 and runs_in_commits(proj, rid) == 1
