"""The hook's input and output: Claude Code's PreToolUse JSON in, one line of JSON out, with an
explicit `allow` or `deny` for every call (anything unreadable is a deny). hooks/pre_tool_use.py
calls hook(); every exception it raises is a deny there."""
from __future__ import annotations

import json
import os

from .tools import decide


def render(allowed: bool, reason: str) -> str:
    """The hook's stdout: the PreToolUse decision in Claude Code's JSON shape (one line)."""
    return json.dumps({"hookSpecificOutput": {
        "hookEventName": "PreToolUse",
        "permissionDecision": "allow" if allowed else "deny",
        "permissionDecisionReason": ("autoresearch guard: " + reason)[:2000]}})


def hook(stdin: bytes, env=None) -> str:
    """One PreToolUse call: the JSON Claude Code sent in, the JSON decision out."""
    env = os.environ if env is None else env
    try:
        payload = json.loads(stdin)
    except ValueError:
        return render(False, "the hook input is not JSON")
    if not isinstance(payload, dict) or payload.get("hook_event_name") != "PreToolUse":
        return render(False, "the hook input is not a PreToolUse call")
    root = env.get("CLAUDE_PROJECT_DIR")
    if not root or not os.path.isabs(root) or not os.path.isdir(root):
        return render(False, "CLAUDE_PROJECT_DIR is not set to the project folder")
    return render(*decide(payload, root, env))
