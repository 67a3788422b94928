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
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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
    """A scripted Messages API on 127.0.0.1: the first turn calls the tool; the reply to the
    second records what the tool call returned."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "_Model":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, body: dict) -> dict:
        content: list[dict] = [{"type": "text", "text": "ok"}]
        messages = body.get("messages") or []
        if body.get("tools"):                       # the session itself, not a side call (a title)
            self.requests += 1
            for m in messages:
                for b in m.get("content") if isinstance(m.get("content"), list) else []:
                    if isinstance(b, dict) and b.get("type") == "tool_result":
                        self.result = b
            if not any(m.get("role") == "assistant" for m in messages):
                content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": "Bash",
                            "input": {"command": COMMAND, "description": "autoresearch canary"}}]
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": body.get("model") or "canary", "content": content,
                "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}

    def _handler(self):
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, data: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, b"{}", "application/json")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    body = {}
                if self.path.split("?")[0].endswith("/count_tokens"):
                    self._send(200, b'{"input_tokens": 1}', "application/json")
                    return
                msg = model.reply(body if isinstance(body, dict) else {})
                if model.result is not None:        # seen: end the session here, before any Stop hook
                    self._send(400, json.dumps({"type": "error", "error": {
                        "type": "invalid_request_error", "message": "autoresearch canary: done"}}).encode(),
                        "application/json")
                    return
                if isinstance(body, dict) and body.get("stream"):
                    self._send(200, _sse(msg), "text/event-stream")
                else:
                    self._send(200, json.dumps(msg).encode(), "application/json")

        return Handler


def _sse(msg: dict) -> bytes:
    """The Message as server-sent events, as the streaming API sends it."""
    ev = [("message_start", {"type": "message_start", "message": dict(msg, content=[], stop_reason=None)})]
    for i, b in enumerate(msg["content"]):
        if b["type"] == "text":
            ev += [("content_block_start", {"type": "content_block_start", "index": i,
                                            "content_block": {"type": "text", "text": ""}}),
                   ("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": {"type": "text_delta", "text": b["text"]}})]
        else:
            ev += [("content_block_start", {"type": "content_block_start", "index": i,
                                            "content_block": dict(b, input={})}),
                   ("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": {"type": "input_json_delta", "partial_json": json.dumps(b["input"])}})]
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    ev += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"],
                                                                  "stop_sequence": None},
                              "usage": {"output_tokens": 1}}),
           ("message_stop", {"type": "message_stop"})]
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in ev)


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
    from .doctor import Check, claude_cli
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
