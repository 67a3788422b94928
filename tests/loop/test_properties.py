"""Property test: random sequences of agent actions and faults, then the loop's invariants.

Each sequence starts from a fresh copy of a real git project and interleaves what an agent does
(edit the code, put the best's code back, run, note, end its turn) with faults (results.tsv
deleted, emptied or corrupted; state.json corrupted; a stale git lock; a Stop hook killed at a
named step; a human's commit on the run branch; a budget change; a contended run). Runs are fake
records written with the real run-id allocator and metrics writer (no training), so a sequence
costs a few Stop calls: the real `loop.stop_hook` in-process, and the wired hook command (a real
kill) for the kill faults. Then the agent drains (notes, ends its turn, confirms) and we check:

  - every run is decided exactly once (one ledger row covers it; a row's run is the run it names);
  - the run branch's keeps (Autoresearch-Run trailers) equal the ledger's keeps;
  - no keep without a change to the editable set (the baseline aside);
  - every kept run's checkpoint is intact.

AUTORESEARCH_PROPERTY_SEQUENCES overrides the count (default 200); a failure names its seed.
"""
from __future__ import annotations

import os
import random
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from autoresearch import loop
from autoresearch.run.layout import allocate_run_dir
from autoresearch.gitops import git, trailers
from autoresearch.run.identity import snapshot, snapshot_at
from autoresearch.ledger import read_rows
from autoresearch.run.metrics import RunMetrics
from autoresearch.loop.runscan import run_ids
from loop_support import EDITABLE, Project, fingerprint

N = int(os.environ.get("AUTORESEARCH_PROPERTY_SEQUENCES", "200"))
KILL_STEPS = ["journal", "branch", "commit", "index", "revert", "ledger", "decision", "state"]
AGENT = ["edit", "edit", "revert", "run", "run", "run", "note", "stop", "stop", "stop"]
FAULTS = ["del_ledger", "empty_ledger", "corrupt_ledger", "corrupt_state", "stale_lock", "kill", "user_commit",
          "budget", "contended"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Project:
    return Project.create(tmp_path_factory.mktemp("template") / "proj")


class World:
    """One project and the agent's knobs."""

    def __init__(self, p: Project, rng: random.Random):
        self.p, self.rng = p, rng
        self.budget, self.slow, self.k = 2.0, False, 0
        self.log: list[str] = []

    def stop(self) -> dict:
        return loop.stop_hook({"session_id": "s", "cwd": str(self.p.path), "hook_event_name": "Stop"})

    def run(self, ok: bool | None = None) -> str:
        rng, root = self.rng, self.p.path
        d = allocate_run_dir(root)                                 # the real allocator: ids never reused
        rid = d.name
        shutil.copy2(root / "train.py", d / "train.py")
        (d / "out").mkdir()
        (d / "out" / "model.pt").write_bytes(f"ckpt {rid}".encode())
        ok = rng.random() < 0.85 if ok is None else ok
        started = datetime.now(timezone.utc) - timedelta(seconds=30)
        m = RunMetrics(run_id=rid, status="ok" if ok else "crash", metric_name="val_bpb",
                       metric_value=round(rng.uniform(1.7, 2.2), 4) if ok else None, direction="minimize",
                       train_py_sha256=self.p.sha(), seed=int(rid), budget_seconds=self.budget, grace_seconds=5,
                       train_seconds=2.0, sandbox="none", description=f"idea {rid}",
                       reason=None if ok else "crash in test", started_at=started,
                       finished_at=started + timedelta(seconds=5),
                       snapshot_sha256=snapshot(root, EDITABLE), fingerprint=fingerprint(self.budget),
                       steps_per_s=(5.0 if self.slow else rng.uniform(45, 55)) if ok else None)
        m.write(d)
        self.slow = False
        return rid

    def act(self, what: str) -> None:
        p, rng = self.p, self.rng
        self.log.append(what)
        if what == "edit":
            self.k += 1
            with open(p.path / "train.py", "a") as f:
                f.write(f"# variant {self.k}\n")
        elif what == "revert":
            (p.path / "train.py").write_text(p.committed("train.py"))
        elif what == "run":
            self.run()
        elif what == "note":
            p.note(f"note {rng.random()}")
        elif what == "stop":
            self.stop()
        elif what == "del_ledger":
            (p.path / "results.tsv").unlink(missing_ok=True)
        elif what == "empty_ledger":
            (p.path / "results.tsv").write_text("")
        elif what == "corrupt_ledger":
            (p.path / "results.tsv").write_text("commit\tval_bpb\tstatus\nxyz\tNaNx\tkeep\n")
        elif what == "corrupt_state":
            (p.path / ".autoresearch").mkdir(exist_ok=True)
            (p.path / ".autoresearch" / "state.json").write_text("{not json")
        elif what == "stale_lock":
            (p.path / ".git" / "index.lock").write_text("")      # a killed git's, no owner
        elif what == "kill":
            p.note("before a kill")
            p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": rng.choice(KILL_STEPS)})
        elif what == "user_commit":
            (p.path / "HUMAN.txt").write_text(f"{rng.random()}\n")
            p.sh("git", "add", "HUMAN.txt", check=False)
            p.sh("git", "commit", "-q", "-m", "a human's commit", "--", "HUMAN.txt", check=False)
        elif what == "budget":
            self.budget = 4.0 if self.budget == 2.0 else 2.0
        elif what == "contended":
            self.slow = True

    def undecided(self) -> list[str]:
        rows = read_rows(self.p.path)
        done = {r for row in rows for r in row.runs}
        return [r for r in run_ids(self.p.path) if r not in done]

    def drain(self) -> None:
        """The agent ends its turns properly until everything that ran is decided."""
        for _ in range(8):
            if (self.p.path / ".git" / "index.lock").exists():
                pass                                                # the hook clears a stale one itself
            self.p.note(f"drain {self.rng.random()}")
            reply = self.stop()
            if not self.undecided() and not (self.p.path / ".autoresearch" / "pending").exists():
                return
            text = reply.get("reason") or reply.get("systemMessage") or ""
            if "Confirm it" in text or "CONTENDED" in text:
                self.run(ok=True)                                   # the confirming / repeated run
        raise AssertionError(f"not drained: undecided {self.undecided()}; last reply {reply}")


def check_invariants(w: World) -> None:
    root = w.p.path
    rows = read_rows(root)
    ids = [r for r in run_ids(root)]
    # every run decided exactly once
    cover: dict[str, int] = {}
    for row in rows:
        for r in row.runs:
            cover[r] = cover.get(r, 0) + 1
    assert all(cover.get(r) == 1 for r in ids), {r: cover.get(r) for r in ids if cover.get(r) != 1}
    assert len({row.run_id for row in rows}) == len(rows)
    for row in rows:                                                # a row's run is the run it names
        m = RunMetrics.read(root / "runs" / row.run_id)
        assert m.run_id == row.run_id and (not row.snapshot or row.snapshot == m.snapshot_sha256)
    # the branch's keeps == the ledger's keeps
    branch = w.p.branch()
    log = git(root, "log", "--first-parent", "--format=%H%x00%B%x01", branch).stdout
    commits = []
    for rec in log.split("\x01"):
        sha, _, msg = rec.strip().partition("\x00")
        t = trailers(msg)
        if sha and t.get("Autoresearch-Branch") == branch and t.get("Autoresearch-Run"):
            commits.append((sha, t["Autoresearch-Run"]))
    ledger_keeps = sorted(r.run_id for r in rows if r.status == "keep" and r.branch == branch)
    assert sorted(rid for _, rid in commits) == ledger_keeps
    assert all(r.branch == branch for r in rows if r.status == "keep")
    # no keep without a change to the editable set (the first keep is the baseline)
    for sha, rid in commits[:-1]:                                  # newest first; the last is the baseline
        assert snapshot_at(root, sha, EDITABLE) != snapshot_at(root, sha + "^", EDITABLE), rid
    # kept checkpoints intact
    for _, rid in commits:
        assert (root / "runs" / rid / "out" / "model.pt").read_bytes() == f"ckpt {rid}".encode(), rid


def test_random_sequences_of_actions_and_faults_keep_the_invariants(template, tmp_path):
    kinds: dict[str, int] = {}
    for seed in range(N):
        rng = random.Random(seed)
        dest = tmp_path / f"s{seed}"
        shutil.copytree(template.path, dest, symlinks=True)
        w = World(Project(dest), rng)
        w.run(ok=True)                                             # the baseline run, then chaos
        w.p.note("baseline")
        for _ in range(rng.randint(4, 9)):
            what = rng.choice(FAULTS) if rng.random() < 0.3 else rng.choice(AGENT)
            kinds[what] = kinds.get(what, 0) + 1
            w.act(what)
        try:
            w.drain()
            check_invariants(w)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, actions {w.log}: {e}") from e
        shutil.rmtree(dest)
    assert all(kinds.get(k, 0) > 0 for k in FAULTS + ["edit", "revert", "run", "stop"]), kinds
