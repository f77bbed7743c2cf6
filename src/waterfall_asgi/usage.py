"""The usage observer: what a response said about tokens, finish reasons and errors.

:class:`StreamObserver` taps a stream as it passes (bytes in, nothing out): it parses SSE with the
bounded :class:`~waterfall_asgi.sse.SSEParser` and, from each ``data:`` JSON, keeps the usage (the
last one with token counts), the finish reason of every choice, the model and id, and any error
object. It notes whether ``data: [DONE]`` arrived (:attr:`UsageResult.complete`); whether a stream
that closed without it had still delivered its whole answer is :meth:`UsageResult.answered`
(every choice finished, and the usage chunk if usage was asked for). It never raises: a failure
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._fastjson import decode
from .sse import SSEParser, _plain_events

__all__ = ["StreamObserver", "UsageResult", "observe_body", "usage_only_chunk"]

logger = logging.getLogger("waterfall_asgi.usage")

# A match lies on one line of data: after its \s* it needs a ":", "{" or '"', never "data:".
_INTERESTING = re.compile(r'"(?:usage"\s*:\s*\{|finish_reason"\s*:\s*"|error"\s*:)')
_INTERESTING_BYTES = re.compile(_INTERESTING.pattern.encode())  # on one line of data: the same
# The head of a chunk as OpenAI-style providers write it: "id" first, then plain members (a
# string without escapes, a number, true, false or null) up to "model". Both are then the
# object's own, so they are read from the bytes; any other first event is decoded. (An object
# that repeats "id" or "model" gives the first here, where json.loads keeps the last: JSON leaves
# repeated names undefined, and providers do not send them.)
_STRING = rb'"[^"\\\x00-\x1f]*"'
_HEAD = re.compile(
    rb'\{[ \t]*"id"[ \t]*:[ \t]*"([^"\\\x00-\x1f]+)"[ \t]*'
    rb"(?:,[ \t]*" + _STRING + rb"[ \t]*:[ \t]*(?:" + _STRING + rb"|[-+.\w]+)[ \t]*)*?"
    rb',[ \t]*"model"[ \t]*:[ \t]*"([^"\\\x00-\x1f]+)"'
)


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

    def answered(self, choices: int = 1, usage: bool = False) -> bool:
        """Whether the stream said all it had to say, ``[DONE]`` or not: each of ``choices``
        choices (indices 0 to ``choices - 1``, the request's ``n``) has its finish reason, and,
        when ``usage`` was asked for, the token counts came; no error event came.

        >>> UsageResult(finish_reasons={0: "stop"}).answered()
        True
        >>> UsageResult(finish_reasons={0: "stop"}).answered(choices=2)
        False
        >>> UsageResult(finish_reasons={0: "stop"}).answered(usage=True)
        False
        """
        if self.error is not None or (usage and not self.has_usage):
            return False
        reasons = self.finish_reasons
        return all(index in reasons for index in range(max(choices, 1)))


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
    if type(obj) is not dict:  # (json makes plain dicts: nothing else holds these fields)
        return
    get = obj.get
    # the first non-empty id and model (Azure's first chunk carries empty ones)
    if not result.id and type(value := get("id")) is str and value:
        result.id = value
    if not result.model and type(value := get("model")) is str and value:
        result.model = value
    error = get("error")
    if error is not None:
        if type(error) is dict:
            result.error = error
        elif type(error) is str:
            result.error = {"message": error}
    usage = get("usage")
    if type(usage) is dict:
        # counts are ints (a bool is not one); a usage object without any is not usage
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        prompt = prompt if type(prompt) is int else None
        completion = completion if type(completion) is int else None
        total = total if type(total) is int else None
        if prompt is not None or completion is not None or total is not None:
            if total is None and prompt is not None:
                total = prompt + (completion or 0)
            result.prompt_tokens, result.completion_tokens = prompt, completion
            result.total_tokens = total
    choices = get("choices")
    if type(choices) is list:
        for position, choice in enumerate(choices):
            if type(choice) is dict and type(reason := choice.get("finish_reason")) is str:
                index = choice.get("index", position)
                result.finish_reasons[index if type(index) is int else position] = reason


class StreamObserver:
    """Feed it the bytes of a stream as they pass; read :attr:`result` at any time.

    A stream of plain one-line ``data:`` events, each read ending on a blank line (what
    providers send, as the relay hands it over), is read without an SSE parser: one is made at
    the first read that needs it."""

    def __init__(self, max_bytes: int = 64 * 1024, *, request_id: str | None = None) -> None:
        self.result = UsageResult()
        self.plain = 0
        """After :meth:`feed`: how many leading bytes of the chunk were plain ``data:`` events,
        each read where it lies (see :meth:`SSEParser.plain_events`)."""
        self.usage_only: Sequence[tuple[int, int]] = ()
        """After :meth:`feed`: where the usage-only chunks (see :func:`usage_only_chunk`) among
        those plain events lie in the chunk, each from ``data:`` to its blank line."""
        self._max_bytes = max_bytes
        self._parser: SSEParser | None = None  # (made when a read is not plain events)
        self._request_id = request_id
        self._logged = False

    @property
    def buffered(self) -> int:
        """Bytes the parser holds right now (never more than its cap)."""
        return 0 if self._parser is None else self._parser.buffered

    def feed(self, chunk: bytes) -> None:
        """Observe ``chunk``; never raises."""
        result = self.result
        parser = self._parser
        try:
            # Plain one-line events are looked at where they lie: a content delta is neither
            # decoded nor parsed, only searched for what could matter (a whole read of them in
            # one search).
            if parser is None:  # every read so far was plain events: no parser yet
                start, count = _plain_events(chunk, self._max_bytes)
            else:
                start, count = parser.plain_events(chunk)
            self.plain = start
            if self.usage_only:
                self.usage_only = ()
            if start:
                result.events += count
                self._look_plain(chunk, start)
                if start == len(chunk):
                    return
            if parser is None:
                parser = self._parser = SSEParser(self._max_bytes)
                if result.events:  # the stream began before (and any BOM with it)
                    parser._at_start = False
            if not start:
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
            if (stop - at != 12 or not chunk.startswith(b"data: [DONE]", at)) and (
                not self._head(chunk, at + 6, stop) or _INTERESTING_BYTES.search(chunk, at, stop)
            ):
                self._look_at(chunk, at, stop)
            at = stop + 2
        search = _INTERESTING_BYTES.search
        while at < end and (found := search(chunk, at, end)) is not None:
            # the event around it: it cannot reach past its own line (see _INTERESTING)
            begin = chunk.rfind(b"\n", at, found.start()) + 1 or at
            stop = chunk.find(b"\n", found.end())
            self._look_at(chunk, begin, stop)
            at = stop + 2

    def _head(self, chunk: bytes, begin: int, stop: int) -> bool:
        """Take the id (and the model, if none yet) from the head of the event data
        ``chunk[begin:stop]`` without decoding it, if it is plainly there (see ``_HEAD``)."""
        head = _HEAD.match(chunk, begin, stop)
        if head is None:
            return False
        result = self.result
        result.id = head[1].decode("utf-8", "replace")
        if not result.model:
            result.model = head[2].decode("utf-8", "replace")
        return True

    def _look_at(self, chunk: bytes, begin: int, stop: int) -> None:
        """Look at the plain event ``chunk[begin:stop]`` (``data: ...``), and note it if it is
        a usage-only chunk (by the same test as :func:`usage_only_chunk`)."""
        obj = self._look(chunk[begin + 6 : stop].decode("utf-8", "replace"))
        if (
            _usage_only(obj)
            and _EMPTY_CHOICES.search(chunk, begin, stop)
            and chunk.find(b'"usage"', begin, stop) >= 0
        ):
            if isinstance(self.usage_only, list):
                self.usage_only.append((begin, stop + 2))
            else:  # (the first of this read)
                self.usage_only = [(begin, stop + 2)]

    def _look(self, data: str) -> Any:
        try:
            obj = decode(data)
        except ValueError:
            return None
        _take(self.result, obj)
        return obj


def observe_body(body: bytes) -> UsageResult:
    """The same facts from a whole (non-streaming) JSON response body."""
    result = UsageResult()
    try:
        obj = decode(body)
    except ValueError:
        return result
    result.complete = isinstance(obj, dict)
    _take(result, obj)
    return result
