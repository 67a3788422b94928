"""Walking and removing trees that agent code made, without being stopped by what they hold.

TRAIN and the model servers write their work copies, stage scratch and out/ as they like: a
3,000-deep chain of folders (shutil.rmtree and os.walk recurse: RecursionError, and the path
outgrows PATH_MAX), folders chmod 000, links, FIFOs, sockets, millions of entries, names that
are not UTF-8. Everything here works on directory descriptors one level at a time (openat with
O_NOFOLLOW, unlinkat, ".." to climb), so depth costs neither stack nor path length, a link is
removed and never followed, a FIFO is never opened, a folder is made ours (0700) before it is
entered, and a mount point below is never crossed. Nothing raises: what cannot be removed is
counted in the report, and the tree is then set aside (renamed out of the way) so the next run
starts anyway. The callers run after the sandbox is gone, so nothing moves the tree meanwhile.

    remove_tree(path, aside=None)  -> Cleaned   everything under path and path itself
    tidy_tree(path, max_depth)     -> list[str] keep only regular files and folders (out/)
"""
from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_ERRORS = 1000                     # past this many entries that will not go, stop and set the tree aside
DEADLINE_S = 300.0                    # a tree that takes longer is set aside (millions of entries)


@dataclass
class Cleaned:
    """What remove_tree did: entries removed, the first errors, where a tree that stayed went."""
    path: Path
    removed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    set_aside: Path | None = None
    stopped: str = ""                 # why the walk stopped early ("" when it ran to the end)

    @property
    def gone(self) -> bool:
        return not os.path.lexists(self.path)

    def line(self) -> str:
        """One line for humans ("" when the tree is simply gone)."""
        if self.gone and not self.failed and not self.stopped:
            return ""
        where = f"set aside as {self.set_aside}" if self.set_aside else "left in place"
        why = self.stopped or (self.errors[0] if self.errors else "")
        return f"could not remove all of {self.path} ({self.failed} entries would not go: {why}); {where}"

    def _error(self, what: str, name: str, e: OSError | str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{what} {os.fsdecode(name)!r}: {e if isinstance(e, str) else e.strerror}")


def _open_dir(name: str, dir_fd: int) -> int:
    """Open a folder (never a link) below dir_fd and make it ours-rwx (0700): a folder we may read
    but not search (0400) lists names we could neither stat nor climb back out of."""
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except PermissionError:
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
        os.chmod(name, stat.S_IRWXU, dir_fd=dir_fd)
        return os.open(name, _DIR, dir_fd=dir_fd)
    if os.fstat(fd).st_mode & stat.S_IRWXU != stat.S_IRWXU:
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IRWXU)
    return fd


def _retry_writable(fn, name: str, fd: int) -> None:
    """fn(name, dir_fd=fd); on EACCES/EPERM make the folder ours-rwx and try once more."""
    try:
        fn(name, dir_fd=fd)
    except PermissionError:
        os.fchmod(fd, stat.S_IRWXU)
        fn(name, dir_fd=fd)


def _remove_below(parent_fd: int, top: str, report: Cleaned, deadline: float, dev: int) -> None:
    """Remove the folder `top` in parent_fd and everything in it, iteratively (see the module)."""
    try:
        fd = _open_dir(top, parent_fd)
    except OSError as e:
        report._error("cannot open", top, e)
        return
    stack = [top]                                       # names from parent_fd down to fd
    skip: set[tuple[int, str]] = set()                  # (folder inode, name) that would not go
    while stack:
        here = os.fstat(fd).st_ino
        descended = False
        try:
            it = os.scandir(fd)
        except OSError as e:
            report._error("cannot list", stack[-1], e)
            it = None
        if it is not None:
            with it:
                for entry in it:
                    name = entry.name
                    if (here, name) in skip:
                        continue
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            if st.st_dev != dev:
                                raise OSError(0, "a mount point; not crossed")
                            child = _open_dir(name, fd)
                            os.close(fd)
                            fd, descended = child, True
                            stack.append(name)
                            break
                        _retry_writable(os.unlink, name, fd)
                        report.removed += 1
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        skip.add((here, name))
                        report._error("cannot remove", name, e)
        if descended:
            continue
        name = stack.pop()
        up = os.dup(parent_fd) if not stack else os.open("..", _DIR, dir_fd=fd)
        os.close(fd)
        fd = up
        try:
            _retry_writable(os.rmdir, name, fd)
            report.removed += 1
        except OSError as e:
            skip.add((os.fstat(fd).st_ino, name))
            report._error("cannot remove", name, e)
        if report.failed > MAX_ERRORS or time.monotonic() > deadline:
            report.stopped = (f"more than {MAX_ERRORS} entries would not go" if report.failed > MAX_ERRORS
                              else f"still removing after {DEADLINE_S:g} s")
            break
    os.close(fd)


def remove_tree(path: Path | str, aside: Path | None = None, deadline_s: float = DEADLINE_S) -> Cleaned:
    """Remove path (a folder tree, a file, a link) and report; never raises for what the tree
    holds. A tree that stays is renamed to `aside` (default: next to it, `.<name>.aside-<time>`),
    so the path is free for the next run; the report says where it went."""
    path = Path(path)
    report = Cleaned(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return report
    except OSError as e:
        report._error("cannot read", str(path), e)
        return report
    try:
        parent = os.open(path.parent, _DIR & ~os.O_NOFOLLOW)
    except OSError as e:
        report._error("cannot open the folder of", str(path), e)
        return report
    try:
        if stat.S_ISDIR(st.st_mode):
            try:
                _remove_below(parent, path.name, report, time.monotonic() + deadline_s, st.st_dev)
            except OSError as e:                        # climbing back failed: what is left is set aside
                report._error("cannot walk", path.name, e)
        else:
            try:
                _retry_writable(os.unlink, path.name, parent)
                report.removed += 1
            except OSError as e:
                report._error("cannot remove", path.name, e)
        if os.path.lexists(path):
            target = aside or path.with_name(f".{path.name}.aside-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                os.rename(path, target)
                report.set_aside = target
            except OSError as e:
                report._error("cannot set aside", str(path), e)
    finally:
        os.close(parent)
    return report


def tidy_tree(path: Path | str, max_depth: int = 64, max_entries: int = 1_000_000) -> list[str]:
    """Keep only regular files and folders under path, at most max_depth folders deep, with no
    set-id or sticky bits: links, FIFOs, sockets and devices (which host-side tools would follow
    or block on) and anything deeper are removed. Returns what was removed, relative to path
    (names as the file system has them, undecodable bytes escaped). Never raises."""
    removed: list[str] = []
    try:
        top = os.open(path, _DIR)
    except OSError:
        return removed
    dev = os.fstat(top).st_dev
    pending: list[tuple[int, list[str], str]] = []      # per open level: (fd, subfolders to visit, rel)
    fd, rel, seen = top, "", 0
    while True:
        subdirs = []
        with contextlib.suppress(OSError), os.scandir(fd) as it:
            for entry in it:
                seen += 1
                if seen > max_entries:
                    break
                name, where = entry.name, f"{rel}{entry.name}"
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and len(pending) + 1 < max_depth and st.st_dev == dev:
                    subdirs.append(name)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    if stat.S_ISDIR(st.st_mode):             # too deep (or another file system): removed
                        if _subtree(fd, name, dev):
                            removed.append(where + "/")
                        continue
                else:
                    with contextlib.suppress(OSError):
                        _retry_writable(os.unlink, name, fd)
                        removed.append(where)
                    continue
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
                    with contextlib.suppress(OSError):
                        os.chmod(name, stat.S_IMODE(st.st_mode) & 0o777, dir_fd=fd, follow_symlinks=True)
        pending.append((fd, subdirs, rel))
        fd = -1
        while pending and fd < 0:
            pfd, todo, prel = pending[-1]
            if not todo or seen > max_entries:
                os.close(pfd)
                pending.pop()
                continue
            name = todo.pop()
            try:
                fd, rel = _open_dir(name, pfd), f"{prel}{name}/"
            except OSError:
                continue
        if fd < 0:
            return [os.fsdecode(r).encode("utf-8", "backslashreplace").decode() for r in removed]


def _subtree(fd: int, name: str, dev: int) -> bool:
    """Remove folder `name` below fd (tidy_tree's too-deep branch); whether it went."""
    report = Cleaned(Path(name))
    with contextlib.suppress(OSError):
        _remove_below(fd, name, report, time.monotonic() + DEADLINE_S, dev)
    return not report.failed
