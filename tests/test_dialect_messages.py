"""The Anthropic Messages dialect: its stream observer (every event, any chunking, bounded,
never raising), its body reading, and errors the Anthropic and OpenAI SDKs both understand."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from asgi_helpers import sse_stream
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.dialects import messages
from waterfall_asgi.dialects.messages import MessagesDialect, MessagesObserver, error_type
from waterfall_asgi.sse import SSEEvent, SSEParser
from waterfall_asgi.usage import UsageResult
from waterfall_fakes.samples import STREAM_SAMPLES, StreamSample
from waterfall_fakes.strategies import (
    chunkings,
    messages_streams,
    named_events,
    sse_encodings,
)

DIALECT = MessagesDialect()
SAMPLES = [s for s in STREAM_SAMPLES if s.api == "messages"]
INPUTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def feed_all(chunks: list[bytes], max_bytes: int = 64 * 1024) -> UsageResult:
    observer = MessagesObserver(max_bytes)
    for chunk in chunks:
        observer.feed(chunk)
    return observer.result


sse = sse_stream


def start(usage: dict[str, Any], id_: str = "msg_1", model: str = "claude-x") -> tuple[str, Any]:
    message = {"id": id_, "type": "message", "model": model, "stop_reason": None, "usage": usage}
    return "message_start", {"type": "message_start", "message": message}


def delta(reason: str | None = None, **usage: Any) -> tuple[str, Any]:
    body = {"stop_reason": reason, "stop_sequence": None}
    return "message_delta", {"type": "message_delta", "delta": body, "usage": usage}


STOP = ("message_stop", {"type": "message_stop"})
PING = ("ping", {"type": "ping"})
TEXT = ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "Hi"}})


def oracle(body: bytes) -> UsageResult:
    """What the observer must find: the whole body parsed at once, every event decoded and read
    plainly."""
    expected, counts = UsageResult(), {}
    for event in SSEParser().feed(body):
        expected.events += 1
        try:
            obj = json.loads(event.data)
        except ValueError:
            obj = None
        obj = obj if isinstance(obj, dict) else {}
        kind = obj["type"] if isinstance(obj.get("type"), str) else event.event
        if kind == "error" or event.event == "error":
            expected.error = obj["error"]
        elif kind == "message_stop":
            expected.complete = True
        elif kind in ("message_start", "message_delta"):
            holder = obj["message"] if kind == "message_start" else obj
            if kind == "message_start":
                expected.id = expected.id or holder["id"]
                expected.model = expected.model or holder["model"]
            else:
                expected.finish_reasons[0] = obj["delta"]["stop_reason"]
            counts.update((k, v) for k, v in holder["usage"].items() if isinstance(v, int))
    if counts:
        expected.prompt_tokens = sum(counts.get(k, 0) for k in INPUTS)
        expected.completion_tokens = counts.get("output_tokens")
        expected.total_tokens = expected.prompt_tokens + (expected.completion_tokens or 0)
    return expected


# -- each event ------------------------------------------------------------------------------------
def test_message_start_gives_the_id_model_and_all_the_input_processed() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 3000,
        "output_tokens": 1,
    }
    result = feed_all([sse(start(usage))])
    assert (result.id, result.model) == ("msg_1", "claude-x")
    # input_tokens excludes what was written to or read from the cache: the prompt is the sum
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (3210, 1, 3211)
    assert not result.complete
    assert result.finish_reasons == {}


def test_message_delta_counts_are_cumulative_and_replace_earlier_ones() -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
    result = feed_all([sse(start(usage), TEXT, delta("end_turn", output_tokens=7))])
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (15, 7, 22)
    assert result.finish_reasons == {0: "end_turn"}
    # a later message_delta may carry input and cache counts too: they replace, field by field
    result = feed_all(
        [
            sse(
                start(usage),
                delta(None, output_tokens=3),
                delta("max_tokens", output_tokens=9, input_tokens=12, cache_read_input_tokens=0),
            )
        ]
    )
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (12, 9, 21)
    assert result.finish_reasons == {0: "max_tokens"}


def test_null_and_missing_counts_are_not_counts() -> None:
    usage = {"input_tokens": 4, "cache_creation_input_tokens": None, "output_tokens": True}
    result = feed_all([sse(start(usage))])
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (4, None, 4)
    assert not feed_all([sse(start({}), delta("end_turn"))]).has_usage


def test_only_message_stop_completes_a_stream() -> None:
    usage = {"input_tokens": 1, "output_tokens": 1}
    said_all = sse(start(usage), TEXT, delta("end_turn", output_tokens=2))
    assert not feed_all([said_all]).complete
    assert DIALECT.terminal is None  # nothing is ever appended: such a stream is incomplete
    assert not DIALECT.answered(feed_all([said_all]), 1, True)
    assert feed_all([said_all + sse(STOP)]).complete


def test_ping_and_content_block_events_are_counted_and_change_nothing() -> None:
    blocks = [
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        TEXT,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    result = feed_all([sse(PING, *blocks, PING)])
    assert result == UsageResult(events=5)


def test_an_error_event_keeps_the_inner_error_object() -> None:
    inner = {"type": "overloaded_error", "message": "Overloaded"}
    result = feed_all(
        [sse(start({"input_tokens": 3}), TEXT, ("error", {"type": "error", "error": inner}))]
    )
    assert result.error == inner
    assert not result.complete
    assert result.prompt_tokens == 3  # what came before is kept
    # an unnamed event whose data says error, a plain-text error, a string error
    assert feed_all([sse((None, {"type": "error", "error": inner}))]).error == inner
    assert feed_all([sse(("error", "upstream fell over"))]).error == {
        "message": "upstream fell over"
    }
    assert feed_all([sse(("error", {"error": "gone"}))]).error == {"message": "gone"}


def test_the_type_is_read_from_the_data_then_from_the_event_name() -> None:
    # no event: lines at all (some gateways drop them): the data says
    unnamed = sse(
        *(
            (None, data)
            for _, data in (
                start({"input_tokens": 2}),
                TEXT,
                delta("end_turn", output_tokens=4),
                STOP,
            )
        )
    )
    result = feed_all([unnamed])
    assert (result.complete, result.finish_reasons, result.total_tokens) == (
        True,
        {0: "end_turn"},
        6,
    )
    # the data's type wins over another name; a data without one falls back to the name
    assert feed_all([sse(("completion", {"type": "message_stop"}))]).complete
    assert feed_all([sse(("message_stop", {}))]).complete
    assert feed_all([sse(("message_stop", "not json"))]).complete


def test_odd_shapes_change_nothing_and_never_fail() -> None:
    odd = [
        ("message_start", {"type": "message_start"}),
        ("message_start", {"type": "message_start", "message": {"id": "", "model": 3}}),
        ("message_delta", {"type": "message_delta", "delta": "end_turn", "usage": [1]}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None}}),
        (None, {"type": "content_block_delta", "delta": {"text": "message_start"}}),
        ("message_fork", {"type": "message_fork"}),
    ]
    result = feed_all([sse(*odd)])
    assert result == UsageResult(events=len(odd))
    # the first id and model are kept
    again = feed_all([sse(start({}), start({}, id_="msg_2", model="claude-z"))])
    assert (again.id, again.model) == ("msg_1", "claude-x")


def test_content_deltas_are_never_json_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = messages.decode

    def spy(data: str | bytes) -> Any:
        decoded.append(data if isinstance(data, str) else data.decode())
        return real(data)

    monkeypatch.setattr(messages, "decode", spy)
    text = next(s for s in SAMPLES if s.name == "messages_text")
    no_stop = next(s for s in SAMPLES if s.name == "messages_no_stop")  # CRLF: the parser's path
    for sample, kinds in ((text, 3), (no_stop, 2)):
        decoded.clear()
        feed_all([sample.raw])
        assert len(decoded) == kinds
        assert not any("content_block" in d or "ping" in d for d in decoded)
    decoded.clear()
    feed_all([bytes([b]) for b in text.raw])  # byte by byte: the parser's path too
    assert len(decoded) == 3


# -- any chunking, against an oracle ---------------------------------------------------------------
@given(st.data())
def test_the_result_is_the_same_in_any_chunking_and_is_the_oracles(data: st.DataObject) -> None:
    stream = data.draw(messages_streams(max_size=4), label="stream")
    body = data.draw(sse_encodings(named_events(stream), done=st.just(False)), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    whole = feed_all([body])
    assert feed_all(chunks) == whole
    assert whole == oracle(body)
    # and the oracle says what the stream's own dicts say
    message, last = stream[0]["message"], stream[-2]
    counts = {**message["usage"], **last["usage"]}
    assert (whole.id, whole.model, whole.complete) == (message["id"], message["model"], True)
    assert whole.prompt_tokens == sum(counts[k] for k in INPUTS)
    assert whole.completion_tokens == last["usage"]["output_tokens"]
    assert whole.finish_reasons == {0: last["delta"]["stop_reason"]}
    assert whole.events == len(stream)


@given(st.data())
def test_plain_lf_streams_in_any_chunking(data: st.DataObject) -> None:
    """What Anthropic sends (``event:``, ``data:``, LF, no comments): the observer's fast path,
    with events cut anywhere, an error event anywhere, and now and then an event the fast path
    must leave to the parser (data on several lines, another field)."""
    stream = data.draw(messages_streams(max_size=6), label="stream")
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    if data.draw(st.booleans(), label="error"):
        stream = [*stream[: data.draw(st.integers(1, len(stream)), label="at")], error]
    body = b""
    for event in stream:
        style = data.draw(st.sampled_from(["plain", "lines", "id", "blank"]), label="style")
        text = json.dumps(event, indent=2 if style == "lines" else None)
        lines = "".join(f"data: {line}\n" for line in text.split("\n"))
        extra = "id: 7\n" if style == "id" else "\n" if style == "blank" else ""
        body += f"{extra}event: {event['type']}\n{lines}\n".encode()
    chunks = data.draw(chunkings(body), label="chunks")
    result = feed_all(chunks)
    assert result == feed_all([body]) == oracle(body)
    assert result.complete is any(e["type"] == "message_stop" for e in stream)


@given(st.data())
def test_unnamed_events_in_any_encoding(data: st.DataObject) -> None:
    """The same events without names (or with other names): the data's type decides."""
    stream = data.draw(messages_streams(max_size=3), label="stream")
    body = data.draw(sse_encodings(stream, done=st.just(False)), label="body")
    result = feed_all(data.draw(chunkings(body), label="chunks"))
    assert result == feed_all([body]) == oracle(body)
    assert result.complete


@given(st.data())
def test_never_complete_without_message_stop(data: st.DataObject) -> None:
    stream = data.draw(messages_streams(max_size=3), label="stream")
    kept = stream[: data.draw(st.integers(0, len(stream) - 1), label="kept")]
    body = data.draw(sse_encodings(named_events(kept), done=st.just(False)), label="body")
    result = feed_all(data.draw(chunkings(body), label="chunks"))
    assert not result.complete
    assert result == oracle(body)


# -- the fakes' byte-exact samples -----------------------------------------------------------------
def check_sample(sample: StreamSample, result: UsageResult) -> None:
    assert result.complete is sample.complete
    assert result.events == sample.events
    assert result.error == (None if sample.error is None else sample.error["error"])
    assert sample.usage is not None
    prompt = sum(sample.usage[k] for k in INPUTS)
    completion = sample.usage["output_tokens"]
    assert (result.prompt_tokens, result.completion_tokens) == (prompt, completion)
    assert result.total_tokens == prompt + completion
    assert (result.id, result.model) == (
        "msg_01XFDUDYJgAACzvnptvVoYEL",
        "claude-sonnet-4-5-20250929",
    )
    assert (result.failures, result.oversized) == (0, 0)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_samples_whole_and_byte_by_byte(sample: StreamSample) -> None:
    whole = feed_all([sample.raw])
    check_sample(sample, whole)
    assert feed_all([bytes([b]) for b in sample.raw]) == whole
    reasons = {"messages_text": "end_turn", "messages_tool_use": "tool_use"}
    reasons["messages_no_stop"] = "end_turn"
    assert whole.finish_reasons == ({0: reasons[sample.name]} if sample.name in reasons else {})


@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_samples_in_any_chunking(sample: StreamSample, data: st.DataObject) -> None:
    check_sample(sample, feed_all(data.draw(chunkings(sample.raw), label="chunks")))


# -- bounded, never raising ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [b"content_block_delta", b"message_delta"])
def test_buffered_stays_bounded_under_an_endless_oversized_event(name: bytes) -> None:
    cap = 1024
    observer = MessagesObserver(cap)
    observer.feed(b"event: " + name + b'\ndata: {"type":"content_block_delta","text":"')
    for _ in range(2000):  # 2 MB of one event's data, in 1 KiB reads
        observer.feed(b"x" * 1000 + b"\xe2\x98")
        assert observer.buffered <= cap
    assert observer.result.oversized == 1
    observer.feed(b'"}\n\n' + sse(STOP))  # the event ends; the next one is read
    assert observer.result.complete
    assert observer.result.events == 1
    assert observer.buffered == 0


def test_an_oversized_event_is_skipped_alike_in_one_read_or_many() -> None:
    cap = 1024
    padded = {**delta("end_turn", output_tokens=5)[1], "pad": "x" * cap}
    body = sse(start({"input_tokens": 2}), ("message_delta", padded), STOP)
    whole = feed_all([body], cap)
    assert (whole.oversized, whole.events, whole.complete) == (1, 2, True)
    assert (whole.completion_tokens, whole.finish_reasons) == (None, {})
    assert feed_all([bytes([b]) for b in body], cap) == whole


@given(
    st.lists(
        st.binary(max_size=200)
        | st.sampled_from(
            [b"\n", b"\r", b"event: error\n", b"data: {", b"event: message_stop\n", b"data: []\n\n"]
        ),
        max_size=30,
    )
)
def test_feed_never_raises_on_garbage(chunks: list[bytes]) -> None:
    observer = MessagesObserver(256)
    for chunk in chunks:
        observer.feed(chunk)
        assert observer.buffered <= 256
    assert observer.result.failures == 0
    assert observer.result == feed_all([b"".join(chunks)], 256)


def test_a_failure_inside_is_counted_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: str | bytes) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(messages, "decode", broken)
    observer = DIALECT.stream_observer("req-1")
    with caplog.at_level(logging.ERROR, "waterfall_asgi.usage"):
        observer.feed(sse(start({"input_tokens": 1})))
        observer.feed(sse(STOP).replace(b"\n", b"\r\n"))
    assert observer.result.failures == 2
    assert [r.getMessage() for r in caplog.records] == ["usage observer failed (request req-1)"]


# -- whole bodies ----------------------------------------------------------------------------------
def test_a_whole_message_body() -> None:
    body = {
        "id": "msg_9",
        "type": "message",
        "role": "assistant",
        "model": "claude-y",
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 7, "output_tokens": 3},
    }
    result = DIALECT.observe_body(json.dumps(body).encode())
    assert result == UsageResult(
        complete=True,
        prompt_tokens=12,
        completion_tokens=3,
        total_tokens=15,
        finish_reasons={0: "end_turn"},
        model="claude-y",
        id="msg_9",
    )


def test_an_error_body_and_what_is_no_message() -> None:
    inner = {"type": "not_found_error", "message": "model: nope"}
    result = DIALECT.observe_body(json.dumps({"type": "error", "error": inner}).encode())
    assert (result.complete, result.error, result.has_usage) == (True, inner, False)
    assert not DIALECT.observe_body(b"not json").complete
    assert not DIALECT.observe_body(b"[1, 2]").complete


def test_failed_first_event() -> None:
    inner = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert DIALECT.failed_first_event(SSEEvent(inner, "error"))
    assert DIALECT.failed_first_event(SSEEvent(inner))
    assert DIALECT.failed_first_event(SSEEvent("not json", "error"))
    assert not DIALECT.failed_first_event(SSEEvent(json.dumps(start({})[1]), "message_start"))
    said = '{"type":"content_block_delta","delta":{"text":"\\"error\\""},"x":{"type":"error"}}'
    assert not DIALECT.failed_first_event(SSEEvent(said, "content_block_delta"))
    assert not DIALECT.failed_first_event(SSEEvent('{"error": 1', "message"))


# -- the dialect's words ---------------------------------------------------------------------------
def test_routes_usage_keys_and_headers() -> None:
    assert DIALECT.name == "messages"
    assert DIALECT.incomplete_message == "The upstream stream ended without message_stop."
    assert DIALECT.routes == {"/messages": ("messages", "max_tokens")}
    payload = {"model": "m", "stream": True}
    assert DIALECT.usage_request(payload, True) == (payload, False)
    assert DIALECT.usage_request(payload, True)[0] is not payload
    assert DIALECT.upstream_headers("sk-1") == {"x-api-key": "sk-1"}
    assert DIALECT.upstream_headers(None) == {}
    assert DIALECT.default_headers() == {"anthropic-version": "2023-06-01"}
    assert "x-api-key" in DIALECT.auth_hint


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"X-Api-Key", b"k1")], b"k1"),
        ([(b"x-api-key", b"k1"), (b"authorization", b"Bearer k2")], b"k1"),
        ([(b"authorization", b"Bearer k2")], b"k2"),
        ([(b"x-api-key", b""), (b"authorization", b"Bearer k2")], b"k2"),
        ([(b"x-api-key", b"")], b""),
        ([(b"authorization", b"Basic abc")], b""),
        ([(b"content-type", b"application/json")], None),
    ],
)
def test_client_key(headers: list[tuple[bytes, bytes]], key: bytes | None) -> None:
    assert DIALECT.client_key(iter(headers)) == key


# -- what the SDKs make of the router's errors -----------------------------------------------------
Handler = Callable[[httpx2.Request], httpx2.Response]


def answering(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return handler


def anthropic_client(handler: Handler) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(
        api_key="k", base_url="http://router.test", http_client=http, max_retries=0
    )


REQUEST: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}


def interrupted(type_: str = "upstream_error") -> bytes:
    head = next(s for s in SAMPLES if s.name == "messages_text").raw.split(
        b"event: content_block_stop"
    )[0]
    return head + DIALECT.error_event(
        "The upstream stream failed after it began (ReadError).", "stream_interrupted", type_
    )


def test_the_error_event_is_anthropics() -> None:
    event = DIALECT.error_event("Stalled.", "stream_stalled")
    assert event.startswith(b"event: error\ndata: ")
    assert event.endswith(b"}\n\n")
    (parsed,) = SSEParser().feed(event)
    assert parsed.event == "error"
    error = {"type": "api_error", "message": "Stalled.", "code": "stream_stalled"}
    assert json.loads(parsed.data) == {"type": "error", "error": error}
    assert DIALECT.failed_first_event(parsed)
    assert feed_all([event]).error == error
    assert b'"overloaded_error"' in DIALECT.error_event("Busy.", "stream_incomplete", "overloaded")


async def read_events(stream: Any, seen: list[str]) -> None:
    async for event in stream:
        seen.append(event.type)


async def read_text(client: anthropic.AsyncAnthropic, text: list[str]) -> None:
    async with client.messages.stream(**REQUEST) as stream:
        async for piece in stream.text_stream:
            text.append(piece)


@pytest.mark.parametrize("type_", ["upstream_error", "overloaded"])
def test_an_error_event_mid_stream_raises_in_create_stream(type_: str) -> None:
    seen: list[str] = []

    async def run() -> anthropic.APIStatusError:
        handler = answering(200, interrupted(type_), "text/event-stream")
        async with anthropic_client(handler) as client:
            stream = await client.messages.create(**REQUEST, stream=True)
            with pytest.raises(anthropic.APIStatusError) as caught:
                await read_events(stream, seen)
        return caught.value

    error = asyncio.run(run())
    assert seen == ["message_start", "content_block_start", *["content_block_delta"] * 3]
    assert error.type == error_type(0, type_)
    assert error.api_message == "The upstream stream failed after it began (ReadError)."
    assert isinstance(error.body, dict)
    assert error.body["error"]["code"] == "stream_interrupted"


def test_an_error_event_mid_stream_raises_in_the_stream_helper() -> None:
    text: list[str] = []

    async def run() -> None:
        async with anthropic_client(answering(200, interrupted(), "text/event-stream")) as client:
            with pytest.raises(anthropic.APIStatusError, match="stream_interrupted"):
                await read_text(client, text)

    asyncio.run(run())
    assert "".join(text) == "Hello! Café ☕ 🚀"


@pytest.mark.parametrize(
    ("status", "anthropic_class", "openai_class", "kind"),
    [
        (400, anthropic.BadRequestError, openai.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, openai.AuthenticationError, "authentication_error"),
        (404, anthropic.NotFoundError, openai.NotFoundError, "not_found_error"),
        (408, anthropic.RequestTimeoutError, openai.APIStatusError, "invalid_request_error"),
        (413, anthropic.ContentTooLargeError, openai.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, openai.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, openai.InternalServerError, "api_error"),
        (503, anthropic.ServiceUnavailableError, openai.InternalServerError, "overloaded_error"),
    ],
)
def test_error_bodies_in_both_sdks(
    status: int, anthropic_class: type[Exception], openai_class: type[Exception], kind: str
) -> None:
    message = "All providers for 'claude-x' are exhausted: a: 429."
    body = DIALECT.error_body(status, message, "server_error", "some_code", "model")
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": kind, "message": message, "code": "some_code", "param": "model"},
    }

    async def run() -> None:
        async with anthropic_client(answering(status, body)) as client:
            with pytest.raises(anthropic_class) as caught:
                await client.messages.create(**REQUEST)
        assert type(caught.value) is anthropic_class
        assert isinstance(caught.value, anthropic.APIStatusError)
        assert (caught.value.status_code, caught.value.type) == (status, kind)
        assert caught.value.api_message == message
        assert message in str(caught.value)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(answering(status, body)))
        async with openai.AsyncOpenAI(
            api_key="k", base_url="http://router.test", http_client=http, max_retries=0
        ) as oai:
            with pytest.raises(openai_class) as raised:
                await oai.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Hi"}]
                )
        assert type(raised.value) is openai_class
        assert isinstance(raised.value, openai.APIStatusError)
        assert (raised.value.type, raised.value.code, raised.value.param) == (
            kind,
            "some_code",
            "model",
        )
        assert message in raised.value.message

    asyncio.run(run())


def test_error_type() -> None:
    assert error_type(503, "server_error") == "overloaded_error"
    assert error_type(400, "overloaded") == "overloaded_error"
    assert error_type(402) == "billing_error"
    assert error_type(403) == "permission_error"
    assert error_type(422) == "invalid_request_error"
    assert error_type(502) == "api_error"
    assert error_type(504) == "timeout_error"
    assert error_type(529) == "overloaded_error"
