"""A legacy research repo, set up as a new user would: a fixture (tests/fixtures/) copied as a
clone, `git init` + commit, the bundle's `autoresearch` and the repo's own `./run.sh`, all with
the e2e environment (a throwaway HOME, the fake API's variables) so the signing key and the
CLI's config stay in the test's folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from e2e.harness import ROOT, Project, base_env
from e2e.story import Row, results

FIXTURES = ROOT / "tests" / "fixtures"
AUTORESEARCH = ROOT / ".venv" / "bin" / "autoresearch"
# 2 shared cores: one thread per torch process, or the tiny models spend their time in contention
THREADS = {"OMP_NUM_THREADS": "1"}


def clone(tmp: Path, fixture: str) -> Project:
    """tmp/repo: the fixture as `git clone` would leave it (one commit on main); tmp/home."""
    repo, home = tmp / "repo", tmp / "home"
    shutil.copytree(FIXTURES / fixture, repo, ignore=shutil.ignore_patterns("__pycache__", "out", "outputs"))
    (home / ".claude").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n\tname = Legacy Researcher\n\temail = lab@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    proj = Project(repo, home, {**base_env(home), **THREADS})
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "--no-verify", "-m", "the lab's repo, as cloned"]):
        subprocess.run(argv, cwd=repo, check=True, env=proj.env, capture_output=True)
    return proj


def sh(proj: Project, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A human's command in the repo (./run.sh, git, the bundle's autoresearch), with the e2e env."""
    p = subprocess.run(list(argv), cwd=proj.root, env=proj.env, capture_output=True, text=True, timeout=timeout)
    return p


def autoresearch(proj: Project, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AUTORESEARCH), *args], cwd=proj.root, env={**proj.env, "COLUMNS": "250"},
                          capture_output=True, text=True, timeout=timeout)


def add_to_front_matter(proj: Project, after: str, lines: str) -> None:
    """Edit program.md as a user would: insert `lines` after the first line `after` of the front matter."""
    path = proj.path("program.md")
    text = path.read_text()
    head, sep, body = text.partition("\n---\n")
    assert f"\n{after}\n" in head, f"{after!r} not in program.md's front matter"
    path.write_text(head.replace(f"\n{after}\n", f"\n{after}\n{lines.rstrip()}\n", 1) + sep + body)


def commit_setup(proj: Project) -> None:
    """init's step 2: commit program.md, scratchpad.md, run.sh, .claude, .gitignore on the user's branch."""
    for argv in (["git", "add", "program.md", "scratchpad.md", "run.sh", ".claude", ".gitignore"],
                 ["git", "commit", "-q", "--no-verify", "-m", "autoresearch setup"]):
        p = sh(proj, *argv)
        assert p.returncode == 0, p.stdout + p.stderr


def repo_venv(proj: Project) -> Path:
    """The lab's own venv, made as its README says: `python -m venv --system-site-packages .venv` and
    `pip install -r requirements.txt` (a pinned tabulate the bundle lacks). Its torch stands in for
    the lab's own install: a .pth onto the bundle's site-packages (torch is 700 MB to install again)."""
    venv = proj.root / ".venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
                         cwd=proj.root, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert pip.returncode == 0, f"pip could not install the fixture's pinned dependency: {pip.stderr[-2000:]}"
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig
    Path(purelib, "lab-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


class Clock:
    """Wall-clock marks from the clone on (a mark is kept at its first call: the CLI may retry a turn)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic() - self.t0)

    def report(self, fixture: str) -> str:
        return f"{fixture}: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.marks.items())


def rows(proj: Project, metric: str) -> list[Row]:
    return results(proj.root, metric=metric)


def editable_code(proj: Project) -> list[str]:
    """The files a snapshot covers, by the program's own matcher."""
    from autoresearch.program import load_program
    from autoresearch.record.identity import program_code
    return program_code(load_program(proj.root), proj.root)


def snapshot_at(proj: Project, commit: str) -> str:
    from autoresearch.record.identity import snapshot_at as at
    return at(proj.root, commit, editable_code(proj))
