"""Streams of the Responses API and Anthropic Messages: the Hypothesis strategies, the recorded-
style samples and the fakes' own streams all obey the same checker, read back the same whatever
the chunking, and report the usage an oracle reads from their events."""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from waterfall_fakes import BEHAVIOUR_HEADER, FakeProvider, Reply, usage_sent
from waterfall_fakes.samples import STREAM_SAMPLES, StreamSample, stream_sample
from waterfall_fakes.strategies import (
    BEHAVIOUR_KINDS,
    MESSAGES_STOP_REASONS,
    behaviours,
    chunkings,
    messages_streams,
    named_events,
    responses_streams,
    sse_encodings,
)


def read_events(chunks: list[bytes], errors: str = "strict") -> list[tuple[str, str]]:
    """(type, data) of each event, read as the WHATWG event-stream algorithm does, the bytes fed
    in the given chunks through an incremental UTF-8 decoder (``errors="replace"`` for a body
    cut inside a character)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    text = "".join(decoder.decode(c) for c in chunks) + decoder.decode(b"", True)
    events, data, kind = [], [], ""
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:  # an unterminated last line is dropped
        if not line:
            if data:
                events.append((kind or "message", "\n".join(data)))
            data, kind = [], ""
            continue
        name, colon, value = line.partition(":")
        value = value[1:] if colon and value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
    return events


TERMINAL = {
    "responses": {"response.completed", "response.incomplete"},
    "messages": {"message_stop"},
}


def decode(chunks: list[bytes]) -> list[dict[str, Any]]:
    """The events' JSON, checking that each event's name is its type."""
    out = []
    for kind, raw in read_events(chunks):
        data = json.loads(raw)
        assert kind == data["type"]
        out.append(data)
    return out


def check_responses(events: list[dict[str, Any]], *, whole: bool = True) -> None:
    """What any Responses API stream must satisfy (``whole``: it also ends as one should)."""
    assert events[0]["type"] == "response.created"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    for e in events:
        if e["type"] == "response.output_text.done":
            assert e["text"] == text
        if e["type"] == "response.function_call_arguments.done":
            deltas = [
                d["delta"]
                for d in events
                if d["type"] == "response.function_call_arguments.delta"
                and d["item_id"] == e["item_id"]
            ]
            assert "".join(deltas) == e["arguments"]
            json.loads(e["arguments"])
    if whole:
        last = events[-1]
        assert last["type"] in TERMINAL["responses"]
        usage = last["response"]["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert last["response"]["status"] == last["type"].removeprefix("response.")


def check_messages(events: list[dict[str, Any]], *, whole: bool = True) -> None:
    """What any Messages stream must satisfy: blocks open, get deltas and close in order."""
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["content"] == []
    open_block: int | None = None
    seen = 0
    partial: dict[int, str] = {}
    for e in events[1:]:
        kind = e["type"]
        if kind == "content_block_start":
            assert open_block is None
            assert e["index"] == seen
            open_block = e["index"]
        elif kind == "content_block_delta":
            assert e["index"] == open_block
            if e["delta"]["type"] == "input_json_delta":
                partial[e["index"]] = partial.get(e["index"], "") + e["delta"]["partial_json"]
        elif kind == "content_block_stop":
            assert e["index"] == open_block
            open_block, seen = None, seen + 1
        elif kind in ("message_delta", "message_stop"):
            assert open_block is None
    for text in partial.values():
        json.loads(text)
    if whole:
        assert events[-1]["type"] == "message_stop"
        assert events[-2]["type"] == "message_delta"
        assert events[-2]["delta"]["stop_reason"] is not None


def oracle(api: str, events: list[dict[str, Any]]) -> tuple[str, Any, bool, Any]:
    """(text, usage, complete, error) read from the events."""
    text, usage, error = "", None, None
    for e in events:
        kind = e["type"]
        if kind == "response.output_text.delta":
            text += e["delta"]
        elif kind in ("response.completed", "response.incomplete"):
            usage = e["response"]["usage"]
        elif kind == "response.failed":
            error = e["response"]["error"]
        elif kind == "error":
            error = e
        elif kind == "message_start" and "usage" in e["message"]:
            usage = dict(e["message"]["usage"])
        elif kind == "message_delta" and "usage" in e:
            usage = {**(usage or {}), **e["usage"]}
        elif kind == "content_block_delta" and e["delta"]["type"] == "text_delta":
            text += e["delta"]["text"]
    complete = bool(events) and events[-1]["type"] in TERMINAL[api]
    return text, usage, complete, error


# -- the samples ---------------------------------------------------------------------------------
def as_reply(raw: bytes) -> Reply:
    return Reply(200, (("content-type", "text/event-stream"),), (raw,))


@pytest.mark.parametrize("s", STREAM_SAMPLES, ids=lambda s: s.name)
def test_sample_says_what_it_claims(s: StreamSample) -> None:
    events = decode([s.raw])
    assert len(events) == s.events
    check = check_responses if s.api == "responses" else check_messages
    check(events, whole=s.complete and s.error is None)
    text, usage, complete, error = oracle(s.api, events)
    assert (text, usage, complete, error) == (s.text, s.usage, s.complete, s.error)
    assert usage_sent(as_reply(s.raw)) == s.usage  # what a fake's journal would record
    assert decode([bytes([b]) for b in s.raw]) == events  # byte by byte


@given(st.sampled_from(STREAM_SAMPLES).flatmap(lambda s: st.tuples(st.just(s), chunkings(s.raw))))
def test_samples_read_the_same_in_any_chunking(pair: tuple[StreamSample, list[bytes]]) -> None:
    s, chunks = pair
    assert decode(chunks) == decode([s.raw])


def test_samples_have_ping_error_and_crlf() -> None:
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in stream_sample("messages_text").raw
    assert b"event: error\n" in stream_sample("messages_overloaded").raw
    assert b"\r\n\r\n" in stream_sample("messages_no_stop").raw
    assert b"[DONE]" not in b"".join(s.raw for s in STREAM_SAMPLES)
    with pytest.raises(KeyError):
        stream_sample("nope")


# -- the strategies ------------------------------------------------------------------------------
@given(responses_streams(incomplete=st.booleans()))
def test_responses_streams_are_valid(events: list[dict[str, Any]]) -> None:
    check_responses(events)


@given(messages_streams())
def test_messages_streams_are_valid(events: list[dict[str, Any]]) -> None:
    check_messages(events)
    assert events[-2]["delta"]["stop_reason"] in MESSAGES_STOP_REASONS


@given(
    st.one_of(responses_streams(), messages_streams()).flatmap(
        lambda s: st.tuples(st.just(s), sse_encodings(named_events(s), done=st.just(False)))
    )
)
def test_named_events_read_back_exactly(pair: tuple[list[dict[str, Any]], bytes]) -> None:
    events, wire = pair
    assert decode([wire]) == events


@given(responses_streams(tool_calls=st.just(True)), messages_streams(tool_use=st.just(True)))
def test_tool_calls_are_drawn_when_asked(
    resp: list[dict[str, Any]], msgs: list[dict[str, Any]]
) -> None:
    assert any(e["type"] == "response.function_call_arguments.done" for e in resp)
    assert msgs[-2]["delta"]["stop_reason"] == "tool_use"


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(InvalidArgument):
        responses_streams(min_size=3, max_size=1).example()
    with pytest.raises(InvalidArgument):
        messages_streams(pings="yes").example()  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        named_events([{"no": "type"}])


# -- the fakes' own streams obey the same checker --------------------------------------------
TOOLS = {
    "responses": [{"type": "function", "name": "lookup", "parameters": {}}],
    "messages": [{"name": "lookup", "input_schema": {"properties": {"q": {"type": "string"}}}}],
}


@given(
    api=st.sampled_from(["responses", "messages"]),
    words=st.integers(0, 20),
    limit=st.none() | st.integers(1, 20),
    tool=st.booleans(),
    seed=st.integers(0, 2**16),
    chunks=st.integers(1, 9),
)
def test_the_fakes_streams_are_valid_and_their_usage_is_exact(
    api: str, words: int, limit: int | None, tool: bool, seed: int, chunks: int
) -> None:
    fake = FakeProvider(seed=seed, reply_words=words)
    text = "tell me something"
    body: dict[str, Any] = {"model": "fake-small", "stream": True}
    if api == "responses":
        body |= {"input": text} | ({"max_output_tokens": limit} if limit else {})
        path = "/v1/responses"
    else:
        body |= {"messages": [{"role": "user", "content": text}], "max_tokens": limit or 100}
        path = "/v1/messages"
    headers = {"anthropic-version": "2023-06-01", BEHAVIOUR_HEADER: f"chunking:size={chunks}"}
    if tool:
        body["tools"] = TOOLS[api]
        headers[BEHAVIOUR_HEADER] += "; tool_call"
    reply = fake.handle("POST", path, headers, json.dumps(body).encode())
    events = decode(list(reply.chunks))
    (check_responses if api == "responses" else check_messages)(events)
    got_text, usage, complete, error = oracle(api, events)
    assert complete
    assert error is None
    assert usage == fake.requests[-1].usage
    assert usage["input_tokens"] == 3 + len(text.split())
    if tool:
        assert got_text == ""
    else:
        expected = words if limit is None else min(words, limit)
        assert usage["output_tokens"] == len(got_text.split()) == expected


# -- any faults, any dialect: an answer in the dialect's own shape ---------------------------
@given(
    api=st.sampled_from(["responses", "messages"]),
    stream=st.booleans(),
    step=st.lists(behaviours(set(BEHAVIOUR_KINDS) - {"when"}), max_size=4),
)
def test_any_faults_answer_in_the_dialects_shape(api: str, stream: bool, step: list[Any]) -> None:
    """Whatever behaviours a request gets, the fake answers without a traceback: an error body
    in the dialect's shape (whole, unless cut), or a stream whose usage in the journal is what
    its events say, and which is complete only if nothing broke it."""
    fake = FakeProvider(script=[step])
    body: dict[str, Any] = {"model": "fake-small", "stream": stream}
    if api == "responses":
        body["input"] = "hello there"
    else:
        body |= {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}
    path = "/v1/responses" if api == "responses" else "/v1/messages"
    headers = {"anthropic-version": "2023-06-01"}
    reply = fake.handle("POST", path, headers, json.dumps(body).encode())
    cut = reply.cut
    if reply.status >= 400:
        if not cut:
            error = json.loads(reply.body)
            if api == "messages":
                assert error["type"] == "error"
                assert set(error["error"]) == {"type", "message"}
            else:
                assert isinstance(error["error"], dict)
        assert fake.requests[-1].usage is None
        return
    assert reply.status == 200
    kinds = {b.kind for b in step}
    if not stream or "malformed_event" in kinds:
        return
    events = []
    for kind, raw in read_events(list(reply.chunks), "replace" if cut else "strict"):
        data = json.loads(raw)
        assert kind == data["type"]  # fields keeps the dialect's event names
        events.append(data)
    _, usage, complete, _ = oracle(api, events)
    if not cut:
        assert usage == fake.requests[-1].usage
    broken = kinds & {"truncate", "no_done", "error_event", "cut"}
    if complete and events[-1]["type"] != "message_stop":
        assert events[-1]["response"]["usage"] is not None or "no_usage" in kinds
    if not broken:
        assert complete
