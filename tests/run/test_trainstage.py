"""trainstage.run_cold: a cold TRAIN's sandbox starts before the rest of the run is built, and no
agent code runs before its work copy is complete and the model servers have warmed up; a set-up
that fails calls TRAIN off before any agent code (the real startup.py, not a stand-in)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.run import startup
from autoresearch.run.trainstage import GATE_SHARE, run_cold
from autoresearch.sandbox import SandboxSpec


class _Sandbox:
    """A backend whose "sandbox" is the gated start-up's wait: it ends once go.json is there, and
    notes what the work copy held at that moment."""

    name = "bwrap"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.spec: SandboxSpec | None = None
        self.started_at = self.go_at = 0.0
        self.go: dict = {}
        self.seen: list[str] = []

    def run(self, spec):
        self.spec, self.started_at = spec, time.monotonic()
        go = Path(spec.argv[spec.argv.index("gate") + 1]) / "go.json"
        while not go.exists():
            time.sleep(0.005)
        self.go_at = time.monotonic()
        self.go = json.loads(go.read_text())
        self.seen = sorted(p.name for p in self.work.iterdir())
        return "result"


class _Servers:
    def __init__(self, ready_in: float) -> None:
        self.ready_at = time.monotonic() + ready_in

    def warmed(self) -> bool:
        return time.monotonic() >= self.ready_at


def _spec(work: Path) -> SandboxSpec:
    return SandboxSpec(argv=["python", "-I", "startup.py", "run", "train.py"], mounts=[], cwd=str(work),
                       env={"AUTORESEARCH_SEED": "7", "OTHER": "x"}, timeout_s=10, memory_bytes=1, startup_s=2.0)


@pytest.fixture
def lay(tmp_path):
    class Lay:
        scratch = tmp_path / "scratch"
    Lay.scratch.mkdir()
    (tmp_path / "work").mkdir()
    return Lay


def _fill(work: Path, took: float = 0.3, done: list | None = None):
    def fill() -> None:
        time.sleep(took)                       # a work copy takes a while: the sandbox is already up
        (work / "train.py").write_text("print('agent')\n")
        if done is not None:
            done.append(time.monotonic())
    return fill


def test_the_sandbox_starts_first_and_gets_go_after_the_work_copy_and_the_servers_warm_up(lay, tmp_path):
    work = tmp_path / "work"
    sb, started, filled = _Sandbox(work), [], []
    servers = _Servers(0.0)

    def start():
        servers.ready_at = time.monotonic() + 0.4       # its warm-up starts when it is started
        return servers

    assert run_cold(sb, _spec(work), lay, _fill(work, done=filled), start, started) == "result"
    assert sb.started_at < filled[0], "TRAIN's sandbox waited for the set-up"
    assert sb.seen == ["train.py"], "GO before the work copy was complete"
    assert started == [servers] and sb.go_at >= servers.ready_at
    assert sb.go == {"env": {"AUTORESEARCH_SEED": "7"}}, "go.json carries the run's seed and nothing else"
    assert sb.spec.argv == ["python", "-I", "startup.py", "gate", str(lay.scratch / "go"), "run", "train.py"]
    assert sb.spec.mounts[-1].source == lay.scratch / "go" and not sb.spec.mounts[-1].writable
    assert sb.spec.startup_s > 2.0, "the set-up has an allowance of its own beside the grace"


def test_go_waits_for_servers_that_never_warm_up_at_most_its_share_of_the_grace(lay, tmp_path):
    work = tmp_path / "work"
    sb = _Sandbox(work)
    t0 = time.monotonic()
    run_cold(sb, _spec(work), lay, _fill(work, 0.0), lambda: _Servers(60), [])
    assert GATE_SHARE * 2.0 <= sb.go_at - t0 < 2.0


@pytest.mark.parametrize("where", ["fill", "start"])
def test_a_set_up_that_fails_calls_train_off_and_is_the_runs_error(lay, tmp_path, where):
    work = tmp_path / "work"
    sb, started = _Sandbox(work), []

    def boom():
        raise OSError(f"{where} failed")

    fill = boom if where == "fill" else _fill(work, 0.0)
    start = boom if where == "start" else (lambda: _Servers(0))
    with pytest.raises(OSError, match=f"{where} failed"):
        run_cold(sb, _spec(work), lay, fill, start, started)
    assert sb.go == {startup.OFF: True} and started == []


def _startup(go: Path, script: Path) -> subprocess.Popen:
    argv = [sys.executable, "-I", startup.__file__, "gate", str(go), "run", str(script)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _warmed_up(pid: int, timeout: float = 120.0) -> None:
    """Until the process's CPU time stops growing (its warm-up is over; it polls for go.json)."""
    def ticks() -> int:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    end, last = time.monotonic() + timeout, -100
    while time.monotonic() < end:
        time.sleep(0.5)
        now = ticks()
        if now - last <= 5:                   # under 10% of a core: waiting, not importing
            return
        last = now
    raise AssertionError("the start-up never settled")


def test_the_real_start_up_runs_no_agent_code_when_called_off_and_the_script_after_go(tmp_path):
    """startup.py itself: called off, it ends with CALLED_OFF and the script never ran; given GO,
    the script runs with the run's seed from go.json."""
    from autoresearch.run.warmspec import call_off, send_go
    script = tmp_path / "train.py"
    ran = tmp_path / "ran"
    script.write_text(f"import os\nopen({str(ran)!r}, 'w').write(os.environ.get('AUTORESEARCH_SEED', ''))\n")
    for off in (True, False):
        go = tmp_path / f"go-{off}"
        go.mkdir()
        p = _startup(go, script)
        _warmed_up(p.pid)
        assert p.poll() is None and not ran.exists(), "agent code ran before GO"
        if off:
            call_off(go)
        else:
            send_go(go, _spec(tmp_path))
        out, err = p.communicate(timeout=60)
        if off:
            assert p.returncode == startup.CALLED_OFF and not ran.exists(), err
            assert "called this run off" in err and startup.MARKER not in err
        else:
            assert p.returncode == 0 and ran.read_text() == "7", err
