"""Run the real Claude Code CLI against the fake Messages API, in a throwaway copy
of the project, with a throwaway HOME: nothing of the machine's user is read or
written, nothing leaves 127.0.0.1, and the folder is never marked trusted.

The copy is the CURRENT working tree (tracked files plus untracked ones git does
not ignore), committed once in a fresh repository on `main`, so the tests see
what is on disk now rather than the last commit. `.venv` is a symlink to the
real one: the hooks run `$CLAUDE_PROJECT_DIR/.venv/bin/python`, and installing
per test would cost minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
CLI = VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "claude_agent_sdk" / "_bundled" / "claude"
DEFAULT_TIMEOUT = 180.0


def cli_path() -> Path | None:
    """The Claude Code binary bundled in the claude-agent-sdk wheel, if installed."""
    try:
        import claude_agent_sdk
        p = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    except ImportError:
        p = CLI
    return p if p.is_file() and os.access(p, os.X_OK) else None


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def working_tree_files(src: Path = ROOT) -> list[str]:
    """Tracked files that still exist, plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=src, check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and os.path.lexists(src / f)})


@dataclass
class Project:
    """A temporary copy of the project, its private HOME, and the CLI's environment."""
    root: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def git(self, *args: str) -> str:
        return _git(self.root, *args)

    def eval_log(self, run_id: str) -> str:
        """What run_id's model servers printed: the human-only log in the state folder (outside the project)."""
        from autoresearch.record.flows import state_dir
        from autoresearch.record.layout import state_id
        return (Path(state_dir(state_id(self.root), self.env)) / "logs" / run_id / "eval.log").read_text()

    def branch(self) -> str:
        return self.git("rev-parse", "--abbrev-ref", "HEAD").strip()


def make_project(dest: Path, src: Path = ROOT) -> Project:
    """Copy the working tree into dest/repo, commit it on `main`, and make dest/home."""
    repo, home = dest / "repo", dest / "home"
    repo.mkdir(parents=True)
    for rel in working_tree_files(src):
        s, d = src / rel, repo / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink():
            os.symlink(os.readlink(s), d)
        elif s.is_file():
            shutil.copy2(s, d)
    if (src / ".venv").exists():
        os.symlink((src / ".venv").resolve(), repo / ".venv")
    (home / ".claude").mkdir(parents=True)
    # The user's own git identity, as a researcher's machine has one; our code must not need more.
    (home / ".gitconfig").write_text("[user]\n\tname = E2E Researcher\n\temail = e2e@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    genv = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=genv)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=genv)
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "research repo as cloned"],
                   cwd=repo, check=True, env=genv)
    return Project(repo, home, base_env(home))


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment: nothing from the caller's Claude Code session or account
    (CLAUDECODE, ANTHROPIC_*, a real HOME) leaks into the CLI under test."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    try:                                   # the prepared corpus, read from the real cache
        sys.path.insert(0, str(ROOT))
        import prepare
        cache = str(prepare.CACHE_DIR)
    except Exception:                      # noqa: BLE001 - the run will say what is missing
        cache = str(Path.home() / ".cache" / "autoresearch")
    env.update({
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "ANTHROPIC_API_KEY": "sk-ant-e2e-fake",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "AUTORESEARCH_CACHE": cache,
    })
    return env


@dataclass
class ClaudeRun:
    """One CLI invocation: exit status, the stream-json events, and the final result."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    events: list[dict[str, Any]]

    @property
    def result(self) -> dict[str, Any]:
        """The final `result` event (subtype, is_error, num_turns, session_id, permission_denials)."""
        for e in reversed(self.events):
            if e.get("type") == "result":
                return e
        raise AssertionError(f"no result event; rc={self.returncode}\nstdout:\n{self.stdout[-3000:]}"
                             f"\nstderr:\n{self.stderr[-3000:]}")

    def notices(self) -> str:
        """What hooks told the human (a `systemMessage` shows up as an informational event)."""
        return "\n".join(str(e.get("content", "")) for e in self.events
                         if e.get("type") == "system" and e.get("subtype") == "informational")

    def describe(self) -> str:
        """For assertion messages: what happened, briefly."""
        return (f"rc={self.returncode} in {self.seconds:.1f}s\nstderr tail:\n{self.stderr[-2000:]}\n"
                f"last events:\n" + "\n".join(json.dumps(e)[:400] for e in self.events[-6:]))


def run_claude(project: Project, api_url: str, prompt: str | None, *args: str,
               env: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
               cli: Path | None = None) -> ClaudeRun:
    """`claude -p PROMPT --output-format stream-json --verbose ARGS...` in the project.

    Never `--bare` (it disables hooks) and no permission-skipping flag: the guard's
    explicit `allow` is what lets allowed actions through in an untrusted folder."""
    binary = cli or cli_path()
    if binary is None:
        raise FileNotFoundError("the Claude Code CLI bundled with claude-agent-sdk is not installed")
    assert "--bare" not in args, "--bare disables every hook"
    full_env = dict(project.env, ANTHROPIC_BASE_URL=api_url, **(env or {}))
    argv = [str(binary), "-p", *([prompt] if prompt is not None else []),
            "--output-format", "stream-json", "--verbose", *args]
    t0 = time.monotonic()
    out, err, rc = _run(argv, project.root, full_env, timeout)
    events = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return ClaudeRun(argv, rc, out, err, time.monotonic() - t0, events)


def run_python(project: Project, *args: str, env: dict[str, str] | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the project's interpreter (e.g. `-m autoresearch overnight`) with the e2e env."""
    argv = [str(project.root / ".venv" / "bin" / "python"), *args]
    out, err, rc = _run(argv, project.root, dict(project.env, **(env or {})), timeout)
    return subprocess.CompletedProcess(argv, rc, out, err)


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[str, str, int]:
    """Run in a new process group; on timeout kill the whole group (the CLI, its hooks, a
    training run) and fail with what it printed."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{Path(argv[0]).name} did not finish within {timeout:.0f}s\n"
                             f"stderr:\n{err[-3000:]}\nstdout:\n{out[-3000:]}") from None
    return out, err, proc.returncode
