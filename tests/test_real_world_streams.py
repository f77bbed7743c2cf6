"""Stream shapes real providers send, byte for byte, through the usage observer and the router.

Each sample in ``tests/data/streams/`` is written by hand in the shape one provider documents or
public client test fixtures record (the source is noted next to each spec below). For each one:

- the observer's result (tokens, finish reason per choice, model, id, error, complete) is exact,
  whether the stream is fed whole, byte by byte, or in any chunking Hypothesis draws;
- the router relays it byte for byte when the client asked for usage, and minus exactly the
  usage-only chunk when the router injected ``stream_options.include_usage`` itself (the upstream
  is a tiny httpx transport that answers with the sample's bytes, in the chunks given);
- the ledger record (:class:`MemoryLedger`) has the right status, tokens and cost;
- without its ``[DONE]``, a whole answer is relayed with the router's ``[DONE]`` instead.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_helpers import Result, call
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi import MemoryLedger, UsageRecord, WaterfallMiddleware
from waterfall_asgi.sse import SSEParser
from waterfall_asgi.usage import StreamObserver, UsageResult
from waterfall_fakes.strategies import chunkings

STREAMS = Path(__file__).parent / "data" / "streams"
PRICE = {"unit": "msat", "prompt": "1", "completion": "2"}  # cost = prompt + 2 x completion
MESSAGES = [{"role": "user", "content": "say something"}]


@dataclass(frozen=True)
class Sample:
    """One sample stream and everything it says."""

    name: str
    eol: bytes
    id: str | None
    model: str | None
    tokens: tuple[int | None, int | None, int | None]
    finish_reasons: dict[int, str]
    events: int
    comments: int = 0
    usage_marker: bytes | None = None
    """Bytes found only inside the usage-only event (``None``: the stream has none)."""
    error: dict[str, Any] | None = None
    complete: bool = True
    status: str = "success"
    ledger_error: str | None = None

    @property
    def raw(self) -> bytes:
        return _read(self.name)

    @property
    def cost(self) -> int | None:
        prompt, completion, _ = self.tokens
        if prompt is None or completion is None:
            return None
        return prompt + 2 * completion


@functools.cache
def _read(name: str) -> bytes:
    return (STREAMS / f"{name}.sse").read_bytes()


SAMPLES = [
    # OpenAI chat completions with stream_options.include_usage. "usage": null on every chunk and a
    # last usage-only chunk with "choices": [] before [DONE]: openai/openai-python,
    # types/chat/chat_completion_stream_options_param.py (include_usage); the "obfuscation" field
    # on delta events (include_obfuscation, on by default) and the field order (service_tier,
    # system_fingerprint, "refusal": null in the role delta, obfuscation on the usage-only chunk
    # too) as in the recorded cassettes of envoyproxy/ai-gateway (tests/internal/testopenai,
    # chat-streaming-detailed-usage). Raw multi-byte UTF-8 in the deltas, as OpenAI sends it.
    Sample(
        "openai_usage",
        b"\n",
        id="chatcmpl-C1wfR2kqZ7usageSample01",
        model="gpt-4o-mini-2024-07-18",
        tokens=(19, 9, 28),
        finish_reasons={0: "stop"},
        events=10,
        usage_marker=b'"choices":[],"usage":{',
    ),
    # OpenAI parallel tool calls: the first delta of each call carries index, id, type and name
    # with empty arguments, later deltas only argument fragments keyed by the call's index, then
    # finish_reason "tool_calls" (openai-python types/chat/chat_completion_chunk.py,
    # ChoiceDeltaToolCall); same envelope as above.
    Sample(
        "openai_tool_calls",
        b"\n",
        id="chatcmpl-C2tLq8vWn4toolsSample02",
        model="gpt-4.1-nano-2025-04-14",
        tokens=(82, 47, 129),
        finish_reasons={0: "tool_calls"},
        events=15,
        usage_marker=b'"choices":[],"usage":{',
    ),
    # OpenAI with n=2: each chunk carries one choice with its index, the choices interleave and
    # finish separately (here "stop" and "length"); one usage-only chunk counts them all
    # (openai-python ChatCompletionChunk.choices: "more than one element if n is greater than 1").
    Sample(
        "openai_n2",
        b"\n",
        id="chatcmpl-C3nTw0choicesSample03",
        model="gpt-4o-2024-08-06",
        tokens=(12, 9, 21),
        finish_reasons={0: "stop", 1: "length"},
        events=12,
        usage_marker=b'"choices":[],"usage":{',
    ),
    # OpenRouter: ": OPENROUTER PROCESSING" comments before and between events
    # (https://openrouter.ai/docs/api-reference/streaming); a "provider" field, the role in every
    # delta and "native_finish_reason" (field order as in a recorded OpenRouter stream); the last
    # chunk "choices": [] with usage carrying cost, is_byok, prompt_tokens_details (with
    # cache_write_tokens), cost_details and completion_tokens_details (as recorded in
    # underpass-ai/AXLR's OpenRouter stream test); numbers as JavaScript prints them.
    Sample(
        "openrouter_usage",
        b"\n",
        id="gen-1754380300-OrUsageSample0004Ab",
        model="openai/gpt-4o-mini",
        tokens=(14, 4, 18),
        finish_reasons={0: "stop"},
        events=6,
        comments=4,
        usage_marker=b'"choices":[],"usage":{',
    ),
    # OpenRouter's mid-stream error ("Handling errors during streaming" in the same docs page):
    # HTTP 200 already sent, so an event with an "error" object and a choice whose finish_reason
    # is "error"; then the stream ends, without [DONE].
    Sample(
        "openrouter_midstream_error",
        b"\n",
        id="gen-1754380400-OrErrorSample0005Cd",
        model="meta-llama/llama-3.3-70b-instruct",
        tokens=(None, None, None),
        finish_reasons={0: "error"},
        events=3,
        comments=2,
        error={"code": "server_error", "message": "Provider disconnected unexpectedly"},
        complete=False,
        status="upstream_error",
        ledger_error="error event: server_error",
    ),
    # OpenRouter with usage on the finishing chunk itself (choices not empty): seen with models
    # Google serves (finish_reason next to native_finish_reason "STOP"), as quoted from a real
    # stream in a public Rust client's tests. There is no usage-only chunk: nothing is removed.
    Sample(
        "openrouter_usage_on_finish_chunk",
        b"\n",
        id="gen-1754380500-OrFinishUsage0006Ef",
        model="google/gemini-2.5-flash",
        tokens=(8, 5, 13),
        finish_reasons={0: "stop"},
        events=4,
        comments=1,
    ),
    # Routstr (Routstr/routstr-core, routstr/upstream/base.py, handle_streaming_chat_completion):
    # comments dropped, CRLF normalised, every event re-serialised with Python's json.dumps
    # (", " and ": ", ASCII escapes), "provider" stamped "<provider type>:<upstream provider>",
    # "model" rewritten to the one requested; the usage chunk is held back and sent last with
    # inject_cost_metadata's extras (usage.cost, usage.cost_sats, usage.remaining_balance_msats,
    # metadata.routstr, a top-level "cost"), then [DONE]. It keeps event:/id:/retry: lines, but
    # chat-completion upstreams send none.
    Sample(
        "routstr",
        b"\n",
        id="gen-1754380600-RoutstrSample0007Gh",
        model="gpt-4o-mini",
        tokens=(9, 6, 15),
        finish_reasons={0: "stop"},
        events=6,
        usage_marker=b'"choices": [], "usage": {',
    ),
    # An OpenAI-compatible server built on sse-starlette that names and numbers its events
    # (sysid/sse-starlette, sse_starlette/event.py: CRLF separator by default; comment, id, event,
    # data, retry lines in that order; compact JSON; "ping" keep-alive comments).
    Sample(
        "sse_starlette_crlf",
        b"\r\n",
        id="chatcmpl-6f1d2c0e-88a1-4b7e-9c3a-5e2f0d7b1a94",
        model="qwen2.5-7b-instruct",
        tokens=(21, 3, 24),
        finish_reasons={0: "stop"},
        events=6,
        comments=1,
        usage_marker=b'"choices":[],"usage":{',
    ),
    # Azure OpenAI: a first chunk with empty choices, "id": "", "model": "", "object": "",
    # "created": 0 and prompt_filter_results; keys in alphabetical order; content_filter_results
    # in every choice (as captured in several public clients' tests, e.g. a .NET
    # SseChatStreamReaderTests "captured from gpt-4.1-mini", and Higress's note that the first
    # Azure chunk has an empty model).
    Sample(
        "azure_openai",
        b"\n",
        id="chatcmpl-C4azUreSample0009Ij",
        model="gpt-4o-2024-08-06",
        tokens=(11, 3, 14),
        finish_reasons={0: "stop"},
        events=7,
        usage_marker=b'"choices":[],"created":1754380800',
    ),
]
BY_NAME = {s.name: s for s in SAMPLES}
EACH = pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)


# -- helpers ----------------------------------------------------------------------------------
def observe(chunks: list[bytes]) -> UsageResult:
    observer = StreamObserver()
    for chunk in chunks:
        observer.feed(chunk)
    assert observer.result.failures == 0
    assert observer.result.oversized == 0
    return observer.result


def counts(result: UsageResult) -> dict[str, Any]:
    """What the observer says, apart from id and model."""
    return {
        "tokens": (result.prompt_tokens, result.completion_tokens, result.total_tokens),
        "finish_reasons": result.finish_reasons,
        "error": result.error,
        "complete": result.complete,
        "events": result.events,
    }


def expected_counts(sample: Sample) -> dict[str, Any]:
    return {
        "tokens": sample.tokens,
        "finish_reasons": sample.finish_reasons,
        "error": sample.error,
        "complete": sample.complete,
        "events": sample.events,
    }


def identity(result: UsageResult) -> tuple[str | None, str | None]:
    return result.id, result.model


def check_observed(sample: Sample, result: UsageResult) -> None:
    assert counts(result) == expected_counts(sample)
    assert identity(result) == (sample.id, sample.model)


def without_usage_event(sample: Sample) -> bytes:
    """The sample minus its usage-only event (from the start of its first line to the end of its
    blank line), found by its marker: what a client that did not ask for usage should get."""
    raw = sample.raw
    if sample.usage_marker is None:
        return raw
    assert raw.count(sample.usage_marker) == 1
    blank = sample.eol * 2
    at = raw.index(sample.usage_marker)
    before = raw.rfind(blank, 0, at)
    assert before >= 0
    start, end = before + len(blank), raw.index(blank, at) + len(blank)
    return raw[:start] + raw[end:]


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        pass


class Upstream(httpx.AsyncBaseTransport):
    """Answers each host with 200, ``text/event-stream`` and its chunks, exactly as given."""

    def __init__(self, bodies: Mapping[str, list[bytes]]) -> None:
        self.bodies = bodies
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.host, json.loads(request.content)))
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Body(self.bodies[request.url.host]),
        )


def make_app(upstream: Upstream) -> tuple[WaterfallMiddleware, MemoryLedger]:
    ledger = MemoryLedger()
    config = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "timeouts": {"first_byte": 5, "read": 5}}
            for h in ("a", "b")
        },
        "deployments": [{"provider": h, "model": "m", "price": PRICE} for h in ("a", "b")],
        "chains": {"waterfall": ["a/m", "b/m"]},
    }
    return WaterfallMiddleware(None, config, transport=upstream, ledger=ledger), ledger


async def relay(
    chunks: list[bytes], *, asked: bool, n: int | None = None
) -> tuple[Result, UsageRecord, Upstream]:
    """Send one streaming request for ``a/m`` whose upstream answers with ``chunks``."""
    upstream = Upstream({"a": chunks})
    app, ledger = make_app(upstream)
    body: dict[str, Any] = {"model": "a/m", "messages": MESSAGES, "stream": True}
    if n is not None:
        body["n"] = n
    if asked:
        body["stream_options"] = {"include_usage": True}
    try:
        result = await call(app, "POST", "/v1/chat/completions", body)
    finally:
        await app.shutdown()
    (record,) = ledger.records.values()
    return result, record, upstream


def check_relayed(
    sample: Sample, asked: bool, result: Result, record: UsageRecord, upstream: Upstream
) -> None:
    # upstream: usage always asked for (by the client, or injected by the router)
    ((host, sent),) = upstream.requests
    assert (host, sent["model"], sent["stream_options"]) == ("a", "m", {"include_usage": True})
    # the client: the sample unchanged, minus only the usage-only chunk the router asked for
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.finished
    relayed = sample.raw if asked else without_usage_event(sample)
    body = result.body
    assert body[: len(relayed)] == relayed
    tail = body[len(relayed) :]
    if sample.complete or sample.error is not None:  # (an upstream's error event says why)
        assert tail == b""
    else:  # the router's own clean end: one error event
        (event,) = SSEParser().feed(tail)
        assert json.loads(event.data)["error"]["code"] == "stream_incomplete"
    # the ledger
    assert (record.status, record.error) == (sample.status, sample.ledger_error)
    assert (record.provider, record.upstream_model, record.http_status) == ("a", "m", 200)
    assert record.stream
    tokens = (record.prompt_tokens, record.completion_tokens, record.total_tokens)
    assert tokens == sample.tokens
    assert (record.cost, record.cost_unit) == (
        (sample.cost, "msat") if sample.cost is not None else (None, None)
    )


# -- the samples themselves -------------------------------------------------------------------
@EACH
def test_the_sample_is_well_formed_and_as_written(sample: Sample) -> None:
    raw = sample.raw
    # line ends exactly as written (a CRLF file normalised by an editor or git would show here)
    if sample.eol == b"\r\n":
        assert raw.count(b"\r\n") == raw.count(b"\n") == raw.count(b"\r") > 0
    else:
        assert b"\r" not in raw
    assert raw.endswith(sample.eol * 2)
    assert not raw.endswith(sample.eol * 3)
    if sample.usage_marker is not None:
        assert raw.count(sample.usage_marker) == 1
    parser = SSEParser()
    events = parser.feed(raw)
    assert (len(events), parser.comments) == (sample.events, sample.comments)
    for event in events:
        assert event.data == "[DONE]" or isinstance(json.loads(event.data), dict)
    assert (events[-1].data == "[DONE]") == sample.complete


# -- the observer -----------------------------------------------------------------------------
@EACH
def test_the_observer_reads_the_whole_stream(sample: Sample) -> None:
    check_observed(sample, observe([sample.raw]))


@EACH
def test_the_observer_reads_it_byte_by_byte(sample: Sample) -> None:
    raw = sample.raw
    check_observed(sample, observe([raw[i : i + 1] for i in range(len(raw))]))


@EACH
@given(data=st.data())
def test_the_observer_reads_it_in_any_chunking(sample: Sample, data: st.DataObject) -> None:
    check_observed(sample, observe(data.draw(chunkings(sample.raw), label="chunks")))


def test_the_observer_takes_the_id_and_model_of_an_azure_stream() -> None:
    sample = BY_NAME["azure_openai"]
    assert identity(observe([sample.raw])) == (sample.id, sample.model)


# -- the router -------------------------------------------------------------------------------
@EACH
@pytest.mark.parametrize("asked", [True, False], ids=["client-asked", "router-injected"])
@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.anyio
async def test_the_router_relays_it_and_records_it(sample: Sample, asked: bool, split: str) -> None:
    raw = sample.raw
    chunks = [raw] if split == "whole" else [raw[i : i + 1] for i in range(len(raw))]
    check_relayed(sample, asked, *await relay(chunks, asked=asked))


@EACH
@given(data=st.data())
def test_the_router_relays_it_in_any_chunking(sample: Sample, data: st.DataObject) -> None:
    chunks = data.draw(chunkings(sample.raw, max_size=64), label="chunks")
    asked = data.draw(st.booleans(), label="asked")
    check_relayed(sample, asked, *asyncio.run(relay(chunks, asked=asked)))


def without_done(sample: Sample) -> bytes:
    """The sample as a provider that forgets the ``[DONE]`` sends it: up to the blank line
    before that event (its other lines go with it)."""
    raw = sample.raw
    blank = sample.eol * 2
    return raw[: raw.rindex(blank, 0, raw.rindex(b"data: [DONE]")) + len(blank)]


COMPLETE = [s for s in SAMPLES if s.complete]


@pytest.mark.parametrize(
    ("sample", "usage_chunk"),
    [(s, True) for s in COMPLETE] + [(s, False) for s in COMPLETE if s.usage_marker],
    ids=lambda v: v.name if isinstance(v, Sample) else ("with-usage" if v else "usage-lost"),
)
@pytest.mark.parametrize("asked", [True, False], ids=["client-asked", "router-injected"])
@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.anyio
async def test_without_its_done_a_whole_answer_gets_one_appended(
    sample: Sample, usage_chunk: bool, asked: bool, split: str
) -> None:
    """Each complete sample, less its ``[DONE]``: every choice finished and the usage came
    (the router asks for it upstream either way), so the client gets the sample with the
    router's ``[DONE]`` instead of the provider's and the record says success, with a note.
    Less its usage-only chunk too, it is an answer cut short: the error event ends it."""
    raw = without_done(sample)
    if not usage_chunk:
        raw = _cut_usage_event(raw, sample)
    chunks = [raw] if split == "whole" else [raw[i : i + 1] for i in range(len(raw))]
    n = len(sample.finish_reasons)
    result, record, _ = await relay(chunks, asked=asked, n=n if n > 1 else None)
    stripped = not asked and usage_chunk and sample.usage_marker is not None
    relayed = _cut_usage_event(raw, sample) if stripped else raw
    assert result.body.startswith(relayed)
    tail = result.body[len(relayed) :]
    tokens = (record.prompt_tokens, record.completion_tokens, record.total_tokens)
    if usage_chunk:
        assert tokens == sample.tokens
        assert tail == b"data: [DONE]\n\n"
        assert (record.status, record.error) == ("success", "upstream sent no [DONE]")
    else:
        assert tokens == (None, None, None)
        (event,) = SSEParser().feed(tail)
        assert json.loads(event.data)["error"]["code"] == "stream_incomplete"
        assert (record.status, record.error) == ("stream_incomplete", "no [DONE]")
    assert result.finished


def _cut_usage_event(raw: bytes, sample: Sample) -> bytes:
    """``raw`` (the sample, or a part of it) less its usage-only event, as
    :func:`without_usage_event` cuts it."""
    assert sample.usage_marker is not None
    blank = sample.eol * 2
    at = raw.index(sample.usage_marker)
    start = raw.rindex(blank, 0, at) + len(blank)
    return raw[:start] + raw[raw.index(blank, at) + len(blank) :]


@pytest.mark.anyio
async def test_an_openrouter_error_as_the_first_event_falls_through() -> None:
    error = BY_NAME["openrouter_midstream_error"].raw
    first_error = b": OPENROUTER PROCESSING\n\n" + error[error.rindex(b"data: ") :]
    good = BY_NAME["openai_usage"]
    upstream = Upstream({"a": [first_error], "b": [good.raw]})
    app, ledger = make_app(upstream)
    try:
        body = {"model": "waterfall", "messages": MESSAGES, "stream": True}
        result = await call(app, "POST", "/v1/chat/completions", body)
    finally:
        await app.shutdown()
    (record,) = ledger.records.values()
    # (a transient failure: retried once on a, which errs again, then b)
    assert [a["outcome"] for a in record.attempts] == ["retried", "error_event", "served"]
    assert (record.provider, record.status) == ("b", "success")
    assert result.body == without_usage_event(good)
