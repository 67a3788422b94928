"""Run one command as a child process with hard limits, for bwrap (its argv starts with bwrap)
and `none` (the bare command): a new session in a per-run cgroup (else RLIMIT_AS), a hard
timeout, stdin fed or a session talked to, output into the capped log, and the whole tree
killed on every exit path."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterator

from ..registry import isolates
from .bounds import _Capture, _DiskWatch, _LogSink, _StartClock
from .cgroups import _Cgroups
from .gpus import selected_gpus
from .spec import _KILL_WAIT_S, SandboxResult, SandboxSpec, SandboxUnavailable


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


def _run_process(name: str, argv: list[str], spec: SandboxSpec, pass_fds: tuple[int, ...] = ()) -> SandboxResult:
    """Start argv (bwrap ... or the bare command) as a new session in a per-run cgroup;
    wait with a hard timeout; kill the whole tree on every exit path."""
    run = _ProcessRun(name, spec)
    try:
        run.start(argv, pass_fds)
        run.wait()
    finally:
        with _signals_deferred():
            run.stop()
    return run.result()


def _child_setup(procs: list[str], memory: int | None, fsize: int | None) -> Callable[[], None]:
    """What the child does between fork and exec, with syscalls only: join the cgroup (its
    cgroup.procs files), then set RLIMIT_AS (`memory`, when there is no cgroup) and RLIMIT_FSIZE."""
    def preexec() -> None:
        pid = str(os.getpid()).encode()
        for f in procs:
            fd = os.open(f, os.O_WRONLY)
            os.write(fd, pid)
            os.close(fd)
        import resource
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return preexec


class _ProcessRun:
    """One _run_process call: its state, and its steps (start, wait, stop on every exit path, result)."""

    def __init__(self, name: str, spec: SandboxSpec):
        self.name, self.spec = name, spec
        self.cg = _Cgroups.create(spec.memory_bytes, spec.pids)
        # RLIMIT_AS would break CUDA (it reserves vast address space): none when the run has GPUs
        gpu = bool(selected_gpus(spec.gpus, spec.env))
        self.limits = self.cg.kind if self.cg else ("rlimit-as" if not gpu else "none")
        self.log = _LogSink(spec.log_path, spec.log_limit) if spec.log_path else None
        self.clock = _StartClock(spec.start_marker if self.log is not None else None)
        if self.log is not None:
            self.log.clock = self.clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.threads: list[threading.Thread] = []
        self.cap = _Capture(spec.stdout_limit)
        self.err_tail = _Capture(65536, keep_tail=True)  # stderr's end when there is no log (OOM text under rlimit)
        self.session_end: list[float] = []
        self.start_time = time.monotonic()
        self.status: int | None = None
        self.timed_out = False
        self.sampled_peak = 0
        self.watch = _DiskWatch(spec, kill=lambda: None, clock=self.clock)     # wait() does the killing
        self.wall, self.oom, self.peak, self.cut = 0.0, False, None, 0
        self.ended: float | None = None                   # when wait() returned: the process's end, for the clock

    def start(self, argv: list[str], pass_fds: tuple[int, ...]) -> None:
        spec, log = self.spec, self.log
        preexec = _child_setup(self.cg.procs_files() if self.cg else [],
                               spec.memory_bytes if self.limits == "rlimit-as" else None, spec.disk_bytes)
        try:
            self.proc = subprocess.Popen(
                argv, env=spec.env, cwd=None if isolates(self.name) else spec.cwd,
                stdin=subprocess.PIPE if spec.stdin_data is not None or spec.session else subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec.capture_stdout or spec.session or log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log and not (spec.capture_stdout or spec.session) else subprocess.PIPE,
                start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds, close_fds=True)
        except FileNotFoundError as e:
            raise SandboxUnavailable(f"{self.name}: cannot start {argv[0]!r}: {e.strerror}") from None
        self.start_time = time.monotonic()
        self.threads = self._pumps(self.proc)
        for t in self.threads:
            t.start()
        self.watch.__enter__()

    def _pumps(self, proc: subprocess.Popen[bytes]) -> list[threading.Thread]:
        """Threads that feed stdin (or talk the session) and drain stdout and stderr."""
        spec, log = self.spec, self.log
        threads = []
        if spec.stdin_data is not None:
            assert proc.stdin is not None
            threads.append(threading.Thread(target=_feed_stdin, args=(proc.stdin, spec.stdin_data), daemon=True))
        if spec.session is not None:
            assert proc.stdin is not None and proc.stdout is not None
            threads.append(threading.Thread(target=_talk, args=(spec.session, proc.stdin, proc.stdout,
                                                                self.session_end), daemon=True))
        elif spec.capture_stdout:
            assert proc.stdout is not None
            threads.append(threading.Thread(target=self.cap.drain, args=(proc.stdout,), daemon=True))
        if log is not None and not (spec.capture_stdout or spec.session):
            assert proc.stdout is not None
            threads.append(threading.Thread(target=log.drain, args=(proc.stdout,), daemon=True))
        elif log is not None:
            assert proc.stderr is not None
            threads.append(threading.Thread(target=log.drain, args=(proc.stderr,), daemon=True))
        else:
            assert proc.stderr is not None
            threads.append(threading.Thread(target=self.err_tail.drain, args=(proc.stderr,), daemon=True))
        return threads

    def wait(self) -> None:
        """Until the process exits, the deadline passes, the disk watch fires or a finished session's
        grace runs out; without a cgroup, sample the tree's peak memory meanwhile."""
        try:
            self._wait()
        finally:
            self.ended = time.monotonic()

    def _wait(self) -> None:
        proc, spec = self.proc, self.spec
        assert proc is not None
        delay = 0.002
        next_sample = self.start_time
        while True:
            deadline = self.clock.deadline(self.start_time, spec.timeout_s, spec.startup_s)
            pid, st, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                self.status = st
                proc.returncode = _exit_code(st)
                return
            if self.cg is None and time.monotonic() >= next_sample:
                self.sampled_peak = max(self.sampled_peak, _tree_rss(proc.pid))
                next_sample = time.monotonic() + _RSS_SAMPLE_S
            if time.monotonic() >= deadline:
                self.timed_out = True
                return
            if self.watch.exceeded:
                return
            if self.session_end and time.monotonic() >= self.session_end[0] + spec.session_grace_s:
                return                              # the session is over and the process lingers: killed in stop()
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)

    def stop(self) -> None:
        """Kill the tree, join the threads, close the pipes, read and remove the cgroup, close the log."""
        proc, cg = self.proc, self.cg
        self.watch.__exit__()
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, st, _ = os.wait4(proc.pid, 0)
                proc.returncode = _exit_code(st)
        if cg is not None:
            cg.kill_all()
        for t in self.threads:
            t.join(timeout=_KILL_WAIT_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr) if proc is not None else ():
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self.end_time = time.monotonic()
        self.wall = self.end_time - self.start_time
        self.oom = cg.oom_killed() if cg is not None else False
        self.peak = cg.peak() if cg is not None else None
        if cg is not None:
            cg.remove()
        self.cut = self.log.close() if self.log is not None else 0

    def result(self) -> SandboxResult:
        spec, status, timed_out, watch, cap = self.spec, self.status, self.timed_out, self.watch, self.cap
        disk = watch.exceeded or (spec.disk_bytes is not None and status is not None
                                  and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ)
        if status is not None and not disk and spec.disk_bytes is not None and watch.over():
            disk = True                                   # past the limit at the end, between two polls
        code = None if timed_out else _exit_code(status) if status is not None else None
        # Not rusage: it stops at bwrap's pid-namespace init, and its maxrss includes the pages the
        # child shared with this (possibly large) process between fork and exec.
        peak = self.peak if self.peak is not None else self.sampled_peak or None
        oom = self.oom
        if not oom and not timed_out and code not in (0, None) and self.limits == "rlimit-as":
            oom = any(_OOM_TEXT.search(t) for t in (_tail(spec.log_path), bytes(self.err_tail.buf),
                                                     bytes(cap.buf[-65536:])))
        agent, startup = self.clock.seconds(self.start_time, self.ended or self.start_time + self.wall)
        return SandboxResult(backend=self.name, exit_code=code, timed_out=timed_out, oom=oom, wall_seconds=self.wall,
                             peak_memory_bytes=peak, stdout=bytes(cap.buf), stdout_truncated=cap.truncated,
                             limits=self.limits, disk_exceeded=disk, log_cut_bytes=self.cut,
                             agent_seconds=agent, startup_seconds=startup,
                             startup_timed_out=timed_out and self.clock.marker is not None and self.clock.at is None)
