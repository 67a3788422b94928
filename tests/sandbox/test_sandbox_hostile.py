"""A hostile train.py (tests/fixtures/hostile/train.py) through the real ./run.sh on each
backend: its flood is capped in the log, its 5 GB write is stopped at sandbox.disk_gb as a
crash "disk limit", what it planted in out/ is removed and recorded, and it cannot reach a
root-owned socket in the project, make a user namespace, mount or ptrace. The host stays
within its bounds; no container and no cgroup folder is left behind."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from experiment_support import BACKENDS, ROOT, make_project, program_text, require_backend, run_sh

HOSTILE = (ROOT / "tests" / "fixtures" / "hostile" / "train.py").read_text()
DISK_GB = 0.05                                    # 50 MB: the test stays cheap; the fixture tries 5 GB
LOG_CAP = 20 << 20


def du(path: Path) -> int:
    total = 0
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            total += os.lstat(os.path.join(d, n)).st_blocks * 512
    return total


def cgroup_dirs() -> set[str]:
    """Per-run cgroup folders of ours, on v1 and v2 (docker's parents and the bwrap runner's)."""
    found = set()
    for base in Path("/sys/fs/cgroup").glob("*"):
        for pat in ("autoresearch/run-*", "**/autoresearch-*-*"):
            found |= {str(p) for p in base.glob(pat) if p.is_dir()}
    return found


def _owner_alive(cgroup: str) -> bool:
    """Is the runner whose pid names this cgroup folder still alive? Ours has exited by now, so a
    folder of a live runner belongs to another run on this machine (a parallel test session)."""
    m = re.search(r"(?:run-|autoresearch-)(\d+)-[0-9a-f]+$", cgroup)
    return m is not None and Path(f"/proc/{m.group(1)}").exists()


@pytest.fixture(scope="module", params=BACKENDS)
def hostile(request, tmp_path_factory, data_dir):
    backend = request.param
    require_backend(request, backend)
    proj = tmp_path_factory.mktemp(f"hostile-{backend}") / "p"
    make_project(proj, train_py=HOSTILE)
    text = program_text(train_seconds=60, grace_seconds=30)
    text, n = re.subn(r"^(\s*disk_gb:)\s*[0-9.]+", rf"\g<1> {DISK_GB}", text, count=1, flags=re.M)
    assert n == 1
    (proj / "program.md").write_text(text)
    sock_dir = proj / "root-only"                 # the runner's own control socket, as root would have it
    sock_dir.mkdir(mode=0o755)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_dir / "ctl.sock"))
    os.chmod(sock_dir / "ctl.sock", 0o600)
    srv.listen(4)
    srv.setblocking(False)
    before = cgroup_dirs()
    try:
        p = run_sh(proj, "-m", "hostile", "--backend", backend, timeout=240)
        try:
            srv.accept()
            accepted = True
        except BlockingIOError:
            accepted = False
    finally:
        srv.close()
    run = proj / "runs" / "0001"
    return {"backend": backend, "proc": p, "run": run, "accepted": accepted,
            "metrics": json.loads((run / "metrics.json").read_text()),
            "log": (run / "train.log").read_bytes(), "cgroups_before": before, "proj": proj}


def test_the_5gb_write_is_stopped_at_the_disk_limit(hostile):
    m = hostile["metrics"]
    assert hostile["proc"].returncode == 1, hostile["proc"].stderr     # a crash of train.py (exits.RunExit.CRASH)
    assert m["status"] == "crash" and m["reason"].startswith("disk limit"), m
    used = du(hostile["run"] / "out")
    assert used < 10 * DISK_GB * 2**30, f"out/ holds {used >> 20} MB against a {DISK_GB} GB limit"
    assert b"the disk limit did not hold" not in hostile["log"]


def test_the_flood_is_cut_to_head_and_tail(hostile):
    log = hostile["log"]
    assert len(log) <= LOG_CAP + (1 << 20), len(log)
    assert b"bytes of output cut here" in log
    assert b"PROBE root_socket" in log                # the tail, written after the flood, is kept


def test_planted_links_fifos_and_sockets_are_removed_and_recorded(hostile):
    out = hostile["run"] / "out"
    for d, dirs, files in os.walk(out):
        for n in dirs + files:
            st = os.lstat(os.path.join(d, n))
            assert os.path.isdir(os.path.join(d, n)) or Path(d, n).is_file() and not Path(d, n).is_symlink(), n
            assert not st.st_mode & 0o6000, n
    removed = hostile["metrics"]["extra"]["out_removed"]
    for name in ("link-to-passwd", "link-to-root", "fifo", "planted.sock", "sub/loop"):
        assert name in removed, removed


def test_no_escape(hostile):
    log = hostile["log"].decode(errors="replace")
    assert not hostile["accepted"], "the sandbox connected to a root-owned socket"
    probes = dict(re.findall(r"^PROBE (\S+) (\S+)$", log, re.M))
    # Docker keeps its default seccomp profile, which allows ptrace inside the container (kernel
    # >= 4.8): only its own same-uid processes are there, nothing trusted. bwrap's filter denies it.
    names = ("root_socket", "userns", "mount", "keyctl") + (("ptrace",) if hostile["backend"] == "bwrap" else ())
    for name in names:
        assert probes.get(name) == "blocked", (name, probes)
    assert probes["uid"] != "0"


def test_nothing_is_left_behind(hostile):
    from autoresearch.record.layout import state_folder
    assert not (hostile["run"] / ".sandbox").exists()
    assert not (state_folder(hostile["proj"]) / "runs" / hostile["run"].name).exists()
    assert not {d for d in cgroup_dirs() - hostile["cgroups_before"] if not _owner_alive(d)}
    if hostile["backend"] == "docker":
        from autoresearch.record import state_id
        ps = subprocess.run(["docker", "ps", "-aq", "--filter",
                             f"label=org.autoresearch.sandbox.project={state_id(hostile['proj'])}"],
                            capture_output=True, text=True, check=True)
        assert ps.stdout.strip() == ""
