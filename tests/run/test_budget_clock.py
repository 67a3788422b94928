"""The budget is the agent's compute (issue 24, ARCHITECTURE rule 12): a trusted start-up
(run/startup.py: python -I, torch imported) runs first and is not counted; the sandbox starts the
budget's clock at its marker and kills agent code at budget + the save margin; agent seconds are
recorded. An honest run beside a CPU hog is never killed for its start-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from experiment_support import BACKENDS, log_of, make_project, metrics, require_backend, run_sh, split_log

from autoresearch.program.sections import Budget, save_margin
from autoresearch.run.specs import STARTUP, STARTUP_MARKER, with_startup
from autoresearch.sandbox import NoneBackend, SandboxSpec
from autoresearch.sandbox.bounds import _StartClock


def test_the_clock_starts_at_the_first_marker_even_split_across_chunks():
    clock = _StartClock(b"[START]")
    for chunk in (b"warming up\n[ST", b"AR", b"T] go\n"):
        clock.feed(chunk)
        if chunk != b"T] go\n":
            assert clock.at is None
    first = clock.at
    assert first is not None
    time.sleep(0.01)
    clock.feed(b"[START] printed again by agent code")
    assert clock.at == first, "a later copy cannot move the clock"
    assert clock.deadline(100.0, 5, 60) == first + 5
    assert _StartClock(b"[START]").deadline(100.0, 5, 60) == 160.0, "before the marker: the start-up's allowance"
    assert _StartClock(None).deadline(100.0, 5, 60) == 105.0, "no marker expected: the old clock"


def test_the_script_runs_after_the_startup_the_launcher_is_execd_after_it():
    py = sys.executable
    assert with_startup(py, [py, "/w/train.py", "--x"]) == [py, "-I", str(STARTUP), "run", "/w/train.py", "--x"]
    assert with_startup(py, ["torchrun", "--nproc-per-node", "2", "/w/train.py"])[3:5] == ["exec", "torchrun"]


def _spec(tmp_path, code: str, timeout_s: float, startup_s: float) -> SandboxSpec:
    return SandboxSpec(argv=[sys.executable, "-c", code], mounts=[], env={"PATH": os.environ["PATH"]},
                       cwd=str(tmp_path), timeout_s=timeout_s, memory_bytes=2 << 30, log_path=tmp_path / "log",
                       start_marker=STARTUP_MARKER, startup_s=startup_s)


def test_a_slow_startup_is_not_counted_and_agent_code_is_killed_on_its_own_clock(tmp_path):
    marker = STARTUP_MARKER.decode()
    code = f"import sys, time\ntime.sleep(3)\nprint({marker!r}, flush=True)\ntime.sleep(30)\n"
    r = NoneBackend().run(_spec(tmp_path, code, timeout_s=1.5, startup_s=20))
    assert r.timed_out and not r.startup_timed_out
    assert 2.9 <= r.startup_seconds < 6 and 1.4 <= r.agent_seconds < 2.5, (r.startup_seconds, r.agent_seconds)


def test_a_startup_that_never_ends_is_said_as_such(tmp_path):
    r = NoneBackend().run(_spec(tmp_path, "import time\ntime.sleep(30)\n", timeout_s=100, startup_s=1.5))
    assert r.timed_out and r.startup_timed_out and r.agent_seconds is None and r.wall_seconds < 5


SITECUSTOMIZE = 'import sys, time\nprint("EARLY agent code", flush=True)\n'


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_agent_file_runs_before_the_marker(tmp_path, request, backend):
    """A sitecustomize.py or a torch.py in the work copy would run agent code during the
    uncounted warm-up: python -I imports neither (and train.py then gets the real torch)."""
    require_backend(request, backend)
    proj = make_project(tmp_path / "p")
    (proj / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (proj / "torch.py").write_text('print("EARLY shadow torch", flush=True)\nraise ImportError("shadow")\n')
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "shadows"], cwd=proj,
                   check=True)
    run_sh(proj, "-m", "shadows", "--backend", backend, "--budget", "2")
    log = log_of(proj)
    assert STARTUP_MARKER.decode() in log
    train = split_log(log)[0]
    assert "EARLY" not in train and "checkpoint saved" in train, train[-2000:]




@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_honest_run_beside_a_cpu_hog_is_not_killed_for_its_startup(tmp_path, request, backend):
    """12 s, not the issue's 30 s: the kill margin is max(5%, 3 s) either way, and start-up under the hog
    (torch imported while 2x the cores spin) is what must stay out of the clock. The start-up gets the
    grace `init` writes (60 s), not the suite's short 20 s: under the hog a docker start-up took 8.5 s
    on a quiet 2-core machine and over 20 s on a busier CI machine; the grace bounds a hung start-up,
    and this test is about the agent's clock, not about how fast a starved container starts."""
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", eval_seconds=300, grace_seconds=(grace := Budget().grace_seconds))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        p = run_sh(proj, "-m", "honest under load", "--backend", backend, "--budget", str(BUDGET := 12), timeout=600)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    m = metrics(proj)
    assert m["status"] == "ok", (m["status"], m["reason"], m["agent_seconds"], m["extra"], log_of(proj)[-1500:])
    assert m["extra"]["startup_seconds"] < grace
    assert m["agent_seconds"] <= BUDGET + save_margin(BUDGET), m["agent_seconds"]
    assert m["extra"]["startup_seconds"] > 0 and m["train_seconds"] > m["agent_seconds"]
    assert m["fingerprint"]["clock"].startswith("agent")
