"""A scripted stand-in for the Anthropic Messages API, so the real Claude Code CLI
(with its real tools and our real hooks) can run offline and deterministically.

The server is stateless about the conversation: the reply to a request is step N
of the script, where N is the number of assistant messages already in the
request. So a Stop hook that blocks, a retried request, or a resumed session
(`--continue`) all land on the right step without the server keeping a cursor.

A script reads like the research session it plays:

    script = [
        say("Baseline first.") + bash('./run.sh -m "baseline"'),
        edit("scratchpad.md", "(none yet", "0.85 baseline (none yet"),
        end_turn("Baseline recorded."),
    ]

Requests that are not the agent's main conversation (title or summary requests,
token counting, small-model side calls) are answered without consuming a step.
Every request is recorded for assertions (`FakeAPI.requests`, `FakeAPI.main_requests`).
"""
from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------
# The script: what the model "says" each turn


@dataclass(frozen=True)
class Block:
    """One content block of an assistant reply: text, or a tool call."""
    kind: str                                  # "text" | "tool_use" | "action"
    text: str = ""
    name: str = ""
    input: dict[str, Any] | Callable[[str], dict[str, Any]] = field(default_factory=dict)
    action: Callable[[], None] | None = None   # "action": runs in the server when the turn is served

    def resolved_input(self, project: str) -> dict[str, Any]:
        """Tool inputs may depend on the project path (Edit needs an absolute file_path)."""
        return self.input(project) if callable(self.input) else dict(self.input)


@dataclass(frozen=True)
class Turn:
    """One assistant reply. With tool calls it stops for `tool_use`, else it ends the turn."""
    blocks: tuple[Block, ...] = ()

    def __add__(self, other: "Turn") -> "Turn":
        return Turn(self.blocks + other.blocks)

    @property
    def tool_calls(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "tool_use"]

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool_calls else "end_turn"


def say(text: str) -> Turn:
    return Turn((Block("text", text=text),))


def end_turn(text: str = "Done for this turn.") -> Turn:
    """A reply with no tool call: the model ends its turn (and the Stop hook runs)."""
    return say(text)


def human(action: Callable[[], None]) -> Turn:
    """Something the researcher does while the model is thinking (e.g. pause the loop).
    It runs when this turn is served, before the reply is sent; it must be idempotent,
    since the CLI may retry a request."""
    return Turn((Block("action", action=action),))


def tool(name: str, input: dict[str, Any] | Callable[[str], dict[str, Any]]) -> Turn:
    return Turn((Block("tool_use", name=name, input=input),))


def bash(command: str, description: str | None = None, **extra: Any) -> Turn:
    inp: dict[str, Any] = {"command": command, **extra}
    if description:
        inp["description"] = description
    return tool("Bash", inp)


def _abs(project: str, path: str) -> str:
    return path if path.startswith("/") else f"{project.rstrip('/')}/{path}"


def read(path: str) -> Turn:
    return tool("Read", lambda p: {"file_path": _abs(p, path)})


def edit(path: str, old: str, new: str, replace_all: bool = False) -> Turn:
    return tool("Edit", lambda p: {"file_path": _abs(p, path), "old_string": old,
                                   "new_string": new, "replace_all": replace_all})


def write(path: str, content: str) -> Turn:
    return tool("Write", lambda p: {"file_path": _abs(p, path), "content": content})


# ---------------------------------------------------------------------------
# Reading requests


def is_main_request(body: dict[str, Any]) -> bool:
    """The agent's own conversation carries the tool definitions; side calls
    (titles, summaries, quota checks, small-model helpers) do not."""
    return bool(body.get("tools"))


def count_assistant(body: dict[str, Any]) -> int:
    return sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def block_text(block: dict[str, Any]) -> str:
    """The text of a text block or of a tool_result's content (string or blocks)."""
    if block.get("type") == "text":
        return block.get("text", "")
    c = block.get("content", "")
    if isinstance(c, str):
        return c
    return "\n".join(b.get("text", "") for b in c if isinstance(b, dict))


@dataclass
class ToolResult:
    tool_use_id: str
    name: str
    input: dict[str, Any]
    text: str
    is_error: bool


def tool_results(body: dict[str, Any]) -> list[ToolResult]:
    """Every tool call in the conversation paired with what the model got back."""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    out: list[ToolResult] = []
    for m in body.get("messages", []):
        for b in _blocks(m.get("content")):
            if b.get("type") == "tool_use":
                calls[b["id"]] = (b.get("name", ""), b.get("input", {}))
            elif b.get("type") == "tool_result":
                name, inp = calls.get(b.get("tool_use_id", ""), ("?", {}))
                out.append(ToolResult(b.get("tool_use_id", ""), name, inp, block_text(b),
                                      bool(b.get("is_error"))))
    return out


def user_texts(body: dict[str, Any]) -> list[str]:
    """All text the model was shown outside tool results: prompts, hook feedback,
    system-role context messages, in order."""
    out: list[str] = []
    for m in body.get("messages", []):
        if m.get("role") == "assistant":
            continue
        for b in _blocks(m.get("content")):
            if b.get("type") == "text":
                out.append(b.get("text", ""))
    return out


def system_text(body: dict[str, Any]) -> str:
    s = body.get("system", "")
    return s if isinstance(s, str) else "\n".join(b.get("text", "") for b in s if isinstance(b, dict))


# ---------------------------------------------------------------------------
# Writing replies


def _message(turn: Turn, model: str, project: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A complete Message and its content blocks (with ids and resolved inputs)."""
    content: list[dict[str, Any]] = []
    for b in turn.blocks:
        if b.kind == "action":
            continue
        if b.kind == "text":
            content.append({"type": "text", "text": b.text})
        else:
            content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                            "name": b.name, "input": b.resolved_input(project)})
    msg = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
           "model": model, "content": content, "stop_reason": turn.stop_reason,
           "stop_sequence": None,
           "usage": {"input_tokens": 10, "output_tokens": 10,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
    return msg, content


def _sse(msg: dict[str, Any], content: list[dict[str, Any]]) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = []
    start = dict(msg, content=[], stop_reason=None, usage=dict(msg["usage"], output_tokens=1))
    events.append(("message_start", {"type": "message_start", "message": start}))
    for i, b in enumerate(content):
        if b["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": b["text"]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": dict(b, input={})}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": json.dumps(b["input"])}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": msg["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


# ---------------------------------------------------------------------------
# The server


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    main: bool
    step: int | None = None                     # the script step served (main requests)
    error: int | None = None                    # the HTTP error status served instead, if any


REFUSALS = {401: ("authentication_error", "invalid x-api-key"),
            403: ("permission_error", "Your API key does not have permission to use the specified resource."),
            404: ("not_found_error", "model: claude-no-such-model")}


class FakeAPI:
    """The server. Use as a context manager; `url` goes into ANTHROPIC_BASE_URL."""

    def __init__(self, script: list[Turn] | None = None, project: str = "/", broken_streams: int = 0,
                 refuse: int | None = None):
        self.script: list[Turn] = list(script or [])
        self.refuse = refuse                     # answer every Messages request with this HTTP error (401, 403, ...)
        self.project = project
        self.broken_streams = broken_streams     # answer this many streaming requests with a broken stream
        self.outages: dict[int, int] = {}        # step -> how many more requests for it get a 529 (overloaded)
        self.requests: list[Recorded] = []
        self.overruns = 0                        # main requests past the end of the script (answered 400)
        self.action_errors: list[BaseException] = []   # researcher actions that failed (raised at exit)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeAPI":
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.action_errors and exc_type is None:
            raise AssertionError(f"a scripted researcher action failed: {self.action_errors[0]!r}") \
                from self.action_errors[0]

    # -- what tests look at --------------------------------------------------

    @property
    def main_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.main]

    @property
    def last(self) -> dict[str, Any]:
        """The body of the latest main request: the whole conversation so far."""
        return self.main_requests[-1].body

    def results(self) -> list[ToolResult]:
        """Every tool call and its result, over the longest conversation seen."""
        bodies = [r.body for r in self.main_requests]
        return tool_results(max(bodies, key=lambda b: len(b.get("messages", [])))) if bodies else []

    def shown(self) -> list[str]:
        """Every non-tool text the model was shown (prompts, hook messages), longest conversation."""
        bodies = [r.body for r in self.main_requests]
        return user_texts(max(bodies, key=lambda b: len(b.get("messages", [])))) if bodies else []

    # -- serving ---------------------------------------------------------------

    def reply_for(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], int | None] | None:
        """The reply, or None when the script has run out (the CLI then gets a 400 and stops:
        a loop that should have ended fails fast instead of spinning)."""
        model = body.get("model", "claude-sonnet-4-5")
        if not is_main_request(body):
            return (*_message(say("Research session"), model, self.project), None)
        step = count_assistant(body)
        if step >= len(self.script):
            with self._lock:
                self.overruns += 1
            return None
        turn = self.script[step]
        for b in turn.blocks:
            if b.kind == "action" and b.action:
                try:
                    b.action()
                except Exception as e:           # noqa: BLE001 - reported when the server closes
                    with self._lock:
                        self.action_errors.append(e)
        return (*_message(turn, model, self.project), step)

    def outage(self, step: int, requests: int) -> None:
        """The API is overloaded (HTTP 529) for the next `requests` requests for script step `step`."""
        with self._lock:
            self.outages[step] = requests

    def _take_outage(self, body: dict[str, Any]) -> bool:
        if not is_main_request(body):
            return False
        step = count_assistant(body)
        with self._lock:
            if self.outages.get(step, 0) > 0:
                self.outages[step] -= 1
                return True
        return False

    def _take_broken(self) -> bool:
        with self._lock:
            if self.broken_streams > 0:
                self.broken_streams -= 1
                return True
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:   # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                self.end_headers()
                self.wfile.write(payload)

            def do_HEAD(self) -> None:
                self._send(200, b"", "text/plain")

            def do_GET(self) -> None:
                self._send(200, b"{}", "application/json")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                path = urlsplit(self.path).path
                if path.endswith("/count_tokens"):
                    with api._lock:
                        api.requests.append(Recorded(path, body, main=False))
                    self._send(200, json.dumps({"input_tokens": 100}).encode(), "application/json")
                    return
                if not path.endswith("/v1/messages"):
                    with api._lock:
                        api.requests.append(Recorded(path, body, main=False))
                    self._send(404, json.dumps({"type": "error", "error": {
                        "type": "not_found_error", "message": f"fake API: no {path}"}}).encode(),
                        "application/json")
                    return
                if api.refuse is not None:
                    kind, text = REFUSALS.get(api.refuse, ("api_error", "fake API: refused"))
                    with api._lock:
                        api.requests.append(Recorded(path, body, main=False, step=None, error=api.refuse))
                    self._send(api.refuse, json.dumps({"type": "error", "error": {"type": kind, "message": text}}
                                                      ).encode(), "application/json")
                    return
                if api._take_outage(body):
                    with api._lock:
                        api.requests.append(Recorded(path, body, main=False, step=None, error=529))
                    self._send(529, json.dumps({"type": "error", "error": {
                        "type": "overloaded_error", "message": "fake API: Overloaded"}}).encode(),
                        "application/json")
                    return
                reply = api.reply_for(body)
                if reply is None:
                    with api._lock:
                        api.requests.append(Recorded(path, body, main=True, step=count_assistant(body)))
                    self._send(400, json.dumps({"type": "error", "error": {
                        "type": "invalid_request_error",
                        "message": f"fake API: the script has ended (asked for step {count_assistant(body)})",
                    }}).encode(), "application/json")
                    return
                msg, content, step = reply
                with api._lock:
                    api.requests.append(Recorded(path, body, main=step is not None, step=step))
                if body.get("stream") and api._take_broken():
                    # message_start, then the connection ends: no blocks, no message_stop
                    self._send(200, _sse(msg, content).split(b"\n\n")[0] + b"\n\n", "text/event-stream")
                elif body.get("stream"):
                    self._send(200, _sse(msg, content), "text/event-stream")
                else:
                    self._send(200, json.dumps(msg).encode(), "application/json")

        return Handler
