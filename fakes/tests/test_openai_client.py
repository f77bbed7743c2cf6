"""The official ``openai`` client (3.x, on ``httpx2``) against a loopback fake, fault by fault.

These tests document how a real client reacts to each scripted fault: which exception it raises,
whether it retries and how long it waits, and what a broken stream looks like from its side.
Every expectation here was found by running the client, then pinned exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import openai._base_client as base_client
import pytest

from waterfall_fakes import FakeProvider, FakeServer, Reply
from waterfall_fakes.catalog import count_prompt_tokens, reply_words

pytestmark = pytest.mark.loopback

NOW = 1_700_000_000.0
MODEL = "fake-small"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in five words"}]
PROMPT_TOKENS = count_prompt_tokens(MESSAGES)
WORDS = 12  # a fake's default reply length, one completion token per word


def clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(FakeProvider(clock=clock)) as running:
        yield running


@pytest.fixture
def fake(server: FakeServer) -> FakeProvider:
    server.provider.reset()
    return server.provider


@pytest.fixture
def make_client(server: FakeServer, fake: FakeProvider) -> Iterator[Callable[..., openai.OpenAI]]:
    clients: list[openai.OpenAI] = []

    def make(url: str = server.url, **options: Any) -> openai.OpenAI:
        options = {"api_key": "x", "max_retries": 0, "timeout": 2.0, **options}
        clients.append(openai.OpenAI(base_url=url, **options))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return make_client()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    """Start a fake of its own (for scripts and keys, which live in the config)."""
    servers: list[FakeServer] = []

    def start(**config: Any) -> FakeServer:
        servers.append(FakeServer(FakeProvider(clock=clock, **config)).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the sync client's retry waits instead of sleeping; its clock reads ``NOW`` and its
    jitter is none (``random()`` is 0, so the backoff is exactly 0.5 s, 1 s, 2 s, ...)."""
    waits: list[float] = []
    monkeypatch.setattr(base_client, "time", SimpleNamespace(sleep=waits.append, time=clock))
    monkeypatch.setattr(base_client, "random", lambda: 0.0)
    return waits


def behaviour(spec: str) -> dict[str, str]:
    return {"x-fake-behaviour": spec}


def words(fake: FakeProvider, number: int = 0, count: int = WORDS) -> list[str]:
    """The reply words of the fake's chat request ``number`` (counted since the last reset)."""
    return reply_words(fake.config.seed, number, 0, fake.calls()[number].body, count)


def text(fake: FakeProvider, number: int = 0) -> str:
    return " ".join(words(fake, number))


def replay(fake: FakeProvider, path: str = "/v1/chat/completions", number: int = 0) -> Reply:
    """The reply a fresh twin of ``fake`` gives to request ``number`` (sent first after a reset),
    without its behaviour header."""
    rec = fake.calls(path)[number]
    return FakeProvider(clock=clock).handle(rec.method, rec.path, {}, rec.body)


def create(client: openai.OpenAI, spec: str | None = None, **params: Any) -> Any:
    headers = behaviour(spec) if spec else None
    return client.chat.completions.create(
        model=params.pop("model", MODEL), messages=MESSAGES, extra_headers=headers, **params
    )


def deltas(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- the happy path -----------------------------------------------------------------------------
def test_models_list_returns_the_fakes_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == ["fake-small", "fake-medium", "fake-large"]
    assert models[0].owned_by == "waterfall-fakes"
    assert models[0].created == 1_700_000_000
    extra = models[2].to_dict()
    assert extra["context_length"] == 128_000
    assert extra["pricing"] == {"prompt": "0.000005", "completion": "0.000015", "request": "0.0001"}


def test_chat_content_and_usage_exact(client: openai.OpenAI, fake: FakeProvider) -> None:
    completion = create(client)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == text(fake)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == PROMPT_TOKENS == 8
    assert completion.usage.completion_tokens == WORDS
    assert completion.usage.total_tokens == PROMPT_TOKENS + WORDS
    assert completion._request_id == "req_" + completion.id.removeprefix("chatcmpl-")
    sent = fake.calls()[0]
    assert sent.headers["authorization"] == "Bearer x"
    assert sent.headers["x-stainless-retry-count"] == "0"
    assert sent.json == {"model": MODEL, "messages": MESSAGES}


def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    completion = create(client, max_tokens=3)
    assert completion.choices[0].message.content == " ".join(words(fake, count=3))
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stream_without_include_usage_has_no_usage(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    chunks = list(create(client, stream=True))
    assert len(chunks) == 1 + WORDS + 1  # role, one chunk per word, finish
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert deltas(chunks) == text(fake)


def test_stream_with_include_usage_ends_with_a_usage_only_chunk(
    client: openai.OpenAI, fake: FakeProvider
) -> None:
    stream = create(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len(chunks) == 1 + WORDS + 1 + 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        PROMPT_TOKENS,
        WORDS,
        PROMPT_TOKENS + WORDS,
    )
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert deltas(chunks) == text(fake)
    assert stream.response.is_closed


def test_embeddings(client: openai.OpenAI, fake: FakeProvider) -> None:
    result = client.embeddings.create(model=MODEL, input=["a b", "c"])
    # The client asks for base64 unless told otherwise, and the fake answers base64 (float32) as
    # the real service does; the values are exact in float32, so they equal the float answer.
    assert fake.calls("/v1/embeddings")[0].json["encoding_format"] == "base64"
    floats = FakeProvider().handle(
        "POST", "/v1/embeddings", {}, json.dumps({"model": MODEL, "input": ["a b", "c"]}).encode()
    )
    expected = json.loads(floats.body)
    assert [e.embedding for e in result.data] == [d["embedding"] for d in expected["data"]]
    assert [len(e.embedding) for e in result.data] == [16, 16]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)


# -- error statuses -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dialect", "header", "value"),
    [
        ("retry-after", "retry-after", "2"),
        ("retry-after-ms", "retry-after-ms", "2000"),
        ("retry-after-date", "retry-after", formatdate(NOW + 2, usegmt=True)),
        ("openai", "x-ratelimit-reset-requests", "2s"),
        ("openrouter", "x-ratelimit-reset", "1700000002000"),
        ("none", "retry-after", None),
    ],
)
def test_429_is_a_rate_limit_error_in_every_dialect(
    client: openai.OpenAI, dialect: str, header: str, value: str | None
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        create(client, f"rate_limit:dialect={dialect},seconds=2")
    err = caught.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.message == "Error code: 429 - Rate limit reached. Please try again in 2.0s."
    assert err.response.headers.get(header) == value


@pytest.mark.parametrize(
    ("spec", "model", "kind", "status", "code", "retried"),
    [
        ("status:code=400", MODEL, openai.BadRequestError, 400, "invalid_request", False),
        ("status:code=401", MODEL, openai.AuthenticationError, 401, "invalid_api_key", False),
        ("status:code=403", MODEL, openai.PermissionDeniedError, 403, "forbidden", False),
        (None, "no-such-model", openai.NotFoundError, 404, "model_not_found", False),
        ("status:code=408", MODEL, openai.APIStatusError, 408, "timeout", True),
        ("status:code=413", MODEL, openai.APIStatusError, 413, "request_too_large", False),
        ("status:code=422", MODEL, openai.UnprocessableEntityError, 422, "unprocessable", False),
        ("status:code=500", MODEL, openai.InternalServerError, 500, "server_error", True),
        ("status:code=502", MODEL, openai.InternalServerError, 502, "bad_gateway", True),
        ("status:code=503", MODEL, openai.InternalServerError, 503, "overloaded", True),
        ("status:code=504", MODEL, openai.InternalServerError, 504, "gateway_timeout", True),
        ("insufficient_balance", MODEL, openai.APIStatusError, 402, "insufficient_balance", False),
    ],
)
def test_error_statuses_map_to_the_sdk_exceptions_and_retries(
    make_client: Callable[..., openai.OpenAI],
    fake: FakeProvider,
    sleeps: list[float],
    spec: str | None,
    model: str,
    kind: type[openai.APIStatusError],
    status: int,
    code: str,
    retried: bool,
) -> None:
    client = make_client(max_retries=1)
    with pytest.raises(openai.APIStatusError) as caught:
        create(client, spec, model=model)
    assert type(caught.value) is kind
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert len(fake.calls()) == (2 if retried else 1)
    assert sleeps == ([0.5] if retried else [])


def test_402_keeps_the_routstr_details(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        create(client, "insufficient_balance")
    assert caught.value.type == "insufficient_quota"
    assert caught.value.body == {
        "message": "Insufficient balance. Please top up your account.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_balance",
        "details": {"required_msats": 1000, "available_msats": 0},
    }


def test_wrong_api_key_is_an_authentication_error(
    serve: Callable[..., FakeServer], make_client: Callable[..., openai.OpenAI]
) -> None:
    server = serve(api_key="sk-right")
    with pytest.raises(openai.AuthenticationError) as caught:
        create(make_client(server.url, api_key="sk-wrong"))
    assert caught.value.message == "Error code: 401 - Incorrect API key provided."
    right = create(make_client(server.url, api_key="sk-right"))
    assert right.usage.completion_tokens == WORDS


# -- retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "waits"),
    [
        # retry-after-ms wins and is honoured to the millisecond
        ("rate_limit:dialect=retry-after-ms,seconds=0.25", [0.25, 0.25]),
        # retry-after in seconds; the fake rounds up to whole seconds
        ("rate_limit:dialect=retry-after,seconds=3", [3.0, 3.0]),
        ("rate_limit:dialect=retry-after,seconds=0.2", [1.0, 1.0]),
        # an HTTP date, counted from the client's clock
        ("rate_limit:dialect=retry-after-date,seconds=3", [3.0, 3.0]),
        # "Retry-After: 0" is not a wait: the client backs off exponentially instead
        ("rate_limit:dialect=retry-after,seconds=0", [0.5, 1.0]),
        # the client ignores x-ratelimit-reset-* (both styles) and backs off exponentially
        ("rate_limit:dialect=openai,seconds=3", [0.5, 1.0]),
        ("rate_limit:dialect=openrouter,seconds=3", [0.5, 1.0]),
        ("rate_limit:dialect=none", [0.5, 1.0]),
    ],
)
def test_retry_waits_follow_the_429_headers(
    make_client: Callable[..., openai.OpenAI],
    fake: FakeProvider,
    sleeps: list[float],
    spec: str,
    waits: list[float],
) -> None:
    client = make_client(max_retries=2)
    with pytest.raises(openai.RateLimitError):
        create(client, spec)
    assert sleeps == waits
    assert [r.headers["x-stainless-retry-count"] for r in fake.calls()] == ["0", "1", "2"]


def test_retry_after_over_two_minutes_is_not_retried(
    make_client: Callable[..., openai.OpenAI], fake: FakeProvider, sleeps: list[float]
) -> None:
    client = make_client(max_retries=2)
    with pytest.raises(openai.RateLimitError):
        create(client, "rate_limit:dialect=retry-after,seconds=121")
    assert sleeps == []
    assert len(fake.calls()) == 1


def test_retries_after_429s_then_succeeds_with_exact_usage(
    serve: Callable[..., FakeServer], make_client: Callable[..., openai.OpenAI]
) -> None:
    limited = "rate_limit:dialect=retry-after-ms,seconds=0.01"
    server = serve(script=[limited, limited])
    completion = create(make_client(server.url, max_retries=2))
    fake = server.provider
    assert [r.status for r in fake.calls()] == [429, 429, 200]
    assert [r.headers["x-stainless-retry-count"] for r in fake.calls()] == ["0", "1", "2"]
    assert completion.choices[0].message.content == text(fake, number=2)
    assert completion.usage.completion_tokens == WORDS


# -- timeouts and connections -------------------------------------------------------------------
def test_hang_is_an_api_timeout_error_and_is_retried(
    make_client: Callable[..., openai.OpenAI], fake: FakeProvider, sleeps: list[float]
) -> None:
    client = make_client(max_retries=1, timeout=0.2)
    with pytest.raises(openai.APITimeoutError) as caught:
        create(client, "hang")
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)
    assert len(fake.calls()) == 2
    assert sleeps == [0.5]


def test_slow_first_byte_times_out_before_create_returns(
    make_client: Callable[..., openai.OpenAI],
) -> None:
    client = make_client(timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        create(client, "slow_first_byte:seconds=2")


def test_slow_chunks_time_out_inside_the_stream(
    make_client: Callable[..., openai.OpenAI],
) -> None:
    stream = create(make_client(timeout=0.2), "slow_chunks:seconds=1", stream=True)
    got = []
    with pytest.raises(openai.APITimeoutError):
        got.extend(stream)
    assert len(got) == 1  # the first chunk comes at once, the second never in time


def test_cut_body_is_a_connection_error_and_is_retried(
    make_client: Callable[..., openai.OpenAI], fake: FakeProvider, sleeps: list[float]
) -> None:
    client = make_client(max_retries=1)
    with pytest.raises(openai.APIConnectionError) as caught:
        create(client, "cut:bytes=10")
    assert type(caught.value) is openai.APIConnectionError
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert len(fake.calls()) == 2
    assert sleeps == [0.5]


def test_cut_mid_stream_raises_from_the_iterator(client: openai.OpenAI, fake: FakeProvider) -> None:
    first = len(FakeProvider().handle("POST", "/v1/chat/completions", {}, _stream_body()).chunks[0])
    stream = create(client, f"cut:bytes={first + 10}", stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError) as caught:
        got.extend(stream)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert len(got) == 1
    assert got[0].choices[0].delta.role == "assistant"


def _stream_body() -> bytes:
    return json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()


# -- broken streams -----------------------------------------------------------------------------
def test_truncated_stream_just_ends_early(client: openai.OpenAI, fake: FakeProvider) -> None:
    stream = create(client, "truncate:events=3", stream=True)
    chunks = list(stream)  # no error: the client does not insist on [DONE]
    assert len(chunks) == 3
    assert deltas(chunks) == " ".join(words(fake)[:2])
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None]
    assert stream.response.is_closed


def test_missing_done_goes_unnoticed(client: openai.OpenAI, fake: FakeProvider) -> None:
    chunks = list(create(client, "no_done", stream=True))
    assert len(chunks) == 1 + WORDS + 1
    assert deltas(chunks) == text(fake)


def test_double_done_stops_at_the_first(client: openai.OpenAI, fake: FakeProvider) -> None:
    chunks = list(create(client, "double_done", stream=True))
    assert len(chunks) == 1 + WORDS + 1
    assert deltas(chunks) == text(fake)


@pytest.mark.parametrize("done", ["false", "true"])
def test_error_event_is_an_api_error_from_the_iterator(client: openai.OpenAI, done: str) -> None:
    stream = create(client, f"error_event:after=2,code=overloaded,done={done}", stream=True)
    got = []
    with pytest.raises(openai.APIError) as caught:
        got.extend(stream)
    err = caught.value
    assert type(err) is openai.APIError  # not an APIStatusError: the status was 200
    assert len(got) == 2
    assert err.message == "The server had an error while processing your request."
    assert (err.code, err.type) == ("overloaded", "server_error")
    assert err.body == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }


def test_malformed_event_escapes_as_a_json_decode_error(client: openai.OpenAI) -> None:
    stream = create(client, "malformed_event:after=2", stream=True)
    got = []
    with pytest.raises(json.JSONDecodeError) as caught:
        got.extend(stream)
    assert not isinstance(caught.value, openai.OpenAIError)
    assert len(got) == 2
    assert stream.response.is_closed


def test_big_event_parses(client: openai.OpenAI, fake: FakeProvider) -> None:
    chunks = list(create(client, "big_event:size=70000,after=1", stream=True))
    assert len(chunks) == 1 + WORDS + 1
    assert deltas(chunks) == text(fake)
    assert len(chunks[1].to_dict()["x_padding"]) > 30_000


@pytest.mark.parametrize(
    "spec",
    [
        "line_endings:style=crlf",
        "line_endings:style=cr",
        "keepalive",
        "keepalive:every=3,text=ping",
        "fields",
        "fields:event=message,ids=false; keepalive",
        "chunking:size=1",
        "chunking:size=1; line_endings:style=crlf",
        "chunking:seed=7,max_size=5; line_endings:style=cr; keepalive",
    ],
)
def test_stream_framing_variants_parse(
    client: openai.OpenAI, fake: FakeProvider, spec: str
) -> None:
    chunks = list(create(client, spec, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) == 1 + WORDS + 1 + 1
    assert deltas(chunks) == text(fake)  # multi-byte characters intact across any boundary
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + WORDS


def test_keepalive_after_an_event_id_breaks_the_sdk_decoder(client: openai.OpenAI) -> None:
    """A deviation of the SDK, not of the fake: its SSE decoder keeps the last event id (as the
    spec says) and then dispatches the blank line after a ``: comment`` as an event with empty
    data (the spec says not to), which ``json.loads`` rejects."""
    stream = create(client, "fields; keepalive", stream=True)
    got = []
    with pytest.raises(json.JSONDecodeError) as caught:
        got.extend(stream)
    assert caught.value.msg == "Expecting value"
    assert caught.value.doc == ""
    assert len(got) == 1  # the comment before the first event is fine, the one after is not


# -- the async client ---------------------------------------------------------------------------
@pytest.fixture
async def aclient(server: FakeServer, fake: FakeProvider) -> Any:
    async with openai.AsyncOpenAI(
        base_url=server.url, api_key="x", max_retries=0, timeout=2.0
    ) as c:
        yield c


async def acreate(client: openai.AsyncOpenAI, spec: str | None = None, **params: Any) -> Any:
    headers = behaviour(spec) if spec else None
    return await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers=headers, **params
    )


@pytest.mark.anyio
async def test_async_chat_and_stream_with_usage(
    aclient: openai.AsyncOpenAI, fake: FakeProvider
) -> None:
    completion = await acreate(aclient)
    assert completion.choices[0].message.content == text(fake, 0)
    assert completion.usage.total_tokens == PROMPT_TOKENS + WORDS
    stream = await acreate(
        aclient, "chunking:size=1", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert len(chunks) == 1 + WORDS + 1 + 1
    assert deltas(chunks) == text(fake, 1)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == WORDS
    assert fake.calls()[1].headers["x-stainless-async"] == "async:asyncio"


@pytest.mark.anyio
async def test_async_errors(aclient: openai.AsyncOpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.RateLimitError):
        await acreate(aclient, "rate_limit:dialect=retry-after-ms")
    with pytest.raises(openai.APIStatusError) as caught:
        await acreate(aclient, "insufficient_balance")
    assert caught.value.status_code == 402
    with pytest.raises(openai.APITimeoutError):
        await acreate(aclient, "hang", timeout=0.2)
    got = []
    stream = await acreate(aclient, "error_event:after=3", stream=True)
    with pytest.raises(openai.APIError) as error:
        got.extend([c async for c in stream])
    assert type(error.value) is openai.APIError
    stream = await acreate(aclient, "cut:bytes=700", stream=True)
    with pytest.raises(openai.APIConnectionError):
        got.extend([c async for c in stream])
    stream = await acreate(aclient, "truncate:events=2", stream=True)
    assert len([c async for c in stream]) == 2
    assert [r.status for r in fake.calls()] == [429, 402, 200, 200, 200, 200]


@pytest.mark.anyio
async def test_async_retries_after_429s(serve: Callable[..., FakeServer]) -> None:
    limited = "rate_limit:dialect=retry-after-ms,seconds=0.01"
    server = serve(script=[limited, limited])
    async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=2) as client:
        completion = await acreate(client)
    fake = server.provider
    assert [r.status for r in fake.calls()] == [429, 429, 200]
    assert completion.choices[0].message.content == text(fake, number=2)


def test_legacy_completions(client: openai.OpenAI, fake: FakeProvider) -> None:
    result = client.completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert result.object == "text_completion"
    assert len(result.choices[0].text.split(" ")) == 3
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)
    stream = client.completions.create(model=MODEL, prompt="one two", max_tokens=3, stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert len("".join(pieces).split(" ")) == 3
    assert [r.path for r in fake.requests] == ["/v1/completions"] * 2
