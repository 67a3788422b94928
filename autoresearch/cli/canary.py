"""The canary: before a night (and in `doctor`), prove that the guard is really in the session.

Claude Code runs without a plugin it cannot load (a moved marketplace folder: "failed to load")
and without hooks whose wiring is gone, and says nothing to the agent: the night would run
unguarded. So a short session is started exactly as the night's (the same CLI, settings sources,
plugin, environment), but talking to a scripted model on 127.0.0.1 -- offline, free, the same
every time -- that makes one tool call the guard must deny (`echo autoresearch-canary`, harmless
if it ran). The canary passes only when that call came back denied with the guard's own reason;
run, denied by something else, or no answer at all: the night does not start, and the message
names the fix.

The session ends right after that one call: the scripted model answers the request that carries
its result with an error, so the turn never ends normally and the Stop hook decides nothing.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .scriptedapi import ScriptedAPI, message, tool_call

COMMAND = "echo autoresearch-canary"
GUARD_SAYS = "autoresearch guard: echo is not a command you can run"     # the guard's deny, word for word
TIMEOUT_S = 180.0                   # a first plugin session may install its dependencies (SessionStart)
FIX = ("the guard's hooks did not run in a Claude Code session started like the night's, so nothing would stop "
       "the agent. Fix: in a project, `autoresearch init` (wires .claude/settings.json), or `autoresearch init "
       "--plugin` with the plugin installed from a folder that stays put (see README: As a plugin): "
       "`claude plugin marketplace add ~/.local/share/autoresearch/marketplace`, then `claude plugin install "
       "autoresearch@autoresearch`; `claude plugin list` must not say \"failed to load\". "
       "Then run `autoresearch doctor` again")


class CanaryResult(BaseModel):
    """What the canary saw: ok only when the guard denied its call, in its own words."""
    ok: bool
    found: str                      # what came back for the call (or why nothing did)
    fix: str = ""


class _Model:
    """The scripted model: the first turn calls the tool; the request that carries its result is
    recorded and answered with an error, so the session ends there."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.requests = 0
        self._api = ScriptedAPI(self.reply)

    @property
    def url(self) -> str:
        return self._api.url

    def __enter__(self) -> "_Model":
        self._api.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._api.__exit__()

    def reply(self, body: dict) -> dict | None:
        content: list[dict] = [{"type": "text", "text": "ok"}]
        messages = body.get("messages") or []
        if body.get("tools"):                       # the session itself, not a side call (a title)
            self.requests += 1
            for m in messages:
                for b in m.get("content") if isinstance(m.get("content"), list) else []:
                    if isinstance(b, dict) and b.get("type") == "tool_result":
                        self.result = b
            if not any(m.get("role") == "assistant" for m in messages):
                content = [tool_call("Bash", {"command": COMMAND, "description": "autoresearch canary"})]
        if self.result is not None:                 # seen: end the session here, before any Stop hook
            return None
        return message(content, body.get("model") or "canary")


def _text(result: dict) -> str:
    c = result.get("content", "")
    if isinstance(c, list):
        c = "\n".join(b.get("text", "") for b in c if isinstance(b, dict))
    return str(c)


def run_canary(options_for, timeout: float = TIMEOUT_S) -> CanaryResult:
    """canary(), from synchronous code (doctor)."""
    return asyncio.run(canary(options_for, timeout))


async def canary(options_for, timeout: float = TIMEOUT_S) -> CanaryResult:
    """One canary session. `options_for(env, max_turns)` builds the SDK options exactly as the
    night's, with `env` (the scripted model's address, a placeholder key) laid over its environment."""
    with _Model() as model:
        env = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-ant-autoresearch-canary",
               "ANTHROPIC_AUTH_TOKEN": "", "CLAUDE_CODE_USE_BEDROCK": "", "CLAUDE_CODE_USE_VERTEX": "",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        try:
            await asyncio.wait_for(_session(options_for(env, 2)), timeout)
        except asyncio.TimeoutError:
            if model.result is None:
                return CanaryResult(ok=False, found=f"the canary session gave no answer within {timeout:.0f} s "
                                                    "(a plugin's first session installs its dependencies: if it "
                                                    "was still installing, start again)", fix=FIX)
        except Exception as e:              # noqa: BLE001 - a CLI that does not start: the night would not either
            if model.result is None:
                first = str(e).splitlines()[0][:200] if str(e) else ""
                return CanaryResult(ok=False, found=f"the canary session failed: {type(e).__name__}: {first}", fix=FIX)
        got = model.result
    if got is None:
        return CanaryResult(ok=False, found="the canary's tool call never came back to the model", fix=FIX)
    text = _text(got)
    if got.get("is_error") and GUARD_SAYS in text:
        return CanaryResult(ok=True, found=f"`{COMMAND}` was denied by the guard")
    what = "was denied, but not by the guard" if got.get("is_error") else "RAN: no guard stopped it"
    return CanaryResult(ok=False, found=f"`{COMMAND}` {what} ({' '.join(text.split())[:160]!r})", fix=FIX)


async def _session(options) -> None:
    """Connect, give the prompt, read to the end (ClaudeSDKClient: can_use_tool needs its streaming mode)."""
    from claude_agent_sdk import ClaudeSDKClient
    client = ClaudeSDKClient(options=options)
    try:
        await client.connect()
        await client.query("autoresearch canary: make the one tool call you are given.")
        async for _ in client.receive_response():
            pass
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 30)
        except Exception:               # noqa: BLE001 - the session is over either way
            pass


def check_canary(root: Path, program=None):
    """doctor's check: the canary in a session started as `claude` in this project starts one (the
    user's, the project's and the local settings; the plugins the user enabled): the guard must deny
    its one call. Reading the wiring is not enough: a plugin Claude Code cannot load is skipped
    without a word to the agent."""
    from .claudecontract import claude_cli
    from .checks import Check
    cli = claude_cli()
    if cli is None:
        return Check(name="hooks: canary", level="fail", found="no Claude Code CLI to start a session with",
                     fix="pip install claude-agent-sdk (it bundles the CLI), or install Claude Code")
    if not (root / "program.md").is_file():
        return Check(name="hooks: canary", level="fail", found="no program.md: the hooks stay off in this folder",
                     fix="autoresearch init")
    from claude_agent_sdk import ClaudeAgentOptions

    def options_for(env: dict[str, str], turns: int):
        return ClaudeAgentOptions(cwd=str(root), setting_sources=["user", "project", "local"],
                                  permission_mode="default", disallowed_tools=["Agent", "Task"],
                                  env={**env, "CLAUDE_PROJECT_DIR": str(root)}, cli_path=str(cli), max_turns=turns)
    res = run_canary(options_for)
    return Check(name="hooks: canary", level="ok" if res.ok else "fail", found=res.found,
                 fix="" if res.ok else (res.fix or FIX))
