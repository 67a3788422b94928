"""A docker sandbox's session over two named pipes, not the engine's attach stream.

The attach stream carries every byte through containerd's shim and dockerd, then a Python demux:
about 135 MB/s on an idle 2-core machine, less under load, against about 700 MB/s for a pipe. A
model server answers the scorer with float32 logits (about 150 MB for the default task), so EVAL
under docker spent seconds in transport. So the session's two streams are FIFOs in a private
host folder (0700, the sandbox user's), bind-mounted read-only into that one container only (a
FIFO opens for writing on a read-only mount; the other model server cannot see it). The
container's command opens them as its stdout and stdin before anything else runs; stderr stays
on the attach stream (the log).

Order, so that nothing can block for ever: the runner opens `out` for reading before the
container exists (non-blocking: no writer yet); the container opens `out` for writing (a reader
is there: no wait), then `in` for reading (it waits for a writer); the runner opens `in` for
writing as soon as a reader is there, polling, and gives up when the container has ended. From
then on the pipes behave as a process's: EOF when the container's side closes, EPIPE on a write
to a container that has gone."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

from .host import pid_alive, sandbox_ids, user_dir

SESSION_DIR = "/run/autoresearch-session"        # where the container sees the folder
SHIM = 'exec 1>"$0/out" 0<"$0/in"; exec "$@"'    # stdout first (never waits), then stdin
POLL_S = 0.002


def _base() -> Path:
    """Under the host user's own folder (dockerd mounts from it as root)."""
    d = user_dir() / "sessions"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def command(argv: list[str]) -> list[str]:
    """The container's command: argv with its stdin and stdout on the session's FIFOs."""
    return ["/bin/sh", "-c", SHIM, SESSION_DIR, *argv]


class Fifos:
    """One container's session pipes: made, then connected, then removed."""

    def __init__(self) -> None:
        _sweep()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_base()))
        for name in ("in", "out"):
            os.mkfifo(self.dir / name, 0o600)
        if os.getuid() == 0:                       # the sandbox runs as 65534: the pipes are its
            uid, gid = sandbox_ids()
            for p in (self.dir, self.dir / "in", self.dir / "out"):
                os.chown(p, uid, gid)
        self.out_fd: int | None = os.open(self.dir / "out", os.O_RDONLY | os.O_NONBLOCK)

    def connect(self, ended: Callable[[], bool]) -> tuple[IO[bytes], IO[bytes]]:
        """(stdin to write, stdout to read) once the container has opened both; if it ends first,
        a pair that behaves as a process that died at once would (EPIPE on write, EOF on read)."""
        while True:
            try:
                in_fd = os.open(self.dir / "in", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO:          # ENXIO: no reader yet
                    raise
            if ended():
                return _dead()
            time.sleep(POLL_S)
        out_fd, self.out_fd = self.out_fd, None
        assert out_fd is not None
        for fd in (in_fd, out_fd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(in_fd, "wb"), os.fdopen(out_fd, "rb")

    def remove(self) -> None:
        if self.out_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.out_fd)
            self.out_fd = None
        _remove(self.dir)


def _dead() -> tuple[IO[bytes], IO[bytes]]:
    r1, w1 = os.pipe()
    os.close(r1)                                  # writes fail: nobody reads
    r2, w2 = os.pipe()
    os.close(w2)                                  # reads end: nobody writes
    return os.fdopen(w1, "wb"), os.fdopen(r2, "rb")


def _sweep() -> None:
    """Folders a killed runner left (named for its pid)."""
    with contextlib.suppress(OSError):
        for d in _base().iterdir():
            pid = d.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                _remove(d)


def _remove(d: Path) -> None:
    """A session folder: its two pipes, then itself (the sandbox cannot import fsclean)."""
    for name in ("in", "out"):
        with contextlib.suppress(OSError):
            (d / name).unlink()
    with contextlib.suppress(OSError):
        d.rmdir()

