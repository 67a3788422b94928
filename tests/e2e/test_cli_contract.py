"""The Claude Code CLI's contract with this project, observed live and compared with the record
(autoresearch/cli/claude_contract.json), through the same offline probe `doctor` uses
(autoresearch/cli/claudeprobe.py): its version, the tools it offers the model, the fields
each hook event receives and the input fields of the tools the guard judges.

A CLI upgrade (a new claude-agent-sdk in scripts/requirements.lock) that changes any of these fails
here, naming what changed, because the guard's allowed forms, its messages and the hooks' parsing
follow them. After checking the guard against the change, record the new contract with
`AUTORESEARCH_CONTRACT_OUT=autoresearch/cli/claude_contract.json ./test.sh tests/e2e/test_cli_contract.py`.
`scripts/lock.py --upgrade-check` sets the same variable to show a newer CLI's contract.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoresearch.cli.claudecontract import changes
from autoresearch.cli.claudecontract import tested as recorded
from autoresearch.cli.claudeprobe import EVENTS, observe

pytestmark = pytest.mark.claude

def test_the_cli_keeps_the_recorded_contract(claude_cli):
    seen = observe(claude_cli)
    out = os.environ.get("AUTORESEARCH_CONTRACT_OUT")
    if out:                                   # record (a human after checking) or report (the upgrade check)
        Path(out).write_text(seen.model_dump_json(indent=2) + "\n")
    diff = changes(recorded(), seen)
    assert not diff, ("the Claude Code CLI differs from the one this project was tested with:\n  "
                      + "\n  ".join(diff) + "\nCheck the guard (tools, hook fields), then record it: see this "
                      "file's docstring.")


def test_every_event_the_hooks_use_was_seen_and_tool_calls_carry_what_the_guard_reads(claude_cli):
    """Independent of the record: what the hooks themselves parse is really sent."""
    seen = observe(claude_cli)
    assert set(EVENTS) <= set(seen.hook_fields), seen.hook_fields
    common = {"session_id", "transcript_path", "cwd", "hook_event_name"}
    for event, got in seen.hook_fields.items():
        assert common <= set(got), (event, got)
    assert {"tool_name", "tool_input", "tool_use_id"} <= set(seen.hook_fields["PreToolUse"])
    assert {"stop_hook_active"} <= set(seen.hook_fields["Stop"])
    assert "command" in seen.tool_inputs["Bash"] and "file_path" in seen.tool_inputs["Read"]
    assert {"file_path", "old_string", "new_string"} <= set(seen.tool_inputs["Edit"])


def test_a_changed_contract_is_named_change_by_change():
    old = recorded()
    new = old.model_copy(update={"version": "9.9.9", "tools": [*old.tools, "Grep"],
                                 "hook_fields": {**old.hook_fields, "Stop": ["cwd"]}})
    diff = changes(old, new)
    assert diff[0] == f"version {old.version} -> 9.9.9"
    assert "tools offered to the model: added Grep" in diff
    assert any(d.startswith("Stop hook input fields: removed ") and "stop_hook_active" in d for d in diff)
    assert changes(old, old) == []
