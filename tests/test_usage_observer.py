"""The usage observer: the same result whatever the chunking, bounded memory, never raising."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.sse import SSEParser
from waterfall_asgi.usage import (
    StreamObserver,
    UsageResult,
    observe_body,
    usage_only_chunk,
)
from waterfall_fakes.strategies import chat_completion_streams, chunkings, sse_encodings


def feed_all(chunks: list[bytes], max_bytes: int = 64 * 1024) -> StreamObserver:
    observer = StreamObserver(max_bytes)
    for chunk in chunks:
        observer.feed(chunk)
    return observer


def oracle(stream: list[dict[str, Any]], done: bool) -> UsageResult:
    """What the observer must find, computed from the chunk dicts themselves."""
    expected = UsageResult(complete=done, events=len(stream) + done)
    for chunk in stream:
        expected.id = expected.id or chunk.get("id")
        expected.model = expected.model or chunk.get("model")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            expected.prompt_tokens = usage["prompt_tokens"]
            expected.completion_tokens = usage["completion_tokens"]
            expected.total_tokens = usage["total_tokens"]
        for choice in chunk["choices"]:
            if choice.get("finish_reason"):
                expected.finish_reasons[choice["index"]] = choice["finish_reason"]
    return expected


@given(st.data())
def test_the_result_does_not_depend_on_chunk_boundaries(data: st.DataObject) -> None:
    stream = data.draw(chat_completion_streams(max_size=4), label="stream")
    done = data.draw(st.booleans(), label="done")
    body = data.draw(
        sse_encodings(stream, done=st.just(done), allow_comments=True, allow_fields=True),
        label="body",
    )
    chunks = data.draw(chunkings(body), label="chunks")
    whole = feed_all([body]).result
    assert feed_all(chunks).result == whole
    assert whole == oracle(stream, done)
    assert whole.complete is done  # [DONE] says complete, nothing else does


@given(st.data())
def test_a_stream_cut_anywhere_is_answered_only_once_every_choice_finished_and_usage_came(
    data: st.DataObject,
) -> None:
    """The rule of a stream's end without ``[DONE]``: the answer is whole once each choice the
    request asked for has its finish reason and, if usage was asked for, the usage chunk came;
    the verdict is the same in any chunking, and ``[DONE]`` never changes it."""
    stream = data.draw(chat_completion_streams(max_size=4), label="stream")
    n = len({c["index"] for chunk in stream for c in chunk["choices"]})
    usage = "usage" in stream[0]  # asked for: every chunk has "usage" (null or counts)
    kept = stream[: data.draw(st.integers(0, len(stream)), label="kept")]
    done = data.draw(st.booleans(), label="done")
    body = data.draw(sse_encodings(kept, done=st.just(done)), label="body")
    result = feed_all(data.draw(chunkings(body), label="chunks")).result
    assert result == feed_all([body]).result
    finished = {c["index"] for chunk in kept for c in chunk["choices"] if c["finish_reason"]}
    came = any(isinstance(chunk.get("usage"), dict) for chunk in kept)
    for asked_n in (n, n + 1):  # a provider that sent fewer choices than asked: never whole
        for asked_usage in {usage, False}:
            assert result.answered(asked_n, asked_usage) is (
                finished >= set(range(asked_n)) and (came or not asked_usage)
            )
    assert result.answered(n, usage) is (kept == stream)  # each stream ends with them


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=8),
    chunk=st.integers(min_value=1, max_value=700),
)
def test_memory_stays_bounded_and_only_oversized_events_are_skipped(
    sizes: list[int], chunk: int
) -> None:
    cap = 1024
    events = [{"choices": [], "usage": None, "pad": "x" * size} for size in sizes]
    body = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )
    observer = StreamObserver(cap)
    for start in range(0, len(body), chunk):
        observer.feed(body[start : start + chunk])
        assert observer.buffered <= cap
    # the cap counts whole lines, the ``data: `` field name included
    too_big = sum(len("data: " + json.dumps(e)) > cap for e in events)
    assert observer.result.oversized == too_big
    assert observer.result.events == len(events) - too_big + 1
    assert observer.result.complete


def test_usage_is_the_last_one_with_token_counts_and_errors_are_kept() -> None:
    events = [
        {"id": "c1", "model": "m", "usage": None, "choices": [{"index": 0, "finish_reason": None}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        {"error": {"message": "boom", "code": "server_error"}},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    result = feed_all([body]).result
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (4, 2, 6)
    assert (result.id, result.model, result.complete) == ("c1", "m", False)
    assert result.error == {"message": "boom", "code": "server_error"}


def test_the_observer_never_raises(monkeypatch: Any) -> None:
    observer = StreamObserver()

    class Broken:
        oversized = 0

        def feed(self, chunk: bytes) -> list[Any]:
            raise RuntimeError("parser bug")

    monkeypatch.setattr(observer, "_parser", Broken())
    observer.feed(b"data: {}\n\n")
    observer.feed(b"data: {}\n\n")
    assert observer.result.failures == 2


def test_usage_from_a_json_body() -> None:
    body = json.dumps(
        {
            "id": "x",
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    ).encode()
    result = observe_body(body)
    assert (result.complete, result.total_tokens, result.finish_reasons) == (True, 12, {0: "stop"})
    assert observe_body(b"not json") == UsageResult()


def test_usage_only_chunk() -> None:
    assert usage_only_chunk('{"choices":[],"usage":{"prompt_tokens":1}}')
    assert not usage_only_chunk('{"choices":[],"usage":null}')
    assert not usage_only_chunk('{"choices":[{"index":0}],"usage":{"prompt_tokens":1}}')
    assert not usage_only_chunk('{"choices": [], "usage": {')


@given(st.data())
def test_plain_events_whole_or_byte_by_byte_give_the_same_result(data: st.DataObject) -> None:
    stream = data.draw(chat_completion_streams(max_size=6), label="stream")
    lines = [b"data: " + json.dumps(chunk).encode() for chunk in stream]  # one line each
    if data.draw(st.booleans(), label="done"):  # anywhere: what follows [DONE] is read too
        lines.insert(data.draw(st.integers(0, len(lines)), label="at"), b"data: [DONE]")
    body = b"".join(line + b"\n\n" for line in lines)
    whole = feed_all([body]).result
    assert feed_all([body[i : i + 1] for i in range(len(body))]).result == whole
    assert feed_all(data.draw(chunkings(body), label="chunks")).result == whole
    assert whole.complete is (b"data: [DONE]" in lines)
    assert whole.events == len(lines)


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
_MEMBERS = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("id", "model")),
    st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["id", "model", "x"]), _SCALARS)),
    max_size=4,
)


@given(
    ident=st.text(max_size=6),
    model=st.text(max_size=6),
    before=_MEMBERS,
    after=_MEMBERS,
    spaces=st.booleans(),
    ascii_only=st.booleans(),
)
def test_a_first_event_gives_its_own_id_and_model_however_it_is_written(
    ident: str,
    model: str,
    before: dict[str, Any],
    after: dict[str, Any],
    spaces: bool,
    ascii_only: bool,
) -> None:
    # id first, as providers write it, members around model (some with an "id" or "model" of
    # their own); the head is read from the bytes when it plainly allows, else decoded
    event = {"id": ident, **before, "model": model, **after}
    event.setdefault("choices", [])
    separators = (", ", ": ") if spaces else (",", ":")
    data = json.dumps(event, ensure_ascii=ascii_only, separators=separators).encode()
    for body in (b"data: " + data + b"\n\n", b"data: " + data + b"\n\ndata: [DONE]\n\n"):
        result = feed_all([body]).result
        assert (result.id, result.model) == (ident or None, model or None)
        assert result == feed_all([body[:1], body[1:]]).result  # the line-by-line parse


def test_the_model_of_a_nested_object_is_not_the_events() -> None:
    body = b'data: {"id":"c1","o":{"model":"inner"},"created":1}\n\n'
    assert (feed_all([body]).result.id, feed_all([body]).result.model) == ("c1", None)
    body = b'data: {"id":"c1","o":{"x":1,"model":"inner"},"model":"outer"}\n\n'
    assert feed_all([body]).result.model == "outer"
    body = b'data: {"id":"c1","created":1,"model":"m\\u00e9"}\n\n'  # an escape: decoded
    assert feed_all([body]).result.model == "m\u00e9"
    # an id-less first chunk that names a model: its model stays the first one
    body = b'data: {"id":"","model":"m1"}\n\ndata: {"id":"c2","model":"m2"}\n\n'
    assert (feed_all([body]).result.id, feed_all([body]).result.model) == ("c2", "m1")


BOM = b"\xef\xbb\xbf"


def test_a_bom_counts_only_at_the_start_of_the_stream_whoever_parses() -> None:
    # The first reads of plain events are read without a parser; the one made later must know
    # that the stream has begun: a BOM there is part of a field name (see the SSE parser).
    first, second = b'data: {"id":"a"}\n\n', b'data: {"id":"b"}\n\n'
    later = feed_all([first, BOM + second]).result
    assert (later.events, later.id) == (1, "a")
    assert later == feed_all([first + BOM + second]).result
    at_start = feed_all([BOM + first, second]).result
    assert (at_start.events, at_start.id) == (2, "a")


@given(st.data())
def test_the_events_are_the_parsers_whoever_reads_them(data: st.DataObject) -> None:
    stream = data.draw(chat_completion_streams(max_size=4), label="stream")
    lines = [b"data: " + json.dumps(chunk).encode() for chunk in stream] + [b"data: [DONE]"]
    events = [line + b"\n\n" for line in lines]
    for at in data.draw(st.lists(st.integers(0, len(events)), max_size=2), label="boms"):
        events.insert(at, BOM + b'data: {"id":"bom"}\n\n')  # an event only at the start
    body = b"".join(events)
    expected = SSEParser().feed(body)
    for chunks in ([body], events, data.draw(chunkings(body), label="chunks")):
        result = feed_all(chunks).result
        assert result.events == len(expected)
        assert result.id == json.loads(expected[0].data).get("id")
