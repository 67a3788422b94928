"""./run.sh end to end, for real: statuses, artifacts, what the agent reads, seeds,
interruption, inline mode and harness errors. Isolation checks are in
test_experiment_isolation.py; the evaluator's own checks in test_eval_integrity.py."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from autoresearch.record.exits import RunExit

from experiment_support import (BACKENDS, HONEST, ROOT, RUN_SH, git_env, log_of, make_project, metrics, program_text,
                                require_backend, run_env, run_sh, split_log)

from autoresearch.program import parse_program
from autoresearch.run.inputs import derive_seed
from autoresearch.record.layout import allocate_run_dir, state_folder
from autoresearch.run.outcome import eval_status, inline_metric

pytestmark = pytest.mark.usefixtures("data_dir")

HANG = 'print("started", flush=True)\nimport time\nwhile True:\n    time.sleep(1)\n'
CRASH = ('import os\nprint("seed is", os.environ["AUTORESEARCH_SEED"], flush=True)\n'
         'def helper():\n    raise ValueError("boom-marker 42")\nhelper()\n')
# Touches memory 64 MiB at a time, up to 3 GiB (so a missing limit fails the test, not the machine).
HOG = ('chunks = []\nfor i in range(48):\n    chunks.append(b"\\x01" * (64 << 20))\n'
       '    print("allocated", (i + 1) * 64, "MiB", flush=True)\nprint("no limit hit")\n')
READY = 'import time\nprint("ready", flush=True)\ntime.sleep(600)\n'


def _no_process_mentions(marker: str) -> list[str]:
    """Command lines of live processes that mention marker (an orphan check, nothing is killed)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{d.name}: {cmd[:200]}")
    return found


def _wait_for(path: Path, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _on_run_branch_with_best(proj: Path, best: float) -> None:
    """A run branch whose ledger holds one kept result: the runner prints its delta from it."""
    from datetime import datetime, timezone

    from autoresearch.ledger import LedgerRow, append_rows
    subprocess.run(["git", "checkout", "-q", "-b", "autoresearch/test-branch"], cwd=proj, check=True,
                   env=git_env())
    append_rows(proj, [LedgerRow(commit="0000000", value=best, status="keep", experiment=1, run_id="0000",
                                 runs=["0000"], run_status="ok", phase="hyperparameters",
                                 branch="autoresearch/test-branch", decided_at=datetime.now(timezone.utc))],
                "val_bpb")


# ------------------------------------------------------------------ the happy path

@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_normal_run_is_ok_recorded_and_summarised(tmp_path, request, backend):
    require_backend(request, backend)
    code = HONEST.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 4e-3")
    proj = make_project(tmp_path / "p", train_py=code)
    _on_run_branch_with_best(proj, 7.95)
    p = run_sh(proj, "-m", "lr 4e-3: faster start", "--backend", backend, "--budget", "3")
    assert p.returncode == 0, p.stdout + p.stderr
    m = metrics(proj)
    assert m["status"] == "ok" and m["reason"] is None
    assert 1.5 < m["metric_value"] < 7.9, "a few seconds of training beat 8 bits/byte but cannot reach 1.5"
    assert (m["metric_name"], m["direction"]) == ("val_bpb", "minimize")
    assert m["sandbox"] == backend and m["sandbox_warning"] is None and m["mode"] == "two_stage"
    assert m["seed"] == 0 and m["budget_seconds"] == 3 and m["grace_seconds"] == 20
    assert m["description"] == "lr 4e-3: faster start"
    assert m["eval_bytes"] == 2**17 and m["device"] == "cpu"
    assert m["train_seconds"] >= 3 and m["eval_seconds"] > 0
    assert m["agent_seconds"] <= 3 + 3 and m["extra"]["startup_seconds"] > 0, "the warm-up is not counted"
    assert m["total_seconds"] >= m["train_seconds"] + m["eval_seconds"]
    assert 0.05 < m["peak_memory_gb"] < 4
    assert m["train_py_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert m["finished_at"] is not None and m["started_at"] <= m["finished_at"]
    run = proj / "runs" / "0001"
    assert (run / "train.py").read_text() == code
    diff = (run / "diff.patch").read_text()
    assert "-LEARNING_RATE = 3e-3" in diff and "+LEARNING_RATE = 4e-3" in diff
    assert (run / "out" / "model.pt").is_file()
    assert not (run / ".sandbox").exists() and not (state_folder(proj) / "runs" / "0001").exists(), \
        "the stand-in folders are removed"
    train, evals = split_log(log_of(proj))
    assert "checkpoint saved" in train and "evaluate: ok" in evals

    out = p.stdout.splitlines()
    assert out[0].startswith(f"run 0001: sandbox {backend}")
    assert "run 0001: ok" in out
    assert f"val_bpb: {m['metric_value']:.6f} | best 7.950000 | delta {m['metric_value'] - 7.95:+.6f} (better)" in p.stdout
    assert f"sandbox {backend}" in out[-2] and "peak memory" in out[-2] and "wall" in out[-2]
    assert out[-1] == "full log: runs/0001/train.log"
    assert len(out) <= 6, "the agent gets a few lines, not the log"


# ------------------------------------------------------------------ failures

@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_hang_is_killed_at_budget_plus_the_save_margin(tmp_path, request, backend):
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=HANG, grace_seconds=60)   # the start-up's allowance: not counted
    t0 = time.monotonic()
    p = run_sh(proj, "-m", "hang", "--backend", backend, AUTORESEARCH_TRAIN_SECONDS="2")
    wall = time.monotonic() - t0
    assert p.returncode == RunExit.CRASH, p.stdout + p.stderr     # scripts can tell a crash from ok
    m = metrics(proj)
    assert m["status"] == "timeout" and m["metric_value"] is None
    assert m["budget_seconds"] == 2, "AUTORESEARCH_TRAIN_SECONDS sets the budget for one run"
    assert 4.9 <= m["agent_seconds"] <= 6, m["agent_seconds"]       # budget 2 s + the save margin 3 s
    assert "save margin" in m["reason"]
    assert wall < 60
    assert m["eval_seconds"] is None, "no EVAL after a failed TRAIN"
    assert "started" in log_of(proj), "the partial log is kept"
    assert "run 0001: timeout" in p.stdout and "started" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_allocation_beyond_the_limit_is_oom(tmp_path, request, backend):
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=HOG, memory_gb=0.5)
    p = run_sh(proj, "-m", "hog", "--backend", backend, "--budget", "30")
    assert p.returncode == RunExit.CRASH, p.stdout + p.stderr     # scripts can tell a crash from ok
    m = metrics(proj)
    assert m["status"] == "oom", (m, log_of(proj)[-500:])
    assert "no limit hit" not in log_of(proj)
    assert m["metric_value"] is None and m["eval_seconds"] is None
    assert "run 0001: oom" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_prints_the_traceback_tail(tmp_path, request, backend):
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=CRASH)
    p = run_sh(proj, "-m", "crash", "--backend", backend, "--budget", "5", "--seed", "11")
    assert p.returncode == RunExit.CRASH, p.stdout + p.stderr     # scripts can tell a crash from ok
    m = metrics(proj)
    assert m["status"] == "crash" and m["metric_value"] is None and m["eval_seconds"] is None
    assert "ValueError: boom-marker 42" in m["reason"]
    assert m["seed"] == 11 and "seed is 11" in log_of(proj), "--seed reaches train.py"
    assert "Traceback" in p.stdout and "ValueError: boom-marker 42" in p.stdout
    assert "---- EVAL" not in log_of(proj)


@pytest.mark.slow
@pytest.mark.bwrap
def test_invalid_model_is_recorded_invalid_with_its_reason(tmp_path, bwrap_available):
    code = HONEST.replace("is_causal=True", "is_causal=False")
    assert code != HONEST
    proj = make_project(tmp_path / "p", train_py=code)
    p = run_sh(proj, "-m", "no mask", "--backend", "bwrap", "--budget", "3")
    assert p.returncode == RunExit.CRASH, p.stdout + p.stderr     # scripts can tell a crash from ok
    m = metrics(proj)
    assert m["status"] == "invalid" and m["metric_value"] is None
    assert "the model looks ahead" in m["reason"]
    assert "run 0001: invalid -- the model looks ahead" in p.stdout


# ------------------------------------------------------------------ interruption

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_run_is_marked_and_leaves_no_orphans(tmp_path, request, backend, sig):
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=READY)
    proc = subprocess.Popen([str(RUN_SH), "-m", "interrupt me", "--backend", backend, "--budget", "300"],
                            cwd=proj, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proj / "runs" / "0001" / "train.log", "ready")
        assert metrics(proj)["status"] == "interrupted", "marked interrupted from the start"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == RunExit.INTERRUPTED == 130, out + err
    m = metrics(proj)
    assert m["status"] == "interrupted" and m["finished_at"] is not None
    assert sig.name in m["reason"]
    deadline = time.monotonic() + 10
    while (left := _no_process_mentions(str(proj))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"orphans: {left}"
    if backend == "docker":
        ps = subprocess.run(["docker", "ps", "-a", "--format", "{{.ID}} {{.Mounts}}", "--no-trunc"],
                            capture_output=True, text=True).stdout
        assert str(proj) not in ps


@pytest.mark.slow
@pytest.mark.bwrap
def test_killed_runner_leaves_an_interrupted_run_and_no_process(tmp_path, bwrap_available):
    proj = make_project(tmp_path / "p", train_py=READY)
    proc = subprocess.Popen([str(RUN_SH), "-m", "kill -9", "--backend", "bwrap", "--budget", "300"],
                            cwd=proj, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(proj / "runs" / "0001" / "train.log", "ready")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    m = metrics(proj)
    assert m["status"] == "interrupted" and m["finished_at"] is None
    deadline = time.monotonic() + 10
    while (left := _no_process_mentions(str(proj))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"bwrap --die-with-parent should take the run down: {left}"


# ------------------------------------------------------------------ inline mode

INLINE = """run:
  mode: inline
  command: [python, legacy.py]
  metric_regex: 'score: ([0-9.]+)'"""


@pytest.mark.slow
@pytest.mark.bwrap
def test_inline_mode_takes_the_last_printed_metric_and_says_so(tmp_path, bwrap_available):
    proj = make_project(tmp_path / "p", git=False, extra=INLINE)
    (proj / "legacy.py").write_text('print("score: 2.5")\nprint("step 2")\nprint("score: 1.25")\n')
    p = run_sh(proj, "-m", "legacy", "--backend", "bwrap", "--budget", "5")
    assert p.returncode == 0, p.stdout + p.stderr
    m = metrics(proj)
    assert m["status"] == "ok" and m["metric_value"] == 1.25 and m["mode"] == "inline"
    assert "self" in m["extra"]["warning"] or "printed by the training code" in m["extra"]["warning"]
    assert "not measured by the trusted evaluator" in m["reason"]
    assert m["eval_seconds"] is None and "---- EVAL" not in log_of(proj)
    assert "no diff" in (proj / "runs" / "0001" / "diff.patch").read_text(), "no git repo: noted, not a crash"
    assert "val_bpb: 1.250000" in p.stdout and "note: inline mode" in p.stdout


def test_inline_metric_is_the_last_match(tmp_path):
    log = tmp_path / "log"
    log.write_text("loss 3\nval: 2.0\nval: 1.5 (ema)\nval: nan-ish\n")
    assert inline_metric(log, r"val: ([0-9.]+)") == 1.5
    assert inline_metric(log, r"absent ([0-9.]+)") is None


# ------------------------------------------------------------------ seeds, run folders, parsing

def test_seed_is_base_plus_earlier_runs_of_the_same_code(tmp_path):
    program = parse_program(program_text().replace("deadline_hours:", "seed: 100\ndeadline_hours:"))
    for i, sha in enumerate(["a", "b", "a"], 1):
        d = tmp_path / "runs" / f"{i:04d}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"train_py_sha256": sha}))
    (tmp_path / "runs" / "0004").mkdir()
    (tmp_path / "runs" / "0004" / "metrics.json").write_text("{corrupt")
    assert derive_seed(tmp_path, program, "a", None) == 102
    assert derive_seed(tmp_path, program, "b", None) == 101
    assert derive_seed(tmp_path, program, "c", None) == 100
    assert derive_seed(tmp_path, program, "a", 7) == 7


def test_run_folders_are_unique_under_concurrency(tmp_path):
    (tmp_path / "runs" / "0007").mkdir(parents=True)
    got: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        d = allocate_run_dir(tmp_path)
        with lock:
            got.append(d.name)

    threads = [threading.Thread(target=take) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"{n:04d}" for n in range(8, 24)]


def test_eval_status_the_scorers_verdict_wins_unless_the_server_vanished():
    from autoresearch.program import load_program
    from autoresearch.sandbox import SandboxResult
    program = load_program(ROOT)

    def res(code, timed_out=False, oom=False) -> SandboxResult:
        return SandboxResult("none", code, timed_out, oom, 1.0, None)

    assert eval_status(res(0), {"status": "ok", "value": 1.5}, program) == ("ok", None)
    assert eval_status(res(None, timed_out=True), {"status": "invalid", "reason": "peeks"}, program) == \
        ("invalid", "peeks"), "a verdict stands even if the server then lingered"
    assert eval_status(res(0), {"status": "ok", "value": float("nan")}, program)[0] == "invalid"
    gone = {"status": "crash", "hangup": True, "reason": "the model server stopped answering"}
    assert eval_status(res(None, timed_out=True), gone, program)[0] == "timeout"
    assert eval_status(res(137, oom=True), gone, program)[0] == "oom"
    status, reason = eval_status(res(3), gone, program)
    assert status == "crash" and "exited with code 3" in reason and "eval.log" in reason
    assert eval_status(res(0), None, program)[0] == "crash", "no result at all is never ok"


# ------------------------------------------------------------------ harness errors: exit 2 (nothing ran) or 3

def test_missing_message_is_a_usage_error(tmp_path):
    proj = make_project(tmp_path / "p", git=False)
    p = run_sh(proj, "--budget", "3")
    assert p.returncode == 2 and "-m" in p.stderr
    assert not (proj / "runs").exists()


def test_broken_program_md_names_the_line(tmp_path):
    proj = make_project(tmp_path / "p", git=False)
    text = (proj / "program.md").read_text().replace("train_seconds: 3", "train_seconds: -3")
    (proj / "program.md").write_text(text)
    p = run_sh(proj, "-m", "x")
    assert p.returncode == 2
    assert "program.md: line" in p.stderr and "train_seconds" in p.stderr
    assert not (proj / "runs").exists()


def test_unreachable_docker_is_a_clear_error(tmp_path):
    proj = make_project(tmp_path / "p", git=False)
    p = run_sh(proj, "-m", "x", "--backend", "docker", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert p.returncode == 2
    assert "docker" in p.stderr and "bwrap" in p.stderr, "the message names the fix"
    assert not (proj / "runs").exists()


def test_a_full_disk_is_a_harness_error_not_a_crash(tmp_path):
    """Exit 3: the harness could not write the run (here: runs/ on a 12 KiB tmpfs), so a script
    over ./run.sh does not mistake it for a crash of train.py."""
    proj = make_project(tmp_path / "p", git=False)
    runs = proj / "runs"
    runs.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(runs)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        p = run_sh(proj, "-m", "x", "--backend", "none")
        status = json.loads((runs / "0001" / "metrics.json").read_text())["status"]
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=True)
    assert p.returncode == RunExit.DISK_FULL == 74, p.stdout + p.stderr
    assert "the disk is full" in p.stderr and "Traceback" not in p.stderr
    assert status == "interrupted"                                  # never recorded as a crash


def test_missing_data_says_how_to_prepare_it(tmp_path):
    proj = make_project(tmp_path / "p", git=False)
    p = run_sh(proj, "-m", "x", "--backend", "none", AUTORESEARCH_DATA=str(tmp_path / "nothing"))
    assert p.returncode == 2 and "prepare.py" in p.stderr
    assert not (proj / "runs").exists()



def test_crash_reason_is_the_exception_even_when_stdout_lands_after_the_traceback():
    """stdout and stderr are separate pipes: docker's log can carry a line printed before the
    crash after the traceback (seen in CI). The reason must still be the exception."""
    from autoresearch.run.outcome import _exception_line
    log = ["step 1 loss 5.5", "Traceback (most recent call last):",
           '  File "train.py", line 4, in helper', '    raise ValueError("boom-marker 42")',
           "ValueError: boom-marker 42", "seed is 11"]
    assert _exception_line(log) == "ValueError: boom-marker 42"
    chained = log[:5] + ["", "During handling of the above exception, another exception occurred:", "",
                         "Traceback (most recent call last):", '  File "train.py", line 9', "KeyError: 'lr'"]
    assert _exception_line(chained) == "KeyError: 'lr'"
    assert _exception_line(["step 1", "Killed"]) == "Killed"


def _multi_file_project(tmp_path: Path, legacy: str) -> Path:
    """An inline project whose editable set is a script, model.py and a glob, committed."""
    extra = INLINE.replace("mode: inline", "mode: inline\n  train_script: legacy.py")
    proj = make_project(tmp_path / "p", git=False, extra=extra)
    text = (proj / "program.md").read_text().replace(
        "editable: [train.py, scratchpad.md]", "editable: [legacy.py, model.py, 'config/*.py', scratchpad.md]")
    (proj / "program.md").write_text(text)
    (proj / "config").mkdir()
    (proj / "config" / "small.py").write_text("LR = 1\n")
    (proj / "model.py").write_text("WIDTH = 64\n")
    (proj / "legacy.py").write_text(legacy)
    env = git_env()
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "base"]):
        subprocess.run(cmd, cwd=proj, check=True, env=env)
    return proj


SCORE = "import model\nfrom config import small\nprint('score:', model.WIDTH * small.LR)\n"


@pytest.mark.slow
@pytest.mark.bwrap
def test_diff_patch_and_snapshot_cover_every_file_of_the_editable_set(tmp_path, bwrap_available):
    """Issue 16: diff.patch was empty for edits outside the training script. Now it holds every
    file of the set (a literal, a glob's files), as the run started, against the branch head."""
    from autoresearch.program import load_program
    from autoresearch.record.identity import program_code, snapshot
    proj = _multi_file_project(tmp_path, SCORE)
    (proj / "model.py").write_text("WIDTH = 96\n")
    (proj / "config" / "small.py").write_text("LR = 2\n")
    p = run_sh(proj, "-m", "wider, faster", "--backend", "bwrap", "--budget", "5")
    assert p.returncode == 0, p.stdout + p.stderr
    m = metrics(proj)
    assert m["status"] == "ok" and m["metric_value"] == 192, (m, log_of(proj))
    diff = (proj / "runs" / "0001" / "diff.patch").read_text()
    assert "-WIDTH = 64" in diff and "+WIDTH = 96" in diff and "-LR = 1" in diff and "+LR = 2" in diff, diff
    assert "legacy.py" not in diff, "unchanged files are not in the patch"
    subprocess.run(["git", "apply", "--check", "-R", "runs/0001/diff.patch"], cwd=proj, check=True, env=git_env())
    code = program_code(load_program(proj), proj)
    assert code == ["config/small.py", "legacy.py", "model.py"]
    assert m["snapshot_sha256"] == snapshot(proj, code)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_edit_during_the_run_does_not_reach_the_measured_code(tmp_path, request, backend):
    """The run is identified by the snapshot taken when it starts, so it runs that snapshot: every
    file of the set is the run's copy inside the sandbox, whatever the work tree holds meanwhile."""
    require_backend(request, backend)
    proj = _multi_file_project(tmp_path, "import time\nprint('started', flush=True)\ntime.sleep(3)\n" + SCORE)
    proc = subprocess.Popen([str(RUN_SH), "-m", "as started", "--backend", backend, "--budget", "20"], cwd=proj,
                            env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(proj / "runs" / "0001" / "train.log", "started")
        (proj / "model.py").write_text("WIDTH = 1000\n")
        (proj / "config" / "small.py").write_text("LR = 1000\n")
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    m = metrics(proj)
    assert m["status"] == "ok" and m["metric_value"] == 64, (m, out, log_of(proj))
