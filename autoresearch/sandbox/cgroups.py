"""Per-run cgroups: where the memory and pids limits of bwrap and `none` runs come from (v1, or a
delegated v2 subtree), how OOM and peak memory are read back, and the removal of the cgroup
folders a killed runner left behind (its own, and the per-run parents dockerd made for it)."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
import uuid
from pathlib import Path

from .host import pid_alive
from .spec import _KILL_WAIT_S


def _lines(path: str) -> list[str]:
    """A /proc file's lines; none where it cannot be read (no /proc: no cgroups to use)."""
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _cgroup_mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """(v1 controller -> (mountpoint, mount root), v2 (mountpoint, mount root)) from mountinfo."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    for line in _lines("/proc/self/mountinfo"):
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
    for line in _lines("/proc/self/cgroup"):
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
                    and not pid_alive(int(parts[1])):
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
        return _read_int(f)

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

