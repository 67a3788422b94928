"""Helpers for the experiment-runner and evaluator tests: a throwaway project to run
./run.sh in, train.py variants, and the sandbox backends as pytest parameters."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "run.sh"
HONEST = (ROOT / "train.py").read_text()

# The backends, as parameters carrying their marker (a skip of a required group fails CI).
BACKENDS = [pytest.param("bwrap", marks=pytest.mark.bwrap, id="bwrap"),
            pytest.param("docker", marks=pytest.mark.docker, id="docker")]


def require_backend(request: pytest.FixtureRequest, name: str) -> None:
    """Skip (or fail in CI) when the backend is missing, through conftest's fixtures."""
    if name in ("bwrap", "docker"):
        request.getfixturevalue(f"{name}_available")


def program_text(train_seconds: float = 3, grace_seconds: float = 20, eval_seconds: float = 120,
                 memory_gb: float = 4, extra: str = "") -> str:
    """program.md with test-sized limits (the prose is irrelevant here)."""
    text = (ROOT / "program.md").read_text()
    for key, val in (("train_seconds", train_seconds), ("grace_seconds", grace_seconds),
                     ("eval_seconds", eval_seconds), ("memory_gb", memory_gb)):
        text, n = re.subn(rf"^(\s*{key}:)\s*[0-9.]+", rf"\g<1> {val}", text, count=1, flags=re.M)
        assert n == 1, key
    if extra:
        text = text.replace("\n---\n", f"\n{extra.rstrip()}\n---\n", 1)
    return text


def make_project(dest: Path, train_py: str = HONEST, git: bool = True, **program) -> Path:
    """A research project copy: train.py (given), prepare.py, program.md; committed in git."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "prepare.py", dest / "prepare.py")
    (dest / "program.md").write_text(program_text(**program))
    (dest / "train.py").write_text(HONEST)
    (dest / ".gitignore").write_text("runs/\n")
    if git:
        env = git_env()
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True, env=env)
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
        subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "project as cloned"], cwd=dest, check=True, env=env)
    (dest / "train.py").write_text(train_py)
    return dest


def git_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def run_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would point run.sh elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLAUDE_PROJECT_DIR", "AUTORESEARCH_TRAIN_SECONDS", "AUTORESEARCH_OUT",
                        "AUTORESEARCH_SEED", "PYTHONPATH")}
    env.update(extra)
    return env


def run_sh(project: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """./run.sh in the project (the repo's run.sh: it finds the project from the cwd)."""
    return subprocess.run([str(RUN_SH), *args], cwd=project, env=run_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def metrics(project: Path, run_id: str = "0001") -> dict:
    sys.path.insert(0, str(ROOT))
    from autoresearch.record.metrics import RunMetrics
    return RunMetrics.read(project / "runs" / run_id).model_dump(mode="json")


def log_of(project: Path, run_id: str = "0001") -> str:
    return (project / "runs" / run_id / "train.log").read_text(errors="replace")


def split_log(text: str) -> tuple[str, str]:
    """(TRAIN part, EVAL part) of a run's train.log."""
    head, sep, tail = text.partition("---- EVAL:")
    return head, (sep + tail if sep else "")


def with_main_prelude(code: str, prelude: str, epilogue: str = "", helpers: str = "") -> str:
    """train.py with `prelude` run first in main(), `epilogue` after the checkpoint is saved,
    and `helpers` (module-level code) defined before the main guard."""
    guard = '\nif __name__ == "__main__":\n    main()'
    assert "def main():\n" in code and guard in code
    body = lambda s: "\n".join("    " + ln for ln in (s.strip() or "pass").splitlines())  # noqa: E731
    defs = f"\n{helpers.strip()}\n\n\ndef _prelude():\n{body(prelude)}\n\n\ndef _epilogue():\n{body(epilogue)}\n\n"
    code = code.replace("def main():\n", "def main():\n    _prelude()\n", 1)
    return code.replace(guard, defs + guard + "\n    _epilogue()", 1)


def json_lines(text: str) -> list[dict]:
    out = []
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            pass
    return out
