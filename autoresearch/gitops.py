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


def git(root: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `git -C root <args>` safely. Attributes-driven filters/textconv are disabled with --no-ext-diff
    and --no-textconv by callers that diff; push is never called by this project."""
    cmd = ["git", "-C", str(root)]
    for c in SAFE_CONFIG:
        cmd += ["-c", c]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_OPTIONAL_LOCKS="0")
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, input=input)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# --- Run-branch helpers (the loop's git vocabulary). Plain functions over `git()`. ---------

RUN_BRANCH_PREFIX = "autoresearch/"


def current_branch(root: Path) -> str | None:
    """The checked-out branch's short name, or None on a detached HEAD."""
    p = git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    return p.stdout.strip() or None if p.returncode == 0 else None


def is_run_branch(name: str | None) -> bool:
    return bool(name) and name.startswith(RUN_BRANCH_PREFIX)


def head_commit(root: Path) -> str | None:
    """The full sha of HEAD, or None in a repository without commits."""
    p = git(root, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
    return p.stdout.strip() or None if p.returncode == 0 else None


def ref_commit(root: Path, ref: str) -> str | None:
    p = git(root, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
    return p.stdout.strip() or None if p.returncode == 0 else None


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
