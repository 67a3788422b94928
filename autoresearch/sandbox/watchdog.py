"""The detached watchdog of a docker run: a process in its own session that removes the container
(and its cgroup folders) as soon as the runner dies or the deadline passes, so even a runner
killed with SIGKILL leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .cgroups import _remove_docker_parent

_WATCHDOG_MARGIN_S = 30.0


def _start_watchdog(name: str, seconds: float, cgroup_parent: str | None) -> subprocess.Popen | None:
    """A detached process (its own session: a kill of the runner's group misses it) that
    removes the container, and its cgroup folders, as soon as this runner dies or the
    deadline passes. The runner kills it when the stage ends normally."""
    argv = [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
            "from autoresearch.sandbox.watchdog import _watchdog; _watchdog(*sys.argv[2:])",
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

