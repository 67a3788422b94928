"""`autoresearch status --watch` in a real pseudo-terminal, against a project with a run in flight:
a signed metrics.json without finished_at, the runner's .running lock held (by this test, as
the runner would), and a train.log that grows while the screen watches it."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from autoresearch.ledger import LedgerRow, append_rows
from autoresearch.record.layout import hold_running
from autoresearch.record.metrics import RunMetrics
from autoresearch.cli.watch import in_flight

ROOT = Path(__file__).resolve().parents[2]
BRANCH = "autoresearch/20260101-220000"
STEP = "step {:6d} | {:6.1f}s | lr 3.00e-03 | train loss {:.3f} (3.383 bits) | 81,000 tok/s\n"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def _project(tmp: Path) -> Path:
    """Two decided experiments on a run branch, and run 0003 training now."""
    root = tmp / "proj"
    root.mkdir()
    shutil.copy(ROOT / "program.md", root / "program.md")
    (root / "train.py").write_text("print('hi')\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "program.md", "train.py")
    _git(root, "commit", "-qm", "base")
    _git(root, "checkout", "-qb", BRANCH)
    rows = [LedgerRow(commit=f"c{i:06d}", value=v, memory_gb=0.1, status=s, description=d, experiment=i,
                      run_id=f"{i:04d}", runs=[f"{i:04d}"], run_status="ok", phase="hyperparameters", branch=BRANCH,
                      seeds=[i], delta=None if i == 1 else v - 2.3, prev_best=None if i == 1 else 2.3,
                      best=2.3, threshold=0.003, sandbox="bwrap",
                      decided_at=datetime(2026, 1, 1, 22, i, tzinfo=timezone.utc))
            for i, (s, v, d) in enumerate([("keep", 2.3, "baseline"), ("discard", 2.31, "lr 3e-3 warmup off")], 1)]
    append_rows(root, rows, "val_bpb")
    run = root / "runs" / "0003"
    run.mkdir(parents=True)
    RunMetrics(run_id="0003", status="interrupted", metric_name="val_bpb", direction="minimize",
               train_py_sha256="0" * 64, seed=3, budget_seconds=300, grace_seconds=20, sandbox="bwrap",
               description="rotary embeddings instead of learned positions",
               started_at=datetime.now(timezone.utc) - timedelta(seconds=75)).write(run)
    (run / "train.log").write_text("device cpu | params 1,234 | budget 300s | seed 3\n" + STEP.format(1200, 70.0, 2.5))
    return root


def test_in_flight_is_the_run_holding_its_lock(tmp_path):
    root = _project(tmp_path)
    assert in_flight(root, {}) == [], "nobody holds .running: the runner is gone, nothing is in flight"
    fd = hold_running(root / "runs" / "0003")
    try:
        followers: dict = {}
        (f,) = in_flight(root, followers)
        assert (f.run_id, f.stage, f.step, f.loss, f.budget) == ("0003", "TRAIN", 1200, 2.5, 300)
        assert 70 < f.elapsed < 200 and f.description.startswith("rotary")
        with open(root / "runs" / "0003" / "train.log", "a") as log:
            log.write(STEP.format(1300, 76.0, 2.4))
        assert in_flight(root, followers)[0].step == 1300
    finally:
        os.close(fd)


def test_status_watch_redraws_the_run_in_flight_until_ctrl_c(tmp_path):
    root = _project(tmp_path)
    fd = hold_running(root / "runs" / "0003")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "HOME": str(tmp_path), "COLUMNS": "160", "LINES": "50"}
    p = subprocess.Popen([sys.executable, "-m", "autoresearch", "status", "--watch", "--interval", "0.5",
                          "-C", str(root)], stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True,
                         # a shell's background job inherits SIGINT ignored; a terminal's Ctrl-C is the default
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    screen = b""

    def read_for(seconds: float) -> None:
        nonlocal screen
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    return
    try:
        read_for(1.5)
        with open(root / "runs" / "0003" / "train.log", "a") as log:
            log.write(STEP.format(2400, 140.0, 2.125))
        read_for(1.5)
        os.killpg(p.pid, signal.SIGINT)                   # Ctrl-C, as the terminal sends it
        rc = p.wait(timeout=10)
        read_for(0.3)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
        os.close(fd)
    text = screen.decode(errors="replace")
    assert rc == 0, text
    assert "in flight" in text and "0003" in text and "TRAIN" in text
    assert "1,200" in text and "2.5" in text, "the step and loss from the run's train.log"
    assert "2,400" in text and "2.125" in text, "the screen follows the growing log"
    assert "rotary embeddings" in text and "5:00" in text
    assert "lr 3e-3 warmup off" in text and BRANCH in text, "the last decisions below"
    assert "Traceback" not in text


def _finish(root: Path, rid: str = "0003", value: float = 2.25) -> None:
    """The runner's last write: run 0003 measured, metrics.json final (finished_at), signed."""
    m = RunMetrics.read(root / "runs" / rid)
    m.status, m.metric_value, m.finished_at = "ok", value, datetime.now(timezone.utc)
    m.write(root / "runs" / rid)


def test_a_finished_run_without_a_ledger_row_is_waiting_for_decision(tmp_path):
    from autoresearch.cli.status import Report, gather, render
    from rich.console import Console
    from autoresearch.cli.watch import screen
    root = _project(tmp_path)
    fd = hold_running(root / "runs" / "0003")
    try:
        assert gather(root).awaiting_decision == [], "a run still training is in flight, not waiting"
    finally:
        os.close(fd)
    _finish(root)
    p = subprocess.run([sys.executable, "-m", "autoresearch", "status", "--json", "-C", str(root)],
                       capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    (w,) = Report.model_validate_json(p.stdout).awaiting_decision
    assert (w.run_id, w.run_status, w.value) == ("0003", "ok", 2.25) and w.description.startswith("rotary")
    assert in_flight(root, {}) == []
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(screen(root, {}))
    live = console.export_text()
    assert "waiting for decision" in live and "0003" in live and "no run in flight" not in live
    console.print(render(gather(root)))
    assert "waiting for decision" in console.export_text()
    # the Stop hook decides it: a ledger row now covers run 0003, and nothing waits any more
    row = LedgerRow(commit="c000003", value=2.25, memory_gb=0.1, status="keep", description="rotary", experiment=3,
                    run_id="0003", runs=["0003"], run_status="ok", phase="hyperparameters", branch=BRANCH, seeds=[3],
                    delta=-0.05, prev_best=2.3, best=2.25, threshold=0.003, sandbox="bwrap",
                    decided_at=datetime.now(timezone.utc))
    append_rows(root, [row], "val_bpb")
    assert gather(root).awaiting_decision == []


def test_status_watch_in_a_pipe_prints_a_line_per_change(tmp_path):
    """A pipe gets facts, not redraws: each line once, when it becomes true; no terminal codes."""
    root = _project(tmp_path)
    fd = hold_running(root / "runs" / "0003")
    p = subprocess.Popen([sys.executable, "-m", "autoresearch", "status", "--watch", "--interval", "0.3",
                          "-C", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "HOME": str(tmp_path)})
    try:
        time.sleep(2.5)
        with open(root / "runs" / "0003" / "train.log", "a") as log:
            log.write(STEP.format(2400, 140.0, 2.125))
        time.sleep(2.0)
    finally:
        os.close(fd)
        p.terminate()
        out, err = p.communicate(timeout=10)
    lines = out.splitlines()
    assert "\x1b" not in out and "Traceback" not in err, err
    step1 = [ln for ln in lines if "run 0003 TRAIN step 1200 loss 2.5" in ln]
    step2 = [ln for ln in lines if "run 0003 TRAIN step 2400 loss 2.125" in ln]
    assert len(step1) == 1 and len(step2) == 1, out
    assert lines.index(step1[0]) < lines.index(step2[0])
    assert sum("run 0002 discard" in ln and "lr 3e-3 warmup off" in ln for ln in lines) == 1, out


def test_status_with_runs_waiting_and_no_decision_says_so(tmp_path):
    root = _project(tmp_path)
    (root / "results.tsv").unlink()
    _finish(root)
    p = subprocess.run([sys.executable, "-m", "autoresearch", "status", "-C", str(root)], capture_output=True,
                       text=True, env={**os.environ, "HOME": str(tmp_path), "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert "No experiments yet" not in p.stdout
    assert "No decided experiments yet: 0003 finished and wait for a decision" in p.stdout
