"""The documented `claude -p` overnight recipe (docs/overnight.md), run as written: real CLI, the
project's real hooks, a folder never trusted, the fake API. It ends when the loop lets the agent
stop, and after a CLI crash it resumes the same session."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import need
from e2e.fake_api import FakeAPI, bash, end_turn, human, say
from e2e.harness import cli_path, make_project

pytestmark = pytest.mark.claude
ROOT = Path(__file__).resolve().parents[2]


def recipe() -> str:
    doc = (ROOT / "docs" / "overnight.md").read_text()
    block = re.search(r"overnight.sh: begin.*?```bash\n(.*?)```", doc, re.S)
    assert block, "docs/overnight.md lost its overnight.sh block"
    return block.group(1)


def run_recipe(tmp_path: Path, script, hours: str = "0.05"):
    need("claude", cli_path() is not None, "the Claude Code CLI bundled in claude-agent-sdk is missing")
    proj = make_project(tmp_path)
    (proj.root / "overnight.sh").write_text(recipe())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(cli_path(), bindir / "claude")
    with FakeAPI(script(proj), project=str(proj.root)) as api:
        env = dict(proj.env, ANTHROPIC_BASE_URL=api.url, AUTORESEARCH_MAX_EXPERIMENTS="0", RETRY_SECONDS="1",
                   PATH=f"{bindir}:{proj.env['PATH']}")
        p = subprocess.run(["bash", "overnight.sh", hours], cwd=proj.root, env=env, capture_output=True,
                           text=True, timeout=300)
    return proj, api, p


def test_recipe_runs_until_the_loop_lets_the_agent_stop(tmp_path):
    proj, api, p = run_recipe(tmp_path, lambda proj: [say("Looking.") + bash("ls"), end_turn("Done.")])
    assert p.returncode == 0, p.stdout + p.stderr
    [ls] = api.results()
    assert not ls.is_error                         # allowed by the guard in a never-trusted folder
    log = proj.read(".autoresearch/claude-p.log")
    assert "the loop let the agent stop" in log and '"is_error":false' in log.replace(" ", "")
    assert not (proj.root / ".autoresearch" / "PAUSE").exists()


def _claude_in(root: Path) -> list[int]:
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{d}/cwd") == str(root) and b"claude" in Path(f"/proc/{d}/cmdline").read_bytes():
                out.append(int(d))
        except OSError:
            continue
    return out


def test_recipe_resumes_the_same_session_after_a_crash(tmp_path):
    killed: list[int] = []

    def script(proj):
        def crash() -> None:
            if not killed:
                for pid in _claude_in(proj.root):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return [say("First.") + bash("ls"), human(crash) + say("Again.") + bash("ls -a"), end_turn("Done.")]
    proj, api, p = run_recipe(tmp_path, script)
    assert killed and p.returncode == 0, p.stdout + p.stderr
    log = proj.read(".autoresearch/claude-p.log")
    m = re.search(r"claude exited (\d+); resuming session ([0-9a-f-]+)", log)
    assert m and m.group(1) != "0", log[-2000:]
    sessions = set(re.findall(r'"session_id": ?"([0-9a-f-]+)"', log))
    assert sessions == {m.group(2)}, sessions      # one conversation all along
    assert "the loop let the agent stop" in log
