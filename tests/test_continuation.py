"""Mid-stream continuation: a chat stream cut, stalled or closed in the middle of its answer is
continued by a further entry whose model declares ``prefill``, into the same client stream.

The upstreams are a small httpx transport: each host answers a streaming chat request with the
words of one fixed answer, as OpenAI-style chunks; a host that honours a prefill answers a request
whose last message is the assistant's with the rest of that answer (the words after the prefill),
one that refuses it with a 400. A host's fault is scripted per request: ``cut`` (a transport error
after some events), ``close`` (a clean close after some events), ``stall`` (silence after some
events).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from asgi_helpers import Result, call
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi import MemoryLedger, UsageRecord, WaterfallMiddleware
from waterfall_asgi.continuation import Relayed, relayed_text, rewrite_events
from waterfall_asgi.sse import SSEParser
from waterfall_fakes.strategies import chunkings

MESSAGES = [{"role": "user", "content": "Tell me"}]
PRICES = {  # msat per token: each host's own
    "a": {"unit": "msat", "prompt": "1", "completion": "2"},
    "b": {"unit": "msat", "prompt": "3", "completion": "5"},
    "c": {"unit": "msat", "prompt": "7", "completion": "11"},
}


@dataclass
class Fault:
    """What a host does to one request: after ``after`` content events, ``kind``."""

    kind: str  # "ok", "cut", "close", "stall", "reject"
    after: int = 0


@dataclass
class Host:
    """One upstream: its answer's words, its id, and a fault per request (then ``ok``)."""

    name: str
    words: list[str]
    faults: list[Fault] = field(default_factory=list)
    usage_each_chunk: bool = False
    """Report the usage so far in every chunk (some providers do): a cut part's tokens are
    then known."""
    chunking: list[int] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, body: dict[str, Any]) -> tuple[int, list[bytes]]:
        self.requests.append(body)
        fault = self.faults.pop(0) if self.faults else Fault("ok")
        messages = body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}]
        prefill = ""
        if messages[-1]["role"] == "assistant":
            if fault.kind == "reject":
                error = {"error": {"message": "no prefill", "type": "invalid_request_error"}}
                return 400, [json.dumps(error).encode()]
            prefill = messages[-1]["content"]
        answer = "".join(self.words)
        assert answer.startswith(prefill), (answer, prefill)
        rest = answer[len(prefill) :]
        pieces = _pieces(rest, self.words, len(prefill))
        prompt = sum(len(m["content"]) for m in messages)
        base = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk"}
        base |= {"created": len(self.requests), "model": f"model-{self.name}"}
        events = [{**base, "choices": [_choice({"role": "assistant", "content": ""})]}]
        for done, piece in enumerate(pieces, 1):
            event = {**base, "choices": [_choice({"content": piece})]}
            if self.usage_each_chunk:
                event["usage"] = _usage(prompt, done)
            events.append(event)
        events.append({**base, "choices": [_choice({}, "stop")]})
        usage = body.get("stream_options", {}).get("include_usage")
        if usage:
            events.append({**base, "choices": [], "usage": _usage(prompt, len(pieces))})
        data = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        if fault.kind == "ok":
            return 200, [*data, b"data: [DONE]\n\n"]
        kept = data[: 1 + fault.after]
        return 200, [*kept, fault.kind.encode()]  # the fault, read by the transport


def _pieces(rest: str, words: list[str], skip: int) -> list[str]:
    """``rest`` split where the answer's words split (a word the prefill cut in two: its end
    first)."""
    pieces, at = [], 0
    for word in words:
        end = at + len(word)
        if end > skip:
            pieces.append(word[max(skip - at, 0) :])
        at = end
    assert "".join(pieces) == rest
    return [p for p in pieces if p]


def _choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], sizes: list[int] | None) -> None:
        self.chunks, self.sizes = chunks, sizes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        *data, last = self.chunks
        if last in (b"cut", b"close", b"stall"):
            fault = last
        else:
            data, fault = self.chunks, b""
        wire = b"".join(data)
        at = 0
        for size in self.sizes or [len(wire) or 1]:
            if at < len(wire):
                yield wire[at : at + size]
                at += size
        if at < len(wire):
            yield wire[at:]
        if fault == b"cut":
            raise httpx.RemoteProtocolError("peer closed connection")
        if fault == b"stall":
            await asyncio.Event().wait()


class Upstreams(httpx.AsyncBaseTransport):
    def __init__(self, *hosts: Host) -> None:
        self.hosts = {h.name: h for h in hosts}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = self.hosts[request.url.host]
        status, chunks = host.reply(json.loads(request.content))
        if status != 200:
            return httpx.Response(status, content=b"".join(chunks))
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Body(chunks, host.chunking),
        )


def make(
    upstreams: Upstreams,
    *,
    chain: list[str] | None = None,
    on: bool = True,
    prefill: tuple[str, ...] = ("model-b", "model-c"),
    stall: float = 0.05,
) -> tuple[WaterfallMiddleware, MemoryLedger]:
    names = list(upstreams.hosts)
    config = {
        "providers": {
            n: {"base_url": f"http://{n}/v1", "timeouts": {"first_byte": 5, "stall": stall}}
            for n in names
        },
        "deployments": [{"provider": n, "model": f"model-{n}", "price": PRICES[n]} for n in names],
        "chains": {"chat": chain or [f"{n}/model-{n}" for n in names]},
        "models": {m: {"capabilities": ["prefill"]} for m in prefill},
        "policy": {"continue_streams": on},
        "ledger": {"path": None},
    }
    ledger = MemoryLedger()
    return WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger), ledger


async def ask(
    app: WaterfallMiddleware, ledger: MemoryLedger, **extra: Any
) -> tuple[Result, UsageRecord]:
    body = {"model": "chat", "messages": MESSAGES, "stream": True, **extra}
    try:
        result = await call(app, "POST", "/v1/chat/completions", body)
    finally:
        await app.shutdown()
    (record,) = ledger.records.values()
    return result, record


def chunks_of(body: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """The client's JSON chunks, and every event's data in order."""
    data = [e.data for e in SSEParser().feed(body)]
    return [json.loads(d) for d in data if d != "[DONE]"], data


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


WORDS = ["Once", " upon", " a", " time", " there", " was", " a", " router", "."]


# -- the rule, end to end ------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["cut", "close", "stall"])
@pytest.mark.parametrize("asked", [False, True], ids=["usage-injected", "usage-asked"])
async def test_a_failed_stream_is_continued_into_one_answer(kind: str, asked: bool) -> None:
    a, b = Host("a", WORDS, [Fault(kind, after=3)]), Host("b", WORDS)
    app, ledger = make(Upstreams(a, b))
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    result, record = await ask(app, ledger, **extra)
    chunks, data = chunks_of(result.body)
    assert text_of(chunks) == "".join(WORDS)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    assert not any("error" in c for c in chunks)
    # one stream: the first part's id, created and model throughout; one role, one finish
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {("chatcmpl-a", 1, "model-a")}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert sum("role" in d for d in deltas) == 1
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [r for r in reasons if r] == ["stop"]
    assert [c for c in chunks if not c["choices"]] == (
        [chunks[-1]] if asked else []
    )  # the continuation's usage chunk, only if the client asked
    # b was asked to continue the text the client had: the first three words
    (continued,) = b.requests
    assert continued["messages"] == [*MESSAGES, {"role": "assistant", "content": "Once upon a"}]
    # the record: a success, noted; both attempts; the continuation's tokens and cost
    assert record.status == "success"
    ended = {
        "cut": "stream_interrupted: RemoteProtocolError",
        "close": "no [DONE]",
        "stall": "stream_stalled: no byte for 0.05s",
    }[kind]
    assert record.error == f"continued on b/model-b after {ended}"
    assert [(x["entry"], x["outcome"], x.get("continuation")) for x in record.attempts] == [
        ("a/model-a", "served", None),
        ("b/model-b", "served", True),
    ]
    first, second = record.attempts
    assert first["ended"] == ended
    assert (first["prompt_tokens"], first["cost"]) == (None, None)  # a never said
    prompt = len("Tell me") + len("Once upon a")
    assert (second["prompt_tokens"], second["completion_tokens"]) == (prompt, 6)
    assert second["cost"] == prompt * 3 + 6 * 5
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, 6)
    assert (record.cost, record.cost_unit) == (prompt * 3 + 6 * 5, "msat")
    assert (record.provider, record.upstream_model) == ("a", "model-a")


@pytest.mark.anyio
async def test_the_cost_of_both_parts_is_summed_exactly_when_both_reported_tokens() -> None:
    a = Host("a", WORDS, [Fault("cut", after=4)], usage_each_chunk=True)
    b = Host("b", WORDS)
    app, ledger = make(Upstreams(a, b))
    _, record = await ask(app, ledger)
    first, second = record.attempts
    assert (first["prompt_tokens"], first["completion_tokens"]) == (7, 4)
    assert first["cost"] == 7 * 1 + 4 * 2
    prompt_b = len("Tell me") + len("Once upon a time")
    assert second["cost"] == prompt_b * 3 + 5 * 5
    assert (record.prompt_tokens, record.completion_tokens) == (7 + prompt_b, 4 + 5)
    assert record.cost == first["cost"] + second["cost"]


@pytest.mark.anyio
async def test_a_continuation_that_fails_is_continued_again() -> None:
    a = Host("a", WORDS, [Fault("cut", after=2)])
    b = Host("b", WORDS, [Fault("stall", after=3)])
    c = Host("c", WORDS)
    app, ledger = make(Upstreams(a, b, c))
    result, record = await ask(app, ledger)
    chunks, data = chunks_of(result.body)
    assert text_of(chunks) == "".join(WORDS)
    assert data.count("[DONE]") == 1
    assert c.requests[0]["messages"][-1] == {
        "role": "assistant",
        "content": "Once upon a time there",
    }
    assert [(x["entry"], x.get("ended")) for x in record.attempts] == [
        ("a/model-a", "stream_interrupted: RemoteProtocolError"),
        ("b/model-b", "stream_stalled: no byte for 0.05s"),
        ("c/model-c", None),
    ]
    assert record.error == ("continued on c/model-c after stream_interrupted: RemoteProtocolError")


# -- when it does not continue -------------------------------------------------------------------
def _original_error(result: Result, code: str) -> list[dict[str, Any]]:
    chunks, data = chunks_of(result.body)
    assert "[DONE]" not in data
    assert chunks[-1]["error"]["code"] == code
    return chunks[:-1]


@pytest.mark.anyio
async def test_a_rejected_prefill_never_masks_the_original_failure() -> None:
    a, b = Host("a", WORDS, [Fault("cut", after=3)]), Host("b", WORDS, [Fault("reject")])
    app, ledger = make(Upstreams(a, b))
    result, record = await ask(app, ledger)
    before = _original_error(result, "stream_interrupted")
    assert text_of(before) == "Once upon a"
    assert (record.status, record.error) == (
        "upstream_error",
        "stream_interrupted: RemoteProtocolError",
    )
    assert [(x["entry"], x["outcome"], x["status"]) for x in record.attempts] == [
        ("a/model-a", "served", 200),
        ("b/model-b", "rejected", 400),
    ]
    assert len(b.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "why",
    ["off", "no prefill model", "n=2", "not chat"],
)
async def test_no_continuation_when_it_is_off_or_cannot_apply(why: str) -> None:
    a, b = Host("a", WORDS, [Fault("close", after=3)]), Host("b", WORDS)
    app, ledger = make(
        Upstreams(a, b), on=why != "off", prefill=() if why == "no prefill model" else ("model-b",)
    )
    if why == "not chat":
        try:
            body = {"model": "chat", "prompt": "x", "stream": True}
            result = await call(app, "POST", "/v1/completions", body)
        finally:
            await app.shutdown()
        assert b.requests == []
        return
    result, record = await ask(app, ledger, **({"n": 2} if why == "n=2" else {}))
    _original_error(result, "stream_incomplete")
    assert b.requests == []
    assert (record.status, len(record.attempts)) == ("stream_incomplete", 1)


@pytest.mark.anyio
async def test_no_continuation_while_a_tool_call_is_in_flight() -> None:
    tool = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    body = (
        b'data: {"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":'
        + json.dumps({"role": "assistant", "tool_calls": [tool]}).encode()
        + b',"finish_reason":null}]}\n\n'
    )
    assert relayed_text([body]) is None
    a, b = Host("a", WORDS), Host("b", WORDS)

    class ToolThenCut(Upstreams):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "a":
                a.requests.append(json.loads(request.content))
                return httpx.Response(
                    200,
                    headers={"content-type": "text/event-stream"},
                    stream=_Body([body, b"cut"], None),
                )
            return await super().handle_async_request(request)

    app, ledger = make(ToolThenCut(a, b))
    result, record = await ask(app, ledger)
    _original_error(result, "stream_interrupted")
    assert b.requests == []
    assert record.status == "upstream_error"


@pytest.mark.anyio
async def test_no_entry_after_the_one_that_served_no_continuation() -> None:
    """Only further entries continue: one that serves as the last entry of its plan ends with
    the clean error event."""
    a, b = Host("a", WORDS), Host("b", WORDS, [Fault("cut", after=2)])
    app, ledger = make(Upstreams(a, b), chain=["b/model-b", "a/model-a"], prefill=("model-b",))
    result, _ = await ask(app, ledger)
    _original_error(result, "stream_interrupted")
    assert a.requests == []


# -- the property --------------------------------------------------------------------------------
@st.composite
def answers(draw: st.DrawFn) -> list[str]:
    words = draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=8))
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@given(
    words=answers(),
    data=st.data(),
    kind=st.sampled_from(["cut", "close", "stall"]),
    asked=st.booleans(),
)
@settings(deadline=None)
def test_the_clients_text_is_the_first_part_plus_the_continuation_exactly(
    words: list[str], data: st.DataObject, kind: str, asked: bool
) -> None:
    """Cut after any number of content events, in any chunking of either part: the client's
    text is the whole answer, the first part's text is the prefill the continuation got, and
    the client's events are the first part's events unchanged, then the continuation's."""
    after = data.draw(st.integers(0, len(words)), label="after")
    a, b = Host("a", words, [Fault(kind, after=after)]), Host("b", words)
    wire_a = b"".join(a.reply({"messages": MESSAGES})[1][:-1])
    a.requests.clear()
    a.faults = [Fault(kind, after=after)]
    a.chunking = [len(c) for c in data.draw(chunkings(wire_a), label="a's reads")] or None
    b.chunking = data.draw(st.none() | st.lists(st.integers(1, 64), min_size=1), label="b")
    app, ledger = make(Upstreams(a, b))
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    result, record = asyncio.run(ask(app, ledger, **extra))
    chunks, data_ = chunks_of(result.body)
    prefill = "".join(words[:after])
    answer = "".join(words)
    assert text_of(chunks) == answer
    assert result.body.startswith(wire_a)  # the first part's bytes, unchanged
    (continued,) = b.requests
    if prefill:
        assert continued["messages"][-1] == {"role": "assistant", "content": prefill}
    else:  # nothing to prefill: the original request
        assert continued["messages"] == MESSAGES
    assert data_.count("[DONE]") == 1
    assert data_[-1] == "[DONE]"
    assert record.status == "success"


def test_rewrite_drops_the_role_and_empty_chunks_and_keeps_the_rest() -> None:
    head = Relayed("", "first", 5, "m1")
    events = (
        b'data: {"id":"x","created":9,"model":"m2","choices":[{"index":0,"delta":'
        b'{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}\n\n'
        b": a comment\n\n"
        b'data: {"id":"x","created":9,"model":"m2","choices":[{"index":0,"delta":'
        b'{"content":"hi"},"finish_reason":null}]}\n\n'
        b'data: {"id":"x","created":9,"model":"m2","choices":[],"usage":{"prompt_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    out = rewrite_events(events, head, strip_usage=True)
    assert out == (
        b'data: {"id":"first","created":5,"model":"m1","choices":[{"index":0,"delta":'
        b'{"content":"hi"},"finish_reason":null}]}\n\n'
        b"data: [DONE]\n\n"
    )
    kept = rewrite_events(events, head, strip_usage=False)
    assert b'"choices":[],"usage":{"prompt_tokens":1}' in kept


@pytest.mark.anyio
async def test_the_openai_client_reads_a_continued_stream_as_one_answer() -> None:
    a, b = Host("a", WORDS, [Fault("cut", after=4)]), Host("b", WORDS)
    app, ledger = make(Upstreams(a, b))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app))
    client = openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key="sk-any", http_client=http, max_retries=0
    )
    async with client:
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Tell me"}], stream=True
        )
        chunks = [chunk async for chunk in stream]  # no exception
    await app.shutdown()
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(WORDS)
    assert {(c.id, c.model) for c in chunks} == {("chatcmpl-a", "model-a")}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    (record,) = ledger.records.values()
    assert record.status == "success"
    assert [x["entry"] for x in record.attempts] == ["a/model-a", "b/model-b"]
