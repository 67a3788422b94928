"""The Claude Code CLI's contract with this project, observed live and compared with the record
(autoresearch/cli/claude_contract.json): its version, the tools it offers the model, the fields
each hook event receives and the input fields of the tools the guard judges.

A CLI upgrade (a new claude-agent-sdk in scripts/requirements.lock) that changes any of these fails
here, naming what changed, because the guard's allowed forms, its messages and the hooks' parsing
follow them. After checking the guard against the change, record the new contract with
`AUTORESEARCH_CONTRACT_OUT=autoresearch/cli/claude_contract.json ./test.sh tests/e2e/test_cli_contract.py`.
`scripts/lock.py --upgrade-check` sets the same variable to show a newer CLI's contract.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from autoresearch.cli.claudecontract import Contract, changes, cli_version
from autoresearch.cli.claudecontract import tested as recorded
from e2e.fake_api import FakeAPI, bash, edit, end_turn, read, write
from e2e.harness import Project, base_env, run_claude

pytestmark = pytest.mark.claude

EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop")
JUDGED = ("Bash", "Read", "Edit", "Write", "Grep", "Glob", "NotebookEdit", "WebFetch", "WebSearch", "Agent")

RECORDER = """import json, sys
event = sys.argv[1]
data = json.load(sys.stdin)
with open(sys.argv[2], "a") as f:
    f.write(json.dumps({"event": event, "data": data}) + "\\n")
if event == "PreToolUse":
    print(json.dumps({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}))
"""


def _recording_project(tmp: Path) -> tuple[Project, Path]:
    """A folder whose settings wire a recorder for every event: it logs each hook's stdin whole
    (and allows every tool, so the scripted calls run)."""
    root, home, log = tmp / "proj", tmp / "home", tmp / "hooks.jsonl"
    (root / ".claude").mkdir(parents=True)
    home.mkdir()
    (root / "notes.txt").write_text("one\n")
    rec = tmp / "record.py"
    rec.write_text(RECORDER)
    hooks = {e: [{"hooks": [{"type": "command", "command": f"{sys.executable} {rec} {e} {log}"}]}] for e in EVENTS}
    (root / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))
    return Project(root, home, base_env(home)), log


def observe(tmp: Path, claude: Path) -> Contract:
    proj, log = _recording_project(tmp)
    script = [bash("echo hi"), read("notes.txt"), edit("notes.txt", "one", "two"),
              write("new.txt", "three\n"), end_turn("done")]
    with FakeAPI(script, project=str(proj.root)) as api:
        run = run_claude(proj, api.url, "go", cli=claude)
        first = api.main_requests[0].body
    assert run.result["subtype"] == "success", run.describe()
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    fields: dict[str, set[str]] = {}
    for s in seen:
        fields.setdefault(s["event"], set()).update(s["data"])
    schemas = {t["name"]: t.get("input_schema", {}).get("properties", {}) for t in first["tools"]}
    return Contract(version=cli_version(claude) or "?", tools=sorted(schemas),
                    hook_fields={e: sorted(f) for e, f in sorted(fields.items())},
                    tool_inputs={t: sorted(schemas[t]) for t in JUDGED if t in schemas})


def test_the_cli_keeps_the_recorded_contract(tmp_path, claude_cli):
    seen = observe(tmp_path, claude_cli)
    out = os.environ.get("AUTORESEARCH_CONTRACT_OUT")
    if out:                                   # record (a human after checking) or report (the upgrade check)
        Path(out).write_text(seen.model_dump_json(indent=2) + "\n")
    diff = changes(recorded(), seen)
    assert not diff, ("the Claude Code CLI differs from the one this project was tested with:\n  "
                      + "\n  ".join(diff) + "\nCheck the guard (tools, hook fields), then record it: see this "
                      "file's docstring.")


def test_every_event_the_hooks_use_was_seen_and_tool_calls_carry_what_the_guard_reads(tmp_path, claude_cli):
    """Independent of the record: what the hooks themselves parse is really sent."""
    seen = observe(tmp_path, claude_cli)
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
