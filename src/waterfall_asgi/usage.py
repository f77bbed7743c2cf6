"""The usage observer: what a response said about tokens, finish reasons and errors.

:class:`StreamObserver` taps a stream as it passes (bytes in, nothing out): it parses SSE with the
bounded :class:`~waterfall_asgi.sse.SSEParser` and, from each ``data:`` JSON, keeps the usage (the
last one with token counts), the finish reason of every choice, the model and id, and any error
object. A stream is complete only once ``data: [DONE]`` has arrived. It never raises: a failure
inside it is counted, logged once, and the bytes it was given are unaffected (it never had them to
change).

It does not JSON-decode every content delta: an event is decoded only when its text could hold
what is looked for (a non-null ``usage`` or ``finish_reason``, an ``error``, or the first id).
:func:`observe_body` reads the same from a whole JSON response.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from .sse import SSEParser

__all__ = ["StreamObserver", "UsageResult", "observe_body", "usage_only_chunk"]

logger = logging.getLogger("waterfall_asgi.usage")

# A match lies on one line of data: after its \s* it needs a ":", "{" or '"', never "data:".
_INTERESTING = re.compile(r'"(?:usage"\s*:\s*\{|finish_reason"\s*:\s*"|error"\s*:)')
_INTERESTING_BYTES = re.compile(_INTERESTING.pattern.encode())  # on one line of data: the same


@dataclass
class UsageResult:
    """What a response said: the same whether it was read whole or chunk by chunk."""

    complete: bool = False
    """A stream: ``data: [DONE]`` arrived. A JSON body: it parsed."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    finish_reasons: dict[int, str] = field(default_factory=dict)
    model: str | None = None
    id: str | None = None
    error: dict[str, Any] | None = None
    events: int = 0
    oversized: int = 0
    failures: int = 0
    """Errors inside the observer (caught; the bytes flowed on)."""

    @property
    def has_usage(self) -> bool:
        """Token counts were reported."""
        return self.prompt_tokens is not None or self.completion_tokens is not None


def usage_only_chunk(data: str) -> bool:
    """Whether an event's data is the usage-only chunk (``choices: []`` and a usage object)."""
    if '"choices"' not in data or '"usage"' not in data:
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return _usage_only(obj)


def _usage_only(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def _take(result: UsageResult, obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    # the first non-empty id and model (Azure's first chunk carries empty ones)
    if not result.id and isinstance(obj.get("id"), str) and obj["id"]:
        result.id = obj["id"]
    if not result.model and isinstance(obj.get("model"), str) and obj["model"]:
        result.model = obj["model"]
    error = obj.get("error")
    if isinstance(error, dict):
        result.error = error
    elif isinstance(error, str):
        result.error = {"message": error}
    usage = obj.get("usage")
    if isinstance(usage, dict):
        counts = {
            k: usage.get(k)
            for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            if isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool)
        }
        if counts:
            result.prompt_tokens = counts.get("prompt_tokens")
            result.completion_tokens = counts.get("completion_tokens")
            total = counts.get("total_tokens")
            if total is None and result.prompt_tokens is not None:
                total = result.prompt_tokens + (result.completion_tokens or 0)
            result.total_tokens = total
    choices = obj.get("choices")
    if isinstance(choices, list):
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                index = choice.get("index", position)
                result.finish_reasons[index if isinstance(index, int) else position] = reason


class StreamObserver:
    """Feed it the bytes of a stream as they pass; read :attr:`result` at any time."""

    def __init__(self, max_bytes: int = 64 * 1024, *, request_id: str | None = None) -> None:
        self.result = UsageResult()
        self.plain = 0
        """After :meth:`feed`: how many leading bytes of the chunk were plain ``data:`` events,
        each read where it lies (see :meth:`SSEParser.plain_events`)."""
        self.usage_only: list[tuple[int, int]] = []
        """After :meth:`feed`: where the usage-only chunks (see :func:`usage_only_chunk`) among
        those plain events lie in the chunk, each from ``data:`` to its blank line."""
        self._parser = SSEParser(max_bytes)
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
            # Plain one-line events are looked at where they lie: a content delta is neither
            # decoded nor parsed, only searched for what could matter (a whole read of them in
            # one search).
            start, count = parser.plain_events(chunk)
            self.plain = start
            if self.usage_only:
                self.usage_only = []
            if start:
                result.events += count
                self._look_plain(chunk, start)
            else:
                spans: list[tuple[int, int]] = []
                start = parser.data_spans(chunk, spans)
                result.events += len(spans)
                for begin, end in spans:
                    if end - begin == 6 and chunk.startswith(b"[DONE]", begin):
                        result.complete = True
                    elif not result.id or _INTERESTING_BYTES.search(chunk, begin, end):
                        self._look(chunk[begin:end].decode("utf-8", "replace"))
            rest = chunk[start:] if start else chunk
            if rest:
                for event in parser.feed(rest):
                    result.events += 1
                    data = event.data
                    if data == "[DONE]":
                        result.complete = True
                    elif not result.id or _INTERESTING.search(data):
                        self._look(data)
            result.oversized = parser.oversized
        except Exception:  # the observer must never break the relay
            result.failures += 1
            if not self._logged:
                self._logged = True
                logger.exception("usage observer failed (request %s)", self._request_id)

    def _look_plain(self, chunk: bytes, end: int) -> None:
        """Look at the plain events of ``chunk[:end]`` (see :meth:`SSEParser.plain_events`):
        every one until an id is known, then those the search finds."""
        result = self.result
        if (
            chunk.endswith(b"\n\ndata: [DONE]\n\n", 0, end)
            or chunk.startswith(b"data: [DONE]\n\n")
            or chunk.find(b"\n\ndata: [DONE]\n\n", 0, end) >= 0
        ):
            result.complete = True
        at = 0  # where the next event begins
        while not result.id and at < end:
            stop = chunk.find(b"\n", at)
            if stop - at != 12 or not chunk.startswith(b"data: [DONE]", at):
                self._look_at(chunk, at, stop)
            at = stop + 2
        search = _INTERESTING_BYTES.search
        while at < end and (found := search(chunk, at, end)) is not None:
            # the event around it: it cannot reach past its own line (see _INTERESTING)
            begin = chunk.rfind(b"\n", at, found.start()) + 1 or at
            stop = chunk.find(b"\n", found.end())
            self._look_at(chunk, begin, stop)
            at = stop + 2

    def _look_at(self, chunk: bytes, begin: int, stop: int) -> None:
        """Look at the plain event ``chunk[begin:stop]`` (``data: ...``), and note it if it is
        a usage-only chunk (by the same test as :func:`usage_only_chunk`)."""
        obj = self._look(chunk[begin + 6 : stop].decode("utf-8", "replace"))
        if (
            _usage_only(obj)
            and _EMPTY_CHOICES.search(chunk, begin, stop)
            and chunk.find(b'"usage"', begin, stop) >= 0
        ):
            self.usage_only.append((begin, stop + 2))

    def _look(self, data: str) -> Any:
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        _take(self.result, obj)
        return obj


def observe_body(body: bytes) -> UsageResult:
    """The same facts from a whole (non-streaming) JSON response body."""
    result = UsageResult()
    try:
        obj = json.loads(body)
    except ValueError:
        return result
    result.complete = isinstance(obj, dict)
    _take(result, obj)
    return result
