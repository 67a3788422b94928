"""Bounds on what a run leaves on the host, shared by every backend: its log (head and tail kept,
the middle cut), its captured stdout, and the bytes its writable mounts hold while it runs."""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import IO

from .spec import _KILL_WAIT_S, SandboxSpec


class _StartClock:
    """When trusted start-up code said agent code starts: the first `marker` in the output. Agent
    code runs only after the real one, so it cannot move the clock; later copies are ignored."""

    def __init__(self, marker: bytes | None):
        self.marker, self.at, self._tail = marker, None, b""
        self.lock = threading.Lock()
        self.seen = threading.Event()            # set with `at`: the disk watch starts walking then

    def feed(self, chunk: bytes) -> None:
        if self.marker is None or self.at is not None:
            return
        with self.lock:
            buf = self._tail + chunk
            if self.marker in buf:
                self.at, self._tail = time.monotonic(), b""
                self.seen.set()
            else:
                self._tail = buf[-(len(self.marker) - 1):] if len(self.marker) > 1 else b""

    def deadline(self, start: float, timeout_s: float, startup_s: float) -> float:
        """When the process is killed: timeout_s after the marker; startup_s after start until it."""
        if self.marker is None:
            return start + timeout_s
        return start + startup_s if self.at is None else self.at + timeout_s

    def seconds(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(agent seconds, start-up seconds) of a run that ended at `end`."""
        if self.marker is None:
            return end - start, None
        if self.at is None:
            return None, None
        return end - self.at, self.at - start


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

    clock: _StartClock | None = None                   # sees every chunk, before any cut

    def write(self, chunk: bytes) -> None:
        if self.clock is not None:
            self.clock.feed(chunk)
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
    return _usage(paths, max_entries)[0]


def _usage(paths: list[Path], max_entries: int = 200_000) -> tuple[int, int]:
    """(bytes allocated, entries) under paths; bytes is 1 << 62 past max_entries."""
    total, n, todo = 0, 0, list(paths)
    while todo:
        d = todo.pop()
        with contextlib.suppress(OSError):
            with os.scandir(d) as it:
                for e in it:
                    n += 1
                    if n > max_entries:
                        return 1 << 62, n
                    with contextlib.suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        total += st.st_blocks * 512
                        if e.is_dir(follow_symlinks=False):
                            todo.append(Path(e.path))
    return total, n


class _DiskWatch:
    """Polls what the writable mounts hold and calls `kill` once it passes the limit. A file
    size rlimit (RLIMIT_FSIZE, docker's fsize ulimit) stops one big file at the limit exactly;
    this catches many files between two polls.

    Each poll walks the mounts (a work copy: hundreds of files), and three sandboxes run beside
    each other, so polling every 50 ms took about 2 CPU-s of a 20 s run from the training on a
    2-core machine. So the next poll comes when the headroom could first be gone at the fastest
    rates a sandbox can write (WRITE_BPS, NEW_FILES_PER_S), never later than MAX_INTERVAL_S and
    never sooner than INTERVAL_S: what a writer can put past the limit is what it writes in
    INTERVAL_S, as it was with a fixed 50 ms.

    With a start clock whose marker the trusted start-up prints (TRAIN, the model servers), the
    walks begin at the marker: until then only the trusted warm-up runs, and a model server waits
    out the whole of TRAIN (a warm holder, the agent's thinking) before it, so its walks took
    CPU from the training for nothing. The first walk comes as the marker is seen."""
    INTERVAL_S = 0.05
    MAX_INTERVAL_S = 1.0
    WRITE_BPS = 8 << 30             # faster than a page cache fills on the machines we run on
    NEW_FILES_PER_S = 200_000       # new files a second, likewise (an entry past MAX_ENTRIES is over)
    MAX_ENTRIES = 200_000

    def __init__(self, spec: SandboxSpec, kill, clock: _StartClock | None = None) -> None:
        self.limit = spec.disk_bytes
        self.paths = [Path(m.source) for m in spec.mounts if m.writable and Path(m.source).is_dir()]
        self.kill, self.exceeded, self.polls = kill, False, 0
        self.clock = clock if clock is not None and clock.marker is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_DiskWatch":
        if self.limit is not None and self.paths:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.INTERVAL_S
        if self.clock is not None:                   # no agent code before the marker: nothing to walk
            while not self.clock.seen.wait(self.INTERVAL_S):
                if self._stop.is_set():
                    return
            wait = 0.0
        while not self._stop.wait(wait):
            self.polls += 1
            used, n = _usage(self.paths, self.MAX_ENTRIES)
            if self.limit is not None and used > self.limit:
                self.exceeded = True
                with contextlib.suppress(Exception):
                    self.kill()
                return
            wait = self.next_wait(used, n)

    def next_wait(self, used: int, entries: int) -> float:
        """Seconds until the limit could first be passed, from what the last poll saw."""
        room = min(((self.limit or 0) - used) / self.WRITE_BPS,
                   (self.MAX_ENTRIES - entries) / self.NEW_FILES_PER_S)
        return min(self.MAX_INTERVAL_S, max(self.INTERVAL_S, room))

    def over(self) -> bool:
        return self.limit is not None and bool(self.paths) and _disk_usage(self.paths, self.MAX_ENTRIES) > self.limit

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_KILL_WAIT_S)


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

