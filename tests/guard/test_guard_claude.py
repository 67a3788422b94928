"""The guard inside the real Claude Code CLI: the wiring and permissions in .claude/settings.json
are accepted, denials reach the model with their reason, and allowed calls run in a folder that
was never trusted (so only the hook's explicit `allow` can let them through)."""
from __future__ import annotations

import json

import pytest

from conftest import need
from e2e.fake_api import FakeAPI, bash, edit, end_turn, read, tool
from e2e.harness import cli_path, make_project, run_claude

pytestmark = pytest.mark.claude


@pytest.fixture
def guarded(tmp_path):
    """A project copy whose settings keep only the guard's keys (PreToolUse + permissions),
    byte for byte, so this test does not depend on the loop's hooks."""
    need("claude", cli_path() is not None, "the Claude Code CLI bundled in claude-agent-sdk is missing")
    proj = make_project(tmp_path)
    path = proj.path(".claude/settings.json")
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({"permissions": settings["permissions"],
                                "hooks": {"PreToolUse": settings["hooks"]["PreToolUse"]}}))
    return proj


def test_real_cli_obeys_the_guard(guarded) -> None:
    calls = [
        bash("pip install requests"),
        bash("wc -l train.py"),
        edit("prepare.py", "EVAL_BATCH = 16", "EVAL_BATCH = 1"),
        edit("train.py", "N_LAYER = 2", "N_LAYER = 3"),
        read(str(guarded.home / ".ssh" / "id_rsa")),
        bash("cat train.py > copy.py"),
        tool("Agent", {"description": "x", "prompt": "pip install requests", "subagent_type": "general-purpose"}),
        tool("WebFetch", {"url": "http://127.0.0.1:9/", "prompt": "summarise"}),
        bash('"comm"\\and touch pwned'),               # one word to bash: `command touch pwned`
        bash("git log -n 1", run_in_background=True),
    ]
    with FakeAPI([*calls, end_turn("done")], project=str(guarded.root)) as api:
        run = run_claude(guarded, api.url, "go")
        results = {json.dumps(r.input, sort_keys=True): r for r in api.results()}
    assert len(results) == len(calls), run.describe()
    got = list(results.values())

    def outcome(i: int):
        return got[i].is_error, got[i].text

    for r in got:
        print(r.name, r.is_error, r.text[:300])
    err, text = outcome(0)
    assert err and "pip is disabled" in text, text
    err, text = outcome(1)
    assert not err and "train.py" in text, text
    err, text = outcome(2)
    assert err and "EVAL_BATCH = 16" in guarded.read("prepare.py"), text
    err, text = outcome(3)
    assert not err and "N_LAYER = 3" in guarded.read("train.py"), text
    err, text = outcome(4)                      # permissions.deny answers this one before the hook
    assert err and ("credentials" in text or "denied by your permission settings" in text), text
    err, text = outcome(5)
    assert err and "redirection" in text and not guarded.path("copy.py").exists(), text
    err, text = outcome(6)
    assert err, text
    err, text = outcome(7)
    assert err and "web access is off" in text, text
    err, text = outcome(8)
    assert err and "whole word" in text and not guarded.path("pwned").exists(), text
    err, text = outcome(9)
    assert err and "background" in text, text
    assert run.result["subtype"] == "success", run.describe()
