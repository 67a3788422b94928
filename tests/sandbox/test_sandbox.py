"""The sandbox against a real Docker engine and real bubblewrap: each test runs a Python
snippet inside with the project's own interpreter and checks what it could and could not do."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from autoresearch.sandbox import (NONE_WARNING, BwrapBackend, DockerBackend, Mount, NoneBackend,
                                  SandboxSpec, SandboxUnavailable, choose_backend)

ROOT = Path(__file__).resolve().parents[2]
_backends: dict[str, object] = {}


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker),
                        pytest.param("bwrap", marks=pytest.mark.bwrap)])
def backend(request):
    request.getfixturevalue(f"{request.param}_available")
    if request.param not in _backends:
        _backends[request.param] = choose_backend(request.param)
    return _backends[request.param]


def spec(backend, code: str, *, mounts=(), env=None, timeout=20.0, memory=512 << 20, **kw) -> SandboxSpec:
    rt = backend.runtime()
    return SandboxSpec(argv=[rt.python, "-c", textwrap.dedent(code)], mounts=rt.mounts + list(mounts),
                       env={**rt.env, "HOME": str(Path.home()), **(env or {})}, cwd="/tmp",
                       timeout_s=timeout, memory_bytes=memory, **{"capture_stdout": True, **kw})


def run_json(backend, code: str, **kw) -> dict:
    r = backend.run(spec(backend, code, **kw))
    assert r.exit_code == 0, r
    return json.loads(r.stdout)


def marker_procs(marker: str) -> list[int]:
    """Host pids whose command line carries marker (the sandbox's own and everything below it)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def sandbox_started(marker: str) -> bool:
    """The sandboxed Python itself runs (not only bwrap or the engine getting ready)."""
    for pid in marker_procs(marker):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                return True
        except OSError:
            pass
    return False


def our_containers(pid: int | None = None) -> list[str]:
    """Sandbox containers started by pid (default: this test process); other sessions may run their own."""
    out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.autoresearch.sandbox",
                          "--filter", f"label=org.autoresearch.sandbox.pid={pid or os.getpid()}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.fixture
def listener():
    """A TCP listener on the host's loopback, as a local service the sandbox must not reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


NET_PROBE = """
    import json, socket
    out = {}
    try:
        socket.getaddrinfo("pypi.org", 443); out["dns"] = "ok"
    except OSError as e:
        out["dns"] = repr(e)
    for name, addr in (("ip", ("1.1.1.1", 80)), ("local", ("127.0.0.1", PORT))):
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect(addr); out[name] = "ok"
        except OSError as e:
            out[name] = repr(e)
    print(json.dumps(out))
"""


def test_no_network(backend, listener):
    out = run_json(backend, NET_PROBE.replace("PORT", str(listener)))
    assert out["dns"] != "ok" and out["ip"] != "ok" and out["local"] != "ok", out


def test_host_listener_is_reachable_without_sandbox(listener):
    """The control for test_no_network: the same probe does reach the listener unsandboxed."""
    out = run_json(NoneBackend(), NET_PROBE.replace("PORT", str(listener)))
    assert out["local"] == "ok", out


@pytest.fixture
def project(tmp_path):
    """A temp copy of the project's trusted files, a data folder with train and val splits, an output folder."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for f in ("prepare.py", "train.py", "program.md"):
        shutil.copy(ROOT / f, proj / f)
    for split in ("train", "val"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / f"{split}.bin").write_bytes(os.urandom(64))
    (proj / "out").mkdir()
    secret = Path.home() / f".autoresearch-test-secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("host secret")
    yield proj, tmp_path / "data", secret
    secret.unlink()


FS_PROBE = """
    import json, os
    P, D, SECRET = PATHS
    out = {}
    def attempt(name, fn):
        try:
            fn(); out[name] = "ok"
        except OSError as e:
            out[name] = e.__class__.__name__
    attempt("edit_prepare", lambda: open(os.path.join(P, "prepare.py"), "a").write("# pwned"))
    attempt("new_in_project", lambda: open(os.path.join(P, "forged.json"), "w").write("{}"))
    attempt("home", lambda: open(os.path.join(os.environ["HOME"], "x"), "w").write("x"))
    attempt("out", lambda: open(os.path.join(P, "out", "model.pt"), "w").write("weights"))
    attempt("tmp", lambda: open("/tmp/scratch", "w").write("x"))
    out["read_train"] = open(os.path.join(D, "train", "train.bin"), "rb").read() != b""
    out["sees_val"] = os.path.exists(os.path.join(D, "val", "val.bin"))
    out["sees_secret"] = os.path.exists(SECRET)
    out["host_pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    out["uid"] = os.getuid()
    out["root_ro"] = any(l.split()[1] == "/" and "ro" in l.split()[3].split(",") for l in open("/proc/mounts"))
    out["env"] = sorted(os.environ)
    print(json.dumps(out))
"""


def test_filesystem_and_env(backend, project):
    proj, data, secret = project
    before = (proj / "prepare.py").read_bytes()
    code = FS_PROBE.replace("PATHS", repr((str(proj), str(data), str(secret))))
    mounts = [Mount(proj, str(proj)), Mount(data / "train", str(data / "train")),
              Mount(proj / "out", str(proj / "out"), writable=True)]
    os.environ["AUTORESEARCH_TEST_HOST_ONLY"] = "leak"
    try:
        out = run_json(backend, code, mounts=mounts, env={"ONLY_THIS": "1"})
    finally:
        del os.environ["AUTORESEARCH_TEST_HOST_ONLY"]
    assert out["edit_prepare"] != "ok" and out["new_in_project"] != "ok" and out["home"] != "ok", out
    assert out["out"] == "ok" and out["tmp"] == "ok", out
    assert (proj / "out" / "model.pt").read_text() == "weights"
    assert (proj / "prepare.py").read_bytes() == before and not (proj / "forged.json").exists()
    assert out["read_train"] and not out["sees_val"] and not out["sees_secret"], out
    assert out["host_pids"] < 5 and out["uid"] != 0 and out["root_ro"], out
    assert "AUTORESEARCH_TEST_HOST_ONLY" not in out["env"] and "ONLY_THIS" in out["env"], out
    assert not (Path.home() / "x").exists()


def test_runtime_runs_torch(backend):
    """runtime_mounts() is enough for the real workload: numpy and torch import and compute."""
    out = run_json(backend, "import json, torch, numpy; print(json.dumps({'s': float(torch.ones(3).sum())}))",
                   memory=4 << 30)      # under the RLIMIT_AS fallback torch needs ~3 GB of address space
    assert out == {"s": 3.0}


def test_hang_is_killed_near_timeout(backend):
    r = backend.run(spec(backend, "import time; time.sleep(60)", timeout=1.5))
    assert r.timed_out and r.exit_code is None, r
    assert 1.5 <= r.wall_seconds < 3.5, r


def test_memory_limit_is_oom(backend):
    r = backend.run(spec(backend, "x = b'x' * (400 << 20); print(len(x))", memory=150 << 20))
    assert r.oom and r.exit_code != 0 and not r.timed_out, r
    assert r.stdout == b""


def test_peak_memory_is_measured(backend):
    # held for a moment: without a cgroup the peak is sampled every 50 ms (VmHWM of the live tree)
    r = backend.run(spec(backend, "import time; x = b'x' * (120 << 20); time.sleep(0.3); print(len(x))",
                         memory=400 << 20))
    assert r.exit_code == 0 and not r.oom, r
    assert r.peak_memory_bytes is not None and 120 << 20 <= r.peak_memory_bytes < 400 << 20, r


def test_crash_exit_code_and_log(backend, tmp_path):
    log = tmp_path / "train.log"
    r = backend.run(spec(backend, "import sys; print('partial', flush=True); 1/0", log_path=log,
                         capture_stdout=False))
    assert r.exit_code == 1 and not r.oom and not r.timed_out, r
    text = log.read_text()
    assert "partial" in text and "ZeroDivisionError" in text
    r = backend.run(spec(backend, "raise SystemExit(7)"))
    assert r.exit_code == 7, r


def test_stdin_reaches_process_and_stdout_stays_out_of_log(backend, tmp_path):
    log = tmp_path / "eval.log"
    data = os.urandom(200_000)          # bigger than a pipe buffer
    code = """
        import sys, hashlib
        d = sys.stdin.buffer.read()
        print("to-the-log", file=sys.stderr)
        print(hashlib.sha256(d).hexdigest(), len(d))
    """
    r = backend.run(spec(backend, code, stdin_data=data, log_path=log))
    assert r.exit_code == 0, (r, log.read_text())
    import hashlib
    assert r.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), str(len(data))]
    text = log.read_text()
    assert "to-the-log" in text and hashlib.sha256(data).hexdigest() not in text


def needs_cgroup() -> None:
    """Some guarantees need a per-run cgroup (root, or a delegated cgroup); without one the
    backends fall back to RLIMIT_AS and say so in SandboxResult.limits. CI runs as root."""
    from autoresearch.sandbox.cgroups import _Cgroups
    probe = _Cgroups.create(1 << 30, 64)
    if probe is None:
        pytest.skip("no writable cgroup here (not root, no delegation): pids limits and killing "
                    "escaped children need one")
    probe.remove()


def test_pids_limit_stops_fork_bomb(backend):
    if backend.name == "bwrap":
        needs_cgroup()
    marker = f"forkbomb-{uuid.uuid4().hex[:8]}"
    code = f"""
        import os, time  # {marker}
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
        except OSError as e:
            print("blocked", n)
    """
    r = backend.run(spec(backend, code, timeout=15, ** {"pids": 24}))
    assert r.exit_code == 0 and r.stdout.split()[0] == b"blocked", r
    assert int(r.stdout.split()[1]) < 24
    assert r.wall_seconds < 10, r         # the sleeping children died with the sandbox
    assert marker_procs(marker) == []


def _interrupt_soon(after: float) -> threading.Timer:
    t = threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT))
    t.start()
    return t


@pytest.mark.parametrize("name", [pytest.param("docker", marks=pytest.mark.docker),
                                  pytest.param("bwrap", marks=pytest.mark.bwrap), "none"])
def test_keyboard_interrupt_leaves_nothing(name, request):
    if name != "none":
        request.getfixturevalue(f"{name}_available")
    else:
        needs_cgroup()     # `none` has no pid namespace: only a cgroup finds a child that left the session
    b = choose_backend(name)
    marker = f"hang-{uuid.uuid4().hex[:8]}"
    # the sandboxed code starts a child in its own session, the classic way to escape a process-group kill
    code = f"""
        import subprocess, sys, time  # {marker}
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {marker}"], start_new_session=True)
        time.sleep(60)
    """
    # Ctrl-C as a terminal delivers it (a background job's shell may have left SIGINT ignored)
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = _interrupt_soon(1.5)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            b.run(spec(b, code, timeout=30))
        timer.join()
    finally:
        signal.signal(signal.SIGINT, old_handler)
    assert time.monotonic() - t0 < 10
    assert marker_procs(marker) == []
    if name == "docker":
        assert our_containers() == []


def _kill_runner_mid_run(backend: str, tmp_path: Path, before_kill=None) -> tuple[subprocess.Popen, str]:
    """A runner process with a sandboxed sleeper, killed with SIGKILL (no cleanup can run)."""
    marker = f"orphan-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(f"""
        from autoresearch.sandbox import *
        b = choose_backend("{backend}"); rt = b.runtime()
        b.run(SandboxSpec(argv=[rt.python, "-c", "import time; time.sleep(60)  # {marker}"], mounts=rt.mounts,
                          env=rt.env, cwd="/tmp", timeout_s=60, memory_bytes=256 << 20))
    """))
    p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
    deadline = time.monotonic() + 20
    while not sandbox_started(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_started(marker), "the sandboxed process never started"
    if before_kill is not None:
        before_kill(p)
    p.kill()
    p.wait()
    return p, marker


@pytest.mark.docker
def test_docker_orphan_of_a_killed_runner_is_removed(docker_available, tmp_path):
    """kill -9 of run.sh cannot run any cleanup; the next run removes what it left. The run's
    detached watchdog would remove it first (it often wins on a quiet machine), so it is stopped
    before the kill: this is the sweep's test."""
    p, marker = _kill_runner_mid_run("docker", tmp_path, before_kill=_stop_watchdogs)
    assert our_containers(p.pid), "expected the killed runner to leave its container"
    assert DockerBackend().cleanup_orphans() >= 1
    assert our_containers(p.pid) == [] and marker_procs(marker) == []


def _stop_watchdogs(runner: subprocess.Popen) -> None:
    """SIGKILL the docker watchdogs (sandbox/watchdog.py) watching `runner`."""
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"sandbox.watchdog" in a for a in argv) and str(runner.pid).encode() in argv:
            os.kill(int(d.name), signal.SIGKILL)


@pytest.mark.bwrap
def test_bwrap_dies_with_a_killed_runner(bwrap_available, tmp_path):
    p, marker = _kill_runner_mid_run("bwrap", tmp_path)
    deadline = time.monotonic() + 5
    while marker_procs(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker_procs(marker) == []


def test_none_backend_enforces_timeout_and_kills_tree():
    b = choose_backend("none")
    marker = f"none-{uuid.uuid4().hex[:8]}"
    code = f"""
        import subprocess, sys, time  # {marker}
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {marker}"])
        time.sleep(60)
    """
    r = b.run(spec(b, code, timeout=1.5))
    assert r.backend == "none" and r.timed_out and r.exit_code is None and 1.5 <= r.wall_seconds < 3.5, r
    assert marker_procs(marker) == []
    assert "SANDBOX DISABLED" in NONE_WARNING and b.available() == (True, NONE_WARNING)


def test_none_is_never_chosen_silently(monkeypatch, tmp_path):
    """auto with no docker engine and no bwrap fails with both fixes; it does not fall back to none."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("PATH", str(tmp_path))          # no bwrap on PATH
    monkeypatch.setattr(BwrapBackend, "_probe", None)
    with pytest.raises(SandboxUnavailable) as e:
        choose_backend("auto")
    msg = str(e.value)
    assert "start it" in msg and "install bubblewrap" in msg, msg
    with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
        choose_backend("bwrap")
    with pytest.raises(SandboxUnavailable, match="docker"):
        choose_backend("docker")
    with pytest.raises(SandboxUnavailable, match="unknown sandbox backend"):
        choose_backend("chroot")
    monkeypatch.setattr(BwrapBackend, "_probe", None)


@pytest.mark.docker
def test_auto_prefers_docker(docker_available):
    assert choose_backend("auto").name == "docker"


def test_bad_spec_is_rejected_before_running(tmp_path):
    b = NoneBackend()
    with pytest.raises(ValueError, match="does not exist"):
        b.run(SandboxSpec(argv=["true"], mounts=[Mount(tmp_path / "missing", "/x", True)], env={},
                          cwd="/tmp", timeout_s=1, memory_bytes=1 << 20))
    with pytest.raises(ValueError, match="absolute"):
        b.run(SandboxSpec(argv=["true"], mounts=[Mount(tmp_path, "rel")], env={}, cwd="/tmp",
                          timeout_s=1, memory_bytes=1 << 20))


@pytest.mark.docker
def test_docker_image_choice(docker_available):
    """A configured image built from container/Dockerfile runs its own Python with no host mounts;
    a configured image that is absent falls back to the no-pull local image, built once."""
    import docker
    from autoresearch.sandbox.host import host_python
    from autoresearch.sandbox.image import local_image_tar
    from autoresearch.sandbox.spec import LOCAL_IMAGE_REPO
    client = docker.from_env()
    tag = f"autoresearch-test-image:{uuid.uuid4().hex[:8]}"
    _, data = local_image_tar()
    client.api.import_image_from_data(data, repository=tag.split(":")[0], tag=tag.split(":")[1], changes=[
        "LABEL org.autoresearch.runtime=image", "LABEL org.autoresearch.python=/opt/venv/bin/python",
        "LABEL org.autoresearch.path=/opt/venv/bin:/usr/bin"])
    try:
        rt = DockerBackend(tag).runtime()
        assert rt.python == "/opt/venv/bin/python" and rt.mounts == [] and rt.env["PATH"] == "/opt/venv/bin:/usr/bin"
    finally:
        client.images.remove(tag, force=True)
    absent = DockerBackend("autoresearch-sandbox:absent-" + uuid.uuid4().hex[:8])
    assert absent.runtime().python == host_python() and absent.runtime().mounts
    assert f"image {LOCAL_IMAGE_REPO}:" in absent.describe()
    assert local_image_tar() == local_image_tar()            # content-addressed: same tag, no rebuild
    again = DockerBackend(None)
    again.runtime()
    assert again._image_id == absent._image_id


def test_captured_stdout_is_capped(backend):
    r = backend.run(spec(backend, "import sys; sys.stdout.write('x' * 50000)", stdout_limit=1000))
    assert r.exit_code == 0 and r.stdout == b"x" * 1000 and r.stdout_truncated, r


@pytest.mark.bwrap
def test_bwrap_gpu_selection_passes_through(bwrap_available, monkeypatch):
    """The host's CUDA_VISIBLE_DEVICES narrows "all", and the process sees exactly the selection
    (a host with GPUs 0-2 stood in for: --dev-bind-try skips the nodes this machine lacks)."""
    from autoresearch.sandbox.gpus import GpuDevice, GpuHost
    monkeypatch.setattr(GpuHost, "discover", staticmethod(lambda: GpuHost(tuple(GpuDevice(i, i) for i in range(3)))))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    b = choose_backend("bwrap")
    code = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('CUDA_DEVICE_ORDER'))"
    r = b.run(spec(b, code, gpus="all"))
    assert r.stdout.split() == [b"1", b"PCI_BUS_ID"], r
    r = b.run(spec(b, code, gpus=None))
    assert r.stdout.split() == [b"PCI_BUS_ID"], r          # CUDA_VISIBLE_DEVICES="": no GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    r = b.run(spec(b, code, gpus=(2, 0)))
    assert r.stdout.split() == [b"2,0", b"PCI_BUS_ID"], r


@pytest.mark.bwrap
def test_bwrap_without_cgroups_falls_back_to_rlimit(bwrap_available, monkeypatch, tmp_path):
    """Hosts where no cgroup can be made (cgroup v2 without delegation): RLIMIT_AS still
    bounds memory, and the allocation failure is still reported as oom."""
    from autoresearch.sandbox.cgroups import _Cgroups
    monkeypatch.setattr(_Cgroups, "create", classmethod(lambda cls, *a: None))
    b = choose_backend("bwrap")
    r = b.run(spec(b, "x = b'x' * (400 << 20)", memory=300 << 20))
    assert r.limits == "rlimit-as" and r.oom and r.exit_code == 1, r
    r = b.run(spec(b, "print('fine')", memory=300 << 20, log_path=tmp_path / "log"))
    assert r.limits == "rlimit-as" and not r.oom and r.exit_code == 0 and r.peak_memory_bytes, r
    # without a cgroup the peak is sampled from the process tree (rusage stops at bwrap's init, and
    # counts the pages a forked child shared with this process before exec: the ballast must not show)
    ballast = bytearray(300 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    r = b.run(spec(b, "import time; x = b'x' * (150 << 20); time.sleep(1)", memory=400 << 20))
    assert r.exit_code == 0 and 150 << 20 <= r.peak_memory_bytes < 300 << 20, r
    del ballast


def test_leftovers_of_a_killed_runner_are_killed_by_the_next_run(tmp_path):
    """`none` has no --die-with-parent: after kill -9 of the runner its process lives on in the
    run's cgroup, and the next run (any backend using cgroups) kills it and deletes the cgroup."""
    needs_cgroup()
    marker = f"leftover-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(f"""
        from autoresearch.sandbox import *
        b = choose_backend("none"); rt = b.runtime()
        b.run(SandboxSpec(argv=[rt.python, "-c", "import time; time.sleep(60)  # {marker}"], mounts=[],
                          env=rt.env, cwd="/tmp", timeout_s=60, memory_bytes=256 << 20))
    """))
    p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
    deadline = time.monotonic() + 20
    while not sandbox_started(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_started(marker)
    p.kill()
    p.wait()
    time.sleep(0.2)
    assert marker_procs(marker), "expected the orphan to outlive its runner"
    b = choose_backend("none")
    b.run(spec(b, "pass"))
    assert marker_procs(marker) == []


@pytest.mark.bwrap
def test_bwrap_set_up_failure_is_a_harness_error_not_a_crash(bwrap_available, tmp_path):
    """A mount bwrap cannot make is the harness's problem: SandboxUnavailable with bwrap's words,
    while a program that fails on its own still comes back as an exit code."""
    b = choose_backend("bwrap")
    rt = b.runtime()
    log = tmp_path / "train.log"
    log.write_text("an earlier stage's output\n")
    target = str(Path(rt.python).parent / "no-such-dir" / "sub")          # under a read-only bind
    with pytest.raises(SandboxUnavailable, match="could not set up the sandbox: Can't mkdir"):
        (tmp_path / "src").mkdir()              # readable by the sandbox uid, unlike pytest's 0700 tmp_path
        b.run(spec(b, "pass", mounts=[Mount(tmp_path / "src", target)], log_path=log, capture_stdout=False))
    r = b.run(spec(b, "import sys; print('bwrap: looks like bwrap', file=sys.stderr); print('x', file=sys.stderr); "
                      "sys.exit(1)", log_path=log, capture_stdout=False))
    assert r.exit_code == 1


def test_log_keeps_the_order_stdout_and_stderr_were_written_in(backend, tmp_path):
    """One log, in the order a terminal would show: docker reads stdout and stderr as two pipes,
    which put lines printed before a crash after its traceback, even inside its last line."""
    log = tmp_path / "train.log"
    code = ("import sys\nfor i in range(50):\n    print('out', i, flush=True)\n    sys.stderr.write('err ')\n"
            "    sys.stderr.write(str(i) + '\\n')\nraise ValueError('boom-marker 42')\n")
    r = backend.run(spec(backend, code, log_path=log, capture_stdout=False))
    lines = log.read_text().splitlines()
    assert r.exit_code == 1
    want = [f"{s} {i}" for i in range(50) for s in ("out", "err")]
    assert lines[:100] == want and lines[-1] == "ValueError: boom-marker 42", lines


# ------------------------------------------------------------------ a session over stdin/stdout (the EVAL protocol)

ECHO_UPPER = """
    import os, sys
    print("to the log, not the session", file=sys.stderr, flush=True)
    while True:
        n = os.read(0, 1)
        if not n:
            break
        size = n[0]
        data = b""
        while len(data) < size:
            data += os.read(0, size - len(data))
        os.write(1, data.upper())
"""


@pytest.mark.parametrize("linger", [False, True])
def test_a_session_talks_to_the_process_in_binary_and_ends_it(backend, tmp_path, linger):
    """Frames go in on stdin and come back on stdout while the process runs (docker: the attach
    socket and the demultiplexed stream); closing stdin ends it; one that lingers is killed
    after the grace, which is not a timeout. stdout never reaches the log."""
    got: list[bytes] = []

    def session(w, r):
        for word in (b"abc", bytes(range(97, 123)) * 9, b"\x00\xff"):
            w.write(bytes([len(word)]) + word)
            w.flush()
            buf = b""
            while len(buf) < len(word):
                buf += r.read(len(word) - len(buf))
            got.append(buf)

    code = ECHO_UPPER + ("    import time\n    time.sleep(3600)\n" if linger else "")
    log = tmp_path / "log"
    t = time.monotonic()
    r = backend.run(spec(backend, code, capture_stdout=False, session=session, session_grace_s=2, log_path=log,
                         timeout=60))
    assert got == [b"ABC", bytes(range(65, 91)) * 9, b"\x00\xff"]
    assert not r.timed_out and time.monotonic() - t < 40
    assert (r.exit_code == 0) if not linger else (r.exit_code != 0)
    text = log.read_text()
    assert "to the log, not the session" in text and "ABC" not in text


SESSION_VIEW = """
    import json, os, stat, sys
    d = "/run/autoresearch-session"
    seen = {"fds": [os.readlink(f"/proc/self/fd/{f}") for f in (0, 1)], "listing": sorted(os.listdir(d)),
            "fifos": [stat.S_ISFIFO(os.stat(f"{d}/{n}").st_mode) for n in ("in", "out")],
            "mine": [os.stat(f"{d}/{n}").st_uid == os.getuid() for n in ("in", "out")]}
    os.write(1, (json.dumps(seen) + "\\n").encode())
    os.read(0, 1)
"""


@pytest.mark.docker
def test_a_docker_session_runs_over_its_own_pipes_in_a_folder_only_it_sees(docker_available):
    """A docker session's streams are two FIFOs (sandbox/fifos.py), not the engine's attach stream:
    fd 0 and 1 are them, the folder holds nothing else and only this container mounts it (the other
    model server, started beside it, sees no such folder), it is 0700 on the host, and it is gone
    after the run."""
    from autoresearch.sandbox.fifos import SESSION_DIR, _base
    b = choose_backend("docker")
    seen: dict = {}

    def session(w, r):
        seen.update(json.loads(r.readline()))
        seen["host"] = [(p.stat().st_mode & 0o777, sorted(c.name for c in p.iterdir()))
                        for p in _base().iterdir() if p.name.startswith(f"{os.getpid()}-")]
        seen["beside"] = run_json(b, f"import json, os; print(json.dumps(os.path.exists({SESSION_DIR!r})))")
        w.write(b"x")
        w.flush()

    r = b.run(spec(b, SESSION_VIEW, capture_stdout=False, session=session, timeout=60))
    assert r.exit_code == 0, r
    assert seen["fds"] == [f"{SESSION_DIR}/in", f"{SESSION_DIR}/out"], seen
    assert seen["listing"] == ["in", "out"] and seen["fifos"] == [True, True] and seen["mine"] == [True, True]
    assert seen["host"] == [(0o700, ["in", "out"])] and seen["beside"] is False, seen
    assert not [p for p in _base().iterdir() if p.name.startswith(f"{os.getpid()}-")]


def test_session_pipes_to_a_container_that_never_opened_them_end_at_once(tmp_path, monkeypatch):
    """If the container ends before it opens its pipes, the session sees what a process that died
    at once gives (EPIPE on write, EOF on read) instead of waiting; a killed runner's folder is
    swept by the next one."""
    from autoresearch.sandbox import fifos
    monkeypatch.setattr(fifos, "user_dir", lambda: tmp_path)
    stale = tmp_path / "sessions" / "999999999-x"
    stale.mkdir(parents=True)
    os.mkfifo(stale / "in")
    f = fifos.Fifos()
    assert not stale.exists() and f.dir.parent == tmp_path / "sessions"
    t = time.monotonic()
    w, r = f.connect(lambda: time.monotonic() > t + 0.2)
    assert 0.2 <= time.monotonic() - t < 5
    assert r.read() == b""
    with pytest.raises(BrokenPipeError):
        w.write(b"x" * 100_000)
        w.flush()
    f.remove()
    assert not f.dir.exists()


@pytest.mark.parametrize("name", [pytest.param("docker", marks=pytest.mark.docker),
                                  pytest.param("bwrap", marks=pytest.mark.bwrap)])
def test_sandboxed_code_holds_no_file_descriptor_but_its_stdio(name, request):
    """Nothing the harness opened reaches agent code: no namespace fd (a root runner's identity user
    namespace), no data pipe, no lock; only stdin, stdout and stderr."""
    request.getfixturevalue(f"{name}_available")
    b = choose_backend(name)
    got = run_json(b, """
        import json, os
        fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
        print(json.dumps({str(f): os.readlink(f"/proc/self/fd/{f}") if os.path.exists(f"/proc/self/fd/{f}") else "?"
                          for f in fds}))
    """)
    extra = {f: what for f, what in got.items() if int(f) > 2 and what != "?"}   # "?": the listing's own fd
    assert extra == {}, got


@pytest.mark.docker
def test_two_docker_runs_started_at_once_both_get_the_per_run_cgroup(docker_available):
    """The two model servers start in two threads on a fresh backend: both must see the engine's
    cgroup answer (a lost race once sent one to the stats stream, and a 10 s wait at its end)."""
    b = DockerBackend()
    b.runtime()
    go, got = threading.Barrier(2), []

    def one():
        go.wait()
        got.append(b._cgroup_parent())
    ts = [threading.Thread(target=one) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({p is None for p, _ in got}) == 1, got


@pytest.mark.docker
def test_without_a_cgroup_the_stats_stream_does_not_hold_the_end_of_a_run(docker_available):
    """Engines whose cgroups we cannot read (cgroup v2, systemd driver) sample the stats stream,
    which outlives an exited container: the run still ends when its process does."""
    from autoresearch.sandbox.spec import _KILL_WAIT_S
    b = DockerBackend()
    b.runtime()
    b._cg_base = False
    t0 = time.monotonic()
    r = b.run(spec(b, "import time; x = b'x' * (60 << 20); time.sleep(0.3); print(len(x))", memory=400 << 20))
    took = time.monotonic() - t0
    assert r.exit_code == 0 and r.peak_memory_bytes, r
    assert took < _KILL_WAIT_S, f"{took:.1f} s: the end waited for the stats stream"
