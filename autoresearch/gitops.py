"""Trusted git: every call runs with the repository's hooks, fsmonitor and filters disabled,
so a git operation made by trusted code never executes repository-controlled code."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

# -c options that neutralise repository-controlled execution paths.
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.sshCommand=false",
    "diff.external=",
    "filter.lfs.process=",
    "protocol.allow=never",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
)


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words."""


def safe_git(root: Path) -> tuple[list[str], dict[str, str]]:
    """`git -C root` with SAFE_CONFIG, and an environment without the caller's GIT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_OPTIONAL_LOCKS="0")
    return ["git", "-C", str(root)] + [a for c in SAFE_CONFIG for a in ("-c", c)], env


def git(root: Path, *args: str, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `git -C root <args>` safely. Attributes-driven filters/textconv are disabled with --no-ext-diff
    and --no-textconv by callers that diff; push is never called by this project.
    `env`: extra variables set after the caller's GIT_* ones are dropped (e.g. GIT_INDEX_FILE)."""
    cmd, env_ = safe_git(root)
    env_.update(env or {})
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env_, input=input)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# --- Run-branch helpers (the loop's git vocabulary). Plain functions over `git()`. ---------

RUN_BRANCH_PREFIX = "autoresearch/"


def current_branch(root: Path) -> str | None:
    """The checked-out branch's short name, or None on a detached HEAD."""
    p = git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    return (p.stdout.strip() or None) if p.returncode == 0 else None


def is_run_branch(name: str | None) -> bool:
    return bool(name) and name.startswith(RUN_BRANCH_PREFIX)


def head_commit(root: Path) -> str | None:
    """The full sha of HEAD, or None in a repository without commits."""
    p = git(root, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
    return (p.stdout.strip() or None) if p.returncode == 0 else None


def ref_commit(root: Path, ref: str) -> str | None:
    p = git(root, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
    return (p.stdout.strip() or None) if p.returncode == 0 else None


def show_blob(root: Path, commit: str, path: str) -> bytes | None:
    """The bytes of `path` at `commit` (no filters, no textconv), or None if it is not there."""
    cmd = ["git", "-C", str(root)]
    for c in SAFE_CONFIG:
        cmd += ["-c", c]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(cmd + ["cat-file", "blob", f"{commit}:{path}"], capture_output=True, env=env)
    return proc.stdout if proc.returncode == 0 else None


def trailers(message: str) -> dict[str, str]:
    """`Key: value` trailers of a commit message's last paragraph (last value wins)."""
    paras = [p for p in message.strip().split("\n\n") if p.strip()]
    out: dict[str, str] = {}
    if len(paras) < 2:
        return out
    for line in paras[-1].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            out[key] = value.strip()
    return out


def git_dir(root: Path) -> Path:
    """The repository's git directory (absolute; a worktree's own one)."""
    return Path(git(root, "rev-parse", "--absolute-git-dir").stdout.strip())


def locked_index(root: Path) -> Path | None:
    """The index lock file when one exists: another git is running, or one was killed and left it."""
    lock = git_dir(root) / "index.lock"
    return lock if lock.exists() else None


def identity_env(root: Path) -> dict[str, str]:
    """Author/committer for commits made by trusted code: the repository's configured identity,
    else `autoresearch <autoresearch@localhost>` (so a machine without user.email still commits)."""
    found = dict(line.split(" ", 1) for line in
                 git(root, "config", "--get-regexp", r"^user\.(name|email)$", check=False).stdout.splitlines()
                 if " " in line)
    name, email = found.get("user.name", "").strip(), found.get("user.email", "").strip()
    if name and email:
        return {}
    name, email = name or "autoresearch", email or "autoresearch@localhost"
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def base_commit(root: Path) -> str | None:
    """The run branch's base commit: the newest commit on HEAD's first-parent line that the loop
    did not make (a keep commit carries an Autoresearch-Run trailer). On a user branch that is HEAD;
    on a run branch, the commit it started from (or a human's commit on it). What the human froze
    there -- the eval script -- runs from here, never from the work tree. None: no commit yet."""
    p = git(root, "log", "--first-parent", "--format=%H%x00%B%x00", "-n", "100000", check=False)
    if p.returncode != 0:
        return None
    parts = p.stdout.split("\x00")
    for sha, body in zip(parts[0::2], parts[1::2]):
        t = trailers(body)
        if "Autoresearch-Run" not in t and "Autoresearch-Runs" not in t:
            return sha.strip() or None
    return None


def tree_entries(root: Path, commit: str, paths: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob id) at `commit`, for those of `paths` that are blobs there (one git call)."""
    out: dict[str, tuple[str, str]] = {}
    if not paths:
        return out
    for line in git(root, "ls-tree", "-z", "--full-tree", commit, "--", *paths).stdout.split("\0"):
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob":
            out[path] = (parts[0], parts[2])
    return out


def tree_blobs(root: Path, commit: str, skip_top: set[str] = frozenset(), max_size: int | None = None):
    """(path, mode, bytes) of every blob committed at `commit`, exactly as stored: one `git cat-file
    --batch`, no filters or attributes (export-ignore, export-subst, eol, ident: repository-controlled
    rules never change what runs), modes b"100644" / b"100755" / b"120000" (a symlink: its target).
    Paths whose first part is in skip_top, submodules, and blobs over max_size bytes are left out."""
    base, env = safe_git(root)
    listing = subprocess.run(base + ["ls-tree", "-r", "-z", "--full-tree", "-l", commit], capture_output=True,
                             env=env, check=True).stdout
    entries = []
    for rec in listing.split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, sha, size = meta.split()
        rel = os.fsdecode(path)
        if kind != b"blob" or rel.split("/", 1)[0] in skip_top or \
                (max_size is not None and mode != b"120000" and int(size) > max_size):
            continue
        entries.append((rel, mode, sha))
    if not entries:
        return
    with subprocess.Popen(base + ["cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=env) as p:
        assert p.stdin is not None and p.stdout is not None
        for rel, mode, sha in entries:
            p.stdin.write(sha + b"\n")
            p.stdin.flush()
            header = p.stdout.readline().split()
            data = p.stdout.read(int(header[2])) if len(header) == 3 else b""
            p.stdout.read(1)
            yield rel, mode, data
        p.stdin.close()

