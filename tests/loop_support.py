"""Helpers for the loop tests: a throwaway research project in a real git repository, wired
exactly like this one (hooks/ and .claude/settings.json copied, .venv linked), runs fabricated
as runs/NNNN/ folders (no training), and the hooks driven through the exact command line in
settings.json with the JSON Claude Code sends."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from autoresearch.gitops import trailers
from autoresearch.program import ConfigError, load_program
from autoresearch.record.identity import Fingerprint, program_code, snapshot
from autoresearch.ledger import LedgerRow, read_rows
from autoresearch.record.metrics import RunMetrics
from autoresearch.loop.state import LoopState, read_state, write_state

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """---
metric: {name: val_bpb, direction: minimize}
budget: {train_seconds: 2, grace_seconds: 30, eval_seconds: 120}
editable: [train.py, scratchpad.md]
min_improvement: 0.01
noise: {k_sigma: 2.0, confirm_margin: 0.02, calibrate_runs: 2}
sandbox: {backend: none}
deadline_hours: 10
phase: tune
phases:
  - {name: tune, focus: "Tune the learning rate and the width.", max_experiments: 20}
  - {name: arch, focus: "Change the architecture.", max_experiments: 3}
---
# Test program
Follow the loop.
"""

EDITABLE = ["train.py", "scratchpad.md"]


def fingerprint(budget: float = 2.0) -> Fingerprint:
    """What the runner records for a CPU run in these test projects."""
    return Fingerprint(budget_seconds=budget, eval_seconds=120, mode="two_stage", metric="val_bpb:minimize",
                       backend="none", device="cpu", data="-")


USER = {"GIT_AUTHOR_NAME": "User", "GIT_AUTHOR_EMAIL": "user@example.invalid",
        "GIT_COMMITTER_NAME": "User", "GIT_COMMITTER_EMAIL": "user@example.invalid"}


@dataclass
class HookResult:
    rc: int
    reply: dict | None
    stdout: str
    stderr: str

    @property
    def blocked(self) -> bool:
        return self.rc == 2 or bool(self.reply and self.reply.get("decision") == "block")

    @property
    def text(self) -> str:
        r = self.reply or {}
        return r.get("reason") or r.get("systemMessage") or self.stderr


def hook_command(project: Path, event: str) -> str:
    settings = json.loads((project / ".claude" / "settings.json").read_text())
    return settings["hooks"][event][0]["hooks"][0]["command"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUTORESEARCH_", "CLAUDE_", "GIT_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


class Project:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, dest: Path, program: str = PROGRAM, venv: bool = True) -> "Project":
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "program.md").write_text(program)
        shutil.copy2(ROOT / "train.py", dest / "train.py")
        shutil.copy2(ROOT / "scratchpad.md", dest / "scratchpad.md")
        shutil.copy2(ROOT / ".gitignore", dest / ".gitignore")
        (dest / "hooks").mkdir()
        for f in (ROOT / "hooks").glob("*.py"):
            shutil.copy2(f, dest / "hooks" / f.name)
        (dest / ".claude").mkdir()
        shutil.copy2(ROOT / ".claude" / "settings.json", dest / ".claude" / "settings.json")
        if venv:
            (dest / ".venv").symlink_to(ROOT / ".venv")
        p = cls(dest)
        p.sh("git", "init", "-q", "-b", "main")
        p.sh("git", "add", "-A")
        p.sh("git", "commit", "-q", "-m", "the user's project")
        return p

    # --- shell and git ---------------------------------------------------------------------
    def sh(self, *cmd: str, check: bool = True, env: dict | None = None) -> str:
        e = clean_env(GIT_CONFIG_NOSYSTEM="1", HOME=str(self.path.parent), **USER)
        e.update(env or {})
        p = subprocess.run(cmd, cwd=self.path, env=e, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed: {p.stderr}")
        return p.stdout

    def git(self, *args: str) -> str:
        return self.sh("git", *args).strip()

    def branch(self) -> str:
        return self.git("rev-parse", "--abbrev-ref", "HEAD")

    def rev(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)

    def commits(self, ref: str = "HEAD") -> list[str]:
        return self.git("log", "--format=%s", ref).splitlines()

    def head_trailers(self, ref: str = "HEAD") -> dict[str, str]:
        return trailers(self.git("log", "-1", "--format=%B", ref))

    def dirty(self) -> list[str]:
        return [line for line in self.git("status", "--porcelain").splitlines() if line]

    def committed(self, path: str, ref: str = "HEAD") -> str:
        return self.git("show", f"{ref}:{path}")

    # --- files -----------------------------------------------------------------------------
    def read(self, name: str = "train.py") -> str:
        return (self.path / name).read_text()

    def edit(self, old: str, new: str, name: str = "train.py") -> None:
        text = self.read(name)
        assert old in text, old
        (self.path / name).write_text(text.replace(old, new, 1))

    def note(self, text: str) -> None:
        with open(self.path / "scratchpad.md", "a") as f:
            f.write(f"- {text}\n")

    def sha(self, name: str = "train.py") -> str:
        return hashlib.sha256((self.path / name).read_bytes()).hexdigest()

    # --- runs ------------------------------------------------------------------------------
    def next_id(self) -> str:
        runs = self.path / "runs"
        n = max([int(p.name) for p in runs.iterdir()] if runs.exists() else [0]) + 1
        return f"{n:04d}"

    def fake_run(self, status: str = "ok", value: float | None = None, desc: str = "an idea",
                 seed: int | None = None, finished: bool = True, copy: bool = True,
                 metrics: str | None = "write", age_s: float = 60, budget: float = 2.0,
                 steps_per_s: float | None = 50.0, purpose: str = "experiment", identity: bool = True,
                 checkpoint: bool = True, reason: str | None = None, log: str | None = None,
                 device: str | None = None) -> str:
        """runs/NNNN/ for the current editable set, as the runner leaves it (no training).
        `budget` goes into the fingerprint; identity=False writes a run from before snapshots;
        `checkpoint`: out/model.pt (b"weights of NNNN"), as TRAIN saves it."""
        rid = self.next_id()
        d = self.path / "runs" / rid
        d.mkdir(parents=True)
        if checkpoint:
            (d / "out").mkdir()
            (d / "out" / "model.pt").write_bytes(f"weights of {rid}".encode())
        if copy:
            shutil.copy2(self.path / "train.py", d / "train.py")
        (d / "train.log").write_text(log if log is not None else "step 1 loss 5.5\n")
        try:
            code = program_code(load_program(self.path), self.path)     # the runner's editable set
        except ConfigError:                                             # a test that breaks program.md
            code = [f for f in EDITABLE if f != "scratchpad.md"]
        (d / "diff.patch").write_text(self.sh("git", "diff", "HEAD", "--", *code))
        started = datetime.now(timezone.utc) - timedelta(seconds=age_s)
        m = RunMetrics(run_id=rid, status=status, metric_name="val_bpb",
                       metric_value=value if status == "ok" else None, direction="minimize",
                       train_py_sha256=self.sha(), seed=seed if seed is not None else int(rid),
                       budget_seconds=2, grace_seconds=5, train_seconds=2.0, peak_memory_gb=0.25,
                       sandbox="none", description=desc, reason=None if status == "ok" else reason or f"{status} in test", device=device,
                       started_at=started, finished_at=started + timedelta(seconds=5) if finished else None,
                       purpose=purpose, steps_per_s=steps_per_s if status == "ok" else None)
        if identity:
            m.snapshot_sha256 = snapshot(self.path, code)
            m.fingerprint = fingerprint(budget)
            m.budget_seconds = budget
        if metrics == "write":
            m.write(d)
        elif metrics == "corrupt":
            (d / "metrics.json").write_text('{"run_id": "' + rid + '", "status": "ok", "metric_va')
        t = started.timestamp() + 5
        for f in [*d.iterdir(), d]:
            os.utime(f, (t, t))                  # the folder is as old as the run
        return rid

    # --- hooks -----------------------------------------------------------------------------
    def hook(self, event: str = "Stop", session: str = "s1", env: dict | None = None, **fields) -> HookResult:
        data = {"session_id": session, "transcript_path": str(self.path.parent / "t.jsonl"), "cwd": str(self.path),
                "hook_event_name": event, "permission_mode": "default"}
        if event == "Stop":
            data.update(stop_hook_active=False, last_assistant_message="done")
        if event == "SessionStart":
            data.update(source="startup")
        if event == "PreCompact":
            data.update(trigger="auto", custom_instructions="")
        data.update(fields)
        e = clean_env(CLAUDE_PROJECT_DIR=str(self.path), HOME=str(self.path.parent))
        e.update(env or {})
        p = subprocess.run(["/bin/sh", "-c", hook_command(self.path, event)], cwd=self.path, env=e,
                           input=json.dumps(data), capture_output=True, text=True, timeout=120)
        reply = None
        if p.stdout.strip():
            reply = json.loads(p.stdout)
        return HookResult(p.returncode, reply, p.stdout, p.stderr)

    def stop(self, **kw) -> HookResult:
        return self.hook("Stop", **kw)

    def decide(self, **kw) -> HookResult:
        """End the turn after noting the run in the scratchpad (the usual agent behaviour)."""
        self.note(f"run {int(self.next_id()) - 1:04d} noted")
        return self.stop(**kw)

    # --- records ---------------------------------------------------------------------------
    def rows(self) -> list[LedgerRow]:
        return read_rows(self.path)

    def ledger_lines(self) -> list[list[str]]:
        return [line.split("\t") for line in (self.path / "results.tsv").read_text().splitlines()]

    def state(self) -> LoopState:
        return read_state(self.path)

    def set_state(self, **changes) -> None:
        st = read_state(self.path)
        for k, v in changes.items():
            setattr(st, k, v)
        write_state(self.path, st)

    def baseline(self, value: float = 2.0) -> HookResult:
        self.fake_run(value=value, desc="baseline")
        r = self.decide()
        assert r.blocked and "BASELINE" in r.text, r
        return r


@contextlib.contextmanager
def hold_open(path: Path):
    """A live process holding `path` open, as git holds its lock files while it works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["sh", "-c", f'exec 3>"{path}"; exec sleep 120'])
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if any(os.readlink(f) == str(path) for f in Path(f"/proc/{p.pid}/fd").iterdir()):
                    break
            except OSError:
                pass
            time.sleep(0.02)
        yield p
    finally:
        p.kill()
        p.wait()
