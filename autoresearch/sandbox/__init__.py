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


The contract the caller can rely on (mounts, env, stdin and sessions, the log cap, exit codes,
cleanup on every exit path, the non-root user, peak memory, the docker image) is in spec.py.

Modules, one job each:
    spec       the data: SandboxSpec, SandboxResult, Mount, Runtime, the Backend protocol, constants
    choose     which backend runs (choose_backend)
    host       the host's interpreter and system folders, the sandbox's non-root user, mount ownership
    process    run one child process with hard limits and kill its tree (bwrap and none)
    bounds     the capped log, captured stdout, the disk watch (every backend)
    cgroups    per-run memory/pids cgroups, OOM and peak readings, removal of stale cgroup folders
    seccomp    the BPF filter bwrap installs
    gpus       which GPUs a run gets (all, a count, indices) and each backend's devices for them
    bwrap      BwrapBackend, its user namespace and the uid drop wrapper
    none       NoneBackend (no isolation)
    docker     DockerBackend: engine, orphan reaping; container: one container run; image: which
               image runs; watchdog: the detached process that removes a killed runner's container
    bwrapbin   where bwrap comes from (the system's, or the pinned wheel's)
"""
from __future__ import annotations

from .bwrap import BwrapBackend
from .choose import backend_named, choose_backend
from .docker import DockerBackend
from .gpus import GpuDevice, GpuHost, selected_gpus
from .host import give_writable, host_has_gpus, pid_alive
from .none import NoneBackend
from .spec import NONE_WARNING, Backend, GpuRequest, Mount, SandboxResult, SandboxSpec, SandboxUnavailable, Session

__all__ = ["NONE_WARNING", "Backend", "BwrapBackend", "DockerBackend", "GpuDevice", "GpuHost", "GpuRequest", "Mount",
           "NoneBackend", "SandboxResult", "SandboxSpec", "SandboxUnavailable", "Session", "backend_named", "choose_backend", "host_has_gpus",
           "selected_gpus"]
