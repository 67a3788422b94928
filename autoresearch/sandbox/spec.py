"""What a sandboxed run is, as data: the spec in, the result out, the backend interface.

Contracts the caller can rely on:
- Mount targets should equal their host paths (target == str(source)): then a spec
  means the same under every backend, `none` included (it ignores mounts).
  A writable mount's source must exist; a mount target nested in a read-only
  mount must already exist on the host (nothing can create it there).
- `env` is everything the process sees (docker adds HOSTNAME).
- `gpus` (gpus.py): None, "all", a count, or a tuple of host GPU indices, resolved
  against the host's GPUs narrowed by CUDA_VISIBLE_DEVICES (env, else the runner's);
  a request that cannot be met is SandboxUnavailable. docker: a device request for
  exactly those (renumbered from 0 inside); bwrap: only their /dev/nvidia<N> nodes and
  the driver's control nodes; bwrap and none set CUDA_VISIBLE_DEVICES to the host
  indices (CUDA_DEVICE_ORDER=PCI_BUS_ID), "" when none.
- `shm_bytes`: the size of /dev/shm (DataLoader workers, NCCL): docker shm_size, a
  tmpfs of that size under bwrap; none uses the host's.
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
- `start_marker` (with a log): the clock of `timeout_s` starts when that byte string first
  appears in the output, printed by trusted start-up code in the sandbox before any agent code
  runs (run/startup.py); until then the process gets `startup_s`. Agent code runs only after the
  real marker, so a copy it prints changes nothing. `result.agent_seconds` is the time from the
  marker to the end (the wall time when there is no marker); `startup_seconds` the time before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Literal, Protocol, Union

NONE_WARNING = (
    "SANDBOX DISABLED (backend 'none'): the experiment ran as a plain process with the "
    "host's network, files and credentials; its result is not isolated from the agent's code.")

DEFAULT_STDOUT_LIMIT = 16 << 20
DEFAULT_LOG_LIMIT = 20 << 20                  # per stage: the head and the tail are kept, the middle cut
LOCAL_IMAGE_REPO = "autoresearch-local"       # the no-pull image: host runtime bind-mounted
LABEL = "org.autoresearch.sandbox"            # on every container we start, for orphan cleanup
_KILL_WAIT_S = 10.0                           # how long to wait for a killed tree to go away


# ---------------------------------------------------------------- data types

GpuRequest = Union[None, Literal["all"], int, tuple[int, ...]]   # see gpus.py
Session = Callable[[IO[bytes], IO[bytes]], None]                 # talks to the process over its stdin/stdout

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
    gpus: GpuRequest = None           # None | "all" | first N visible | exact host indices (gpus.py)
    shm_bytes: int = 1 << 30          # size of /dev/shm (DataLoader workers, NCCL); none: the host's
    stdin_data: bytes | None = None   # written to the process's stdin, then closed
    capture_stdout: bool = False      # True: stdout goes to result.stdout, not to the log
    log_path: Path | None = None      # stderr (and stdout unless captured) appended here as it happens
    stdout_limit: int = DEFAULT_STDOUT_LIMIT  # captured stdout beyond this is dropped (result.stdout_truncated)
    disk_bytes: int | None = None     # cap on what the writable mounts hold, enforced while it runs (kill)
    log_limit: int = DEFAULT_LOG_LIMIT  # bytes this run may add to log_path: head + marker + tail beyond it
    owner: str = ""                   # project id: docker labels, so orphans are reaped per project only
    session: Session | None = None    # talks over stdin/stdout while it runs
    session_grace_s: float = 10.0     # after the session returns, time to exit before a kill
    start_marker: bytes | None = None  # trusted start-up's "agent code starts now" line: timeout_s counts from it
    startup_s: float = 0.0            # with start_marker: the longest the start-up may take (not counted)


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
    agent_seconds: float | None = None    # from the start marker to the end (the wall time without one)
    startup_seconds: float | None = None  # before the start marker; None when there is none (or it never came)
    startup_timed_out: bool = False       # killed at startup_s before the marker: the start-up, not agent code


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


def _check_spec(spec: SandboxSpec) -> None:
    if not spec.argv:
        raise ValueError("SandboxSpec.argv is empty")
    if spec.timeout_s <= 0 or spec.memory_bytes <= 0 or spec.pids <= 0 or spec.shm_bytes <= 0:
        raise ValueError("SandboxSpec: timeout_s, memory_bytes, pids and shm_bytes must be positive")
    if isinstance(spec.gpus, bool) or isinstance(spec.gpus, list):
        raise TypeError(f"SandboxSpec.gpus: {spec.gpus!r}: use None, 'all', a count or a tuple of indices")
    for m in spec.mounts:
        if not m.target.startswith("/"):
            raise ValueError(f"mount target {m.target!r} must be an absolute path")
        if not Path(m.source).exists():
            raise ValueError(f"mount source {m.source} does not exist")
