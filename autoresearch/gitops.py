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
