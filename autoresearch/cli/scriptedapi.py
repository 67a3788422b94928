"""A scripted stand-in for the Anthropic Messages API on 127.0.0.1, for the short offline Claude Code
sessions the CLI starts itself: the canary (is the guard really in the session?) and the contract
probe (what does this CLI offer and send?). Nothing leaves the machine, and it costs nothing.

`ScriptedAPI(reply)` serves `POST /v1/messages`: `reply(body)` returns the Message to send (as
server-sent events when the request streams, else as JSON), or None to end the session with an
error. Token counting and GETs get fixed answers. (tests/e2e/fake_api.py is the tests' richer twin.)
"""
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[dict], "dict | None"]


def message(content: list[dict], model: str = "claude") -> dict:
    """A complete assistant Message with these content blocks."""
    stop = "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def tool_call(name: str, tool_input: dict) -> dict:
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": tool_input}


def sse(msg: dict) -> bytes:
    """The Message as the streaming API sends it: message_start, each block's start/delta/stop,
    message_delta with the stop reason, message_stop."""
    events = [("message_start", {"type": "message_start", "message": dict(msg, content=[], stop_reason=None)})]
    for i, b in enumerate(msg["content"]):
        first = {"type": "text", "text": ""} if b["type"] == "text" else dict(b, input={})
        delta = ({"type": "text_delta", "text": b["text"]} if b["type"] == "text"
                 else {"type": "input_json_delta", "partial_json": json.dumps(b["input"])})
        events += [("content_block_start", {"type": "content_block_start", "index": i, "content_block": first}),
                   ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
                   ("content_block_stop", {"type": "content_block_stop", "index": i})]
    events += [("message_delta", {"type": "message_delta", "usage": {"output_tokens": 1},
                                  "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None}}),
               ("message_stop", {"type": "message_stop"})]
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


class ScriptedAPI:
    """The server: a context manager, listening on a free loopback port while open."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ScriptedAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:     # quiet
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
                body = body if isinstance(body, dict) else {}
                if self.path.split("?")[0].endswith("/count_tokens"):
                    return self._send(200, b'{"input_tokens": 1}', "application/json")
                msg = api.reply(body)
                if msg is None:
                    return self._send(400, json.dumps({"type": "error", "error": {
                        "type": "invalid_request_error", "message": "scripted session: done"}}).encode(),
                        "application/json")
                if body.get("stream"):
                    return self._send(200, sse(msg), "text/event-stream")
                self._send(200, json.dumps(msg).encode(), "application/json")
        return Handler
