"""The Claude Code CLI this project was tested with, as data: its version, the tools it offers the
model and the fields its hooks receive (claude_contract.json, beside this file).

The CLI is part of the trust boundary (it decides which tools the agent has, how hooks are called
and how plugins load), and it is pinned through claude-agent-sdk in scripts/requirements.lock.
tests/e2e/test_cli_contract.py checks a live run against this record and names what an upgrade
changed; `doctor` says whether the CLI in use is the tested one.

`python -m autoresearch.cli.claudecontract` prints the bundled CLI's version and that verdict.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

CONTRACT_FILE = Path(__file__).with_name("claude_contract.json")


class Contract(BaseModel):
    """What one CLI version showed in an offline run (see tests/e2e/test_cli_contract.py)."""
    version: str
    tools: list[str]                        # tool names in the model's first request, sorted
    hook_fields: dict[str, list[str]]       # hook event -> the top-level fields of its stdin JSON
    tool_inputs: dict[str, list[str]]       # tool -> the fields of tool_input a PreToolUse hook sees


def tested() -> Contract:
    return Contract.model_validate_json(CONTRACT_FILE.read_text())


def changes(old: Contract, new: Contract) -> list[str]:
    """What differs between two records, one line per change, in words a reviewer can act on."""
    out = []
    if old.version != new.version:
        out.append(f"version {old.version} -> {new.version}")

    def sets(what: str, a: list[str], b: list[str]) -> None:
        added, gone = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        if added:
            out.append(f"{what}: added {', '.join(added)}")
        if gone:
            out.append(f"{what}: removed {', '.join(gone)}")

    sets("tools offered to the model", old.tools, new.tools)
    for event in sorted(set(old.hook_fields) | set(new.hook_fields)):
        sets(f"{event} hook input fields", old.hook_fields.get(event, []), new.hook_fields.get(event, []))
    for tool in sorted(set(old.tool_inputs) | set(new.tool_inputs)):
        sets(f"{tool} tool_input fields", old.tool_inputs.get(tool, []), new.tool_inputs.get(tool, []))
    return out


def bundled_cli() -> Path | None:
    """The CLI inside the installed claude-agent-sdk wheel (the locked one)."""
    try:
        import claude_agent_sdk
    except ImportError:
        return None
    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def claude_cli() -> Path | None:
    """The CLI a human's `claude` runs: `claude` on PATH, else the bundled one."""
    on_path = shutil.which("claude")
    return Path(on_path) if on_path else bundled_cli()


def cli_version(cli: Path, timeout: float = 60) -> str | None:
    """`claude --version`'s number, or None when it does not run."""
    env = {**os.environ, "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    try:
        p = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = p.stdout.split()
    return words[0] if p.returncode == 0 and words else None


def main() -> int:
    cli = bundled_cli()
    if cli is None:
        print("none (claude-agent-sdk is not installed)")
        return 1
    ver, want = cli_version(cli), tested().version
    print(f"{ver} ({'the tested version' if ver == want else f'NOT the tested {want}'}) at {cli}")
    return 0 if ver == want else 1


if __name__ == "__main__":
    sys.exit(main())
