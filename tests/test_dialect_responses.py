"""The Responses API dialect: what its observer reads from a stream (the same for any chunking,
and as a plain reading of the whole stream says), its bodies, first events and error event."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from asgi_helpers import sse_stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseErrorEvent

from waterfall_asgi.dialects import DIALECTS, dialect_named
from waterfall_asgi.dialects import responses as module
from waterfall_asgi.dialects.responses import ResponsesDialect, ResponsesObserver
from waterfall_asgi.sse import SSEEvent, SSEParser
from waterfall_asgi.usage import UsageResult
from waterfall_fakes.samples import STREAM_SAMPLES, StreamSample, stream_sample
from waterfall_fakes.strategies import (
    chunkings,
    named_events,
    responses_streams,
    sse_encodings,
)

DIALECT = ResponsesDialect()
CAP = 64 * 1024
KINDS = {"response.created", "response.completed", "response.incomplete", "response.failed"}
SAMPLES = [s for s in STREAM_SAMPLES if s.api == "responses"]


def feed_all(chunks: list[bytes]) -> UsageResult:
    observer = DIALECT.stream_observer("req-1")
    for chunk in chunks:
        observer.feed(chunk)
    return observer.result


sse = sse_stream


def response(**fields: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "model": "gpt-4.1", "usage": None, **fields}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, "sequence_number": 0, **fields}


def delta(text: str) -> tuple[str, dict[str, Any]]:
    return event("response.output_text.delta", item_id="msg_1", output_index=0, delta=text)


def oracle(body: bytes) -> UsageResult:
    """The whole stream parsed at once and every event decoded: what the observer must say."""
    parser = SSEParser(CAP)
    result = UsageResult()
    for ev in parser.feed(body):
        result.events += 1
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError):
            obj = None
        obj = obj if isinstance(obj, dict) else None
        kind = obj.get("type") if obj is not None else None
        kind = kind if isinstance(kind, str) else ev.event
        if kind == "error":
            message = obj.get("message") if obj is not None else None
            result.error = {
                "code": obj.get("code") if obj is not None else None,
                "message": message if isinstance(message, str) and message else "error event",
                "type": "error",
            }
            continue
        if kind not in KINDS or (obj is None and kind != "response.failed"):
            continue
        resp = obj.get("response") if obj is not None else None
        resp = resp if isinstance(resp, dict) else {}
        for key in ("id", "model"):
            if not getattr(result, key) and isinstance(resp.get(key), str) and resp[key]:
                setattr(result, key, resp[key])
        found = resp.get("usage")
        if isinstance(found, dict):
            counts = [found.get(k) for k in ("input_tokens", "output_tokens", "total_tokens")]
            prompt, completion, total = (c if type(c) is int else None for c in counts)
            if (prompt, completion, total) != (None, None, None):
                if total is None and prompt is not None:
                    total = prompt + (completion or 0)
                result.prompt_tokens, result.completion_tokens = prompt, completion
                result.total_tokens = total
        if kind == "response.completed":
            result.complete = True
            result.finish_reasons[0] = "completed"
        elif kind == "response.incomplete":
            result.complete = True
            details = resp.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            result.finish_reasons[0] = (
                reason if isinstance(reason, str) and reason else "incomplete"
            )
        elif kind == "response.failed":
            error = resp.get("error")
            message = {"message": "response failed", "code": "response_failed"}
            result.error = error if isinstance(error, dict) else message
    result.oversized = parser.oversized
    return result


# -- the dialect --------------------------------------------------------------------------------
def test_it_is_registered_with_its_route() -> None:
    dialect = dialect_named("responses")
    assert isinstance(dialect, ResponsesDialect)
    assert DIALECTS["responses"] is dialect
    assert dialect.routes == {"/responses": ("input",)}
    assert list(DIALECTS) == ["chat", "responses", "messages"]
    assert dialect.incomplete_message == "The upstream stream ended without response.completed."
    assert dialect.terminal is None
    assert dialect.not_streamed == frozenset()
    payload = {"model": "m", "input": "hi", "stream": True}
    assert dialect.usage_request(payload, True) == (payload, False)
    assert dialect.usage_request(payload, True)[0] is not payload
    assert dialect.answered(UsageResult(finish_reasons={0: "completed"}), 1, True) is False
    assert dialect.client_key([(b"authorization", b"Bearer sk-1")]) == b"sk-1"
    assert dialect.upstream_headers("k") == {"authorization": "Bearer k"}
    assert json.loads(dialect.error_body(400, "bad", "invalid_request_error", "x")) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}
    }


# -- events, one kind at a time ------------------------------------------------------------------
def test_a_completed_stream() -> None:
    body = sse(
        event("response.created", response=response(status="in_progress")),
        delta("Hi"),
        event("response.completed", response=response(usage=usage(7, 3))),
    )
    result = feed_all([body])
    assert result == UsageResult(
        complete=True,
        prompt_tokens=7,
        completion_tokens=3,
        total_tokens=10,
        finish_reasons={0: "completed"},
        model="gpt-4.1",
        id="resp_1",
        events=3,
    )


def test_the_first_non_empty_id_and_model_are_kept() -> None:
    body = sse(
        event("response.created", response=response(id="", model="")),
        event("response.completed", response=response(id="resp_2", model="m2", usage=None)),
        event("response.completed", response=response(id="resp_3", model="m3")),
    )
    result = feed_all([body])
    assert (result.id, result.model, result.has_usage) == ("resp_2", "m2", False)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"input_tokens": 5, "output_tokens": 2}, (5, 2, 7)),
        ({"input_tokens": 5}, (5, None, 5)),
        ({"output_tokens": 2, "total_tokens": 9}, (None, 2, 9)),
        ({"input_tokens": True, "output_tokens": 2.0, "total_tokens": "9"}, (None, None, None)),
        ({"input_tokens": 5, "output_tokens": 2, "total_tokens": 8}, (5, 2, 8)),
        ({}, (None, None, None)),
    ],
)
def test_usage_counts_are_ints(given: dict[str, Any], expected: tuple[Any, ...]) -> None:
    result = feed_all([sse(event("response.completed", response=response(usage=given)))])
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == expected
    assert result.complete


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        ({"reason": "max_output_tokens"}, "max_output_tokens"),
        ({"reason": "content_filter"}, "content_filter"),
        ({"reason": ""}, "incomplete"),
        (None, "incomplete"),
    ],
)
def test_an_incomplete_response_ends_the_stream_properly(
    details: dict[str, Any] | None, reason: str
) -> None:
    done = response(status="incomplete", incomplete_details=details, usage=usage(4, 1))
    result = feed_all([sse(event("response.incomplete", response=done))])
    assert result.complete
    assert result.finish_reasons == {0: reason}
    assert (result.total_tokens, result.error) == (5, None)


def test_a_failed_response_is_an_error_not_a_completion() -> None:
    error = {"code": "server_error", "message": "The model failed."}
    failed = response(status="failed", error=error, usage=usage(4, 0))
    result = feed_all([sse(event("response.created", response=response()), delta("Hi"))])
    assert not result.complete
    assert result.error is None
    result = feed_all([sse(event("response.failed", response=failed))])
    assert (result.complete, result.error, result.total_tokens) == (False, error, 4)
    for data in ({"type": "response.failed", "response": response(error=None)}, "not json"):
        result = feed_all([sse(("response.failed", data))])
        assert result.error == {"message": "response failed", "code": "response_failed"}
        assert not result.complete


def test_an_error_event() -> None:
    data = {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down", "param": None}
    result = feed_all([sse(event("response.created", response=response()), ("error", data))])
    assert result.error == {"code": "rate_limit_exceeded", "message": "Slow down", "type": "error"}
    assert not result.complete
    assert result.id == "resp_1"
    for data in ({"type": "error"}, "oops", {"code": 5, "message": ""}):
        assert feed_all([sse(("error", data))]).error == {
            "code": data.get("code") if isinstance(data, dict) else None,
            "message": "error event",
            "type": "error",
        }


def test_the_data_type_decides_and_the_event_name_stands_in_for_a_missing_one() -> None:
    done = {"type": "response.completed", "response": response()}
    assert feed_all([sse((None, done))]).complete  # no event: line
    assert feed_all([sse(("message", done))]).complete
    other = {**done, "type": "response.in_progress"}
    assert not feed_all([sse(("response.completed", other))]).complete
    assert feed_all([sse(("response.completed", {"response": response()}))]).complete
    # success needs a JSON object to say so; an error does not
    assert not feed_all([sse(("response.completed", "[1]"))]).complete
    assert not feed_all([sse(("response.completed", "garbage"))]).complete
    assert feed_all([sse(("error", "garbage"))]).error is not None


def test_content_deltas_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []

    def counting(data: str | bytes) -> Any:
        decoded.append(str(data)[:40])
        return json.loads(data)

    monkeypatch.setattr(module, "decode", counting)
    created = event("response.created", response=response())
    completed = event("response.completed", response=response(usage=usage(3, 50)))
    body = sse(created, *(delta(f"word {i}") for i in range(50)), completed)
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        decoded.clear()
        result = feed_all(chunks)
        assert result.complete
        assert result.has_usage
        # in OpenAI's shape, the whole responses are not decoded either (read in place)
        assert decoded == [], decoded


def test_responses_in_another_shape_are_decoded_whole_with_the_same_result() -> None:
    counts = usage(5, 7)
    # a tool's schema with a property named "usage", after the response's own usage
    tool = {"type": "function", "name": "f", "parameters": {"properties": {"usage": {}}}}
    whole = response(usage=counts, tools=[tool])
    created = sse(event("response.created", response=response()))
    usual = {"type": "response.completed", "sequence_number": 9, "response": whole}
    moved = {"sequence_number": 9, "response": whole, "type": "response.completed"}
    for data in (usual, moved):  # read in place, and decoded whole
        result = feed_all([created, sse(("response.completed", data))])
        assert result.complete
        assert (result.prompt_tokens, result.completion_tokens) == (5, 7)
        assert (result.id, result.model) == ("resp_1", "gpt-4.1")


def test_a_delta_that_mentions_a_terminal_type_in_its_text_changes_nothing() -> None:
    text = '"type":"response.completed" event: error'
    body = sse(
        delta(text), (None, {"type": "x", "delta": text}), ("response.output_text.delta", text)
    )
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        result = feed_all(chunks)
        assert (result.complete, result.error, result.events) == (False, None, 3)


def test_a_failure_inside_the_observer_is_counted_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(module, "_take", broken)
    body = sse(event("response.created", response=response()), event("response.completed"))
    observer = DIALECT.stream_observer("req-7")
    with caplog.at_level("ERROR", logger="waterfall_asgi.usage"):
        for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
            for chunk in chunks:
                observer.feed(chunk)
    assert observer.result.failures == 3  # the whole body once, then each event's last byte
    assert [r.getMessage() for r in caplog.records] == ["usage observer failed (request req-7)"]


@pytest.mark.parametrize(
    "chunks",
    [
        [b'data: {"type":"response.completed"}\n', sse(event("response.completed"))],
        [b"event: response.completed\rdata: {}\n\n"],
        [b"event: response.completed\n", b"event: response.completed\ndata: {}\n\n"],
        [b"event: x\ndata: y\n\n", b"\xef\xbb\xbfevent: error\ndata: {}\n\n"],  # no BOM now
    ],
)
def test_reads_that_are_not_plain_events_go_to_the_parser(chunks: list[bytes]) -> None:
    assert feed_all(chunks) == oracle(b"".join(chunks))


# -- whole bodies --------------------------------------------------------------------------------
def test_observe_body() -> None:
    body = json.dumps(response(status="completed", usage=usage(9, 4), error=None)).encode()
    assert DIALECT.observe_body(body) == UsageResult(
        complete=True,
        prompt_tokens=9,
        completion_tokens=4,
        total_tokens=13,
        finish_reasons={0: "completed"},
        model="gpt-4.1",
        id="resp_1",
    )
    details = {"reason": "max_output_tokens"}
    cut = DIALECT.observe_body(
        json.dumps(response(status="incomplete", incomplete_details=details)).encode()
    )
    assert cut.complete
    assert cut.finish_reasons == {0: "max_output_tokens"}
    error = {"code": "server_error", "message": "failed"}
    failed = DIALECT.observe_body(json.dumps(response(status="failed", error=error)).encode())
    assert failed.complete
    assert failed.error == error
    assert failed.finish_reasons == {}
    bare = DIALECT.observe_body(json.dumps(response(status="failed", error=None)).encode())
    assert bare.error == {"message": "response failed", "code": "response_failed"}
    oops = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    assert DIALECT.observe_body(json.dumps(oops).encode()).error == oops["error"]
    queued = DIALECT.observe_body(json.dumps(response(status="queued")).encode())
    assert queued.complete
    assert queued.finish_reasons == {}
    assert queued.error is None
    for bad in (b"", b"[1]", b"{", b"\xff", b"[" * 100_000):
        assert DIALECT.observe_body(bad) == UsageResult()


# -- first events and the error event -------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "failed"),
    [
        (SSEEvent('{"type":"error","code":"x","message":"m"}', "error"), True),
        (SSEEvent('{"type":"error","code":"x","message":"m"}'), True),
        (SSEEvent('{"type":"response.failed","response":{}}', "response.failed"), True),
        (SSEEvent('{"type": "response.failed", "response": {}}'), True),
        (SSEEvent("not json", "error"), True),
        (SSEEvent('{"type":"response.created","response":{}}', "response.created"), False),
        (SSEEvent('{"type":"response.created","error":{"message":"x"}}'), False),
        (SSEEvent('{"type":'), False),
        (SSEEvent('{"type":"error"'), False),  # (not JSON: believed only on its name)
        (SSEEvent('{"type":"response.created","response":{"error":{"type":"error"}}}'), False),
        (SSEEvent("[" * 100_000), False),
    ],
)
def test_failed_first_event(first: SSEEvent, failed: bool) -> None:
    assert DIALECT.failed_first_event(first) is failed


def test_the_error_event_is_the_apis_own() -> None:
    raw = DIALECT.error_event("Café: the upstream stalled", "stream_stalled", "upstream_error")
    assert (
        raw
        == (
            'event: error\ndata: {"type":"error","code":"stream_stalled",'
            '"message":"Café: the upstream stalled","param":null,"sequence_number":0}\n\n'
        ).encode()
    )
    assert DIALECT.failed_first_event(SSEParser().feed(raw)[0])
    result = feed_all([raw])
    assert result.error == {
        "code": "stream_stalled",
        "message": "Café: the upstream stalled",
        "type": "error",
    }


@pytest.mark.parametrize("strict", [False, True])
def test_the_openai_sdk_reads_the_error_event(strict: bool) -> None:
    """After the first events of a real-shaped stream, the router's error event comes out of the
    SDK as a ``ResponseErrorEvent`` (validated strictly too), from ``create`` and ``stream``."""
    head = b"".join(p + b"\n\n" for p in stream_sample("responses_text").raw.split(b"\n\n")[:5])
    body = head + DIALECT.error_event("The upstream stream failed\n(Café).", "stream_interrupted")

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx2.Client(transport=httpx2.MockTransport(answer)) as http:
        client = openai.OpenAI(
            api_key="sk-test",
            base_url="http://router.test/v1",
            http_client=http,
            max_retries=0,
            _strict_response_validation=strict,
        )
        events = list(client.responses.create(model="m", input="hi", stream=True))
        with client.responses.stream(model="m", input="hi") as stream:
            helped = list(stream)
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    for last in (events[-1], helped[-1]):
        assert isinstance(last, ResponseErrorEvent)
        assert (last.code, last.message) == (
            "stream_interrupted",
            "The upstream stream failed\n(Café).",
        )
        assert last.sequence_number == 0


# -- properties ---------------------------------------------------------------------------------
def stream_facts(stream: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What a generated stream says, read from its dicts."""
    last = stream[-1]["response"]
    return (
        stream[0]["response"]["id"],
        stream[0]["response"]["model"],
        last["usage"]["input_tokens"],
        last["usage"]["output_tokens"],
        last["usage"]["total_tokens"],
        "max_output_tokens" if stream[-1]["type"] == "response.incomplete" else "completed",
    )


@given(st.data())
def test_the_result_does_not_depend_on_chunk_boundaries(data: st.DataObject) -> None:
    stream = data.draw(responses_streams(max_size=4, incomplete=st.booleans()), label="stream")
    named = data.draw(st.booleans(), label="named")
    events = named_events(stream) if named else stream  # unnamed: the data's type alone
    body = data.draw(sse_encodings(events, done=st.just(False)), label="body")
    chunks = data.draw(chunkings(body), label="chunks")
    whole = feed_all([body])
    assert feed_all(chunks) == whole
    assert whole == oracle(body)
    assert whole.complete
    assert whole.error is None
    assert whole.events == len(stream)
    facts = (whole.id, whole.model, whole.prompt_tokens, whole.completion_tokens)
    assert (*facts, whole.total_tokens, whole.finish_reasons[0]) == stream_facts(stream)


@given(st.data())
def test_never_complete_without_the_terminal_event(data: st.DataObject) -> None:
    stream = data.draw(responses_streams(max_size=3, incomplete=st.booleans()), label="stream")
    cut = data.draw(st.integers(0, len(stream) - 1), label="cut")
    body = data.draw(sse_encodings(named_events(stream[:cut]), done=st.just(False)), label="body")
    result = feed_all(data.draw(chunkings(body), label="chunks"))
    assert not result.complete
    assert result == oracle(body)


PIECES = [
    b"event: ",
    b"data: ",
    b"data:",
    b"\n",
    b"\r",
    b"\n\n",
    b"\xef\xbb\xbf",
    b":",
    b"id: 1\n",
    b'{"type":"',
    b'{"type": "error", "message": "x"}',
    b'"response":{"id":"r","usage":{"input_tokens":1}}}',
    *(k.encode() for k in (*KINDS, "error")),
]


@given(st.lists(st.binary() | st.sampled_from(PIECES)))
def test_feed_never_raises_on_garbage(chunks: list[bytes]) -> None:
    body = b"".join(chunks)
    result = feed_all(chunks)
    assert result.failures == 0
    assert result == feed_all([body]) == oracle(body)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_the_samples_whole_and_byte_by_byte(sample: StreamSample) -> None:
    raw = sample.raw
    for chunks in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        check_sample(sample, feed_all(chunks))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_samples_in_any_chunking(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(SAMPLES), label="sample")
    check_sample(sample, feed_all(data.draw(chunkings(sample.raw), label="chunks")))


def check_sample(sample: StreamSample, result: UsageResult) -> None:
    assert result == oracle(sample.raw)
    assert result.complete is sample.complete
    assert result.events == sample.events
    assert result.failures == 0
    if sample.usage is None:
        assert not result.has_usage
    else:
        counts = (sample.usage["input_tokens"], sample.usage["output_tokens"])
        assert (result.prompt_tokens, result.completion_tokens) == counts
        assert result.total_tokens == sample.usage["total_tokens"]
    if sample.error is None:
        assert result.error is None
    else:
        assert result.error is not None
        for key in ("code", "message"):
            assert result.error[key] == sample.error[key]


# -- memory bounds and events past the cap ------------------------------------------------------
def test_buffered_stays_bounded_under_an_endless_event() -> None:
    observer = ResponsesObserver(request_id="req-1")
    observer.feed(b'event: response.completed\ndata: {"type":"response.completed","response":')
    chunk = b'{"output":"' + b"x" * 8000 + b'"},'
    peak = 0
    for _ in range(300):  # 2.4 MB
        observer.feed(chunk)
        peak = max(peak, observer.buffered)
    assert peak <= CAP + len(chunk)
    assert (observer.result.complete, observer.result.oversized) == (False, 1)
    observer.feed(b"\n\n")  # the end of it: but no JSON object, so no success
    assert (observer.result.complete, observer.result.oversized) == (False, 1)
    assert observer.buffered == 0
    observer.feed(sse(event("response.completed", response=response())))
    assert observer.result.complete
    assert observer.result.events == 1


def big_response(kind: str, text: str, **fields: Any) -> dict[str, Any]:
    """A terminal event of OpenAI's shape whose output holds ``text``."""
    item = {"type": "message", "content": [{"type": "output_text", "text": text}]}
    body = {
        "id": "resp_big",
        "object": "response",
        "status": kind.removeprefix("response."),
        "instructions": "Be brief.",
        "model": "gpt-4.1",
        "output": [item],
        **fields,
        "usage": usage(120, 40_000),
        "metadata": {},
    }
    return {"type": kind, "sequence_number": 9, "response": body}


def wire(name: str | None, obj: Any, eol: str = "\n", indent: int | None = None) -> bytes:
    """One event: its JSON compact on one ``data:`` line, or indented over many."""
    compact = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = json.dumps(obj, ensure_ascii=False, indent=indent) if indent else compact
    lines = [f"event: {name}"] if name else []
    return eol.join([*lines, *(f"data: {line}" for line in text.split("\n")), "", ""]).encode()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_terminal_event_past_the_cap_still_ends_the_stream(data: st.DataObject) -> None:
    """Its kind from its first member or its event line, its id and model from its start, its
    usage and details from its end (or, when a padding member follows it all, its start)."""
    kind = data.draw(st.sampled_from(["response.completed", "response.incomplete"]), label="kind")
    text = data.draw(st.sampled_from(["word " * 30_000, "日本 " * 20_000]), label="text")
    details = {"incomplete_details": {"reason": "max_output_tokens"}}
    extra = details if kind == "response.incomplete" else {}
    terminal = big_response(kind, text, **extra)
    if data.draw(st.booleans(), label="padded"):  # as the fakes' big_event pads an event
        terminal = {**big_response(kind, "Hi", **extra), "x_padding": text}
    name = kind if data.draw(st.booleans(), label="named") else None
    eol = data.draw(st.sampled_from(["\n", "\r\n", "\r"]), label="eol")
    indent = data.draw(st.sampled_from([None, 2]), label="indent")
    body = wire(None, {"type": "response.output_text.delta", "delta": "Hi"}, eol)
    body += wire(name, terminal, eol, indent)
    result = feed_all(data.draw(chunkings(body, max_size=40), label="chunks"))
    assert (result.oversized, result.events, result.complete) == (1, 1, True)
    assert (result.id, result.model, result.total_tokens) == ("resp_big", "gpt-4.1", 40_120)
    reason = "max_output_tokens" if kind == "response.incomplete" else "completed"
    assert result.finish_reasons == {0: reason}


def test_the_lines_of_a_skipped_event_are_read_by_their_field() -> None:
    """Short lines too, in any chunking: ``data`` and ``data:`` add a line end to the data (JSON
    whitespace here), an ``id`` line and a comment nothing."""
    body = wire("response.completed", big_response("response.completed", "word " * 30_000), "\n", 2)
    at = body.rindex(b"\n", 0, body.index(b'"usage"')) + 1
    body = body[:at] + b"data:\nid: 7\ndata\n: c\n" + body[at:]
    for size in (len(body), 3, 5):
        result = feed_all([body[i : i + size] for i in range(0, len(body), size)])
        assert (result.complete, result.total_tokens, result.oversized) == (True, 40_120, 1)


def test_an_event_past_the_cap_counts_only_if_it_says_what_it_is() -> None:
    terminal = big_response("response.completed", "word " * 30_000)
    unnamed = {k: v for k, v in terminal.items() if k != "type"}
    assert feed_all([sse(("response.completed", unnamed))]).complete  # by its event: line
    assert not feed_all([sse((None, unnamed))]).complete
    # a comment past the cap in it: the data before it is all there is
    whole = sse(("response.completed", big_response("response.completed", "Hi")))
    commented = whole[:-1] + b": " + b"-" * CAP + b"\n\n"
    result = feed_all([commented])
    assert (result.complete, result.oversized, result.total_tokens) == (True, 1, 40_120)
    # a usage cut off where the kept start ends is no usage; no id or model there, none taken
    opened = b'{"type":"response.completed","usage":{"input_tokens":1,"x":"' + b"y" * CAP + b'"}}'
    result = feed_all([b"event: response.completed\ndata: " + opened + b"\n\n"])
    assert result == UsageResult(complete=True, finish_reasons={0: "completed"}, oversized=1)
    big_delta = sse(delta("x" * 100_000))
    assert feed_all([big_delta]) == UsageResult(oversized=1)
    failed = big_response("response.failed", "word " * 30_000)
    result = feed_all([sse(("response.failed", failed))])
    assert not result.complete
    assert result.error == {
        "message": "response failed",
        "code": "response_failed",
    }
