"""OpenAI Chat Completions (and the legacy text completions and embeddings routes).

Streams are ``data:`` events ending with ``data: [DONE]``; usage is asked for with
``stream_options.include_usage`` (merged in by the router when the client did not say, and the
usage-only chunk then removed from what the client receives); a stream that closed without
``[DONE]`` after every choice finished (and the usage chunk came, if asked for) is whole, and the
relay appends the ``[DONE]``. Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from waterfall_asgi.dialects import Dialect
from waterfall_asgi.sse import SSEEvent
from waterfall_asgi.usage import StreamObserver, UsageResult, observe_body

__all__ = ["ChatDialect", "with_usage"]


class ChatDialect(Dialect):
    """OpenAI Chat Completions: see the module docs."""

    name: ClassVar[str] = "chat"
    routes: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "/chat/completions": ("messages",),
        "/completions": ("prompt",),
        "/embeddings": ("input",),
    }
    not_streamed: ClassVar[frozenset[str]] = frozenset({"/embeddings"})
    terminal: ClassVar[bytes | None] = b"data: [DONE]\n\n"
    terminal_name: ClassVar[str] = "[DONE]"

    @property
    def incomplete_message(self) -> str:
        return "The upstream stream ended without data: [DONE]."

    def usage_request(
        self, payload: Mapping[str, Any], stream: bool
    ) -> tuple[dict[str, Any], bool]:
        if not stream:
            return dict(payload), False
        return with_usage(payload)

    def stream_observer(self, request_id: str | None = None) -> StreamObserver:
        return StreamObserver(request_id=request_id)

    def observe_body(self, body: bytes) -> UsageResult:
        return observe_body(body)

    def answered(self, result: UsageResult, choices: int, usage: bool) -> bool:
        return result.answered(choices, usage)

    def failed_first_event(self, event: SSEEvent) -> bool:
        return is_error_data(event.data)


def is_error_data(data: str) -> bool:
    """Whether an event's data is an error object (``{"error": ...}``), but for OpenRouter's
    streamed errors, which carry choices each finishing with ``error``."""
    if '"error"' not in data:
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict | str):
        return False
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return True
    return all(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices)


def with_usage(payload: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The payload to send upstream for a stream: ``stream_options.include_usage`` merged in.

    A client's own ``include_usage`` (true or false) is kept, other ``stream_options`` keys are
    kept, and ``payload`` is never changed. Returns whether the router added it (and so must
    remove the usage-only chunk from what the client receives).

    >>> with_usage({"stream": True, "stream_options": {"x": 1}})
    ({'stream': True, 'stream_options': {'x': 1, 'include_usage': True}}, True)
    >>> with_usage({"stream": True, "stream_options": {"include_usage": False}})[1]
    False
    """
    options = payload.get("stream_options")
    if isinstance(options, Mapping) and "include_usage" in options:
        return dict(payload), False
    merged = {**options} if isinstance(options, Mapping) else {}
    merged["include_usage"] = True
    return {**payload, "stream_options": merged}, True
