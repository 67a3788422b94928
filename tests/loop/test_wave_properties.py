"""Property test for waves: random sequences of agent actions (edit, queue, wait, note, end the
turn) and faults (a scheduler or slot runner killed at each step, queue.json truncated, invalid or
deleted, a snapshot file lost, state and ledger lost, pause then resume, a plain run beside the
wave, the Stop hook killed mid-decision), then the loop's invariants (test_properties.py) and the
wave's own:

  - every run decided exactly once; branch keeps == ledger keeps; no keep without a change;
    kept checkpoints intact (check_invariants);
  - every keep commits exactly the snapshot that was measured (never an unmeasured one);
  - after a wave is decided the tree is at the best (or at the winner, awaiting its confirmation);
  - no run is left queued or running once the agent has waited and the wave is decided, and no
    queued run falls out of its wave (a lost queue.json) or is dropped without running.

The scheduler is faked in-process with the real queue functions (claim, settle, finish) and the
real metrics writer: no training, so a sequence costs a few Stop calls. The Stop hook runs
in-process, and as the wired command (a real kill) for the kill faults.
AUTORESEARCH_WAVE_SEQUENCES overrides the count (default 100); a failure names its seed.
"""
from __future__ import annotations

import os
import random
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from autoresearch import loop
from autoresearch.gitops import git, trailers
from autoresearch.ledger import read_rows
from autoresearch.loop.runscan import run_ids
from autoresearch.loop.state import lift_pause, request_pause
from autoresearch.program import load_program
from autoresearch.record.identity import program_code, snapshot, snapshot_at, snapshot_files, snapshot_of
from autoresearch.record.layout import allocate_run_dir
from autoresearch.record.metrics import RunMetrics
from autoresearch.record.queue import (QUEUE_FILE, SNAPSHOT_DIR, QueueEntry, cancel_wave, claim, entries, finish,
                                    read_entry,
                                    pending_record, saved_files, settle_lost)
from loop_support import EDITABLE, Project, fingerprint
from test_properties import World, check_invariants

N = int(os.environ.get("AUTORESEARCH_WAVE_SEQUENCES", "100"))
KILL_STEPS = ["materialize", "journal", "branch", "commit", "index", "revert", "ledger", "decision", "state"]
AGENT = ["edit", "edit", "revert", "queue", "queue", "queue", "sched", "sched", "note", "stop", "stop"]
FAULTS = ["kill_claimed", "kill_measured", "queue_truncated", "queue_invalid", "queue_deleted", "snapshot_lost",
          "corrupt_state", "del_state_dir", "del_ledger", "kill_hook", "pause_resume", "budget", "plain_run"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Project:
    return Project.create(tmp_path_factory.mktemp("wtemplate") / "proj")


class Waves(World):
    """World plus a wave: queued runs and a fake scheduler that runs them from their snapshots."""

    def queue(self) -> str:
        root = self.p.path
        program = load_program(root)
        files = snapshot_files(root, program_code(program, root))
        d = allocate_run_dir(root)
        for rel, data in files.items():
            if data is not None:
                (d / SNAPSHOT_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / SNAPSHOT_DIR / rel).write_bytes(data)
        shutil.copy2(root / "train.py", d / "train.py")
        e = QueueEntry(run_id=d.name, message=f"wave idea {d.name}", budget_seconds=self.budget, seed=int(d.name),
                       absent=sorted(r for r, x in files.items() if x is None),
                       queued_at=datetime.now(timezone.utc) - timedelta(seconds=90), snapshot=snapshot_of(files))
        pending_record(root, e, self.p.sha(), program, "queued, not started yet")
        e.write(root)
        return d.name

    def sched(self, fault: str | None = None, ok: bool | None = None, value: float | None = None) -> None:
        """One scheduler step: settle runners lost earlier, then run the oldest queued run."""
        root = self.p.path
        settle_lost(root, set())
        q = [e for e in entries(root) if e.state == "queued"]
        if not q:
            return
        e = claim(root, q[0].run_id, 0)
        assert e is not None
        e.started_at = datetime.now(timezone.utc) - timedelta(seconds=60)     # it ran a while
        e.write(root)
        if fault == "kill_claimed":
            return                                          # the runner died before it measured anything
        d = root / "runs" / e.run_id
        ok = (value is not None or self.rng.random() < 0.8) if ok is None else ok
        files = saved_files(root, e)
        if (e.snapshot and snapshot_of(files) != e.snapshot) or files.get("train.py") is None:   # execute refuses it
            finish(root, e.run_id, "interrupted", "harness error: the snapshot was lost")
            return
        started = e.started_at
        (d / "out").mkdir(exist_ok=True)
        (d / "out" / "model.pt").write_bytes(f"ckpt {e.run_id}".encode())
        RunMetrics(run_id=e.run_id, status="ok" if ok else "crash", metric_name="val_bpb",
                   metric_value=(value or round(self.rng.uniform(1.7, 2.2), 4)) if ok else None, direction="minimize",
                   train_py_sha256=RunMetrics.read(d).train_py_sha256, seed=e.seed,
                   budget_seconds=e.budget_seconds, grace_seconds=5, train_seconds=2.0, sandbox="none",
                   description=e.message, reason=None if ok else "crash in test", started_at=started,
                   finished_at=started + timedelta(seconds=5), snapshot_sha256=snapshot_of(files),
                   fingerprint=fingerprint(e.budget_seconds),
                   steps_per_s=self.rng.uniform(45, 55) if ok else None).write(d)
        if fault == "kill_measured":
            return                                          # killed between metrics.json and queue.json
        finish(root, e.run_id, "done")

    def wait(self) -> None:
        """./run.sh --wait: a (new) scheduler runs the queue to its end."""
        for _ in range(50):
            self.sched()
            if not [e for e in entries(self.p.path) if e.state in ("queued", "running")]:
                return
        raise AssertionError("the wave never ended")

    def live_wave(self) -> list[str]:
        decided = {r for row in read_rows(self.p.path) for r in row.runs}
        return [e.run_id for e in entries(self.p.path) if e.state in ("queued", "running") and e.run_id not in decided]

    def act(self, what: str) -> None:
        p, rng, root = self.p, self.rng, self.p.path
        waved = [e.run_id for e in entries(root)]
        if what == "queue":
            self.log.append(what)
            self.queue()
        elif what == "sched":
            self.log.append(what)
            self.sched()
        elif what in ("kill_claimed", "kill_measured"):
            self.log.append(what)
            self.sched(fault=what)
        elif what.startswith("queue_") and waved:
            rid = rng.choice(waved)
            self.log.append(f"{what} {rid}")
            f = root / "runs" / rid / QUEUE_FILE
            if what == "queue_deleted":
                f.unlink(missing_ok=True)
            elif what == "queue_invalid":
                f.write_text("{not json")
            elif f.exists():
                f.write_bytes(f.read_bytes()[: rng.randint(0, 40)])
        elif what == "snapshot_lost" and waved:
            rid = rng.choice(waved)
            self.log.append(f"{what} {rid}")
            (root / "runs" / rid / SNAPSHOT_DIR / "train.py").unlink(missing_ok=True)
        elif what == "kill_hook":
            step = rng.choice(KILL_STEPS)
            self.log.append(f"kill_hook {step}")
            p.note("before a kill")
            p.hook("Stop", env={"AUTORESEARCH_TEST_CRASH_AT": step})
        elif what == "pause_resume":
            self.log.append(what)
            request_pause(root, "a human's pause")
            cancel_wave(root)
            self.stop()
            lift_pause(root)
        elif what == "del_state_dir":
            self.log.append(what)
            shutil.rmtree(root / ".autoresearch", ignore_errors=True)
        elif what == "plain_run":
            self.log.append(what)
            self.run()
        elif what in ("queue_deleted", "queue_invalid", "queue_truncated", "snapshot_lost"):
            self.log.append(f"{what} (no wave)")
        else:
            super().act(what)

    def drain(self) -> None:
        """The agent waits for its wave and ends its turns properly until everything is decided."""
        reply: dict = {}
        for _ in range(10):
            self.wait()
            self.p.note(f"drain {self.rng.random()}")
            reply = self.stop()
            text = reply.get("reason") or reply.get("systemMessage") or ""
            if "wave of" in text:
                self.check_tree(text)
            if not self.undecided() and not (self.p.path / ".autoresearch" / "pending").exists():
                return
            if "Confirm it" in text or "CONTENDED" in text:
                if self.rng.random() < 0.5:
                    self.run(ok=True)                               # a plain confirming run
                else:
                    self.queue()                                    # a queued one
        raise AssertionError(f"not drained: undecided {self.undecided()}; last reply {reply}")

    def check_tree(self, text: str) -> None:
        """After a wave's decision the tree is at the best, or at the winner awaiting confirmation."""
        root = self.p.path
        code = [f for f in EDITABLE if f != "scratchpad.md"]
        if "Confirm it" in text:
            return
        assert snapshot(root, code) == snapshot_at(root, "HEAD", code), f"tree not at the best: {text[:300]}"


def check_wave_invariants(w: Waves) -> None:
    root = w.p.path
    check_invariants(w)
    left = [(e.run_id, e.state) for e in entries(root) if e.state in ("queued", "running")]
    assert not left, f"left in flight: {left}"
    for d in sorted((root / "runs").iterdir()):             # no queued run silently dropped
        if (d / SNAPSHOT_DIR).is_dir():
            e = read_entry(d)
            assert e is not None, f"run {d.name} fell out of its wave (queue entry lost)"
            if RunMetrics.read(d).extra.get("wave") == "queued":
                assert e.state in ("cancelled", "interrupted"), f"run {d.name} never ran: {e.state}"
    branch = w.p.branch()
    log = git(root, "log", "--first-parent", "--format=%H%x00%B%x01", branch).stdout
    for rec in log.split("\x01"):
        sha, _, msg = rec.strip().partition("\x00")
        rid = trailers(msg).get("Autoresearch-Run") if sha else None
        if rid:                                              # the commit holds exactly what was measured
            m = RunMetrics.read(root / "runs" / rid)
            assert snapshot_at(root, sha, EDITABLE) == m.snapshot_sha256, f"keep {rid} is not what was measured"


def test_random_wave_sequences_with_faults_keep_the_invariants(template, tmp_path):
    kinds: dict[str, int] = {}
    for seed in range(N):
        rng = random.Random(seed)
        dest = tmp_path / f"w{seed}"
        shutil.copytree(template.path, dest, symlinks=True)
        w = Waves(Project(dest), rng)
        if rng.random() < 0.5:
            w.run(ok=True)                                   # a plain baseline
        else:
            w.queue()                                        # a wave of 1 as the baseline
            w.sched(ok=True)
        w.p.note("baseline")
        w.stop()
        for _ in range(rng.randint(5, 12)):
            what = rng.choice(FAULTS) if rng.random() < 0.35 else rng.choice(AGENT)
            kinds[what] = kinds.get(what, 0) + 1
            w.act(what)
        try:
            w.drain()
            check_wave_invariants(w)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, actions {w.log}: {e}") from e
        shutil.rmtree(dest)
    assert all(kinds.get(k, 0) > 0 for k in FAULTS + ["edit", "queue", "sched", "stop"]), kinds
