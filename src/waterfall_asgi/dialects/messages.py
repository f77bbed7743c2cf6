"""Anthropic Messages (``POST /messages``).

A stream is named events: ``message_start`` (the message's id, model and first usage),
``content_block_start``/``_delta``/``_stop`` (the answer), ``ping``, ``message_delta`` (the
``stop_reason`` and the usage so far) and ``message_stop``, the only proof that it is whole: a
stream that closed without it is incomplete, whatever it said before (:attr:`terminal` is
``None``). A mid-stream failure is ``event: error`` with ``{"type": "error", "error": {"type":
"overloaded_error", "message": ...}}``. Usage is always reported, so nothing is asked for.

What the observer reads, and where it deliberately differs from the obvious:

- Only ``message_start``, ``message_delta``, ``message_stop`` and ``error`` are JSON-decoded.
  The type is read from the data's ``"type"``, falling back to the event's name, but an event
  named ``content_block_*`` or ``ping`` (nearly every event of a stream) is passed over on its
  name alone; an unnamed one is decoded only if its text could be one of the four.
- Events as Anthropic writes them (``event:``, one ``data:`` line, LF) are read where they lie
  in the chunk, without the SSE parser; anything else (CR, comments, more lines, an event cut
  by the chunk's end) goes to the parser, with the same results to the byte.
- ``prompt_tokens`` is ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``:
  all the input the model processed. Anthropic's ``input_tokens`` counts only the part that was
  neither written to nor read from the prompt cache, so alone it would undercount a cached
  prompt (each part has its own price; the sum is what ``prompt_tokens`` means elsewhere).
  ``completion_tokens`` is ``output_tokens``. Counts are cumulative: ``message_delta``'s replace
  ``message_start``'s, field by field.
- ``result.error`` is the inner error object (``{"type": "overloaded_error", ...}``), as
  :attr:`~waterfall_asgi.usage.UsageResult.error` is for the other dialects.

The router's own errors are written in Anthropic's shape (``{"type": "error", "error": {...}}``)
with OpenAI's ``code`` and ``param`` added inside: the Anthropic SDK reads ``error.type`` and
``error.message``, the OpenAI SDK ``error.message``, ``error.type`` and ``error.code``; in a
stream, the Anthropic SDK raises ``APIStatusError`` at the ``error`` event. The SDKs pick the
exception class by status alone; for a 503 (every entry failed or is cooling down) the type is
``overloaded_error``, Anthropic's word for "no capacity now, retry later", not the fakes' and
Anthropic's ``api_error`` (an unexpected fault). Clients send their key as ``x-api-key`` (or
``Authorization: Bearer``); upstreams get ``x-api-key`` and, unless the client sent its own,
``anthropic-version``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from waterfall_asgi._fastjson import decode
from waterfall_asgi.dialects import Dialect
from waterfall_asgi.sse import SSEEvent, SSEParser
from waterfall_asgi.usage import UsageResult

__all__ = ["ANTHROPIC_VERSION", "MessagesDialect", "MessagesObserver", "error_type"]

logger = logging.getLogger("waterfall_asgi.usage")

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` sent upstream when the client sent none."""

_PASSED_OVER = frozenset(
    {"content_block_delta", "content_block_start", "content_block_stop", "ping"}
)
_PASSED_OVER_BYTES = frozenset(name.encode() for name in _PASSED_OVER)
_READ = frozenset({"message_start", "message_delta", "message_stop", "error"})
_INPUTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_COUNTS = (*_INPUTS, "output_tokens")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int, type_: str = "") -> str:
    """Anthropic's ``error.type`` for an error of ``status`` (0: one inside a stream), given the
    router's own type ``type_`` (one that says ``overloaded`` stays so).

    >>> error_type(404), error_type(503), error_type(408), error_type(502), error_type(0)
    ('not_found_error', 'overloaded_error', 'invalid_request_error', 'api_error', 'api_error')
    """
    if "overloaded" in type_:
        return "overloaded_error"
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _error(value: Any, data: str) -> dict[str, Any]:
    """The error object of an error event or body whose (decoded) data is ``value``."""
    inner = value.get("error") if type(value) is dict else None
    if type(inner) is dict:
        return inner
    return {"message": inner if type(inner) is str else data}


class MessagesObserver:
    """Feed it the bytes of a Messages stream as they pass; read :attr:`result` at any time."""

    def __init__(self, max_bytes: int = 64 * 1024, *, request_id: str | None = None) -> None:
        self.result = UsageResult()
        self._parser = SSEParser(max_bytes)
        self._counts: dict[str, int] = {}
        self._request_id = request_id
        self._logged = False

    @property
    def buffered(self) -> int:
        """Bytes the parser holds right now (never more than its cap)."""
        return self._parser.buffered

    def feed(self, chunk: bytes) -> None:
        """Observe ``chunk``; never raises."""
        result = self.result
        parser = self._parser
        try:
            start = self._named(chunk) if b"\r" not in chunk else 0
            if start == len(chunk):
                return
            for event in parser.feed(chunk[start:] if start else chunk):
                result.events += 1
                name = event.event
                if name in _PASSED_OVER:
                    continue
                data = event.data
                if name in _READ or '"message_' in data or '"error"' in data:
                    self._read(name, data)
            result.oversized = parser.oversized
        except Exception:  # the observer must never break the relay
            result.failures += 1
            if not self._logged:
                self._logged = True
                logger.exception("usage observer failed (request %s)", self._request_id)

    def _named(self, chunk: bytes) -> int:
        """The fast path, for a parser between events and a chunk without CR: take each
        leading ``event: NAME\\ndata: DATA\\n\\n`` (what Anthropic sends) where it lies, and
        return where the parser must go on. The results are the parser's, to the byte."""
        parser = self._parser
        if not parser._between_events():
            return 0
        result, cap, at = self.result, parser.max_bytes, 0
        while chunk.startswith(b"event: ", at):
            line = chunk.find(b"\n", at)
            end = chunk.find(b"\n\n", line)
            if (
                end < 0
                or end - at > cap  # (the parser would skip it: let it count it)
                or not chunk.startswith(b"data: ", line + 1)
                or chunk.find(b"\n", line + 1, end) >= 0
            ):
                break
            result.events += 1
            name = chunk[at + 7 : line]
            if name not in _PASSED_OVER_BYTES:
                data = chunk[line + 7 : end].decode("utf-8", "replace")
                self._read(name.decode("utf-8", "replace") or "message", data)
            at = end + 2
        if at:
            parser._at_start = False  # (a BOM is dropped only at the very start)
        return at

    def _read(self, name: str, data: str) -> None:
        try:
            obj = decode(data)
        except ValueError:
            obj = None
        if type(obj) is not dict:
            obj = {}
        kind = obj.get("type")
        if type(kind) is not str:
            kind = name
        result = self.result
        if kind == "error" or name == "error":
            result.error = _error(obj, data)
        elif kind == "message_stop":
            result.complete = True
        elif kind == "message_start":
            message = obj.get("message")
            if type(message) is dict:
                _message(result, message, self._counts)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if type(delta) is dict and type(reason := delta.get("stop_reason")) is str:
                result.finish_reasons[0] = reason
            _usage(result, obj.get("usage"), self._counts)


def _message(result: UsageResult, message: dict[str, Any], counts: dict[str, int]) -> None:
    """Take the id, model, stop reason and usage of a message (``message_start``'s, or a body)."""
    if not result.id and type(value := message.get("id")) is str and value:
        result.id = value
    if not result.model and type(value := message.get("model")) is str and value:
        result.model = value
    if type(reason := message.get("stop_reason")) is str:
        result.finish_reasons[0] = reason
    _usage(result, message.get("usage"), counts)


def _usage(result: UsageResult, usage: Any, counts: dict[str, int]) -> None:
    """Update ``counts`` with the counts of ``usage`` (later ones replace earlier ones) and set
    the result's from them (see the module docs)."""
    if type(usage) is not dict:
        return
    for key in _COUNTS:
        if type(value := usage.get(key)) is int:  # (a bool or a null is not a count)
            counts[key] = value
    inputs = [counts[key] for key in _INPUTS if key in counts]
    prompt = sum(inputs) if inputs else None
    completion = counts.get("output_tokens")
    if prompt is None and completion is None:
        return
    result.prompt_tokens, result.completion_tokens = prompt, completion
    result.total_tokens = (prompt or 0) + (completion or 0)


class MessagesDialect(Dialect):
    """Anthropic Messages: see the module docs."""

    name: ClassVar[str] = "messages"
    routes: ClassVar[Mapping[str, tuple[str, ...]]] = {"/messages": ("messages", "max_tokens")}
    terminal: ClassVar[bytes | None] = None
    terminal_name: ClassVar[str] = "message_stop"
    auth_hint: ClassVar[str] = "send 'x-api-key: <key>' or 'Authorization: Bearer <key>'"

    def usage_request(
        self, payload: Mapping[str, Any], stream: bool
    ) -> tuple[dict[str, Any], bool]:
        return dict(payload), False  # Anthropic always reports usage

    def stream_observer(self, request_id: str | None = None) -> MessagesObserver:
        return MessagesObserver(request_id=request_id)

    def observe_body(self, body: bytes) -> UsageResult:
        result = UsageResult()
        try:
            obj = decode(body)
        except ValueError:
            return result
        if type(obj) is not dict:
            return result
        result.complete = True
        if obj.get("type") == "error" or type(obj.get("error")) in (dict, str):
            result.error = _error(obj, body.decode("utf-8", "replace"))
        else:
            _message(result, obj, {})
        return result

    def failed_first_event(self, event: SSEEvent) -> bool:
        if event.event == "error":
            return True
        if '"error"' not in event.data:
            return False
        try:
            obj = decode(event.data)
        except ValueError:
            return False
        return type(obj) is dict and obj.get("type") == "error"

    def error_event(
        self,
        message: str,
        code: str,
        type_: str = "upstream_error",
        *,
        seen: UsageResult | None = None,
    ) -> bytes:
        error = {"type": error_type(0, type_), "message": message, "code": code}
        return b"event: error\ndata: " + _dumps({"type": "error", "error": error}) + b"\n\n"

    def error_body(
        self, status: int, message: str, type_: str, code: str | None, param: str | None = None
    ) -> bytes:
        error = {"type": error_type(status, type_), "message": message, "code": code}
        return _dumps({"type": "error", "error": {**error, "param": param}})

    def client_key(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The key of ``x-api-key`` (the last one sent, if not empty), else the ``Bearer``
        token; ``b""`` if ``x-api-key`` was sent empty and no token either."""
        headers = list(headers)
        given = None
        for name, value in headers:
            if name.lower() == b"x-api-key":
                given = value.strip()
        if given:
            return given
        bearer = super().client_key(headers)
        return b"" if bearer is None and given is not None else bearer

    def upstream_headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"x-api-key": key}

    def default_headers(self) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
