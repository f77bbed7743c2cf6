"""The relay and its observers, property by property, for every dialect the router speaks.

For any stream a dialect's strategy draws (cut after any event, with or without an error event
of the upstream's, in any SSE encoding, with an unfinished event after its last whole one or not)
and any chunking of its bytes, and however the upstream ends (a clean close, a cut connection, a
stall):

1. the client receives the upstream bytes unchanged when the stream is complete (its terminal
   event came, even if the connection then broke); otherwise a prefix of whole events and
   exactly the dialect's own error event (none after the upstream's own, at a clean close);
2. the outcome (status, ``error``, usage) is the same in any chunking, and its tokens,
   completeness and error are those of a plain parse of the whole stream (the oracle);
3. there is no success without the dialect's completion evidence: a stream closed at any event
   boundary before its terminal event is ``stream_incomplete``, with the dialect's error event
   (but for chat, whose whole answer without ``[DONE]`` is a success with ``[DONE]`` appended);
4. an endless oversized event keeps the relay's and the observer's memory bounded;
5. through the mounted middleware over the fakes, under random faults and disconnects, each
   request leaves exactly one terminal ledger record;
6. each real-world sample of the fakes is relayed whole, byte by byte and in any chunking: the
   client gets the sample's bytes (and the dialect's error event when it is cut short), the
   ledger the sample's usage exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tracemalloc
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from asgi_helpers import Result, call
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from waterfall_asgi import DIALECTS, TERMINAL_STATUSES, MemoryLedger, WaterfallMiddleware
from waterfall_asgi.config import Deployment
from waterfall_asgi.dialects import Dialect
from waterfall_asgi.relay import RelayOutcome, relay_stream
from waterfall_asgi.router import Served
from waterfall_asgi.sse import SSEEvent, SSEParser
from waterfall_asgi.upstream import UpstreamTimeout, UpstreamTransportError
from waterfall_asgi.usage import UsageResult
from waterfall_fakes import FakeNetwork, FakeProvider
from waterfall_fakes.samples import STREAM_SAMPLES, StreamSample
from waterfall_fakes.strategies import SSEEvent as WireEvent
from waterfall_fakes.strategies import (
    chat_completion_streams,
    chunkings,
    messages_streams,
    named_events,
    responses_streams,
    sse_encodings,
)

DONE = b"data: [DONE]\n\n"
Tokens = tuple[int | None, int | None, int | None]
ErrorKey = tuple[str, Any] | None
"""An error as the ledger names it (``code``, else ``type``) and its message."""


def error_key(error: Mapping[str, Any] | None) -> ErrorKey:
    if error is None:
        return None
    return str(error.get("code") or error.get("type")), error.get("message")


@dataclass(frozen=True)
class Facts:
    """What a stream says, read plainly from the whole of it."""

    tokens: Tokens = (None, None, None)
    complete: bool = False
    error: ErrorKey = None
    finished: frozenset[int] = frozenset()
    """Chat: the choices that have their finish reason."""
    usage_came: bool = False


def observed(result: UsageResult) -> tuple[Tokens, bool, ErrorKey]:
    tokens = (result.prompt_tokens, result.completion_tokens, result.total_tokens)
    return tokens, result.complete, error_key(result.error)


def expected(facts: Facts) -> tuple[Tokens, bool, ErrorKey]:
    return facts.tokens, facts.complete, facts.error


# -- the oracles: a whole stream, parsed and decoded plainly ---------------------------------------
def _decoded(body: bytes) -> Iterator[tuple[SSEEvent, Any]]:
    for event in SSEParser().feed(body):
        yield event, (None if event.data == "[DONE]" else json.loads(event.data))


def chat_facts(body: bytes) -> Facts:
    tokens: Tokens = (None, None, None)
    complete = usage_came = False
    error = None
    finished: set[int] = set()
    for _, obj in _decoded(body):
        if obj is None:
            complete = True
            continue
        if isinstance(obj.get("error"), dict):
            error = obj["error"]
        if isinstance(usage := obj.get("usage"), dict):
            tokens = (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
            usage_came = True
        finished |= {c["index"] for c in obj.get("choices", []) if c.get("finish_reason")}
    return Facts(tokens, complete, error_key(error), frozenset(finished), usage_came)


_INPUTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def messages_facts(body: bytes) -> Facts:
    counts: dict[str, int] = {}
    complete, error = False, None
    for _, obj in _decoded(body):
        kind = obj["type"]
        if kind == "error":
            error = obj["error"]
        elif kind == "message_stop":
            complete = True
        elif kind in ("message_start", "message_delta"):
            usage = obj["message"]["usage"] if kind == "message_start" else obj["usage"]
            counts.update((k, v) for k, v in usage.items() if type(v) is int)
    tokens: Tokens = (None, None, None)
    if counts:
        prompt = sum(counts.get(k, 0) for k in _INPUTS)
        output = counts.get("output_tokens")
        tokens = (prompt, output, prompt + (output or 0))
    return Facts(tokens, complete, error_key(error))


def responses_facts(body: bytes) -> Facts:
    tokens: Tokens = (None, None, None)
    complete, error = False, None
    for _, obj in _decoded(body):
        kind = obj["type"]
        if kind == "error":
            error = {"code": obj["code"], "message": obj["message"]}
        elif kind.startswith("response."):
            response = obj.get("response") or {}
            if isinstance(usage := response.get("usage"), dict):
                tokens = (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"])
            if kind in ("response.completed", "response.incomplete"):
                complete = True
            elif kind == "response.failed":
                error = response["error"]
    return Facts(tokens, complete, error_key(error))


# -- the router's error event, in each dialect's shape ---------------------------------------------
def chat_error_code(event: SSEEvent) -> str:
    error = json.loads(event.data)["error"]
    assert (error["type"], error["param"]) == ("upstream_error", None)
    assert error["message"]
    return str(error["code"])


def messages_error_code(event: SSEEvent) -> str:
    assert event.event == "error"
    obj = json.loads(event.data)
    assert (obj["type"], set(obj)) == ("error", {"type", "error"})
    assert obj["error"]["type"] == "api_error"
    assert obj["error"]["message"]
    return str(obj["error"]["code"])


def responses_error_code(event: SSEEvent) -> str:
    assert event.event == "error"
    obj = json.loads(event.data)
    assert obj["type"] == "error"
    assert obj["message"]
    return str(obj["code"])


# -- an upstream's own error events ----------------------------------------------------------------
_WORDS = st.sampled_from(["Overloaded", "The server had an error", "Caf\u00e9 \u65e5\u672c"])


def _chat_errors() -> SearchStrategy[Any]:
    return st.builds(
        lambda code, message: {
            "error": {"message": message, "type": "server_error", "param": None, "code": code}
        },
        st.sampled_from(["server_error", "rate_limit_exceeded"]),
        _WORDS,
    )


def _messages_errors() -> SearchStrategy[Any]:
    def event(kind: str, message: str) -> WireEvent:
        data = {"type": "error", "error": {"type": kind, "message": message}}
        return WireEvent(json.dumps(data, ensure_ascii=False), "error")

    return st.builds(event, st.sampled_from(["overloaded_error", "api_error"]), _WORDS)


def _responses_errors() -> SearchStrategy[Any]:
    def error(code: str, message: str, number: int) -> WireEvent:
        data = {"type": "error", "code": code, "message": message, "param": None}
        return WireEvent(json.dumps({**data, "sequence_number": number}), "error")

    def failed(message: str, number: int) -> WireEvent:
        error = {"code": "server_error", "message": message}
        response = {"id": "resp_1", "status": "failed", "error": error, "usage": None}
        data = {"type": "response.failed", "sequence_number": number, "response": response}
        return WireEvent(json.dumps(data), "response.failed")

    numbers = st.integers(0, 99)
    codes = st.sampled_from(["server_error", "rate_limit_exceeded"])
    return st.builds(error, codes, _WORDS, numbers) | st.builds(failed, _WORDS, numbers)


# -- each dialect ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A dialect and what these properties need to know of it."""

    name: str
    streams: SearchStrategy[list[dict[str, Any]]]
    """Whole, valid streams (chat: without the ``[DONE]``, which the encoding adds)."""
    facts: Callable[[bytes], Facts]
    error_code: Callable[[SSEEvent], str]
    """The code of the router's error event (asserting that it has the dialect's shape)."""
    upstream_errors: Callable[[], SearchStrategy[Any]]
    terminal_name: str
    """As a record's ``error`` names the missing terminal event: ``no message_stop``."""
    unfinished: bytes
    """An event without its blank line: what may follow the last whole one at a close."""
    route: str
    request: Mapping[str, Any]
    endless: tuple[bytes, bytes, bytes]
    """An opening event, the head of an event that never ends, and the bytes that end it
    (then the terminal event)."""

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.name]

    @property
    def named(self) -> bool:
        """Whether the stream is named events ending with a terminal one (no ``[DONE]``)."""
        return self.name != "chat"

    def items(self, stream: Sequence[Mapping[str, Any]]) -> list[Any]:
        return list(named_events(stream)) if self.named else list(stream)

    def __repr__(self) -> str:
        return self.name


MESSAGES_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":'
    b'"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":5,'
    b'"output_tokens":1}}}\n\n'
)
RESPONSE = b'{"id":"resp_1","object":"response","model":"m","status":"%s","usage":%s}'
USAGE = b'{"input_tokens":5,"output_tokens":9,"total_tokens":14}'

SPECS = {
    "chat": Spec(
        "chat",
        chat_completion_streams(max_size=4),
        chat_facts,
        chat_error_code,
        _chat_errors,
        "[DONE]",
        b'data: {"choices":[{"index":0,"finish_reason":"stop"}]}\n',
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "count my tokens please"}]},
        (
            b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
            b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"',
            b'"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}'
            b"\n\n" + DONE,
        ),
    ),
    "messages": Spec(
        "messages",
        messages_streams(max_size=4),
        messages_facts,
        messages_error_code,
        _messages_errors,
        "message_stop",
        b'event: message_stop\ndata: {"type":"message_stop"}\n',
        "/v1/messages",
        {"max_tokens": 100, "messages": [{"role": "user", "content": "count my tokens please"}]},
        (
            MESSAGES_START,
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"',
            b'"}}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
            b'"end_turn"},"usage":{"output_tokens":9}}\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        ),
    ),
    "responses": Spec(
        "responses",
        responses_streams(max_size=4, incomplete=st.booleans()),
        responses_facts,
        responses_error_code,
        _responses_errors,
        "response.completed",
        b'event: response.completed\ndata: {"type":"response.completed","response":'
        + (RESPONSE % (b"completed", USAGE))
        + b"}\n",
        "/v1/responses",
        {"input": "count my tokens please"},
        (
            b'event: response.created\ndata: {"type":"response.created","response":'
            + (RESPONSE % (b"in_progress", b"null"))
            + b"}\n\n",
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":"msg_1","output_index":0,"content_index":0,"delta":"',
            b'"}\n\nevent: response.completed\ndata: {"type":"response.completed","response":'
            + (RESPONSE % (b"completed", USAGE))
            + b"}\n\n",
        ),
    ),
}
EACH = pytest.mark.parametrize("spec", [SPECS[name] for name in DIALECTS], ids=list(DIALECTS))


def test_every_dialect_has_its_properties() -> None:
    assert set(DIALECTS) <= set(SPECS)


# -- the relay, over an upstream that sends exactly these chunks, then ends as told ----------------
ENDINGS = ("close", "cut", "stall")
"""A clean close, a cut connection, no byte before the read timeout."""


class Chunks:
    """An upstream response whose body is ``chunks``, then a clean end or a failure."""

    status, reason = 200, "OK"

    def __init__(self, chunks: Iterable[bytes], ending: str = "close") -> None:
        self._chunks = iter(chunks)
        self.ending = ending
        self.headers = {"content-type": "text/event-stream"}

    async def read_chunk(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        if self.ending == "cut":
            raise UpstreamTransportError("RemoteProtocolError")
        if self.ending == "stall":
            raise UpstreamTimeout("ReadTimeout")
        return b""

    async def aclose(self) -> None:
        pass


async def relay(
    spec: Spec,
    chunks: Iterable[bytes],
    ending: str = "close",
    *,
    choices: int = 1,
    usage: bool = False,
    sink: Callable[[bytes], None] | None = None,
) -> tuple[bytes, RelayOutcome]:
    """What a client receives of ``chunks`` through the relay (given to ``sink`` instead, piece
    by piece, when there is one), and the outcome."""
    served = Served(Deployment(provider="p", model="m"), Chunks(chunks, ending), b"", False)
    received: list[bytes] = []
    ended: list[bool] = []
    stay = asyncio.Event()

    async def send(message: MutableMapping[str, Any]) -> None:
        assert not ended, "a message after the end of the body"
        body = message["body"]
        if message["more_body"]:
            assert body
        else:
            ended.append(True)
        if sink is None:
            received.append(body)
        else:
            sink(body)

    async def receive() -> dict[str, Any]:
        await stay.wait()  # the client never leaves
        return {"type": "http.disconnect"}

    outcome = await relay_stream(
        served,
        send,
        receive,
        choices=choices,
        usage=usage,
        dialect=spec.dialect,
    )
    assert ended
    return b"".join(received), outcome


def after_last_blank_line(data: bytes) -> int:
    """Where the bytes after the last whole event (the last blank line) begin."""
    ends = [data.rfind(pair) + 2 for pair in (b"\n\n", b"\n\r", b"\r\r") if pair in data]
    return max(ends, default=0)  # (with CRLF: before the LF that ends the blank line)


def only_comment_lines(data: bytes) -> bool:
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return lines[-1] == b"" and all(not line or line.startswith(b":") for line in lines)


def ending_of(spec: Spec, client: bytes, upstream: bytes, *, appended: bool = True) -> bytes:
    """What the relay sent after the upstream's last whole event: checks that everything before
    is the upstream's, byte for byte, and that what comes between is only whole comment lines
    that the upstream sent (never a part of an unfinished event); returns the rest (the
    relay's own ending, when ``appended``)."""
    cut = after_last_blank_line(upstream)
    assert client[:cut] == upstream[:cut]
    rest = client[cut:]
    if not appended:
        start = len(rest)
    elif not spec.named and rest.endswith(DONE):
        start = len(rest) - len(DONE)
    else:
        start = rest.rfind(b"event: error\n" if spec.named else b"data: {")
    assert start >= 0, rest
    kept, own = rest[:start], rest[start:]
    assert upstream[cut:].startswith(kept)
    assert only_comment_lines(kept)
    return own


def the_error_event(spec: Spec, own: bytes) -> str:
    """The code of the one error event ``own`` is, in the dialect's shape."""
    assert own.endswith(b"\n\n")
    (event,) = SSEParser().feed(own)
    return spec.error_code(event)


# -- 1 and 2: bytes unchanged, the outcome the oracle's, in any chunking ---------------------------
@dataclass
class Upstream:
    body: bytes
    """The whole upstream body: the encoded events, and an unfinished one after them or not."""
    chunks: list[bytes]
    ending: str
    choices: int
    usage: bool
    """(chat) What the request asked for: its ``n``, and whether usage was asked for."""


@st.composite
def upstreams(draw: st.DrawFn, spec: Spec) -> Upstream:
    """A stream of ``spec``'s dialect, whole or cut after any of its events, maybe ending with an
    error event of the upstream's, in any SSE encoding and chunking, and how it ends."""
    stream = draw(spec.streams, label="stream")
    kept = stream[: draw(st.integers(0, len(stream)) | st.just(len(stream)), label="kept")]
    items = spec.items(kept)
    if draw(st.integers(0, 3), label="error event") == 0:
        if spec.named and len(kept) == len(stream):  # (an error event ends a named stream)
            items = items[:-1]
        items.append(draw(spec.upstream_errors(), label="error"))
    done = not spec.named and draw(st.booleans(), label="done")
    body = draw(
        sse_encodings(items, done=st.just(done), allow_comments=True, allow_fields=True),
        label="encoded",
    )
    body += draw(st.sampled_from([b"", spec.unfinished, b": ping\n"]), label="after")
    indices = {c["index"] for chunk in stream for c in chunk.get("choices", [])}
    return Upstream(
        body,
        draw(chunkings(body), label="chunks"),
        draw(st.sampled_from(ENDINGS), label="ending"),
        len(indices) or 1,
        "usage" in stream[0],
    )


def expected_ending(spec: Spec, upstream: Upstream) -> tuple[str, str | None, str | None]:
    """The status and ``error`` the oracle gives, and the code of the router's error event
    (``None``: the upstream bytes are relayed as they are; ``""``: its whole events are, and
    nothing after them, the upstream having ended with its own error event)."""
    facts = spec.facts(upstream.body)
    code: str | None
    if facts.complete:
        status, why, code = "success", None, None
    elif upstream.ending == "cut":
        status, why = "upstream_error", "stream_interrupted: RemoteProtocolError"
        code = "stream_interrupted"
    elif upstream.ending == "stall":
        status, why, code = "stream_incomplete", "stream_stalled: no byte for 60s", "stream_stalled"
    elif (
        not spec.named
        and facts.error is None
        and facts.finished >= set(range(upstream.choices))
        and (facts.usage_came or not upstream.usage)
    ):  # chat: a whole answer without its [DONE]
        status, why, code = "success", "upstream sent no [DONE]", "[DONE]"
    else:
        status, why = "stream_incomplete", f"no {spec.terminal_name}"
        code = "stream_incomplete"
    if facts.error is not None:
        status, why = "upstream_error", f"error event: {facts.error[0]}"
        if code == "stream_incomplete":  # the upstream's own error event said why: nothing more
            code = ""
    return status, why, code


def run(spec: Spec, upstream: Upstream, chunks: list[bytes]) -> tuple[bytes, RelayOutcome]:
    asked = {"choices": upstream.choices, "usage": upstream.usage}
    return asyncio.run(relay(spec, chunks, upstream.ending, **asked))  # type: ignore[arg-type]


@EACH
@given(data=st.data())
def test_client_bytes_are_the_upstream_bytes_but_for_the_dialects_own_ending(
    spec: Spec, data: st.DataObject
) -> None:
    upstream = data.draw(upstreams(spec), label="upstream")
    client, outcome = run(spec, upstream, upstream.chunks)
    status, why, code = expected_ending(spec, upstream)
    assert (outcome.status, outcome.error) == (status, why)
    if code is None:  # complete: every byte, as it came
        assert client == upstream.body
    elif code == "":
        assert ending_of(spec, client, upstream.body, appended=False) == b""
    elif code == "[DONE]":
        assert ending_of(spec, client, upstream.body) == DONE
    else:
        assert the_error_event(spec, ending_of(spec, client, upstream.body)) == code


@EACH
@given(data=st.data())
def test_the_outcome_is_the_same_in_any_chunking_and_is_the_oracles(
    spec: Spec, data: st.DataObject
) -> None:
    upstream = data.draw(upstreams(spec), label="upstream")
    client, outcome = run(spec, upstream, upstream.chunks)
    whole_client, whole = run(spec, upstream, [upstream.body])
    assert client == whole_client
    assert (outcome.status, outcome.error, outcome.usage) == (
        whole.status,
        whole.error,
        whole.usage,
    )
    assert observed(outcome.usage) == expected(spec.facts(upstream.body))
    assert outcome.usage.failures == 0


# -- 3: no success without the dialect's completion evidence ---------------------------------------
def plain(spec: Spec, items: Sequence[Any], eol: bytes) -> bytes:
    """Each event on its own lines (``event:``, one ``data:``), as providers write them."""
    out = b""
    for item in items:
        if isinstance(item, WireEvent):
            out += b"event: " + item.event.encode() + eol  # type: ignore[union-attr]
            out += b"data: " + item.data.encode() + eol + eol
        else:
            out += b"data: " + json.dumps(item).encode() + eol + eol
    return out


@EACH
@given(data=st.data())
def test_a_stream_closed_before_its_terminal_event_is_never_a_success(
    spec: Spec, data: st.DataObject
) -> None:
    """Closed cleanly at every event boundary of a stream, with each piece in any chunking."""
    stream = data.draw(spec.streams, label="stream")
    eol = data.draw(st.sampled_from([b"\n", b"\r\n", b"\r"]), label="eol")
    bodies = [plain(spec, spec.items(stream[:k]), eol) for k in range(len(stream) + 1)]
    chunked = [data.draw(chunkings(body, max_size=8), label="chunks") for body in bodies]
    usage = "usage" in stream[0]
    choices = len({c["index"] for chunk in stream for c in chunk.get("choices", [])}) or 1

    async def every_prefix() -> list[tuple[bytes, RelayOutcome]]:
        return [await relay(spec, c, choices=choices, usage=usage) for c in chunked]

    *prefixes, (client, whole) = asyncio.run(every_prefix())
    for body, (sent, outcome) in zip(bodies, prefixes, strict=False):
        assert (outcome.status, outcome.error) == ("stream_incomplete", f"no {spec.terminal_name}")
        assert not outcome.usage.complete
        assert sent.startswith(body)
        assert the_error_event(spec, sent[len(body) :]) == "stream_incomplete"
    if spec.named:  # the terminal event, and only it, makes the stream complete
        assert (whole.status, whole.error, whole.usage.complete) == ("success", None, True)
        assert client == bodies[-1]
    else:  # chat: the whole answer, but for its [DONE], which the relay appends
        assert (whole.status, whole.error) == ("success", "upstream sent no [DONE]")
        assert client == bodies[-1] + DONE


# -- 4: bounded memory under an endless oversized event --------------------------------------------
CAP = 64 * 1024  # the aligner's and the observers' cap on an unfinished event
READ = 16 * 1024
ENDLESS = 8 * 1024 * 1024


def endless(spec: Spec, reads: int) -> Iterator[bytes]:
    opening, head, _ = spec.endless
    yield opening + head
    for _ in range(reads):
        yield b"x" * READ


def digest(data: Iterable[bytes]) -> bytes:
    hashed = hashlib.sha256()
    for piece in data:
        hashed.update(piece)
    return hashed.digest()


@EACH
def test_the_observer_holds_no_more_than_its_cap_of_an_endless_event(spec: Spec) -> None:
    observer = spec.dialect.stream_observer()
    for chunk in endless(spec, 1024):  # 16 MiB of one event
        observer.feed(chunk)
        assert observer.buffered <= CAP
    observer.feed(spec.endless[2])  # it ends; the next events are read
    assert (observer.result.oversized, observer.result.complete) == (1, True)
    assert observer.result.completion_tokens == 9
    assert observer.buffered == 0


@EACH
@pytest.mark.parametrize("ending", ["ends", "cut"])
def test_an_endless_event_passes_through_in_bounded_memory(spec: Spec, ending: str) -> None:
    """8 MiB of one event pass to the client as they come, and the relay's memory stays within a
    few caps; then the event ends (every byte relayed, the stream a success) or the connection
    is cut (the error event after a blank line: the client's parser drops the half event)."""
    reads = ENDLESS // READ
    chunks = endless(spec, reads)
    if ending == "ends":
        chunks = (c for part in (chunks, [spec.endless[2]]) for c in part)
    hashed, size, last = hashlib.sha256(), 0, b""

    def sink(body: bytes) -> None:
        nonlocal size, last
        hashed.update(body)
        size += len(body)
        last = (last + body)[-1024:]

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        client, outcome = asyncio.run(
            relay(spec, chunks, "close" if ending == "ends" else "cut", sink=sink)
        )
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert client == b""  # (all went to the sink)
    assert peak < 16 * CAP, f"{peak} bytes at the peak"
    upstream = list(endless(spec, reads))
    if ending == "ends":
        assert hashed.digest() == digest([*upstream, spec.endless[2]])
        assert (outcome.status, outcome.usage.complete) == ("success", True)
    else:
        assert (outcome.status, outcome.error) == (
            "upstream_error",
            "stream_interrupted: RemoteProtocolError",
        )
        own = spec.dialect.error_event("x", "stream_interrupted")
        (event,) = SSEParser().feed(last[last.rindex(b"\n\n" + own[:12]) + 2 :])
        assert spec.error_code(event) == "stream_interrupted"
        relayed = size - len(last) + last.rindex(b"\n\n" + own[:12])  # the upstream's bytes
        assert relayed >= sum(map(len, upstream)) - CAP - READ
        assert hashed.digest() == digest([b"".join(upstream)[:relayed], last[relayed - size :]])
    assert outcome.usage.oversized == 1


# -- a connection that breaks after the terminal event ---------------------------------------------
def router(
    scripts: Mapping[str, list[str]], **timeouts: float
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    net = FakeNetwork({h: FakeProvider(name=h, script=scripts.get(h, [])) for h in "ab"})
    ledger = MemoryLedger()
    config: dict[str, Any] = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "apis": list(DIALECTS), "timeouts": timeouts}
            for h in "ab"
        },
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
        "ledger": {"path": None, "drain_seconds": 0},
    }
    return WaterfallMiddleware(None, config, transport=net, ledger=ledger), net, ledger


def last_event(body: bytes) -> SSEEvent:
    return SSEParser().feed(body)[-1]


def is_terminal(spec: Spec, event: SSEEvent) -> bool:
    if not spec.named:
        return event.data == "[DONE]"
    return json.loads(event.data)["type"] in (
        "message_stop",
        "response.completed",
        "response.incomplete",
    )


@EACH
@pytest.mark.anyio
async def test_a_connection_cut_after_the_terminal_event_loses_nothing(spec: Spec) -> None:
    """Servers that never send a chunked body's last chunk: the stream was whole already, so
    the client gets it as it came, with no error event after its end, and the record says
    success."""
    app, _, ledger = router({"a": ["cut:bytes=1000000"]})
    result = await call(app, "POST", spec.route, {"model": "fast", **spec.request, "stream": True})
    await app.shutdown()
    assert result.status == 200
    assert is_terminal(spec, last_event(result.body))
    assert not any(spec.dialect.failed_first_event(e) for e in SSEParser().feed(result.body))
    (record,) = ledger.records.values()
    assert (record.status, record.error, record.provider) == ("success", None, "a")
    assert record.total_tokens


def test_the_anthropic_sdk_reads_a_message_whose_connection_broke_after_message_stop() -> None:
    if "messages" not in DIALECTS:  # pragma: no cover
        pytest.skip("no messages dialect")

    async def go() -> anthropic.types.Message:
        app, _, _ = router({"a": ["cut:bytes=1000000"]})
        spec = SPECS["messages"]
        result = await call(
            app, "POST", spec.route, {"model": "fast", **spec.request, "stream": True}
        )
        await app.shutdown()

        def handler(request: httpx2.Request) -> httpx2.Response:
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(200, content=result.body, headers=headers)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        client = anthropic.AsyncAnthropic(api_key="k", base_url="http://r", http_client=http)
        async with client, client.messages.stream(**SPECS["messages"].request, model="m") as s:
            return await s.get_final_message()

    message = asyncio.run(go())
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


# -- 5: one terminal record per request, whatever happens ------------------------------------------
FAULTS = [
    "ok",
    "rate_limit",
    "status:code=500",
    "status:code=400",
    "status:code=529",
    "truncate:events=0",
    "truncate:events=4",
    "no_done",
    "cut:bytes=40",
    "cut:bytes=1200",
    "error_event:after=0",
    "error_event:after=4",
    "stall:events=3",
    "slow_chunks:seconds=0.004",  # (long enough for a client to leave in the middle)
]


@EACH
@settings(deadline=None, max_examples=min(settings().max_examples, 50))
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(FAULTS),
            st.sampled_from(FAULTS),
            st.booleans(),
            st.sampled_from(["stay", "leave", "cancel"]),
            st.sampled_from([0.0, 0.03, 0.06]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_one_terminal_record_per_request_whatever_happens(
    spec: Spec, requests: list[tuple[str, str, bool, str, float]]
) -> None:
    """Each request is a fault for each of the two entries, whether it streams, and whether the
    client stays, leaves (after so many seconds) or is cancelled."""

    async def go() -> None:
        scripts = {"a": [r[0] for r in requests], "b": [r[1] for r in requests]}
        app, _, ledger = router(scripts, first_byte=0.2, read=0.1)
        results: list[Result | None] = []
        for _, _, stream, client, after in requests:
            gone = asyncio.Event()
            body = {"model": "fast", **spec.request, "stream": stream}
            task = asyncio.ensure_future(call(app, "POST", spec.route, body, disconnect=gone))
            if client != "stay":
                await asyncio.sleep(0)
                await asyncio.sleep(after)
                if client == "leave":
                    gone.set()
                else:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                results.append(await asyncio.wait_for(task, 10))
                continue
            results.append(None)
        await app.shutdown()
        records = list(ledger.records.values())
        assert len(records) == len(requests)
        for record, result, (_, _, stream, client, _) in zip(
            records, results, requests, strict=True
        ):
            assert record.status in TERMINAL_STATUSES
            assert (record.route, record.stream) == (spec.route, stream)
            if not (stream and client == "stay" and result and result.status == 200):
                continue
            assert result.finished
            events = SSEParser().feed(result.body)
            if record.status == "success":  # only with the dialect's completion evidence
                assert record.error in (
                    (None,) if spec.named else (None, "upstream sent no [DONE]")
                )
                assert is_terminal(spec, events[-1])
            elif record.status in ("stream_incomplete", "upstream_error"):
                assert any(spec.dialect.failed_first_event(e) for e in events)
                if record.status == "stream_incomplete":
                    assert spec.error_code(events[-1]) in ("stream_incomplete", "stream_stalled")

    asyncio.run(go())


# -- 6: real-world stream shapes -------------------------------------------------------------------
SAMPLES = [s for s in STREAM_SAMPLES if s.api in DIALECTS]
PRICE = {"unit": "msat", "prompt": "1", "completion": "2"}  # cost = prompt + 2 x completion


def sample_tokens(sample: StreamSample) -> Tokens:
    """The sample's usage, in the router's words."""
    usage = sample.usage
    if usage is None:
        return None, None, None
    output = usage["output_tokens"]
    if sample.api == "messages":
        prompt = sum(usage.get(k, 0) for k in _INPUTS)
        return prompt, output, prompt + output
    return usage["input_tokens"], output, usage["total_tokens"]


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class Replay(httpx.AsyncBaseTransport):
    """Answers 200, ``text/event-stream`` and these chunks, exactly."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=_Body(self.chunks))


async def replay(sample: StreamSample, chunks: list[bytes]) -> None:
    spec = SPECS[sample.api]
    ledger = MemoryLedger()
    config = {
        "providers": {"a": {"base_url": "http://a/v1", "apis": [sample.api]}},
        "deployments": [{"provider": "a", "model": "m", "price": PRICE}],
        "chains": {"fast": ["a/m"]},
    }
    upstream = Replay(chunks)
    app = WaterfallMiddleware(None, config, transport=upstream, ledger=ledger)
    try:
        result = await call(
            app, "POST", spec.route, {"model": "fast", **spec.request, "stream": True}
        )
    finally:
        await app.shutdown()
    assert (result.status, result.finished, upstream.calls) == (200, True, 1)
    (record,) = ledger.records.values()
    tokens = sample_tokens(sample)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == tokens
    prompt, completion, _ = tokens
    cost = None if prompt is None or completion is None else prompt + 2 * completion
    assert record.cost == cost
    if sample.complete:
        assert result.body == sample.raw
        assert (record.status, record.error) == ("success", None)
        return
    if sample.error is None:
        own = ending_of(spec, result.body, sample.raw)
        assert the_error_event(spec, own) == "stream_incomplete"
        assert (record.status, record.error) == ("stream_incomplete", f"no {spec.terminal_name}")
    else:  # ended by the upstream's own error event: relayed as it was, and nothing after it
        assert result.body == sample.raw
        key = error_key(sample.error.get("error", sample.error))
        assert key is not None
        assert (record.status, record.error) == ("upstream_error", f"error event: {key[0]}")


EACH_SAMPLE = pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])


@EACH_SAMPLE
@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_each_sample_is_relayed_and_recorded_exactly(sample: StreamSample, split: str) -> None:
    raw = sample.raw
    chunks = [raw] if split == "whole" else [raw[i : i + 1] for i in range(len(raw))]
    asyncio.run(replay(sample, chunks))


@EACH_SAMPLE
@given(data=st.data())
def test_each_sample_is_relayed_and_recorded_exactly_in_any_chunking(
    sample: StreamSample, data: st.DataObject
) -> None:
    asyncio.run(replay(sample, data.draw(chunkings(sample.raw, max_size=64), label="chunks")))
