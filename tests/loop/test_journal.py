"""journal.py on its own, in a real git repository: a decision written with `begin`, a real kill
(os._exit at a named step, in a child process) at each point of `apply`, and `recover` finishing it
exactly once -- one commit, one ledger row, the right file contents, nothing pending."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.digest import sha256_bytes
from autoresearch.ledger import LedgerRow, read_rows
from autoresearch.loop import journal
from autoresearch.loop.journal import CRASH_ENV, Journal
from autoresearch.loop.state import LastDecision, now, read_state

BRANCH = "autoresearch/test"
KEEP_STEPS = ["journal", "branch", "commit", "index", "ledger", "decision", "state"]
REVERT_STEPS = ["journal", "branch", "revert", "ledger", "decision", "state"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "T")
    git(root, "config", "user.email", "t@example.invalid")
    (root / "train.py").write_text("LR = 1\n")
    git(root, "add", "train.py")
    git(root, "commit", "-qm", "start")
    (root / "runs" / "0001").mkdir(parents=True)
    return root


def row(action: str) -> LedgerRow:
    return LedgerRow(commit="", value=1.5, status=action, experiment=1, run_id="0001", runs=["0001"],
                     run_status="ok", phase="tune", branch=BRANCH, decided_at=now())


def decision(root: Path, action: str) -> tuple[Journal, dict[str, bytes]]:
    """A decision as the Stop hook writes it: keep commits train.py 'LR = 2'; discard reverts it."""
    parent = git(root, "rev-parse", "HEAD")
    (root / "train.py").write_text("LR = 2\n")
    keep = action == "keep"
    j = Journal(action=action, created_at=now(), branch=BRANCH, branch_from=parent, from_name="main", parent=parent,
                run_id="0001", rows=[row(action)], keep_row=0 if keep else None, metric_name="loss",
                commit_files={"train.py": "0"} if keep else {},
                revert_files={} if keep else {"train.py": sha256_bytes(b"LR = 2\n")},
                message="keep 0001\n\nAutoresearch-Run: 0001\n" if keep else "",
                last_decision=LastDecision(run_id="0001", runs=["0001"], experiment=1, outcome=action,
                                           branch=BRANCH, scratchpad_sha256=None, at=now()),
                reply={"decision": "block", "reason": f"done {journal.COMMIT_MARK}"})
    return j, ({"0": b"LR = 2\n"} if keep else {})


def killed_recover(root: Path, step: str) -> None:
    """A hook process that dies (exit 137, like SIGKILL) right after `step` of recover/apply."""
    code = f"from autoresearch.loop import journal; journal.recover({str(root)!r})"
    p = subprocess.run([sys.executable, "-c", code], env={**_env(), CRASH_ENV: step}, capture_output=True)
    assert p.returncode == 137, p.stderr


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != CRASH_ENV}


def assert_applied_once(root: Path, action: str, parent: str) -> None:
    assert not journal.pending_dir(root).exists()
    assert journal.recover(root) is None                               # nothing left to finish
    rows = read_rows(root)
    assert [(r.run_id, r.status) for r in rows] == [("0001", action)]
    assert git(root, "symbolic-ref", "--short", "HEAD") == BRANCH
    assert git(root, "rev-parse", "main") == parent                    # the user's branch never moves
    log = git(root, "log", "--format=%s", BRANCH).splitlines()
    if action == "keep":
        assert log == ["keep 0001", "start"] and rows[0].commit == git(root, "rev-parse", "--short=7", BRANCH)
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""   # the index learned the blob
    else:
        assert log == ["start"] and (root / "train.py").read_text() == "LR = 1\n"
    assert (root / "runs" / "0001" / "decision.json").exists()
    st = read_state(root)
    assert st.last_decision.run_id == "0001" and st.branches[BRANCH] == "main"


@pytest.mark.parametrize("step", KEEP_STEPS)
def test_a_keep_killed_at_each_step_is_finished_once_by_recover(repo, step):
    parent = git(repo, "rev-parse", "HEAD")
    j, snaps = decision(repo, "keep")
    journal.begin(repo, j, snaps)
    if step != "journal":                     # begin() itself is the "journal" point: written, not applied
        killed_recover(repo, step)
    done = journal.recover(repo)
    assert done is not None and done.run_id == "0001"
    assert done.reply_for(done.commit(repo))["reason"] == f"done {git(repo, 'rev-parse', '--short=7', BRANCH)}"
    assert_applied_once(repo, "keep", parent)


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_a_discard_killed_at_each_step_is_finished_once_by_recover(repo, step):
    parent = git(repo, "rev-parse", "HEAD")
    j, snaps = decision(repo, "discard")
    journal.begin(repo, j, snaps)
    if step != "journal":
        killed_recover(repo, step)
    assert journal.recover(repo) is not None
    assert_applied_once(repo, "discard", parent)


def test_a_revert_leaves_newer_edits_alone(repo):
    j, snaps = decision(repo, "discard")
    journal.begin(repo, j, snaps)
    (repo / "train.py").write_text("LR = 3\n")                          # the agent edited again since
    journal.apply(repo, j)
    assert (repo / "train.py").read_text() == "LR = 3\n"


def test_snapshots_without_a_journal_mean_nothing_began(repo):
    (journal.pending_dir(repo) / "files").mkdir(parents=True)
    (journal.pending_dir(repo) / "files" / "0").write_bytes(b"half")
    assert journal.recover(repo) is None and not journal.pending_dir(repo).exists()
    assert read_rows(repo) == [] and git(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_a_branch_moved_under_the_decision_is_abandoned_once(repo):
    j, snaps = decision(repo, "keep")
    journal.begin(repo, j, snaps)
    git(repo, "commit", "-qam", "the human's own commit")                # HEAD moves before apply
    done = journal.recover(repo)
    assert done.abandoned and "HEAD moved" in done.abandoned
    rows = read_rows(repo)
    assert [(r.status, r.note.startswith("not applied")) for r in rows] == [("discard", True)]
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert list((repo / ".autoresearch" / "abandoned").glob("0001-*.json"))
    assert journal.recover(repo) is None
