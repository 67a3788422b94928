"""The writable work copy each stage runs in: legacy code writes into its own tree (nanoGPT's
out_dir, Hydra's outputs/, wandb/), so the project's read-only mount alone crashes it. A fresh
copy per stage (TRAIN, each EVAL model server, `final`'s under the same names as EVAL's) under the
run's scratch in the project's state folder, OUTSIDE the project (flows: stage scratch), mounted
writable at its own host path (the same under every backend, `none` included), counted against
sandbox.disk_gb like out/, and removed when the stage ends: nothing written there reaches the
project, the agent or a later stage; only TRAIN's $AUTORESEARCH_OUT (runs/NNNN/out/) outlives it.

What it holds (the rule README documents):
    tracked files   the run's base commit (HEAD when the run started), copied byte for byte --
                    never hard links, which a write in place would carry into the project
    the snapshot    the run's editable set on top (a file the snapshot records as absent is removed)
    run.outputs     each one a real, writable folder holding only its tracked files: what
                    earlier runs by hand left there (nanoGPT's out/ckpt.pt) is not shown
    the rest        every untracked or ignored entry of the project (.venv, data/, checkpoints)
                    is a symlink to the project's own, which the sandbox shows read-only;
                    runs/, .git and .autoresearch are left out; a tracked blob over LINK_OVER
                    bytes is linked too (read-only), not copied
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..fsclean import Cleaned, remove_tree
from ..gitops import git, head_commit, tree_blobs
from ..record import RUNS_DIR, STATE_DIR, Layout, private_dir

LEFT_OUT = {RUNS_DIR, ".git", STATE_DIR}     # never in a work copy, not even as a link
LINK_OVER = 64 << 20                         # a tracked blob this big is linked read-only, not copied


def empty_work(lay: Layout, name: str) -> Path:
    """A stage's work copy as a new empty folder, for a sandbox started before it is filled (a warm
    holder's, a cold TRAIN's: trainstage.py); work_copy(in_place=True) fills it."""
    dest = lay.scratch / "work" / name
    if dest.exists() or dest.is_symlink():
        remove_work_copy(dest)
    private_dir(dest.parent)
    dest.mkdir()
    return dest


def work_copy(lay: Layout, name: str, in_place: bool = False) -> Path:
    """A fresh writable copy of the project snapshot for one stage (`train`, `eval-0`, ...), at
    <state>/runs/NNNN/work/<name>, outside the project. `in_place`: into that folder as it is (a
    warm TRAIN's sandbox already mounts it), which must be an empty folder."""
    dest = lay.scratch / "work" / name
    if in_place:
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise RuntimeError(f"{dest} is not an empty folder: cannot fill it as a work copy")
    else:
        empty_work(lay, name)
    if lay.base is None:                       # fixed by the first stage: every stage copies one tree
        lay.base = head_commit(lay.root) or ""
    if lay.base:
        _copy_tree(lay.root, lay.base, dest)
    for rel, data in sorted(lay.snapshot.items()):
        put_file(dest, rel, data)
    if lay.script_copy.is_file():
        put_file(dest, lay.script, lay.script_copy.read_bytes())
    for rel in lay.outputs:
        real_folder(dest, rel)
    _link_rest(lay.root, dest, {rel for rel, data in lay.snapshot.items() if data is None}, lay.outputs)
    return dest


def remove_work_copy(path: Path) -> Cleaned:
    """Remove a stage's work copy whatever agent code left in it (fsclean: any depth, chmod 000,
    links, FIFOs, odd names); one that will not go is set aside, so the next stage starts."""
    return remove_tree(path)


_read: tuple[tuple[str, str], list[tuple[str, bytes, bytes]]] | None = None   # the last tree read
KEEP_UP_TO = 256 << 20                          # a tree this big is read again for each copy, not kept


def _blobs(root: Path, commit: str):
    """tree_blobs for (root, commit); a tree of up to KEEP_UP_TO bytes is read once per process: a
    run's three work copies (TRAIN and two model servers) copy one commit, so git is asked once."""
    global _read
    key = (str(root), commit)
    if _read is not None and _read[0] == key:
        yield from _read[1]
        return
    _read, kept, size = None, [], 0
    for rel, mode, data in tree_blobs(root, commit, LEFT_OUT, LINK_OVER):
        size += len(data)
        if size <= KEEP_UP_TO:
            kept.append((rel, mode, data))
        else:
            kept.clear()
        yield rel, mode, data
    if size <= KEEP_UP_TO:
        _read = key, kept


def _copy_tree(root: Path, commit: str, dest: Path) -> None:
    """The committed tree's files into dest, byte for byte (gitops.tree_blobs: no filters, no
    attributes), modes kept, symlinks recreated; submodules and blobs over LINK_OVER are linked
    by _link_rest instead."""
    for rel, mode, data in _blobs(root, commit):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == b"120000":
            os.symlink(os.fsdecode(data), target)
        else:
            target.write_bytes(data)
            if mode == b"100755":
                target.chmod(0o755)


def real_folder(dest: Path, rel: str | Path) -> Path:
    """dest/rel and its parents as real folders of the copy: a link on the way (an untracked
    folder) would carry a write into the project."""
    cur = dest
    for part in Path(rel).parts:
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            cur.unlink()
        cur.mkdir(exist_ok=True)
    return cur


def put_file(dest: Path, rel: str, data: bytes | None) -> None:
    """One snapshot file into the copy (None: absent, removed), its parents real folders."""
    target = real_folder(dest, Path(rel).parent) / Path(rel).name
    if target.is_symlink() or target.is_file():
        target.unlink()
    if data is not None:
        target.write_bytes(data)


def _link_rest(root: Path, dest: Path, absent: set[str], outputs: tuple[str, ...] = ()) -> None:
    """Every project entry the copy lacks, as a link to the project's own (shown read-only),
    walking only the folders the copy has: an untracked folder is one link, however big. A file
    the snapshot records as absent stays absent; nothing is linked into a run.outputs folder."""
    fresh = [Path(o) for o in outputs]
    for d, dirs, files in os.walk(dest):
        here = Path(d)
        rel = here.relative_to(dest)
        src = root / rel
        if src.is_symlink() or not src.is_dir() or any(rel == o or o in rel.parents for o in fresh):
            continue
        have = set(dirs) | set(files)
        try:
            names = os.listdir(src)
        except OSError:
            continue
        for n in names:
            if n in have or (rel == Path(".") and n in LEFT_OUT) or str(rel / n) in absent:
                continue
            os.symlink(src / n, here / n)


_READ_ONLY = re.compile(r"(?:Read-only file system|Permission denied): ['\"]([^'\"]+)['\"]")


def read_only_hint(lay: Layout, reason: str) -> str:
    """For a crash on a write into a folder the work copy links read-only (an untracked folder of
    the project: a stale out/), the fix; else "". The path is read from the crash line as Python
    prints it, relative to the work copy or under it."""
    m = _READ_ONLY.search(reason)
    if m is None:
        return ""
    path = m.group(1)
    marker = f"{lay.scratch}/work/"
    if path.startswith(marker):
        path = path[len(marker):].split("/", 1)[-1]
    elif path.startswith(str(lay.root) + "/"):
        path = path[len(str(lay.root)) + 1:]
    elif path.startswith("/"):
        return ""
    parts = [x for x in Path(path).parts if x not in (".", "")]
    if ".." in parts:
        return ""
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        if rel in lay.outputs or rel.split("/", 1)[0] in LEFT_OUT:
            return ""
        if (lay.root / rel).exists() and not _tracked(lay.root, rel):
            return (f" ({rel}/ is an untracked folder of the project, shown to runs read-only: list it in "
                    f"program.md's run.outputs to give each run its own empty, writable one)"
                    if (lay.root / rel).is_dir() else
                    f" ({rel} is an untracked file of the project, shown to runs read-only)")
    return ""


def _tracked(root: Path, rel: str) -> bool:
    p = git(root, "ls-files", "-z", "--", rel, check=False)
    return p.returncode == 0 and bool(p.stdout)

