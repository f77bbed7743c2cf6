"""The OpenAI Responses API (``POST /responses``).

A stream is typed events (``event: response.output_text.delta``, ``data: {"type": ...}``) with no
``[DONE]``: it is complete when ``response.completed`` or ``response.incomplete`` (cut short, say
by ``max_output_tokens``, but ended properly) comes, whose ``response`` has the usage (``input``,
``output`` and ``total_tokens``), always: nothing is asked for. ``response.failed`` ends it with
no success: its ``response.error`` is the error, as is an ``error`` event's code and message.
The id and model are the first non-empty ones of a ``response`` (``response.created``'s). A body
is the Response object. The router's errors are ``{"error": {...}}`` bodies and ``error`` events.

Where this deliberately differs from the obvious:

- Only an event whose name or data's ``"type"`` (a regex search) could be one of those five is
  JSON-decoded: content deltas, most of a stream, never are; a read of plain ``event:`` and
  ``data:`` lines is searched in its bytes without the SSE parser. The data's ``type`` decides,
  else the event name; a ``"type"`` spelled with JSON escapes is not seen. Likewise the first
  event is decoded, to see whether the attempt failed, only if its ``"type"`` could say so.
- Success needs a JSON object to say so; an error is believed on the event's name alone.
- An event past the parser's cap (64 KiB) is skipped, but ``response.completed`` echoes the whole
  output (and the instructions and tools): a long answer's can be that large. Of a skipped event
  the first 8 KiB and the last 16 KiB of its data are kept; if its data begins with its
  ``"type"`` (OpenAI's order), or else its ``event:`` line names it, as one of the five, it counts
  (a success if its data is braced): its id (the ``response``'s first member) and first ``model``
  from its start, the last whole ``usage``, ``incomplete_details`` and ``error`` from its end (or
  else its start).
- ``response.created``, ``response.completed`` and ``response.incomplete`` repeat the whole
  response (its output, instructions and tools): they are not decoded whole when their data
  begins with their ``"type"`` (OpenAI's order). The id and model are read where they lie
  (the ``response``'s first member, and the first ``"model"`` string), and only the last
  ``usage`` object with a token count (and ``incomplete_details``) is decoded; an event in
  any other shape is decoded whole.
- The error event carries a ``"sequence_number"``, the one after the events relayed (the
  ``openai`` SDK requires the field when it validates strictly).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from waterfall_asgi._fastjson import decode
from waterfall_asgi.dialects import Dialect
from waterfall_asgi.sse import SSEEvent, SSEParser
from waterfall_asgi.usage import UsageResult

__all__ = ["ResponsesDialect", "ResponsesObserver"]

logger = logging.getLogger("waterfall_asgi.usage")

_FAILS = ("error", "response.failed")
_KINDS = frozenset({"response.created", "response.completed", "response.incomplete", *_FAILS})
_WANTED = re.compile(r'"type"\s*:\s*"(?:response\.(?:created|completed|incomplete|failed)|error)"')
_WANTED_BYTES = re.compile(_WANTED.pattern.encode())
_FAILED_TYPE = re.compile(r'"type"\s*:\s*"(?:error|response\.failed)"')
_NAMED = re.compile(rb"event: (?:response\.(?:created|completed|incomplete|failed)|error)\n")
_PLAIN = re.compile(rb"(?:event: [^\n]*\ndata: [^\n]*\n\n)+")
_FIRST_TYPE = re.compile(r'\s*\{\s*"type"\s*:\s*"([^"\\]*)"')
_RESPONSE_ID = re.compile(r'"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]*)"')
_MODEL = re.compile(r'"model"\s*:\s*"([^"\\]*)"')
_HEAD, _TAIL = 8 * 1024, 16 * 1024
_RAW_DECODE = json.JSONDecoder().raw_decode
_USAGE = re.compile(r'"usage"\s*:\s*(?=\{)')
_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
_IN_PLACE = frozenset({"response.created", "response.completed", "response.incomplete"})
_FAILED = {"message": "response failed", "code": "response_failed"}


@dataclass(frozen=True, slots=True)
class _Skipped(SSEEvent):
    """An event skipped for its size: ``event`` its name if known, ``data`` the end of its data."""

    head: str = ""


class _Parser(SSEParser):
    """The bounded parser, keeping the head and tail of a skipped event's data (``_field``, of a
    skipped line: 0 until its first 6 bytes, in ``_start``, came; then 1 if ``data``, else 2)."""

    __slots__ = ("_field", "_head", "_name", "_start", "_tail")

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._head, self._name, self._tail, self._start, self._field = "", "", bytearray(), b"", 0

    @property
    def buffered(self) -> int:
        return len(self._line) + self._event_bytes + len(self._head) + len(self._tail)

    def plain_events(self, chunk: bytes) -> tuple[int, int]:
        """Between events, if ``chunk`` up to its last blank line is plain events only (an
        ``event: `` line, a ``data: `` line, a blank line; no CR: as OpenAI sends), take them
        in a few scans: ``chunk[:end]`` holds ``count`` of them. Else take nothing: ``(0, 0)``."""
        end = chunk.rfind(b"\n\n") + 2
        if not (2 <= end <= self.max_bytes and chunk.startswith(b"event: ")):
            return 0, 0
        if not self._between_events() or chunk.find(b"\r", 0, end) >= 0:
            return 0, 0
        if _PLAIN.fullmatch(chunk, 0, end) is None:
            return 0, 0
        self._at_start = False
        return end, chunk.count(b"\nevent: ", 0, end) + 1  # (each but the first)

    def _skip(self, piece: bytes | memoryview) -> None:
        if not self._field:
            need = 6 - len(self._start)
            self._start += piece[:need]
            if len(self._start) < 6:
                return
            start, piece = self._start, piece[need:]
            self._field = 1 if start.startswith(b"data:") else 2
            if self._field == 1:
                self._tail += start[6:] if start[5:6] == b" " else start[5:]
        if self._field == 1:
            self._tail += piece[-2 * _TAIL :]
            if len(self._tail) > 2 * _TAIL:
                del self._tail[:-_TAIL]

    def _append(self, piece: bytes) -> None:
        if self._skipping:
            self._skip(memoryview(piece))
        elif piece and len(self._line) + len(piece) + self._event_bytes > self.max_bytes:
            # what of the line is here whatever the chunking (the cap's worth), and is enough
            line = (bytes(self._line) + piece[: _HEAD + 8])[: self.max_bytes - self._event_bytes]
            head = "\n".join(self._data)
            if line.startswith(b"data:"):
                value = line[6 : _HEAD + 6] if line.startswith(b"data: ") else line[5 : _HEAD + 5]
                head += ("\n" if self._data else "") + value.decode("utf-8", "replace")
            self._head, self._name = head[:_HEAD], self._event
            self._skip(bytes(self._line))
            self._skip(memoryview(piece))
        super()._append(piece)

    def _end_line(self, events: list[SSEEvent]) -> None:
        if self._skipping and self._line_empty:  # the blank line: the skipped event is over
            data = self._tail[-_TAIL:].removesuffix(b"\n").decode("utf-8", "replace")
            events.append(_Skipped(data, self._name, head=self._head))
            self._head, self._name, self._tail = "", "", bytearray()
        elif self._skipping:  # a line of it ("data" and "data:" alone are data lines too)
            if self._field == 1 or (not self._field and self._start in (b"data", b"data:")):
                self._tail += b"\n"
            self._start, self._field = b"", 0
        super()._end_line(events)


def _member(text: str, key: str) -> dict[str, Any] | None:
    """The last whole JSON object that is the value of a ``key`` member in ``text``."""
    found = None
    for match in re.finditer(r'"' + key + r'"\s*:\s*(?=\{)', text):
        try:
            value, _ = _RAW_DECODE(text, match.end())
        except (ValueError, RecursionError):
            continue
        found = value if type(value) is dict else found
    return found


def _read(result: UsageResult, kind: str, response: Mapping[str, Any]) -> None:
    """Take what a ``response`` object of an event of ``kind`` says."""
    if not result.id and type(value := response.get("id")) is str and value:
        result.id = value
    if not result.model and type(value := response.get("model")) is str and value:
        result.model = value
    usage = response.get("usage")
    if type(usage) is dict:  # counts are ints (a bool is not one)
        prompt, completion, total = (
            n if type(n := usage.get(key)) is int else None
            for key in ("input_tokens", "output_tokens", "total_tokens")
        )
        if prompt is not None or completion is not None or total is not None:
            if total is None and prompt is not None:
                total = prompt + (completion or 0)
            result.prompt_tokens, result.completion_tokens = prompt, completion
            result.total_tokens = total
    if kind == "response.completed":
        result.complete, result.finish_reasons[0] = True, "completed"
    elif kind == "response.incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if type(details) is dict else None
        result.complete = True
        result.finish_reasons[0] = reason if type(reason) is str and reason else "incomplete"
    elif kind == "response.failed":
        error = response.get("error")
        result.error = error if type(error) is dict else dict(_FAILED)


def _usage(text: str) -> dict[str, Any] | None:
    """The last whole ``usage`` object in ``text`` that has a token count: a response's own
    (a tool's schema may have a property of that name, but no counts)."""
    found = None
    for match in _USAGE.finditer(text):
        try:
            value, _ = _RAW_DECODE(text, match.end())
        except (ValueError, RecursionError):
            continue
        if type(value) is dict and any(type(value.get(k)) is int for k in _COUNTS):
            found = value
    return found


def _read_in_place(result: UsageResult, name: str, data: str) -> bool:
    """Take what the usual events that are read (``response.created``, ``response.completed``,
    ``response.incomplete``) say without decoding their whole data, which repeats the whole
    response: its id and model read where they lie, its usage and ``incomplete_details``
    decoded alone. Whether it could (the data's type is ``name``, braced, and what is needed
    was found); else the caller decodes it all."""
    first = _FIRST_TYPE.match(data)
    if first is None or first[1] != name or data.rstrip()[-1:] != "}":
        return False
    response: dict[str, Any] = {}
    if not result.id:
        found_id, found_model = _RESPONSE_ID.search(data), _MODEL.search(data)
        if found_id is None or found_model is None:
            return False
        response["id"], response["model"] = found_id[1], found_model[1]
    if name != "response.created":
        usage = _usage(data)
        if usage is None and '"usage":null' not in data:
            return False  # (usage written another way: decoded whole)
        response["usage"] = usage
        if name == "response.incomplete":
            response["incomplete_details"] = _member(data, "incomplete_details")
    _read(result, name, response)
    return True


def _take(result: UsageResult, name: str, data: str) -> None:
    """Take what an event named ``name`` with ``data`` says, if it is one of ``_KINDS``."""
    if name in _IN_PLACE and _read_in_place(result, name, data):
        return
    try:
        obj = decode(data)
    except (ValueError, RecursionError):
        obj = None
    fields: dict[str, Any] = obj if (whole := type(obj) is dict) else {}
    kind = kind if type(kind := fields.get("type")) is str else name
    if kind == "error":
        message = fields.get("message")
        message = message if type(message) is str and message else "error event"
        result.error = {"code": fields.get("code"), "message": message, "type": "error"}
    elif kind in _KINDS and (whole or kind == "response.failed"):
        response = fields.get("response")
        _read(result, kind, response if type(response) is dict else {})


class ResponsesObserver:
    """Feed it the bytes of a Responses stream; read :attr:`result` at any time."""

    def __init__(self, max_bytes: int = 64 * 1024, *, request_id: str | None = None) -> None:
        self.result = UsageResult()
        self._parser = _Parser(max_bytes)
        self._request_id, self._logged = request_id, False

    @property
    def buffered(self) -> int:
        """Bytes held for an event not finished yet (never more than the cap)."""
        return self._parser.buffered

    def feed(self, chunk: bytes) -> None:
        """Observe ``chunk``; never raises."""
        result = self.result
        try:
            end, count = self._parser.plain_events(chunk)
            if end:  # an event is looked at only if its bytes could say what is looked for
                result.events += count
                # (two searches: one with an alternation would lose their literal prefixes)
                hits = [
                    m.start() for r in (_WANTED_BYTES, _NAMED) for m in r.finditer(chunk, 0, end)
                ]
                at = 0
                for hit in sorted(hits):
                    if hit < at:  # (in an event already looked at)
                        continue
                    begin = chunk.rfind(b"\n\n", 0, hit)
                    begin = begin + 2 if begin >= 0 else 0
                    line = chunk.find(b"\n", begin)
                    at = chunk.find(b"\n\n", line) + 2
                    name = chunk[begin + 7 : line].decode("utf-8", "replace")
                    _take(result, name, chunk[line + 7 : at - 2].decode("utf-8", "replace"))
                chunk = chunk[end:]
            for event in self._parser.feed(chunk):
                if type(event) is _Skipped:
                    self._skipped(event)
                    continue
                result.events += 1
                if event.event in _KINDS or _WANTED.search(event.data):
                    _take(result, event.event, event.data)
        except Exception:  # the observer must never break the relay
            result.failures += 1
            if not self._logged:
                self._logged = True
                logger.exception("usage observer failed (request %s)", self._request_id)
        result.oversized = self._parser.oversized

    def _skipped(self, event: _Skipped) -> None:
        first = _FIRST_TYPE.match(event.head)
        kind = first[1] if first is not None else event.event
        braced = event.head.lstrip()[:1] == "{" and (event.data or event.head).rstrip()[-1:] == "}"
        if kind not in _KINDS or not (braced or kind in _FAILS):  # (success needs an object)
            return
        response: dict[str, Any] = {}
        for key, pattern in (("id", _RESPONSE_ID), ("model", _MODEL)):
            if (found := pattern.search(event.head)) is not None:
                response[key] = found[1]
        for key in ("usage", "incomplete_details", "error"):
            value = _member(event.data, key) or _member(event.head, key)
            if value is not None:
                response[key] = value
        _read(self.result, kind, response)


class ResponsesDialect(Dialect):
    """The OpenAI Responses API: see the module docs."""

    name: ClassVar[str] = "responses"
    routes: ClassVar[Mapping[str, tuple[str, ...]]] = {"/responses": ("input",)}
    terminal: ClassVar[bytes | None] = None
    terminal_name: ClassVar[str] = "response.completed"

    def stream_observer(self, request_id: str | None = None) -> ResponsesObserver:
        return ResponsesObserver(request_id=request_id)

    def observe_body(self, body: bytes) -> UsageResult:
        result = UsageResult()
        try:
            obj = decode(body)
        except (ValueError, RecursionError):
            return result
        if type(obj) is not dict:
            return result
        status = obj.get("status")
        _read(result, f"response.{status}" if type(status) is str else "", obj)
        if type(error := obj.get("error")) is dict:  # a failed Response's, or an error body
            result.error = error
        result.complete = True
        return result

    def failed_first_event(self, event: SSEEvent) -> bool:
        if event.event in _FAILS:
            return True
        if _FAILED_TYPE.search(event.data) is None:  # (a usual first event is not decoded)
            return False
        try:
            obj = decode(event.data)
        except (ValueError, RecursionError):
            return False
        return type(obj) is dict and obj.get("type") in _FAILS

    def error_event(
        self,
        message: str,
        code: str,
        type_: str = "upstream_error",
        *,
        seen: UsageResult | None = None,
    ) -> bytes:
        """The API's own ``error`` event (``type_`` has no place in it: its type is ``error``),
        numbered after the events ``seen`` (each of a stream's events has the next
        ``sequence_number``, from 0)."""
        event: dict[str, Any] = {"type": "error", "code": code, "message": message, "param": None}
        event["sequence_number"] = seen.events if seen is not None else 0
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return b"event: error\ndata: " + data.encode() + b"\n\n"
