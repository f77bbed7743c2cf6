"""Hypothesis strategies for testing OpenAI-compatible streaming clients, proxies and routers.

Needs the optional dependency: ``pip install 'waterfall-fakes[hypothesis]'``.

- :func:`chat_completion_streams` / :func:`chat_completion_chunks`: valid chat-completion
  streams (lists of chunk dicts) and single chunks;
- :func:`responses_streams` and :func:`messages_streams`: valid OpenAI Responses API and
  Anthropic Messages streams (lists of typed event dicts), and :func:`named_events` to put them
  on the wire with their ``event:`` names;
- :func:`sse_events` and :func:`sse_encodings`: server-sent events and every legal way to put a
  stream of them on the wire;
- :func:`chunkings`: every way a transport may split bytes into chunks;
- :func:`behaviours` / :func:`fault_scripts` / :func:`fault_rules`: fault scripts and rules
  for a :class:`~waterfall_fakes.FakeProvider`;
- :func:`register_profiles`: the ``dev`` and ``ci`` settings profiles.

Everything shrinks towards the plainest case (one choice, ``\\n`` line ends, no comments, one
chunk, an empty script), so a failing example reads like a bug report. Bad arguments raise
:class:`hypothesis.errors.InvalidArgument` when the strategy is made (or, for values drawn from
strategies you pass, when they are drawn).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import DrawFn, SearchStrategy

from .behaviours import (
    Behaviour,
    BigEvent,
    Chunking,
    ContentFilter,
    ContextLengthExceeded,
    ContextStyle,
    Cut,
    Dialect,
    DoubleDone,
    ErrorEvent,
    Fields,
    Hang,
    InsufficientBalance,
    KeepAlive,
    LineEndings,
    MalformedEvent,
    NoDone,
    NoUsage,
    Ok,
    Prefill,
    RateLimit,
    SlowChunks,
    SlowFirstByte,
    Stall,
    Status,
    ToolCall,
    Truncate,
    When,
)
from .rules import Rule

__all__ = [
    "BEHAVIOUR_KINDS",
    "FINISH_REASONS",
    "LINE_ENDINGS",
    "MESSAGES_STOP_REASONS",
    "SSEEvent",
    "behaviours",
    "chat_completion_chunks",
    "chat_completion_streams",
    "chunkings",
    "fault_rules",
    "fault_scripts",
    "messages_streams",
    "named_events",
    "register_profiles",
    "responses_streams",
    "sse_encodings",
    "sse_events",
]

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "tool_calls", "content_filter")
"""The finish reasons a chat-completion choice may end with."""

LINE_ENDINGS: tuple[str, ...] = ("\n", "\r\n", "\r")
"""The line ends the SSE format allows."""

BEHAVIOUR_KINDS: tuple[str, ...] = (
    "ok", "no_usage", "no_done", "double_done", "truncate", "cut", "chunking", "line_endings",
    "keepalive", "fields", "error_event", "malformed_event", "big_event", "rate_limit",
    "insufficient_balance", "status", "context_length_exceeded", "content_filter", "prefill",
    "tool_call", "when", "slow_first_byte", "slow_chunks", "stall", "hang",
)  # fmt: skip
"""Every behaviour kind, the plainest first (the order :func:`behaviours` shrinks in)."""

_UNICODE = st.characters(codec="utf-8")
_ONE_LINE = st.characters(codec="utf-8", exclude_characters="\r\n")
_IDS = st.text(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=29
)


# -- argument checks ---------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")


def _check_sizes(min_size: int, max_size: int | None) -> None:
    _check_int("min_size", min_size)
    if max_size is not None:
        _check_int("max_size", max_size)
        if max_size < min_size:
            raise InvalidArgument(f"max_size={max_size!r} must be at least min_size={min_size!r}")


def _check_strategy(name: str, value: object) -> None:
    if not isinstance(value, SearchStrategy):
        raise InvalidArgument(
            f"{name}={value!r} must be a strategy (wrap a single value in st.just(...))"
        )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be True or False")


# -- chat-completion streams -------------------------------------------------------------------
def _choice(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}


def _tool_deltas(index: int, call_id: str, pieces: list[str]) -> list[dict[str, Any]]:
    """A tool call whose argument fragments join to ``{"input": "<pieces joined>"}``."""

    def args(fragment: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}

    start = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": f"call_{call_id}",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
        ],
    }
    fragments = [json.dumps(p, ensure_ascii=False)[1:-1] for p in pieces]
    middle = [_choice(index, args(f)) for f in ['{"input":"', *fragments, '"}']]
    return [_choice(index, start), *middle]


@st.composite
def _streams(
    draw: DrawFn,
    contents: SearchStrategy[str],
    min_size: int,
    max_size: int | None,
    choices: SearchStrategy[int],
    finish_reasons: SearchStrategy[str],
    include_usage: SearchStrategy[bool],
    models: SearchStrategy[str],
) -> list[dict[str, Any]]:
    n = draw(choices)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise InvalidArgument(f"choices drew {n!r}; a stream has 1 to 128 choices")
    usage = draw(include_usage)
    _check_bool("a value drawn from include_usage", usage)
    model = draw(models)
    if not isinstance(model, str):
        raise InvalidArgument(f"models drew {model!r}, which is not a string")
    base: dict[str, Any] = {
        "id": "chatcmpl-" + draw(_IDS),
        "object": "chat.completion.chunk",
        "created": draw(st.integers(0, 2**31 - 1)),
        "model": model,
    }
    if draw(st.booleans()):
        base["system_fingerprint"] = "fp_" + draw(_IDS)

    sequences: list[list[dict[str, Any]]] = []
    for c in range(n):
        reason = draw(finish_reasons)
        if reason not in FINISH_REASONS:
            raise InvalidArgument(f"finish_reasons drew {reason!r}, not one of {FINISH_REASONS}")
        pieces = draw(st.lists(contents, min_size=min_size, max_size=max_size))
        for piece in pieces:
            if not isinstance(piece, str):
                raise InvalidArgument(f"contents drew {piece!r}, which is not a string")
        if reason == "tool_calls":
            body = _tool_deltas(c, draw(_IDS), pieces)
        else:
            role = {"role": "assistant", "content": ""}
            body = [_choice(c, role), *(_choice(c, {"content": p}) for p in pieces)]
        sequences.append([*body, _choice(c, {}, reason)])

    chunks: list[dict[str, Any]] = []
    live = list(range(n))
    while live:  # interleave the choices, each in its own order
        c = draw(st.sampled_from(live)) if len(live) > 1 else live[0]
        chunk = {**base, "choices": [sequences[c].pop(0)]}
        if usage:
            chunk["usage"] = None
        chunks.append(chunk)
        if not sequences[c]:
            live.remove(c)
    if usage:
        prompt, completion = draw(st.integers(0, 2**20)), draw(st.integers(0, 2**20))
        totals = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        chunks.append({**base, "choices": [], "usage": totals})
    return chunks


def chat_completion_streams(
    contents: SearchStrategy[str] | None = None,
    *,
    min_size: int = 0,
    max_size: int | None = None,
    choices: SearchStrategy[int] | None = None,
    finish_reasons: SearchStrategy[str] | None = None,
    include_usage: SearchStrategy[bool] | None = None,
    models: SearchStrategy[str] | None = None,
) -> SearchStrategy[list[dict[str, Any]]]:
    """Valid OpenAI chat-completion streams, as the list of chunk dicts a client decodes.

    Each choice (``choices`` draws how many; default 1 to 3) starts with a role delta, then has
    from ``min_size`` to ``max_size`` content deltas drawn from ``contents`` (default: any text,
    multi-byte included), and ends with a chunk carrying its finish reason (drawn from
    ``finish_reasons``, default :data:`FINISH_REASONS`). A choice that finishes with
    ``tool_calls`` streams a tool call instead, whose argument fragments (one per drawn content,
    plus an opening and a closing one) join to valid JSON. The choices' chunks interleave. When
    ``include_usage`` draws True (default: either), every chunk has ``"usage": null`` and a last
    usage-only chunk with ``"choices": []`` follows, as with ``stream_options.include_usage``.

    The ``[DONE]`` sentinel is not a chunk: :func:`sse_encodings` adds it.
    """
    _check_sizes(min_size, max_size)
    contents = st.text(_UNICODE) if contents is None else contents
    choices = st.integers(1, 3) if choices is None else choices
    finish_reasons = st.sampled_from(FINISH_REASONS) if finish_reasons is None else finish_reasons
    include_usage = st.booleans() if include_usage is None else include_usage
    models = st.sampled_from(["fake-small", "gpt-4o-mini"]) if models is None else models
    for name, value in (
        ("contents", contents),
        ("choices", choices),
        ("finish_reasons", finish_reasons),
        ("include_usage", include_usage),
        ("models", models),
    ):
        _check_strategy(name, value)
    return _streams(contents, min_size, max_size, choices, finish_reasons, include_usage, models)


def chat_completion_chunks(
    contents: SearchStrategy[str] | None = None,
    *,
    choices: SearchStrategy[int] | None = None,
    finish_reasons: SearchStrategy[str] | None = None,
    include_usage: SearchStrategy[bool] | None = None,
    models: SearchStrategy[str] | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """Single chunks of :func:`chat_completion_streams` (same arguments): a role delta, a
    content or tool-call delta, a finish chunk or a usage-only chunk."""
    streams = chat_completion_streams(
        contents,
        choices=choices,
        finish_reasons=finish_reasons,
        include_usage=include_usage,
        models=models,
    )
    return streams.flatmap(st.sampled_from)


# -- Responses API and Anthropic Messages streams ----------------------------------------------
def _check_pieces(
    draw: DrawFn, contents: SearchStrategy[str], lo: int, hi: int | None
) -> list[str]:
    pieces = draw(st.lists(contents, min_size=lo, max_size=hi))
    for piece in pieces:
        if not isinstance(piece, str):
            raise InvalidArgument(f"contents drew {piece!r}, which is not a string")
    return pieces


def _arguments(pieces: list[str]) -> list[str]:
    """Fragments that join to ``{"input": "<pieces joined>"}``."""
    return ['{"input":"', *(json.dumps(p, ensure_ascii=False)[1:-1] for p in pieces), '"}']


@st.composite
def _responses(
    draw: DrawFn,
    contents: SearchStrategy[str],
    min_size: int,
    max_size: int | None,
    tool_calls: SearchStrategy[bool],
    incomplete: SearchStrategy[bool],
    models: SearchStrategy[str],
) -> list[dict[str, Any]]:
    model = draw(models)
    if not isinstance(model, str):
        raise InvalidArgument(f"models drew {model!r}, which is not a string")
    call = draw(tool_calls)
    _check_bool("a value drawn from tool_calls", call)
    cut_short = draw(incomplete)
    _check_bool("a value drawn from incomplete", cut_short)
    pieces = _check_pieces(draw, contents, min_size, max_size)
    prompt, completion = draw(st.integers(0, 2**20)), draw(st.integers(0, 2**20))
    created = draw(st.integers(0, 2**31 - 1))
    response: dict[str, Any] = {
        "id": "resp_" + draw(_IDS),
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
    }
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    emit("response.created", response=response)
    if draw(st.booleans()):
        emit("response.in_progress", response=response)
    status = "incomplete" if cut_short else "completed"
    item: dict[str, Any]
    if call:
        fragments = _arguments(pieces)
        item = {
            "id": "fc_" + draw(_IDS),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": "call_" + draw(_IDS),
            "name": "lookup",
        }
        at = {"item_id": item["id"], "output_index": 0}
        emit("response.output_item.added", output_index=0, item=item)
        for fragment in fragments:
            emit("response.function_call_arguments.delta", **at, delta=fragment)
        arguments = "".join(fragments)
        emit("response.function_call_arguments.done", **at, arguments=arguments)
        item = {**item, "status": status, "arguments": arguments}
    else:
        item = {
            "id": "msg_" + draw(_IDS),
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        emit("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "annotations": [], "text": ""}
        emit("response.content_part.added", **at, part=part)
        for piece in pieces:
            emit("response.output_text.delta", **at, delta=piece, logprobs=[])
        text = "".join(pieces)
        emit("response.output_text.done", **at, text=text, logprobs=[])
        part = {**part, "text": text}
        emit("response.content_part.done", **at, part=part)
        item = {**item, "status": status, "content": [part]}
    emit("response.output_item.done", output_index=0, item=item)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    final = {**response, "status": status, "output": [item], "usage": usage}
    if cut_short:
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    emit(f"response.{status}", response=final)
    return events


def responses_streams(
    contents: SearchStrategy[str] | None = None,
    *,
    min_size: int = 0,
    max_size: int | None = None,
    tool_calls: SearchStrategy[bool] | None = None,
    incomplete: SearchStrategy[bool] | None = None,
    models: SearchStrategy[str] | None = None,
) -> SearchStrategy[list[dict[str, Any]]]:
    """Valid OpenAI Responses API streams, as the list of event dicts a client decodes.

    Each event has its ``type`` and a ``sequence_number`` from 0. ``response.created`` (and
    sometimes ``response.in_progress``) opens; one output item follows: a message whose text
    comes in ``min_size`` to ``max_size`` ``response.output_text.delta`` events drawn from
    ``contents`` (default: any text), or, when ``tool_calls`` draws True (default: either), a
    ``function_call`` whose ``response.function_call_arguments.delta`` fragments join to valid
    JSON. The last event is ``response.completed``, or ``response.incomplete`` (reason
    ``max_output_tokens``) when ``incomplete`` draws True (default: never), carrying the
    whole response and its ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``).
    There is no ``[DONE]``: encode with :func:`named_events` and ``done=st.just(False)``.
    """
    _check_sizes(min_size, max_size)
    contents = st.text(_UNICODE) if contents is None else contents
    tool_calls = st.booleans() if tool_calls is None else tool_calls
    incomplete = st.just(False) if incomplete is None else incomplete
    models = st.sampled_from(["fake-small", "gpt-4.1-mini"]) if models is None else models
    for name, value in (
        ("contents", contents),
        ("tool_calls", tool_calls),
        ("incomplete", incomplete),
        ("models", models),
    ):
        _check_strategy(name, value)
    return _responses(contents, min_size, max_size, tool_calls, incomplete, models)


MESSAGES_STOP_REASONS: tuple[str, ...] = ("end_turn", "max_tokens", "stop_sequence", "tool_use")
"""The stop reasons :func:`messages_streams` draws for a text answer (``tool_use`` ends one
with a tool call)."""


@st.composite
def _messages(
    draw: DrawFn,
    contents: SearchStrategy[str],
    min_size: int,
    max_size: int | None,
    tool_use: SearchStrategy[bool],
    pings: bool,
    models: SearchStrategy[str],
) -> list[dict[str, Any]]:
    model = draw(models)
    if not isinstance(model, str):
        raise InvalidArgument(f"models drew {model!r}, which is not a string")
    call = draw(tool_use)
    _check_bool("a value drawn from tool_use", call)
    prompt, completion = draw(st.integers(0, 2**20)), draw(st.integers(0, 2**20))
    start_output = draw(st.integers(0, min(completion, 1)))  # Anthropic sends 1 or so here
    usage = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": start_output,
    }
    message: dict[str, Any] = {
        "id": "msg_" + draw(_IDS),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
    blocks: list[list[dict[str, Any]]] = []
    with_text = not call or draw(st.booleans())
    if with_text:
        pieces = _check_pieces(draw, contents, min_size, max_size)
        block = [{"type": "content_block_start", "content_block": {"type": "text", "text": ""}}]
        block += [
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ]
        blocks.append(block)
    if call:
        pieces = _check_pieces(draw, contents, 0, max_size)
        tool = {"type": "tool_use", "id": "toolu_" + draw(_IDS), "name": "lookup", "input": {}}
        block = [{"type": "content_block_start", "content_block": tool}]
        block += [
            {
                "type": "content_block_delta",
                "delta": {"type": "input_json_delta", "partial_json": f},
            }
            for f in _arguments(pieces)
        ]
        blocks.append(block)
    for index, block in enumerate(blocks):
        for event in block:
            events.append({"type": event["type"], "index": index, **event})
        events.append({"type": "content_block_stop", "index": index})
    reason = "tool_use" if call else draw(st.sampled_from(MESSAGES_STOP_REASONS[:3]))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": completion},
        }
    )
    if pings:  # pings anywhere after message_start, before message_delta
        for _ in range(draw(st.integers(0, 2))):
            events.insert(draw(st.integers(1, len(events) - 1)), {"type": "ping"})
    events.append({"type": "message_stop"})
    return events


def messages_streams(
    contents: SearchStrategy[str] | None = None,
    *,
    min_size: int = 0,
    max_size: int | None = None,
    tool_use: SearchStrategy[bool] | None = None,
    pings: bool = True,
    models: SearchStrategy[str] | None = None,
) -> SearchStrategy[list[dict[str, Any]]]:
    """Valid Anthropic Messages streams, as the list of event dicts a client decodes.

    ``message_start`` carries the message with ``usage.input_tokens`` (and a small
    ``output_tokens``, as Anthropic sends); then a text block of ``min_size`` to ``max_size``
    ``text_delta`` events drawn from ``contents`` (default: any text) and, when ``tool_use``
    draws True (default: either), a ``tool_use`` block whose ``input_json_delta`` fragments join
    to valid JSON (sometimes alone); each block opens with ``content_block_start`` and closes with
    ``content_block_stop``. ``message_delta`` gives the ``stop_reason`` (``tool_use`` after a
    tool call, else one of :data:`MESSAGES_STOP_REASONS`) and the total ``output_tokens``;
    ``message_stop`` ends it. With ``pings``, up to two ``ping`` events fall anywhere between
    ``message_start`` and ``message_delta``.
    Encode with :func:`named_events` and ``done=st.just(False)``.
    """
    _check_sizes(min_size, max_size)
    _check_bool("pings", pings)
    contents = st.text(_UNICODE) if contents is None else contents
    tool_use = st.booleans() if tool_use is None else tool_use
    models = st.sampled_from(["fake-small", "claude-sonnet-4-5"]) if models is None else models
    for name, value in (("contents", contents), ("tool_use", tool_use), ("models", models)):
        _check_strategy(name, value)
    return _messages(contents, min_size, max_size, tool_use, pings, models)


def named_events(stream: Sequence[Mapping[str, Any]]) -> list[SSEEvent]:
    """The events of a Responses API or Messages stream as :class:`SSEEvent` with their
    ``event:`` name (the dict's ``type``) and compact JSON data, for :func:`sse_encodings`."""
    out = []
    for event in stream:
        kind = event.get("type") if isinstance(event, Mapping) else None
        if not isinstance(kind, str) or not kind:
            raise InvalidArgument(f"{event!r} has no type to name its event by")
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        out.append(_check_event(SSEEvent(data, kind)))
    return out


# -- server-sent events ------------------------------------------------------------------------
@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event as a client receives it.

    ``data`` is the event's data (lines joined by ``\\n``; a CR cannot be sent), ``event`` its
    type (``None``: the default, ``message``), ``id`` the last-event-ID it sets (no CR, LF or
    NUL) and ``retry`` the reconnection time it sets in milliseconds.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def _check_event(event: SSEEvent) -> SSEEvent:
    if not isinstance(event.data, str) or "\r" in event.data:
        raise InvalidArgument(f"{event!r}: data must be a string without CR")
    if event.event is not None and (
        not isinstance(event.event, str) or not event.event or set(event.event) & {"\r", "\n"}
    ):
        raise InvalidArgument(f"{event!r}: event must be a non-empty string without CR or LF")
    if event.id is not None and (
        not isinstance(event.id, str) or set(event.id) & {"\r", "\n", "\0"}
    ):
        raise InvalidArgument(f"{event!r}: id must be a string without CR, LF or NUL")
    if event.retry is not None:
        _check_int("retry", event.retry)
    return event


def sse_events(
    data: SearchStrategy[str] | None = None, *, allow_fields: bool = True
) -> SearchStrategy[SSEEvent]:
    """Arbitrary server-sent events: ``data`` drawn from ``data`` (default: any text without CR,
    LF included, so multi-line) and, with ``allow_fields``, sometimes an event type, an id and a
    retry time. Put them on the wire with :func:`sse_encodings`."""
    _check_bool("allow_fields", allow_fields)
    data = st.text(st.characters(codec="utf-8", exclude_characters="\r")) if data is None else data
    _check_strategy("data", data)
    if not allow_fields:
        return data.map(lambda d: _check_event(SSEEvent(d)))
    return st.builds(
        lambda d, e, i, r: _check_event(SSEEvent(d, e, i, r)),
        data,
        st.none() | st.text(_ONE_LINE, min_size=1),
        st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0")),
        st.none() | st.integers(0, 2**31 - 1),
    )


_COMMENTS = st.sampled_from([" keep-alive", "", " ping"]) | st.text(_ONE_LINE, max_size=8)


def _event_of(item: Mapping[str, Any] | str | SSEEvent) -> Mapping[str, Any] | str | SSEEvent:
    """Check one item of the stream given to :func:`sse_encodings`."""
    if isinstance(item, SSEEvent):
        return _check_event(item)
    if isinstance(item, str):
        _check_event(SSEEvent(item))
        return item
    if isinstance(item, Mapping):
        try:
            json.dumps(item, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{item!r} cannot be sent as UTF-8 JSON: {exc}") from None
        return item
    raise InvalidArgument(f"{item!r}: expected a mapping (sent as JSON), a string or an SSEEvent")


@st.composite
def _encodings(
    draw: DrawFn,
    items: tuple[Mapping[str, Any] | str | SSEEvent, ...],
    line_endings: SearchStrategy[str],
    allow_comments: bool,
    allow_fields: bool,
    allow_multiline: bool,
    done: SearchStrategy[bool],
) -> bytes:
    eol = draw(line_endings)
    if eol not in LINE_ENDINGS:
        raise InvalidArgument(f"line_endings drew {eol!r}, not one of {LINE_ENDINGS}")
    finished = draw(done)
    _check_bool("a value drawn from done", finished)
    lines: list[str] = []

    def field(name: str, value: str) -> str:
        # one leading space is stripped by the reader, so a value starting with one needs it
        space = value.startswith(" ") or not draw(st.booleans())
        return f"{name}: {value}" if space else f"{name}:{value}"

    def keepalives() -> None:
        if allow_comments:
            lines.extend(":" + text for text in draw(st.lists(_COMMENTS, max_size=2)))
            lines.extend([""] * draw(st.integers(0, 2)))  # blank lines dispatch nothing

    events = [*items, "[DONE]"] if finished else list(items)
    for number, item in enumerate(events, 1):
        keepalives()
        if isinstance(item, SSEEvent):
            event = item
        elif isinstance(item, str):
            event = SSEEvent(item)
        else:
            text = json.dumps(
                item,
                ensure_ascii=draw(st.booleans()),
                separators=(", ", ": ") if draw(st.booleans()) else (",", ":"),
                indent=draw(st.none() | st.just(2)) if allow_multiline else None,
                allow_nan=False,
            )
            event = SSEEvent(text)
        if allow_fields and not isinstance(item, SSEEvent):
            event = SSEEvent(
                event.data,
                draw(st.none() | st.sampled_from(["message", "completion"])),
                draw(st.none() | st.just(str(number))),
                draw(st.none() | st.integers(0, 10_000)),
            )
        block = [field("data", part) for part in event.data.split("\n")]
        extra = [("event", event.event), ("id", event.id)]
        extra.append(("retry", None if event.retry is None else str(event.retry)))
        for name, value in extra:
            if value is not None:
                block.insert(draw(st.integers(0, len(block))), field(name, value))
        for line in block:
            if allow_comments and draw(st.booleans()):
                lines.append(":" + draw(_COMMENTS))
            lines.append(line)
        lines.append("")
    keepalives()
    return "".join(line + eol for line in lines).encode()


def sse_encodings(
    events: Sequence[Mapping[str, Any] | str | SSEEvent],
    *,
    line_endings: SearchStrategy[str] | None = None,
    allow_comments: bool = True,
    allow_fields: bool = True,
    allow_multiline: bool = True,
    done: SearchStrategy[bool] | None = None,
) -> SearchStrategy[bytes]:
    """The bytes of every legal SSE encoding of ``events``, as a server may send them.

    Each item of ``events`` becomes one event: a mapping is sent as JSON (compact or spaced,
    escaped to ASCII or not, and with ``allow_multiline`` sometimes indented, so that its data
    spans several ``data:`` lines), a string as the data itself, an :class:`SSEEvent` as it is.
    When ``done`` draws True (default: always) a final ``data: [DONE]`` follows; pass
    ``done=st.booleans()`` for streams that may end without it.

    All lines end with one style drawn from ``line_endings`` (default: LF, CRLF or CR);
    ``data:`` comes with or without its space. With ``allow_comments``, comments and blank
    lines (keep-alives) appear between events and comments between an event's lines; with
    ``allow_fields``, mappings and strings sometimes get ``event:``, ``id:`` and ``retry:``
    lines. A WHATWG reader gives back exactly the events' data.
    """
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise InvalidArgument(f"events={events!r} must be a sequence of events")
    items = tuple(_event_of(item) for item in events)
    line_endings = st.sampled_from(LINE_ENDINGS) if line_endings is None else line_endings
    done = st.just(True) if done is None else done
    _check_strategy("line_endings", line_endings)
    _check_strategy("done", done)
    for name, flag in (
        ("allow_comments", allow_comments),
        ("allow_fields", allow_fields),
        ("allow_multiline", allow_multiline),
    ):
        _check_bool(name, flag)
    return _encodings(items, line_endings, allow_comments, allow_fields, allow_multiline, done)


# -- chunkings ---------------------------------------------------------------------------------
def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def chunkings(
    data: bytes, *, min_size: int = 0, max_size: int | None = None, allow_empty: bool = False
) -> SearchStrategy[list[bytes]]:
    """Lists of chunks whose join is ``data``, split anywhere (inside a UTF-8 character, a
    line end or a field name included), shrinking towards one chunk.

    ``min_size`` and ``max_size`` bound the number of chunks. Chunks are never empty unless
    ``allow_empty`` (some ASGI servers and transports do send empty body messages); so without
    it ``b""`` has only one chunking, ``[]``.
    """
    if not isinstance(data, bytes):
        raise InvalidArgument(f"data={data!r} must be bytes")
    _check_sizes(min_size, max_size)
    _check_bool("allow_empty", allow_empty)
    n = len(data)
    if n == 0:
        if allow_empty:
            return st.lists(st.just(b""), min_size=min_size, max_size=max_size)
        if min_size > 0:
            raise InvalidArgument(f"min_size={min_size}, but b'' has no non-empty chunks")
        return st.just([])
    if max_size is not None and max_size < 1:
        raise InvalidArgument(f"max_size={max_size}, but non-empty data needs a chunk")
    lo = max(min_size, 1) - 1  # the number of cuts
    hi = None if max_size is None else max_size - 1
    if allow_empty:
        cuts = st.lists(st.integers(0, n), min_size=lo, max_size=hi)
        return cuts.map(lambda c: _split(data, c))
    if min_size > n:
        raise InvalidArgument(f"min_size={min_size}, but {n} bytes make at most {n} chunks")
    if n == 1:
        return st.just([data])
    cut_set = st.sets(st.integers(1, n - 1), min_size=lo, max_size=hi)
    return cut_set.map(lambda c: _split(data, list(c)))


# -- fault scripts -----------------------------------------------------------------------------
def _gates() -> SearchStrategy[Behaviour]:
    seconds = st.floats(0, 3600, allow_nan=False)
    return st.builds(
        When,
        p=st.just(1.0) | st.floats(0, 1),
        times=st.none() | st.integers(0, 8),
        skip=st.integers(0, 8),
        start=st.none() | seconds,
        end=st.none() | seconds,
        since=st.sampled_from(["start", "first"]),
    )


def _behaviour_strategies(max_delay: float) -> dict[str, SearchStrategy[Behaviour]]:
    delays = st.floats(0, max_delay) if max_delay > 0 else st.just(0.0)
    small = st.integers(0, 16)
    texts = st.text(_ONE_LINE, max_size=12)
    return {
        "ok": st.just(Ok()),
        "no_usage": st.just(NoUsage()),
        "no_done": st.just(NoDone()),
        "double_done": st.just(DoubleDone()),
        "truncate": st.builds(Truncate, events=small),
        "cut": st.builds(Cut, bytes=st.integers(0, 4096), tokens=st.none() | small),
        "chunking": st.one_of(
            st.builds(Chunking, size=st.integers(1, 64)),
            st.builds(Chunking, at=st.lists(st.integers(0, 4096), max_size=8).map(tuple)),
            st.builds(Chunking, seed=st.integers(0, 2**32), max_size=st.integers(1, 64)),
        ),
        "line_endings": st.builds(LineEndings, style=st.sampled_from(["lf", "crlf", "cr"])),
        "keepalive": st.builds(
            KeepAlive, every=st.integers(1, 8), text=st.just("keep-alive") | texts
        ),
        "fields": st.builds(
            Fields, event=st.just("completion") | texts.filter(bool), ids=st.booleans()
        ),
        "error_event": st.builds(
            ErrorEvent,
            after=small,
            done=st.booleans(),
            failed=st.booleans(),
            message=st.just(ErrorEvent().message) | st.text(_UNICODE, max_size=20),
            code=st.sampled_from(["server_error", "rate_limit_exceeded", "context_length"]),
        ),
        "malformed_event": st.builds(MalformedEvent, after=small),
        "big_event": st.builds(BigEvent, size=st.integers(1, 2**17), after=small),
        "rate_limit": st.builds(
            RateLimit,
            dialect=st.sampled_from(get_args(Dialect)),
            seconds=st.floats(0, 86_400, allow_nan=False, allow_infinity=False),
        ),
        "insufficient_balance": st.just(InsufficientBalance()),
        "status": st.builds(
            Status,
            code=st.sampled_from([500, 502, 503, 504, 529, 400, 401, 403, 404, 408, 413, 422])
            | st.integers(400, 599),
            message=st.none() | st.text(_UNICODE, max_size=20),
        ),
        "context_length_exceeded": st.builds(
            ContextLengthExceeded,
            message=st.none() | st.text(_UNICODE, max_size=20),
            style=st.sampled_from(get_args(ContextStyle)),
        ),
        "content_filter": st.builds(
            ContentFilter,
            code=st.sampled_from(["content_policy_violation", "content_filter"]),
            after=st.none() | small,
        ),
        "prefill": st.builds(Prefill, mode=st.sampled_from(["honour", "reject", "ignore"])),
        "tool_call": st.builds(
            ToolCall,
            name=st.none() | st.sampled_from(["lookup", "get_weather"]),
            # one key at most: the header text cannot carry a comma
            arguments=st.none() | st.sampled_from(['{"city":"Oslo"}', "{}", '{"n":3}']),
        ),
        "when": _gates(),
        "stall": st.builds(Stall, events=small, seconds=delays),
        "slow_first_byte": st.builds(SlowFirstByte, seconds=delays),
        "slow_chunks": st.builds(SlowChunks, seconds=delays),
        "hang": st.builds(Hang, seconds=delays),
    }


def behaviours(
    kinds: Collection[str] | None = None, *, max_delay: float = 0.0
) -> SearchStrategy[Behaviour]:
    """Single valid behaviours, of the given ``kinds`` (default: all of
    :data:`BEHAVIOUR_KINDS`), shrinking towards ``ok``.

    Waits (``hang``, ``slow_first_byte``, ``slow_chunks``, ``stall``) last from 0 to
    ``max_delay`` seconds (default 0, so that a property test never sleeps); a hang or a stall
    never lasts forever here.
    """
    if kinds is None:
        kinds = BEHAVIOUR_KINDS
    if isinstance(kinds, str) or not isinstance(kinds, Collection):
        raise InvalidArgument(f"kinds={kinds!r} must be a collection of behaviour names")
    unknown = sorted(set(kinds) - set(BEHAVIOUR_KINDS))
    if unknown or not kinds:
        raise InvalidArgument(
            f"kinds={kinds!r} must be a non-empty selection of {BEHAVIOUR_KINDS}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    if (
        not isinstance(max_delay, (int, float))
        or isinstance(max_delay, bool)
        or not math.isfinite(max_delay)
        or max_delay < 0
    ):
        raise InvalidArgument(f"max_delay={max_delay!r} must be a finite number >= 0")
    table = _behaviour_strategies(float(max_delay))
    return st.one_of([table[k] for k in BEHAVIOUR_KINDS if k in kinds])


def fault_scripts(
    steps: SearchStrategy[list[Behaviour]] | None = None,
    *,
    min_size: int = 0,
    max_size: int | None = None,
) -> SearchStrategy[list[list[Behaviour]]]:
    """Scripts for ``FakeProvider(script=...)``: lists of ``min_size`` to ``max_size`` steps,
    each step a list of behaviours answering one request.

    ``steps`` draws one step (default: up to three behaviours from :func:`behaviours`; an
    empty step answers normally).
    """
    _check_sizes(min_size, max_size)
    steps = st.lists(behaviours(), max_size=3) if steps is None else steps
    _check_strategy("steps", steps)
    return st.lists(steps, min_size=min_size, max_size=max_size)


def fault_rules(
    steps: SearchStrategy[list[Behaviour]] | None = None,
    *,
    models: SearchStrategy[str] | None = None,
    min_size: int = 0,
    max_size: int | None = None,
) -> SearchStrategy[list[Rule]]:
    """Rules for ``FakeProvider(rules=...)``: lists of ``min_size`` to ``max_size``
    :class:`~waterfall_fakes.rules.Rule` with distinct names, each matching on some of model
    (a glob drawn from ``models``, default ``fake-*`` and the three default models), streaming
    and tools, and applying ``steps`` (default: up to three behaviours from :func:`behaviours`,
    gates left out) always, ``nth``, ``times`` times or at a rate ``p``. Windows are left out:
    they need a clock.
    """
    _check_sizes(min_size, max_size)
    kinds = [k for k in BEHAVIOUR_KINDS if k != "when"]
    steps = st.lists(behaviours(kinds), max_size=3) if steps is None else steps
    _check_strategy("steps", steps)
    models = (
        st.sampled_from(["fake-*", "fake-small", "fake-medium", "fake-large"])
        if models is None
        else models
    )
    _check_strategy("models", models)

    @st.composite
    def one(draw: DrawFn, name: str) -> Rule:
        step = draw(steps)
        if any(isinstance(b, When) for b in step):
            raise InvalidArgument(f"steps drew {step!r}: a rule cannot hold a 'when' gate")
        fields: dict[str, Any] = {"name": name, "behaviours": tuple(step)}
        if draw(st.booleans()):
            fields["model"] = draw(models)
        for key in ("stream", "tools"):
            if draw(st.booleans()):
                fields[key] = draw(st.booleans())
        how = draw(st.sampled_from(["always", "nth", "times", "p"]))
        if how == "nth":
            fields["nth"] = draw(st.integers(1, 8))
        elif how == "times":
            fields["times"] = draw(st.integers(0, 8))
        elif how == "p":
            fields["p"] = draw(st.floats(0, 1))
        return Rule(**fields)

    @st.composite
    def lists(draw: DrawFn) -> list[Rule]:
        count = draw(st.integers(min_size, min_size + 4 if max_size is None else max_size))
        return [draw(one(f"rule-{i}")) for i in range(count)]

    return lists()


# -- settings profiles -------------------------------------------------------------------------
def register_profiles() -> None:
    """Register the settings profiles ``dev`` (quick: 25 examples) and ``ci`` (thorough: 300
    examples, failures printed with a reproduction blob); neither has a deadline.

    Load one in a ``conftest.py``::

        register_profiles()
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
    """
    settings.register_profile("dev", max_examples=25, deadline=None)
    settings.register_profile(
        "ci", max_examples=300, deadline=None, derandomize=False, print_blob=True
    )
