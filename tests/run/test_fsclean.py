"""Cleanup that what it cleans cannot stop (issue 24): fsclean removes and tidies hostile trees
(depth beyond recursion and PATH_MAX, chmod 000, links, FIFOs, sockets, many entries, names that
are not UTF-8) without raising; what will not go is set aside; and the next run starts."""
from __future__ import annotations

import os
import random
import socket
import stat
import sys
from pathlib import Path

import pytest

from autoresearch.fsclean import remove_tree, tidy_tree


def deep_chain(top: Path, depth: int, name: bytes = b"d") -> None:
    """depth nested folders below top, made with openat: the path outgrows PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    with open(os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"x")
    os.close(fd)


def hostile_tree(top: Path, rng: random.Random, outside: Path) -> int:
    """A random tree of everything agent code can make; returns how many entries it made."""
    top.mkdir(parents=True, exist_ok=True)
    folders, n = [top], 0
    for _ in range(rng.randint(20, 120)):
        parent = rng.choice(folders)
        raw = bytes(rng.choice(b"abc\xff\xfe\n -") for _ in range(rng.randint(1, 12)))
        name = os.fsdecode(raw.replace(b"/", b"_") or b"x")
        p = parent / name
        if os.path.lexists(p):
            continue
        kind = rng.choice(["dir", "dir", "file", "link-out", "link-loop", "fifo", "socket", "ro-file"])
        try:
            if kind == "dir":
                p.mkdir()
                folders.append(p)
            elif kind in ("file", "ro-file"):
                p.write_bytes(b"z" * rng.randint(0, 100))
                if kind == "ro-file":
                    p.chmod(0)
            elif kind == "link-out":
                p.symlink_to(outside)
            elif kind == "link-loop":
                p.symlink_to(p)
            elif kind == "fifo":
                os.mkfifo(p)
            else:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.bind(os.fsencode(p))
                except OSError:
                    continue                            # path too long for a socket address
                finally:
                    s.close()
            n += 1
        except OSError:
            continue
    if rng.random() < 0.5:
        deep_chain(rng.choice(folders), rng.choice([300, 3000]))
    for d in sorted(rng.sample(folders, k=min(len(folders), rng.randint(0, 6))), key=lambda f: -len(f.parts)):
        if d != top:                                    # the deepest first: a parent's 000 hides its children
            d.chmod(rng.choice([0, 0o100, 0o400, 0o500]))
    return n


@pytest.fixture
def outside(tmp_path):
    o = tmp_path / "outside"
    o.mkdir()
    (o / "precious").write_text("keep me")
    return o


def test_a_3000_deep_tree_is_removed_without_recursion(tmp_path):
    (tmp_path / "t").mkdir()
    deep_chain(tmp_path / "t", 3000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)                          # nothing here may recurse per level
    try:
        r = remove_tree(tmp_path / "t")
    finally:
        sys.setrecursionlimit(limit)
    assert r.gone and r.failed == 0 and r.removed == 3002 and r.line() == ""


@pytest.mark.parametrize("seed", range(12))
def test_hostile_trees_are_removed_and_nothing_outside_is_touched(tmp_path, outside, seed):
    rng = random.Random(seed)
    hostile_tree(tmp_path / "t", rng, outside)
    r = remove_tree(tmp_path / "t")
    assert r.gone and r.failed == 0, r.line()
    assert (outside / "precious").read_text() == "keep me" and stat.S_IMODE(outside.stat().st_mode) != 0


def test_many_entries_in_one_folder(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(20000):
        os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        if i % 1000 == 0:
            os.mkdir(f"d{i}", dir_fd=fd)
    os.close(fd)
    r = remove_tree(d)
    assert r.gone and r.removed == 20000 + 20 + 1


def test_what_will_not_go_is_set_aside_and_reported(tmp_path, monkeypatch):
    """A tree that cannot be removed (here: os.rmdir refuses) is renamed out of the way."""
    t = tmp_path / "scratch"
    (t / "a" / "b").mkdir(parents=True)
    real = os.rmdir

    def refuse(name, *, dir_fd=None):
        if os.fsdecode(name) == "b":
            raise PermissionError(1, "Operation not permitted")
        return real(name, dir_fd=dir_fd)
    monkeypatch.setattr(os, "rmdir", refuse)
    r = remove_tree(t)
    assert not os.path.lexists(t) and r.set_aside is not None and (r.set_aside / "a" / "b").is_dir()
    assert r.failed >= 1 and "set aside as" in r.line() and "cannot remove 'b'" in r.line()


def test_tidy_keeps_files_and_folders_and_cuts_what_is_too_deep(tmp_path, outside):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"w")
    (out / "sub" / "x.bin").write_bytes(b"w")
    (out / "link").symlink_to(outside / "precious")
    os.mkfifo(out / "sub" / "fifo")
    (out / os.fsdecode(b"bad\xffname")).write_bytes(b"w")
    deep_chain(out, 3000)
    removed = tidy_tree(out, max_depth=64)
    assert sorted(removed) == ["d/" * 64, "link", "sub/fifo"], removed
    assert (out / "model.pt").is_file() and (out / "sub" / "x.bin").is_file()
    assert not (out / "link").is_symlink() and not (out / "sub" / "fifo").exists()
    assert (outside / "precious").read_text() == "keep me"
    assert remove_tree(out).gone


@pytest.mark.parametrize("seed", range(6))
def test_the_next_run_starts_after_any_hostile_leftovers(tmp_path, outside, seed):
    """A killed run's scratch and out/ hold a hostile tree: the next run's start (sweep_scratch,
    a new run folder, its work copy) neither raises nor is stopped by it."""
    from autoresearch.record.layout import Layout, allocate_run_dir, clean_out, sweep_scratch
    from autoresearch.run.workcopy import remove_work_copy, work_copy
    root = tmp_path / "proj"
    (root / "runs" / "0001" / ".sandbox" / "work").mkdir(parents=True)
    (root / "train.py").write_text("print(1)\n")
    rng = random.Random(100 + seed)
    hostile_tree(root / "runs" / "0001" / ".sandbox" / "work" / "train", rng, outside)
    hostile_tree(root / "runs" / "0001" / "out", rng, outside)
    os.utime(root / "runs" / "0001" / ".sandbox", (0, 0))   # old: a killed runner's, not one being set up
    assert sweep_scratch(root) == ["0001"]
    assert not (root / "runs" / "0001" / ".sandbox").exists()
    clean_out(root / "runs" / "0001" / "out")
    run = allocate_run_dir(root)
    lay = Layout(root, run, "train.py", {"train.py": b"print(2)\n"}, base="")
    lay.hold()
    work = work_copy(lay, "train")
    hostile_tree(work / "junk", rng, outside)
    assert remove_work_copy(work).gone
    assert lay.cleanup() == "" and not lay.scratch.exists()
    assert (outside / "precious").read_text() == "keep me"
