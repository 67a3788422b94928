"""`git grep` and `git ls-files` against real git: what git really reads is what the guard judged.

Every regular file of a guard test world carries a marker; its index tracks the source and, as a
careless repo might, a secret, an eval log and a run's out/ file (tests/guard/test_guard.py:
World). For each command, real `git grep -l MARK ...` (run by bash, from the same folder) lists
every file git searched. Whatever the guard decided, git searched only tracked files (never the
untracked one), within what `git ls-files` lists for the same pathspecs (the guard's model of its
reach); and when the guard allowed the command, git searched nothing off limits."""
from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from test_guard import World, payload, run_hook

MARK = "zqmark"
HIDDEN = {"config/.env", "runs/0001/eval.log", "runs/0001/out/model.txt"}     # tracked, and off limits
UNTRACKED = "data/untracked.txt"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("gitsearch"))
    for dirpath, dirs, files in os.walk(w.root):
        dirs[:] = [d for d in dirs if d not in (".venv", "autoresearch", "hooks", ".claude")]
        for f in files:
            p = Path(dirpath) / f
            if f != ".git" and p.is_file() and not p.is_symlink():
                with open(p, "a") as fh:
                    fh.write(f"\n{MARK}\n")
    return w


def _cases() -> list[tuple[str, str]]:
    """(folder below the project, command): flags in combinations, pathspecs before and after --."""
    specs = ["", "src", "-- src", "-- src notes", "src notes", "-- config", "config", "-- runs", "runs/0001",
             "a.txt data/untracked.txt", "-- data", "-- .", ". --"]
    flags = ["-l", "-il", "-lw", "-lF", "-l -n"]
    out = [(".", f"git grep {f} -e {MARK} {s}".strip()) for f, s in zip(itertools.cycle(flags), specs)]
    out += [(".", f"git grep -l {MARK} {s}".strip()) for s in specs]
    out += [("src", f"git grep -l {MARK}"), ("src", f"git grep -l {MARK} -- ../notes"),
            ("src", f"git grep -l {MARK} -- ../config"), ("notes", f"git grep -l {MARK} ideas.txt")]
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def results(world: World) -> list[tuple[str, str, str, set[str], set[str]]]:
    """(folder, command, guard decision, files git grep searched, files git ls-files lists), project-relative."""
    out = []
    for where, command in CASES:
        cwd = world.root / where
        got = run_hook(world.root, payload(world, "Bash", {"command": command}, cwd=cwd), world.env)
        real = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=world.env)
        assert real.returncode in (0, 1) or (real.returncode == 128 and not real.stdout), f"{command}: {real.stderr}"
        spec = command.split(MARK, 1)[1].split()
        listed = subprocess.run(["git", "ls-files", "-z", "--", *[s for s in spec if s != "--"]], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout.split("\0")

        def rel(names: list[str]) -> set[str]:
            return {os.path.relpath(os.path.normpath(cwd / n), world.root) for n in names if n}
        out.append((where, command, got.decision, rel(real.stdout.splitlines()), rel(listed)))
    return out


def test_git_grep_reads_only_what_the_guard_judged(results) -> None:
    for where, command, decision, searched, listed in results:
        assert UNTRACKED not in searched, (where, command, searched)
        assert searched <= listed, (where, command, searched - listed)
        if decision == "allow":
            assert not searched & HIDDEN, (where, command, searched & HIDDEN)
    # not vacuous: some commands reach a hidden file (all denied), and some allowed ones search files
    assert any(s & HIDDEN for *_, s, _ in results)
    assert sum(d == "allow" and bool(s) for _, _, d, s, _ in results) >= 8


def test_a_revision_is_never_searched(world: World) -> None:
    """With a commit, `git grep PATTERN REV` would search that commit's tree: the guard refuses any
    operand before -- that is no file here, so none can name a revision."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "checkout", "-qb", "master"], cwd=world.root, check=True, env=world.env)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=world.root, check=True, env=world.env)
    (world.root / "master").write_text(f"{MARK}\n")        # a file that is also a branch's name
    for command in (f"git grep -l {MARK} HEAD", f"git grep -l -e {MARK} HEAD -- src", f"git grep -n {MARK} main",
                    f"git grep -l {MARK} master --", f"git grep -l -e {MARK} master -- src"):
        got = world.bash(command)
        assert got.decision == "deny" and "as a revision" in got.reason or "as revisions" in got.reason, (command, got)
    real = subprocess.run(["bash", "-c", "git grep -l API_KEY master --"], cwd=world.root, capture_output=True,
                          text=True, env=world.env)
    assert real.returncode == 0 and "master:config/.env" in real.stdout.split()    # what the guard keeps it from
