"""Scenario: the agent searches a legacy source tree as it habitually does. The bundled CLI
offers no Grep or Glob tool (tests/e2e/test_cli_contract.py), so the model searches through
Bash; the guard lets a recursive grep over a folder it may read whole run, and the result
reaches the model. A search from the project root, which would walk into .git and runs/, is
refused with the same search over the parts it may read."""
from __future__ import annotations

import pytest

from e2e.fake_api import FakeAPI, bash, end_turn, say
from e2e.harness import Project, run_claude

pytestmark = [pytest.mark.claude, pytest.mark.slow]

TREE = {
    "src/tinylm/__init__.py": "",
    "src/tinylm/data/loader.py": "def load_shards(path):\n    return []\n",
    "src/tinylm/model/__init__.py": "from .layers.rope import rotary_embedding\n",
    "src/tinylm/model/layers/rope.py": "import math\n\n\ndef rotary_embedding(x, theta=10000.0):\n    return x\n",
    "src/tinylm/model/layers/mlp.py": "def mlp(x):\n    return x\n",
}


def test_one_grep_finds_a_function_three_levels_down(project: Project, fake: FakeAPI) -> None:
    for rel, text in TREE.items():
        project.path(rel).parent.mkdir(parents=True, exist_ok=True)
        project.path(rel).write_text(text)
    search = 'grep -rn "def rotary_embedding" src'
    from_root = "grep -rn rotary_embedding ."
    fake.script = [
        say("Where is the rotary embedding defined?") + bash(search),
        bash(from_root),
        end_turn("Found it in src/tinylm/model/layers/rope.py."),
    ]
    run = run_claude(project, fake.url, "Find where rotary_embedding is defined.",
                     env={"AUTORESEARCH_MAX_EXPERIMENTS": "0"}, timeout=300)
    assert run.result["subtype"] == "success", run.describe()
    assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(fake.script) - 1

    got = {r.input.get("command"): r for r in fake.results() if r.name == "Bash"}
    found = got[search]
    assert not found.is_error, found.text
    assert "src/tinylm/model/layers/rope.py:4:def rotary_embedding(x, theta=10000.0):" in found.text, found.text
    assert "mlp" not in found.text and "loader" not in found.text

    refused = got[from_root]
    assert refused.is_error and "autoresearch guard" in refused.text, refused.text
    assert "would reach what is off limits" in refused.text, refused.text
    suggestion = refused.text.rsplit("search the parts you may read: `", 1)[1].split("`")[0].split()
    assert suggestion[:2] == ["grep", "-rn"] and "src" in suggestion and ".git" not in suggestion, refused.text
