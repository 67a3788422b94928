"""Observe a Claude Code CLI's contract offline: one short scripted session against a stand-in for
the Messages API on 127.0.0.1, with a recorder wired to every hook event.

It shows what the guard depends on -- the tools offered to the model, the fields each hook event
receives, the inputs of the tools the guard judges -- for the CLI actually installed, so `doctor`
can tell a harmless version bump from one that changes the trust boundary, and the contract test
(tests/e2e/test_cli_contract.py) can compare it with the record. Nothing leaves the machine: the
CLI runs with a private HOME, no non-essential traffic, and the API at a loopback port.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .scriptedapi import ScriptedAPI, message, tool_call
from .claudecontract import Contract, bundled_cli, changes, claude_cli, cli_version, tested

EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop")
JUDGED = ("Bash", "Read", "Edit", "Write", "Grep", "Glob", "LS", "NotebookEdit", "WebFetch", "WebSearch", "Agent")

_RECORDER = """import json, sys
event, log = sys.argv[1], sys.argv[2]
data = json.load(sys.stdin)
with open(log, "a") as f:
    f.write(json.dumps({"event": event, "fields": sorted(data)}) + "\\n")
if event == "PreToolUse":
    print(json.dumps({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}))
"""


class ProbeError(RuntimeError):
    """The CLI did not finish the scripted session; the message says what it printed."""


def _script(folder: Path) -> list[list[dict]]:
    """The model's turns: one call of each file tool and Bash, then the end of the turn."""
    notes = str(folder / "notes.txt")
    calls = [("Bash", {"command": "true"}), ("Read", {"file_path": notes}),
             ("Edit", {"file_path": notes, "old_string": "one", "new_string": "two", "replace_all": False}),
             ("Write", {"file_path": str(folder / "new.txt"), "content": "three\n"})]
    return [[tool_call(n, i)] for n, i in calls] + [[{"type": "text", "text": "done"}]]


class _Script:
    """Stateless about the conversation: the reply is the script's step N, where N is the number of
    assistant messages in the request; side requests (no tools) get a short text."""

    def __init__(self, turns: list[list[dict]]) -> None:
        self.turns, self.first_tools, self.lock = turns, None, threading.Lock()

    def __call__(self, body: dict) -> dict:
        content = [{"type": "text", "text": "ok"}]
        if body.get("tools"):
            with self.lock:
                self.first_tools = self.first_tools or body["tools"]
            step = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
            content = self.turns[min(step, len(self.turns) - 1)]
        return message(content, body.get("model", "claude"))


def observe(cli: Path, timeout: float = 120) -> Contract:
    """The contract `cli` shows in one offline session (a few seconds)."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-probe-") as tmp:
        root, home, log, rec = Path(tmp, "proj"), Path(tmp, "home"), Path(tmp, "hooks.jsonl"), Path(tmp, "rec.py")
        (root / ".claude").mkdir(parents=True)
        (home / ".claude").mkdir(parents=True)
        (root / "notes.txt").write_text("one\n")
        rec.write_text(_RECORDER)
        hooks = {e: [{"hooks": [{"type": "command", "command": f"'{sys.executable}' '{rec}' {e} '{log}'"}]}]
                 for e in EVENTS}
        (root / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))
        script = _Script(_script(root))
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        env.update(HOME=str(home), CLAUDE_CONFIG_DIR=str(home / ".claude"), ANTHROPIC_API_KEY="sk-ant-offline-probe",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1",
                   DISABLE_ERROR_REPORTING="1")
        with ScriptedAPI(script) as api:
            try:
                p = subprocess.run([str(cli), "-p", "go", "--output-format", "json"], cwd=root,
                                   env={**env, "ANTHROPIC_BASE_URL": api.url}, capture_output=True, text=True,
                                   timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired as e:
                raise ProbeError(f"{cli} did not finish an offline session in {timeout:.0f}s") from e
        if p.returncode != 0 or script.first_tools is None:
            raise ProbeError(f"{cli} failed an offline session (exit {p.returncode}): {(p.stderr or p.stdout)[-500:]}")
        fields: dict[str, set[str]] = {}
        for line in log.read_text().splitlines() if log.is_file() else []:
            seen = json.loads(line)
            fields.setdefault(seen["event"], set()).update(seen["fields"])
        schemas = {t["name"]: (t.get("input_schema") or {}).get("properties", {}) for t in script.first_tools}
        return Contract(version=cli_version(cli) or "?", tools=sorted(schemas),
                        hook_fields={e: sorted(f) for e, f in sorted(fields.items())},
                        tool_inputs={t: sorted(schemas[t]) for t in JUDGED if t in schemas})


def verdict() -> tuple[str, str, str]:
    """doctor's check: (level, found, fix) for the CLI a human's `claude` runs. Another version than
    CI's is run once offline and compared on what the guard depends on (the tools offered, the
    hook fields, the judged tools' inputs), so a harmless bump is no warning and a real change is named."""
    cli = claude_cli()
    if cli is None:
        return "fail", "no `claude` on PATH and no bundled CLI", "run scripts/bootstrap.sh (claude-agent-sdk bundles it)"
    ver, want = cli_version(cli), tested().version
    if ver is None:
        return ("fail", f"{cli} does not run (`--version` failed)",
                "reinstall it: scripts/bootstrap.sh (or pip install --force-reinstall claude-agent-sdk)")
    if ver == want:
        return "ok", f"{ver} at {cli} (the version CI tests)", ""
    bundled = bundled_cli()
    use = f"; the tested one is bundled at {bundled}" if bundled and bundled != cli and cli_version(bundled) == want \
        else ""
    try:
        seen = observe(cli)
    except ProbeError as e:
        return ("warn", f"{ver} at {cli}, CI tests {want}; the offline probe failed: {e}",
                f"run ./test.sh -m claude on this version{use}")
    diff = [d for d in changes(tested(), seen) if not d.startswith("version ")]
    if not diff:
        return "ok", f"{ver} at {cli} (CI tests {want}; the same tools, hook fields and tool inputs)", ""
    return ("warn", f"{ver} at {cli}, CI tests {want}; changed: " + "; ".join(diff),
            f"the guard was not checked against this{use}; see README 'Locked versions'")
