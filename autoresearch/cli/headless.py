"""One headless Claude Code session, through claude-agent-sdk, for `autoresearch overnight`.

- permissions are fail-closed: anything the guard did not explicitly allow reaches `can_use_tool`,
  which denies it; the Agent/Task tools (hooks are reported not to fire inside subagents) are
  removed entirely;
- an error no retry can fix (the API refuses the credentials, the plan has no credit, the model
  does not exist) ends the session at once, with the fix in the message: the CLI's own retries are
  cut short as soon as one reports such a status. Only transient errors end as `error` (resumed);
- at the deadline the loop is paused, the agent gets a grace period, then it is interrupted.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from .nightstate import NightView as Night

# Errors that waiting will not fix: (HTTP status or the SDK's error kind) -> what the human must do.
FIX_AUTH = ("log in again (`claude`, then /login) or set a valid ANTHROPIC_API_KEY, then start again "
            "with `autoresearch overnight --resume`")
FATAL_STATUS = {
    401: f"the API refused the credentials (HTTP 401). Fix: {FIX_AUTH}",
    403: "the API key may not use this model or resource (HTTP 403). Fix: check the key's organisation "
         "and permissions, or choose another --model",
    404: "the API does not know this model (HTTP 404). Fix: check --model (or the default model) and start again",
}
FATAL_KIND = {
    "authentication_failed": FATAL_STATUS[401],
    "model_not_found": FATAL_STATUS[404],
    "billing_error": "the API refused for billing (no credit or plan limit). Fix: add credit or check the "
                     "plan, then `autoresearch overnight --resume`",
}


def fatal_error(status: int | str | None, kind: str | None) -> str | None:
    """What to do, when an API error cannot be fixed by retrying; None for a transient one."""
    try:
        code = int(status) if status is not None else None
    except (TypeError, ValueError):
        code = None
    return FATAL_STATUS.get(code) if code in FATAL_STATUS else FATAL_KIND.get(kind or "")


class SessionEnd(BaseModel):
    kind: str                          # finished | error | deadline | fatal
    detail: str = ""
    session_id: str | None = None


def options(night: "Night", resume: str | None, env: dict[str, str] | None = None, max_turns: int | None = None):
    """The SDK options: the project's own settings (or the bundle as a plugin), fail-closed permissions.
    `env` is laid over the night's environment and `max_turns` bounds the session (the canary's)."""
    from claude_agent_sdk import ClaudeAgentOptions
    from claude_agent_sdk import PermissionResultDeny

    async def deny_unguarded(tool: str, inp: dict[str, Any], ctx) -> PermissionResultDeny:
        night.log("deny", f"{tool}: not explicitly allowed by the guard, so denied")
        return PermissionResultDeny(message="autoresearch: this was not allowed by the guard, so it is denied. "
                                            "Stay within program.md's rules.")

    def stderr(line: str) -> None:
        if line.strip():
            night.log("cli", line.strip()[:300])

    return ClaudeAgentOptions(
        cwd=str(night.root), setting_sources=["project"], permission_mode="default",
        disallowed_tools=["Agent", "Task"], can_use_tool=deny_unguarded, resume=resume, model=night.model,
        env={**night.env, "CLAUDE_PROJECT_DIR": str(night.root), **(env or {})}, stderr=stderr,
        cli_path=night.cli_path, plugins=[{"type": "local", "path": night.plugin}] if night.plugin else [],
        max_turns=max_turns)


def on_message(night: "Night", msg: Any) -> None:
    """Count, log and save what one SDK message says; an unfixable API error sets night.fatal."""
    from claude_agent_sdk import AssistantMessage, ResultMessage, SystemMessage, UserMessage
    from claude_agent_sdk import TextBlock, ToolResultBlock, ToolUseBlock
    st = night.state
    if isinstance(msg, SystemMessage) and msg.subtype == "init":
        sid = msg.data.get("session_id")
        if sid and sid != st.session_id:
            st.session_id = sid
            night.log("session", f"id {sid}")
    elif isinstance(msg, SystemMessage) and msg.subtype == "api_retry":
        status, kind = msg.data.get("error_status"), msg.data.get("error")
        night.log("api-retry", f"attempt {msg.data.get('attempt')}: {status} {kind}")
        night.fatal = night.fatal or fatal_error(status, kind)
    elif isinstance(msg, AssistantMessage):
        night.log_decisions()          # a Stop hook decision happens between two assistant messages
        st.turns += 1
        for b in msg.content:
            if isinstance(b, ToolUseBlock):
                st.tool_calls += 1
                arg = b.input.get("command") or b.input.get("file_path") or b.input.get("url") or ""
                st.last_action = f"{b.name} {str(arg)[:120]}".strip()
                night.log("tool", st.last_action)
            elif isinstance(b, TextBlock) and b.text.strip():
                night.log("say", b.text.strip()[:300])
        if msg.error:
            night.log("api-error", str(msg.error))
            night.fatal = night.fatal or fatal_error(None, msg.error)
    elif isinstance(msg, UserMessage) and isinstance(msg.content, list):
        for b in msg.content:
            if isinstance(b, ToolResultBlock) and b.is_error:
                text = b.content if isinstance(b.content, str) else json.dumps(b.content)[:300]
                night.log("denied", str(text)[:300])
    elif isinstance(msg, ResultMessage):
        night.log_decisions()
        if msg.is_error:
            night.fatal = night.fatal or fatal_error(msg.api_error_status, None)
        st.cost_usd += msg.total_cost_usd or 0.0
        st.session_id = msg.session_id or st.session_id
        night.log("result", f"{msg.subtype} is_error={msg.is_error} turns={msg.num_turns} "
                           f"{(msg.result or '')[:200]}")
    night.save()


async def session(night: "Night", prompt: str) -> SessionEnd:
    """One connection: start or resume the session, and wait for its end, the deadline (pause, grace, then
    interrupt) or an unfixable error."""
    from claude_agent_sdk import ClaudeSDKClient, ResultMessage
    from claude_agent_sdk import CLINotFoundError, ClaudeSDKError
    night.state.sessions += 1
    resume = night.state.session_id
    night.log("start", f"{'resuming ' + resume if resume else 'new session'}: {prompt[:160]}")
    night.save()
    client = ClaudeSDKClient(options=options(night, resume))
    result: list[ResultMessage] = []

    async def consume() -> None:
        await client.connect()
        await client.query(prompt)
        async for msg in client.receive_response():
            on_message(night, msg)
            if isinstance(msg, ResultMessage):
                result.append(msg)
            if night.fatal:           # no use waiting out the CLI's own retries
                return

    task = asyncio.ensure_future(consume())
    try:
        done, _ = await asyncio.wait({task}, timeout=max(night.seconds_left(), 0))
        if not done:
            night.pause_for_deadline()
            done, _ = await asyncio.wait({task}, timeout=night.grace_s)
            if not done:
                night.log("deadline", f"the agent did not stop within {night.grace_s:.0f} s: interrupting")
                try:
                    await asyncio.wait_for(client.interrupt(), 30)
                except Exception:
                    pass
                done, _ = await asyncio.wait({task}, timeout=30)
                if not done:
                    task.cancel()
                return SessionEnd(kind="deadline", detail="interrupted at the deadline",
                                  session_id=night.state.session_id)
        try:
            task.result()
        except CLINotFoundError:
            raise
        except (ClaudeSDKError, OSError) as e:
            if not night.fatal:
                return SessionEnd(kind="error", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                                  session_id=night.state.session_id)
        if night.fatal:
            return SessionEnd(kind="fatal", detail=night.fatal, session_id=night.state.session_id)
        r = result[-1] if result else None
        if r is None:
            return SessionEnd(kind="error", detail="the CLI ended without a result",
                              session_id=night.state.session_id)
        if r.is_error:
            why = (r.result or r.subtype or "error")[:200]
            if r.api_error_status:
                why = f"API error {r.api_error_status}: {why}"
            return SessionEnd(kind="error", detail=why, session_id=r.session_id)
        return SessionEnd(kind="finished", detail=(r.result or "")[:200], session_id=r.session_id)
    finally:
        if not task.done():
            task.cancel()
        try:
            await asyncio.wait_for(client.disconnect(), 30)
        except Exception:
            pass
