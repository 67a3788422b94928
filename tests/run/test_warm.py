"""The next run's sandboxes warmed while the agent thinks (run/warm.py, AUTORESEARCH_WARM=1): a
warm run is measured from GO, runs exactly its own snapshot with its own seed, its agent code sees
exactly what a cold run's sees (the differential test below: the cold run is the reference), no
agent code runs before GO, a changed program.md starts the run cold, and no holder outlives its
run, an interrupt or its idle limit."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from experiment_support import (BACKENDS, HONEST, RUN_SH, log_of, make_project, metrics, require_backend,
                                run_env, run_sh)

from autoresearch.ledger import LedgerRow, append_rows, begin
from autoresearch.run.startup import MARKER
from autoresearch.run.warm import discard_all, warm_root

PROBE = 'import os\nTAG = "v1"\nprint("probe", TAG, "seed", os.environ["AUTORESEARCH_SEED"], flush=True)\n'
WARM = {"AUTORESEARCH_WARM": "1"}


@pytest.fixture
def proj(tmp_path):
    p = make_project(tmp_path / "p", train_py=PROBE + HONEST)
    yield p
    discard_all(p.resolve())


def _holders() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"autoresearch.run.warmhold" in cmd:
                out.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return out


def _holders_of(proj: Path) -> list[str]:
    return [c for c in _holders() if str(proj.resolve()) in c]


def _wait(cond, timeout: float = 120, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _staged(proj: Path) -> list[Path]:
    root = warm_root(proj.resolve())
    return sorted(root.iterdir()) if root.is_dir() else []


def _warm_ready(proj: Path) -> bool:
    """The holder's TRAIN has warmed up (and waits for GO)."""
    return any("done before this run was asked for" in (d / "train.log").read_text(errors="replace")
               for d in _staged(proj) if (d / "train.log").is_file())


def _row(rid: str) -> LedgerRow:
    return LedgerRow(commit="abc1234", value=1.0, status="keep", experiment=int(rid), run_id=rid, runs=[rid],
                     run_status="ok", phase="tune", branch="autoresearch/x", decided_at=datetime.now(timezone.utc))


def _set_tag(proj: Path, tag: str) -> None:
    t = proj / "train.py"
    t.write_text(t.read_text().replace('TAG = "v1"', f'TAG = "{tag}"'))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_warm_run_is_measured_from_go_and_runs_its_own_snapshot_and_seed(proj, request, backend):
    require_backend(request, backend)
    r = run_sh(proj, "-m", "cold", "--backend", backend, **WARM)
    assert r.returncode == 0, r.stderr[-2000:]
    cold = metrics(proj, "0001")
    assert cold["status"] == "ok" and "warm_waited_seconds" not in cold["extra"]
    _wait(lambda: _warm_ready(proj), what="the holder's warm-up")
    holder = _staged(proj)[0]
    assert not any((holder / "out").iterdir()), "nothing ran in the holder before GO"
    assert "probe" not in (holder / "train.log").read_text() and MARKER not in (holder / "train.log").read_text()
    assert (proj / "results.tsv").read_text().startswith("commit\t"), "begun before the holder, so that"
    append_rows(proj, [_row("0001")], "val_bpb")          # the Stop hook's first row does not stop its use
    _set_tag(proj, "v2")                                  # the agent's edit, after the holder started
    r = run_sh(proj, "-m", "warm", "--backend", backend, **WARM)
    assert r.returncode == 0, r.stderr[-2000:]
    rid = holder.name
    m = metrics(proj, rid)
    log = log_of(proj, rid)
    assert m["status"] == "ok", (m["reason"], log[-2000:])
    assert "warm_waited_seconds" in m["extra"] and m["extra"]["startup_seconds"] < 1.0, m["extra"]
    assert f"probe v2 seed {m['seed']}\n" in log, log[:3000]
    assert log.index(MARKER) < log.index("probe v2"), "agent code runs only after the marker"
    assert "v1" not in log.split(MARKER, 1)[1].split("probe", 1)[0]
    assert m["train_seconds"] < m["budget_seconds"] + m["extra"]["save_margin_seconds"] + 5
    assert (proj / "runs" / rid / "out" / "model.pt").is_file()
    assert m["metric_value"] is not None and m["extra"]["eval_servers"] == 2
    _wait(lambda: len(_holders_of(proj)) == 1, 30, "the next run's holder")
    discard_all(proj.resolve())
    assert not _holders_of(proj) and not _staged(proj)


SPY = '''import os, sys
def listing(top, depth=3):
    out = []
    for d, dirs, files in os.walk(top):
        if d[len(top):].count("/") >= depth:
            dirs[:] = []
        out += [os.path.join(d, n) for n in sorted(dirs + files)]
    return out
mounts = sorted(l.split()[4] for l in open("/proc/self/mountinfo"))
def own(p):  # /tmp's own content, not a folder the engine made on the way to a mount point (or under one)
    return not any(m == p or m.startswith(p + "/") or p.startswith(m + "/") for m in mounts if m != "/tmp")
seen = {"env": {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_SEED", "HOSTNAME")},
        "mounts": mounts,
        "cwd": os.getcwd(), "project": listing(os.environ["AUTORESEARCH_OUT"].rsplit("/runs/", 1)[0]),
        "work": listing(os.getcwd()), "tmp": [p for p in listing("/tmp") if own(p)], "argv": sys.argv,
        "path": sys.path,
        "writable": [p for p in listing(os.getcwd()) + listing(os.environ["AUTORESEARCH_OUT"]) if os.access(p, os.W_OK)]}
print("SPY", __import__("json").dumps(seen), flush=True)
'''


def _seen(proj: Path, rid: str) -> dict:
    line = next(ln for ln in log_of(proj, rid).splitlines() if ln.startswith("SPY "))
    text = line[4:]
    text = re.sub(r"runs/\d{4,}", "runs/NNNN", text)
    text = re.sub(r"/(runs|logs|warm)/\d{4,}", r"/\1/NNNN", text)
    return json.loads(text)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_code_in_a_warm_train_sees_exactly_what_a_cold_one_sees(tmp_path, request, backend):
    """Differential: the cold run is the reference. The one difference allowed is the read-only go/
    folder the start-up waited on (it holds the run's seed, which the environment has anyway).
    /tmp is compared by its own content: under docker, the folders the engine makes inside the
    tmpfs on the way to a bind mount below /tmp (a venv under /tmp/...) were listed differently
    once in a whole-suite run, and they hold nothing a run wrote."""
    require_backend(request, backend)
    proj = make_project(tmp_path / "p", train_py=SPY + HONEST)
    begin(proj, "val_bpb")                                # the project as the warm run will find it (warm.start_next)
    try:
        assert run_sh(proj, "-m", "cold", "--backend", backend, **WARM).returncode == 0
        _wait(lambda: _warm_ready(proj), what="the holder's warm-up")
        go = str(_staged(proj)[0] / "go")
        assert run_sh(proj, "-m", "warm", "--backend", backend, **WARM).returncode == 0
        cold, warm = _seen(proj, "0001"), _seen(proj, "0002")
        assert metrics(proj, "0002")["extra"].get("warm_waited_seconds") is not None
        go_norm = re.sub(r"/warm/\d{4,}", "/warm/NNNN", go)
        assert go_norm in warm["mounts"] and go_norm not in cold["mounts"]
        warm["mounts"].remove(go_norm)
        cold_go = [m for m in cold["mounts"] if m.endswith("/runs/NNNN/go")]   # a cold TRAIN is gated too
        assert len(cold_go) == 1 and not [m for m in warm["mounts"] if m.endswith("/runs/NNNN/go")], cold_go
        cold["mounts"].remove(cold_go[0])
        assert "for the model servers' warm-up]" in log_of(proj, "0001").split(MARKER)[0]
        assert warm == cold
    finally:
        discard_all(proj.resolve())


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_changed_program_md_starts_the_run_cold(proj, bwrap_available):
    assert run_sh(proj, "-m", "cold", "--backend", "bwrap", **WARM).returncode == 0
    _wait(lambda: _warm_ready(proj), what="the holder's warm-up")
    held = _staged(proj)[0]
    prog = proj / "program.md"
    prog.write_text(prog.read_text().replace("train_seconds: 3", "train_seconds: 4"))
    r = run_sh(proj, "-m", "after program.md changed", "--backend", "bwrap", **WARM)
    assert r.returncode == 0, r.stderr[-2000:]
    m = metrics(proj, held.name)
    assert m["status"] == "ok" and m["budget_seconds"] == 4
    assert m["extra"]["warm"].startswith("not used"), m["extra"]
    assert "warm_waited_seconds" not in m["extra"] and m["extra"]["startup_seconds"] > 0
    assert not held.exists()


@pytest.mark.slow
@pytest.mark.bwrap
def test_an_interrupted_warm_run_is_recorded_and_leaves_no_holder(proj, bwrap_available):
    (proj / "train.py").write_text(PROBE)                       # ends at once (no checkpoint: a crash)
    run_sh(proj, "-m", "cold", "--backend", "bwrap", "--budget", "60", **WARM)
    assert metrics(proj, "0001")["status"] == "crash"
    _wait(lambda: _warm_ready(proj), what="the holder's warm-up")
    (proj / "train.py").write_text(PROBE + 'import time\ntime.sleep(600)\n')
    rid = _staged(proj)[0].name
    p = subprocess.Popen([str(RUN_SH), "-m", "interrupt me", "--backend", "bwrap", "--budget", "60"], cwd=proj,
                         env=run_env(**WARM), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (proj / "runs" / rid / "train.log").is_file()
              and "probe" in (proj / "runs" / rid / "train.log").read_text(), 60, "agent code")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert "done before this run was asked for" in log_of(proj, rid), "the warm sandbox ran it"
    m = metrics(proj, rid)
    assert m["status"] == "interrupted" and "SIGTERM" in m["reason"]
    _wait(lambda: not _holders_of(proj), 30, "the holder to go")
    assert not _staged(proj)


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_holder_nobody_takes_ends_by_itself_and_leaves_nothing(proj, bwrap_available):
    env = {**WARM, "AUTORESEARCH_WARM_IDLE_S": "8"}
    assert run_sh(proj, "-m", "cold", "--backend", "bwrap", **env).returncode == 0
    _wait(lambda: bool(_holders_of(proj)), 30, "the holder")
    rid = _staged(proj)[0].name
    _wait(lambda: not _holders_of(proj), 90, "the idle holder to end")
    assert not _staged(proj)
    from autoresearch.record.layout import state_folder
    assert not (state_folder(proj.resolve()) / "runs" / rid).exists(), "its scratch is removed too"
    assert not (proj / "runs" / rid).exists()
    r = run_sh(proj, "-m", "after", "--backend", "bwrap", **env)   # its reserved id is skipped, not reused
    assert r.returncode == 0 and metrics(proj, f"{int(rid) + 1:04d}")["status"] == "ok"


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_holder_whose_project_is_deleted_ends(tmp_path, bwrap_available):
    import shutil
    proj = make_project(tmp_path / "p", train_py=PROBE + HONEST)
    assert run_sh(proj, "-m", "cold", "--backend", "bwrap", **WARM).returncode == 0
    _wait(lambda: bool(_holders_of(proj)), 30, "the holder")
    staged = _staged(proj)
    shutil.rmtree(proj)
    _wait(lambda: not _holders_of(proj), 30, "the orphaned holder to end")
    left = {str(d): sorted(os.listdir(d)) for d in staged if d.exists()}
    assert not left, (left, [(d / "holder.log").read_text()[-6000:] for d in staged if (d / "holder.log").exists()])


@pytest.mark.slow
@pytest.mark.bwrap
def test_without_the_opt_in_no_holder_is_started_and_a_stale_one_is_stopped(proj, bwrap_available):
    assert run_sh(proj, "-m", "plain", "--backend", "bwrap").returncode == 0
    assert not _holders_of(proj) and not _staged(proj)
    assert run_sh(proj, "-m", "warm", "--backend", "bwrap", **WARM).returncode == 0
    _wait(lambda: bool(_holders_of(proj)), 30, "the holder")
    assert run_sh(proj, "-m", "plain again", "--backend", "bwrap").returncode == 0
    assert not _holders_of(proj) and not _staged(proj), "a run without the opt-in stops a holder"
    assert os.environ.get("AUTORESEARCH_WARM", "") != "1", "the suite runs cold unless a test opts in"
