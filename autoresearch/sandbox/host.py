"""The host side of a sandbox: which interpreter and system folders a run needs, which
non-root user it runs as, and making its mounts usable by that user."""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from ..registry import ISOLATING, words
from .spec import Mount, Runtime, SandboxSpec, SandboxUnavailable


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


# Names inside: localhost resolves from files alone (torchrun's rendezvous, gloo/NCCL on the
# loopback); without nsswitch.conf glibc asks DNS first, which has no network, and stops there.
HOSTS = b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback sandbox\n"
NSSWITCH = b"passwd: files\ngroup: files\nhosts: files\n"


def _passwd_group() -> tuple[bytes, bytes]:
    uid, gid = sandbox_ids()
    passwd = f"root:x:0:0:root:/root:/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/sbin/nologin\n"
    group = f"root:x:0:\nsandbox:x:{gid}:\n"
    return passwd.encode(), group.encode()


def host_has_gpus() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _prepare_mounts(spec: SandboxSpec, backend: str) -> None:
    """When the host user is root the sandbox runs as 65534: give it the writable mounts, and
    refuse (with the fix) a read-only mount that user cannot read."""
    uid, gid = sandbox_ids()
    gids = {gid, *(os.getgroups() if os.getuid() != 0 else ())}
    for m in spec.mounts:
        if m.writable and os.getuid() == 0:
            _chown_tree(Path(m.source), uid, gid)
        elif not _readable_by(Path(m.source), uid, gids):
            other = words([n for n in ISOLATING if n != backend])
            raise SandboxUnavailable(
                f"{backend} runs the sandbox as uid {uid}, which cannot read {m.source} "
                f"(mode {Path(m.source).stat().st_mode & 0o777:o}): chmod o+rX it, or use sandbox.backend: {other}")


def give_writable(spec: SandboxSpec) -> None:
    """The writable mounts to the sandbox user again (root host: 65534), for files the host wrote
    into them after the sandbox started (a warm TRAIN's work copy, filled at GO)."""
    if os.getuid() == 0:
        uid, gid = sandbox_ids()
        for m in spec.mounts:
            if m.writable:
                _chown_tree(Path(m.source), uid, gid)


def user_dir() -> Path:
    """The host user's own folder in the temp dir (0700; never removed): what a container is given
    from the host (its /etc/hosts, its session pipes) lives here, where no other user can swap it."""
    d = Path(tempfile.gettempdir()) / f"autoresearch-{os.getuid()}"
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SandboxUnavailable(f"{d} is not a folder of this user that only it may write: remove it")
    return d


def pid_alive(pid: int) -> bool:
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

