"""Property test: random sequences of agent actions and faults, then the loop's invariants.

Each sequence starts from a fresh copy of a real git project and interleaves what an agent does
(edit the code, put the best's code back, run, note, end its turn) with faults (results.tsv
deleted, emptied, corrupted, made non-UTF-8 or truncated; state.json corrupted or truncated; the
pending journal or a decision.json garbled or truncated; a stale git lock; a Stop hook killed at a
named step; a human's commit on the run branch, also one made from the stale index a keep killed
after its commit leaves; the project moved to another path; the signing key lost or replaced, then
imported back; the disk full (too little room, and ./run.sh hitting ENOSPC) and freed again; a
budget change; a contended run). Runs are fake records written with the real run-id allocator and
metrics writer (no training), so a sequence costs a few Stop calls: the real `loop.stop_hook`
in-process, and the wired hook command (a real kill) for the kill faults. While the key is gone
or the disk full, ./run.sh would refuse, so no run is made. Then the human frees the disk and
imports the key, the agent drains (notes, ends its turn, confirms) and we check:

  - every run is decided exactly once (one ledger row covers it; a row's run is the run it names);
  - the run branch's keeps (Autoresearch-Run trailers) equal the ledger's keeps;
  - no keep without a change to the editable set (the baseline aside);
  - every kept run's checkpoint exists and is intact;
  - every reply that announced a decision, every decision.json, the ledger and the branch agree,
    and the branch tip holds the code of its last keep (a stale-index commit is restored);
  - no run is ever recorded as altered (no fault here alters a record: a missing key is not tampering).

AUTORESEARCH_PROPERTY_SEQUENCES overrides the count (default 200); a failure names its seed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from autoresearch import loop
from autoresearch.record.layout import allocate_run_dir
from autoresearch.gitops import git, trailers
from autoresearch.record.identity import snapshot, snapshot_at
from autoresearch.ledger import read_rows
from autoresearch.ledger.durable import DECISION_FILE
from autoresearch.loop.runscan import run_ids
from autoresearch.loop.tipcheck import last_keep
from autoresearch.record.exits import DISK_FULL_MARK
from autoresearch.record.keys import identity, key_dir, key_problem
from autoresearch.record.metrics import RECORD_ALTERED, RunMetrics
from loop_support import EDITABLE, Project, fingerprint

N = int(os.environ.get("AUTORESEARCH_PROPERTY_SEQUENCES", "200"))
KILL_STEPS = ["journal", "branch", "commit", "index", "revert", "ledger", "decision", "state"]
AGENT = ["edit", "edit", "revert", "run", "run", "run", "note", "stop", "stop", "stop"]
FAULTS = ["del_ledger", "empty_ledger", "corrupt_ledger", "corrupt_state", "stale_lock", "kill", "user_commit",
          "budget", "contended",
          # issue 25
          "disk_full", "disk_freed", "stale_index_commit", "move", "lose_key", "replace_key", "restore_key",
          "undecodable_ledger", "truncate_ledger", "truncate_state", "garble_journal", "truncate_decision"]
FULL_ENV = "AUTORESEARCH_MIN_FREE_MB"
DECIDED = re.compile(r"\(run (\d{4,})\) (is the BASELINE|KEPT|DISCARDED|CRASHED|was NOT JUDGED)")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Project:
    return Project.create(tmp_path_factory.mktemp("template") / "proj")


class World:
    """One project and the agent's knobs."""

    def __init__(self, p: Project, rng: random.Random):
        self.p, self.rng = p, rng
        self.budget, self.slow, self.k = 2.0, False, 0
        self.full = False                                          # the disk has too little room
        self.key_aside: tuple[Path, bytes] | None = None           # the signing key, lost or replaced
        self.moves = 0
        self.log: list[str] = []
        self.claims: dict[str, str] = {}                           # run id -> what a reply said of it

    def heard(self, reply: dict | None) -> dict:
        text = (reply or {}).get("reason") or (reply or {}).get("systemMessage") or ""
        for rid, what in DECIDED.findall(text):
            assert self.claims.setdefault(rid, what) == what, (rid, what, self.claims[rid])
        return reply or {}

    def stop(self) -> dict:
        old = os.environ.get(FULL_ENV)
        if self.full:
            os.environ[FULL_ENV] = str(10**9)
        try:
            return self.heard(loop.stop_hook({"session_id": "s", "cwd": str(self.p.path), "hook_event_name": "Stop"}))
        finally:
            if self.full and old is None:
                del os.environ[FULL_ENV]

    def can_run(self) -> bool:
        """What ./run.sh does first: a full disk (ENOSPC: it tells the Stop hook) or a missing key stop it."""
        if self.full:
            (self.p.path / ".autoresearch").mkdir(exist_ok=True)
            (self.p.path / ".autoresearch" / DISK_FULL_MARK).touch()
            return False
        return key_problem(self.p.path) is None

    def run(self, ok: bool | None = None) -> str | None:
        rng, root = self.rng, self.p.path
        if not self.can_run():
            return None
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
            self.heard(p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": rng.choice(KILL_STEPS)}).reply)
        elif what == "stale_index_commit":                        # killed after the keep commit, before the index
            p.note("before a kill")
            self.heard(p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": "commit"}).reply)
            (p.path / "HUMAN.txt").write_text(f"{rng.random()}\n")
            p.sh("git", "add", "HUMAN.txt", check=False)
            p.sh("git", "commit", "-q", "-m", "a human's commit of the whole index", check=False)
        elif what == "disk_full":
            self.full = True
        elif what == "disk_freed":
            self.full = False
        elif what == "move":
            self.moves += 1
            dest = p.path.with_name(f"{p.path.name.split('-moved')[0]}-moved{self.moves}")
            shutil.move(str(p.path), dest)
            self.p = Project(dest)
        elif what in ("lose_key", "replace_key") and self.key_aside is None:
            ident = identity(p.path)
            if ident.key_id:
                path = key_dir(ident) / f"{ident.key_id}.key"
                self.key_aside = (path, path.read_bytes())
                if what == "lose_key":
                    path.unlink()
                else:
                    path.write_text(os.urandom(32).hex() + "\n")
        elif what == "restore_key":
            self.restore_key()
        elif what == "undecodable_ledger":
            with open(p.path / "results.tsv", "ab") as f:
                f.write(b"\xff\xfe\x80 not utf-8\n")
        elif what == "truncate_ledger":
            self.truncate(p.path / "results.tsv")
        elif what == "truncate_state":
            self.truncate(p.path / ".autoresearch" / "state.json")
        elif what == "garble_journal":                          # a kill, then the journal it left is damaged
            p.note("before a kill")
            self.heard(p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": rng.choice(KILL_STEPS)}).reply)
            j = p.path / ".autoresearch" / "pending" / "journal.json"
            if j.exists():
                self.truncate(j) if rng.random() < 0.5 else j.write_bytes(b"\xff" + j.read_bytes()[1:])
        elif what == "truncate_decision":
            found = sorted((p.path / "runs").glob(f"*/{DECISION_FILE}"))
            if found:
                self.truncate(rng.choice(found))
        elif what == "user_commit":
            (p.path / "HUMAN.txt").write_text(f"{rng.random()}\n")
            p.sh("git", "add", "HUMAN.txt", check=False)
            p.sh("git", "commit", "-q", "-m", "a human's commit", "--", "HUMAN.txt", check=False)
        elif what == "budget":
            self.budget = 4.0 if self.budget == 2.0 else 2.0
        elif what == "contended":
            self.slow = True

    def truncate(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            return
        path.write_bytes(data[: self.rng.randint(0, max(len(data) - 1, 0))])

    def restore_key(self) -> None:
        """`autoresearch keys import`: the key is back."""
        if self.key_aside is not None:
            path, data = self.key_aside
            path.write_bytes(data)
            self.key_aside = None

    def undecided(self) -> list[str]:
        rows = read_rows(self.p.path)
        done = {r for row in rows for r in row.runs}
        return [r for r in run_ids(self.p.path) if r not in done]

    def drain(self) -> None:
        """The human frees the disk and brings the key back; the agent ends its turns properly
        until everything that ran is decided."""
        self.full = False
        self.restore_key()
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
    # kept checkpoints exist and are intact
    for _, rid in commits:
        assert (root / "runs" / rid / "out" / "model.pt").read_bytes() == f"ckpt {rid}".encode(), rid
    # the replies, decision.json, the ledger and the branch agree
    by_run = {x: row for row in rows for x in row.runs}
    for row in rows:
        for rid in row.runs:
            d = json.loads((root / "runs" / rid / DECISION_FILE).read_text())
            assert (d["run_id"], d["status"]) == (row.run_id, row.status), (rid, d, row)
        assert RECORD_ALTERED not in row.note, row.note
    for rid, said in w.claims.items():
        assert rid in by_run, (rid, said)
        assert (by_run[rid].status == "keep") == (said in ("is the BASELINE", "KEPT")), (rid, said, by_run[rid])
    # the tip holds the code of its last keep
    keep = last_keep(root, branch, w.p.rev())
    if keep is not None:
        assert snapshot_at(root, "HEAD", EDITABLE[:1]) == snapshot_at(root, keep[0], EDITABLE[:1]), keep


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
        except Exception as e:
            raise AssertionError(f"seed {seed}, actions {w.log}: {type(e).__name__}: {e}") from e
        shutil.rmtree(w.p.path)
    assert all(kinds.get(k, 0) > 0 for k in FAULTS + ["edit", "revert", "run", "stop"]), kinds
