"""Drive an ASGI app directly (no buffering transport) and record every message it sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


@dataclass
class Result:
    """What the app sent back, message by message."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.start["status"])

    @property
    def start(self) -> Message:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.messages
        return starts[0]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.start["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m["body"]]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def finished(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    disconnect: asyncio.Event | None = None,
    body_parts: list[bytes] | None = None,
) -> Result:
    """Send one HTTP request to ``app``; ``disconnect`` (when set) makes the client go away."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    parts = body_parts if body_parts is not None else [raw]
    hdrs = {"content-type": "application/json", **(headers or {})}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    queue = list(parts)
    gone = disconnect or asyncio.Event()
    result = Result()

    async def receive() -> Message:
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        result.messages.append(message)

    await app(scope, receive, send)
    return result


def sse_data(body: bytes) -> list[str]:
    """The data of every SSE event in ``body`` (LF line ends, as the fakes send by default)."""
    out = []
    for block in body.decode().split("\n\n"):
        lines = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if lines:
            out.append("\n".join(lines))
    return out


def sse_stream(*events: tuple[str | None, Any]) -> bytes:
    """An SSE stream of ``(name, data)`` events (``None``: no ``event:`` line), each ``data`` a
    JSON value (written compactly) or raw text, one ``data:`` line each, LF line ends."""
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append((f"event: {name}\n" if name is not None else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def chat_completion(model: str) -> dict[str, Any]:
    """A small, whole Chat Completions answer from ``model`` (3 prompt and 1 completion tokens)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
