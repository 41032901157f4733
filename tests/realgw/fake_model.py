"""A fake OpenAI-compatible model server for the real gateway's agent turns.

The gateway's provider client (pi-ai, ``api: "openai-completions"``) always asks for a
streamed reply (``stream: true``), so every answer is Server-Sent Events: ``data: {chunk}``
lines ending with ``data: [DONE]``. Each request is recorded (model, system prompt, the
last user text, whether it carries a tool result); what the server answers is decided by
the test through ``script``: a queue of replies, consumed one per request, the default
reply when it is empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Text:
    """Answer with this text."""

    text: str


@dataclass(frozen=True)
class ExecCall:
    """Answer with a call of the gateway's ``exec`` tool running ``command``."""

    command: str


@dataclass(frozen=True)
class Hold:
    """Never answer: keep the connection open until the client goes or the server stops."""


Reply = Text | ExecCall | Hold


@dataclass
class Request:
    model: str
    system: str
    user: str
    tool_result: bool
    body: dict[str, Any] = field(repr=False)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def parse_request(body: dict[str, Any]) -> Request:
    messages = body.get("messages", [])
    system = "".join(
        _text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    last = messages[-1] if messages else {}
    return Request(
        model=str(body.get("model", "")),
        system=system,
        user=users[-1] if users else "",
        tool_result=last.get("role") == "tool",
        body=body,
    )


class FakeModelServer:
    """``http://127.0.0.1:<port>/v1/chat/completions`` in a thread of the test process."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[Reply] = []
        self.default: Reply = Text("ok")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeModelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies`` in order, then with ``default``."""
        with self._lock:
            self._script = list(replies)

    def matching(self, predicate: Callable[[Request], bool]) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            # A tool result is the turn's second round: after an exec call, finish it.
            if request.tool_result:
                return Text("done")
            return self._script.pop(0) if self._script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                # /v1/models: some clients list models first.
                body = json.dumps({"object": "list", "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                request = parse_request(body)
                reply = server._next(request)
                if isinstance(reply, Hold):
                    self._hold()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in _chunks(request.model, reply):
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _hold(self) -> None:
                # Headers and nothing else: the client waits for the first chunk forever.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.flush()
                while not server._stopping.wait(0.2):
                    try:
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                    except OSError:
                        return  # the gateway went away
                self.close_connection = True

        return Handler


def _chunks(model: str, reply: Text | ExecCall) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    usage = {**base, "choices": [],
             "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
    if isinstance(reply, Text):
        return [chunk({"role": "assistant", "content": reply.text}), chunk({}, "stop"), usage]
    call = {"index": 0, "id": "call_fake_exec", "type": "function",
            "function": {"name": "exec", "arguments": json.dumps({"command": reply.command})}}
    return [chunk({"role": "assistant", "tool_calls": [call]}), chunk({}, "tool_calls"), usage]
