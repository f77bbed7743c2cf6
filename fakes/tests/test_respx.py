"""Routing respx-mocked httpx traffic to a fake: :mod:`waterfall_fakes.respx`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import respx
from respx.models import AllMockedAssertionError

from waterfall_fakes import FakeProvider, FakeServer, Reply
from waterfall_fakes.catalog import count_prompt_tokens, reply_words
from waterfall_fakes.respx import OPENAI_BASE_URL, ProviderSideEffect, mock_provider

CHAT = OPENAI_BASE_URL + "/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "two words"}]
PROMPT_TOKENS = count_prompt_tokens(MESSAGES)


def request_body(stream: bool = False, model: str = "fake-small") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def twin(fake: FakeProvider, number: int = 0) -> Reply:
    """What a fresh copy of ``fake`` answers to its request ``number`` (without behaviours)."""
    rec = fake.calls()[number]
    return FakeProvider(reply_words=fake.config.reply_words).handle(
        rec.method, rec.path, {}, rec.body
    )


def text(fake: FakeProvider, number: int = 0) -> str:
    body = fake.calls()[number].body
    return " ".join(reply_words(0, number, 0, body, fake.config.reply_words))


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(reply_words=4)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


# -- sync clients -------------------------------------------------------------------------------
def test_chat_through_a_mocked_sync_client(router: respx.MockRouter, fake: FakeProvider) -> None:
    route = mock_provider(router, fake)
    with httpx.Client() as client:
        reply = client.post(CHAT, json=request_body())
    assert reply.status_code == 200
    assert reply.headers["x-fake-name"] == "fake"
    data = reply.json()
    assert data["choices"][0]["message"]["content"] == text(fake)
    assert data["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 4,
        "total_tokens": PROMPT_TOKENS + 4,
    }
    assert route.call_count == 1
    assert route.calls.last.request.url == CHAT
    assert [(r.method, r.path) for r in fake.requests] == [("POST", "/v1/chat/completions")]


def test_sync_stream_keeps_the_scripted_chunk_boundaries(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    mock_provider(router, fake)
    headers = {"x-fake-behaviour": "chunking:at=1|7|8|200"}
    with (
        httpx.Client() as client,
        client.stream("POST", CHAT, json=request_body(stream=True), headers=headers) as reply,
    ):
        chunks = list(reply.iter_raw())
    whole = twin(fake).body
    assert [len(c) for c in chunks] == [1, 6, 1, 192, len(whole) - 200]
    assert b"".join(chunks) == whole
    assert chunks[0] == b"d"


def test_natural_chunks_are_one_event_each(router: respx.MockRouter, fake: FakeProvider) -> None:
    mock_provider(router, fake)
    with (
        httpx.Client() as client,
        client.stream("POST", CHAT, json=request_body(stream=True)) as reply,
    ):
        chunks = list(reply.iter_raw())
    assert chunks == list(twin(fake).chunks)
    assert len(chunks) == 1 + 4 + 1 + 1 + 1  # role, words, finish, usage, [DONE]
    assert chunks[-1] == b"data: [DONE]\n\n"
    usage = json.loads(chunks[-2].removeprefix(b"data: "))["usage"]
    assert usage["total_tokens"] == PROMPT_TOKENS + 4


@pytest.mark.parametrize(
    ("dialect", "header", "value"),
    [("retry-after", "retry-after", "3"), ("retry-after-ms", "retry-after-ms", "2500")],
)
def test_429(
    router: respx.MockRouter, fake: FakeProvider, dialect: str, header: str, value: str
) -> None:
    route = mock_provider(router, fake)
    spec = f"rate_limit:dialect={dialect},seconds=2.5"
    with httpx.Client() as client:
        reply = client.post(CHAT, json=request_body(), headers={"x-fake-behaviour": spec})
    assert reply.status_code == 429
    assert reply.headers[header] == value
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert route.calls.last.response.status_code == 429
    assert [r.status for r in fake.requests] == [429]


def test_scripted_faults_advance_request_by_request(router: respx.MockRouter) -> None:
    fake = FakeProvider(script=["rate_limit", "status:code=503", "ok"])
    route = mock_provider(router, fake)
    with httpx.Client() as client:
        statuses = [client.post(CHAT, json=request_body()).status_code for _ in range(4)]
    assert statuses == [429, 503, 200, 200]
    assert route.call_count == 4


def test_models_and_wrong_method(router: respx.MockRouter, fake: FakeProvider) -> None:
    mock_provider(router, fake)
    with httpx.Client(base_url=OPENAI_BASE_URL) as client:
        models = client.get("/models").json()
        wrong = client.get("/chat/completions")
        missing = client.post("/chat/completions", json=request_body(model="nope"))
    assert [m["id"] for m in models["data"]] == ["fake-small", "fake-medium", "fake-large"]
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")


# -- timing -------------------------------------------------------------------------------------
def test_hang_past_the_timeout_raises_read_timeout_at_once(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    route = mock_provider(router, fake)
    with httpx.Client(timeout=30.0) as client, pytest.raises(httpx.ReadTimeout) as caught:
        client.post(CHAT, json=request_body(), headers={"x-fake-behaviour": "hang"})
    assert str(caught.value) == "timed out waiting for the response headers"
    assert route.call_count == 1
    assert not route.calls.last.has_response
    assert len(fake.requests) == 1


def test_short_hang_delays_the_body_not_the_headers(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    mock_provider(router, fake)
    spec = "hang:seconds=0.05; slow_chunks:seconds=0.01"
    with httpx.Client(timeout=1.0) as client:
        reply = client.post(CHAT, json=request_body(), headers={"x-fake-behaviour": spec})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == text(fake)


def test_slow_chunk_past_the_timeout_stops_the_body(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    mock_provider(router, fake)
    spec = "slow_chunks:seconds=60"
    got: list[bytes] = []
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream(
            "POST", CHAT, json=request_body(stream=True), headers={"x-fake-behaviour": spec}
        ) as reply,
        pytest.raises(httpx.ReadTimeout),
    ):
        got.extend(reply.iter_raw())
    assert got == [twin(fake).chunks[0]]


def test_cut_raises_remote_protocol_error_after_the_exact_bytes(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    mock_provider(router, fake)
    got: list[bytes] = []
    headers = {"x-fake-behaviour": "cut:bytes=300; chunking:size=128"}
    with (
        httpx.Client() as client,
        client.stream("POST", CHAT, json=request_body(stream=True), headers=headers) as reply,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        got.extend(reply.iter_raw())
    assert [len(c) for c in got] == [128, 128, 44]
    assert b"".join(got) == twin(fake).body[:300]


# -- async clients ------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("using", ["httpcore", "httpx"])
async def test_async_stream_chunks_and_429(fake: FakeProvider, using: str) -> None:
    async with respx.mock(using=using) as router:
        route = mock_provider(router, fake)
        headers = {"x-fake-behaviour": "chunking:size=16; slow_chunks:seconds=0.001"}
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST", CHAT, json=request_body(stream=True), headers=headers
            ) as reply:
                chunks = [c async for c in reply.aiter_raw()]
            limited = await client.post(
                CHAT, json=request_body(), headers={"x-fake-behaviour": "rate_limit:dialect=openai"}
            )
    whole = twin(fake).body
    assert b"".join(chunks) == whole
    assert len(chunks) == -(-len(whole) // 16)
    assert {len(c) for c in chunks[:-1]} == {16}
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-reset-requests"] == "1s"
    assert route.call_count == 2


@pytest.mark.anyio
async def test_async_timeouts(router: respx.MockRouter, fake: FakeProvider) -> None:
    mock_provider(router, fake)
    async with httpx.AsyncClient(timeout=5.0) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=request_body(), headers={"x-fake-behaviour": "hang"})
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                CHAT, json=request_body(), headers={"x-fake-behaviour": "slow_first_byte:seconds=9"}
            )
        ok = await client.post(
            CHAT, json=request_body(), headers={"x-fake-behaviour": "slow_first_byte:seconds=0.01"}
        )
    assert ok.json()["choices"][0]["message"]["content"] == text(fake, 2)


# -- the router API -----------------------------------------------------------------------------
def test_assert_all_called(fake: FakeProvider) -> None:
    with pytest.raises(AssertionError, match="not called"), respx.mock(assert_all_called=True) as m:
        mock_provider(m, fake, name="fake")
    with respx.mock(assert_all_called=True) as m:
        route = mock_provider(m, fake, name="fake")
        httpx.get(OPENAI_BASE_URL + "/models")
        m.assert_all_called()
        assert m["fake"] is route
    assert route.called


def test_base_url_maps_onto_the_fakes_v1(router: respx.MockRouter, fake: FakeProvider) -> None:
    route = mock_provider(router, fake, "https://openrouter.ai/api/v1")
    with httpx.Client() as client:
        reply = client.post("https://openrouter.ai/api/v1/chat/completions", json=request_body())
        models = client.get("https://openrouter.ai/api/v1/models")
        for url in (
            "https://openrouter.ai/api/v10/models",
            "https://openrouter.ai/v1/models",
            "http://openrouter.ai/api/v1/models",
            "https://openrouter.ai:8443/api/v1/models",
            "https://api.openai.com/v1/models",
        ):
            with pytest.raises(AllMockedAssertionError):
                client.get(url)
    assert (reply.status_code, models.status_code) == (200, 200)
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
    assert route.call_count == 2


def test_explicit_port_and_root_base_url(router: respx.MockRouter, fake: FakeProvider) -> None:
    mock_provider(router, fake, "http://localhost:8080")
    with httpx.Client() as client:
        assert client.get("http://localhost:8080/models").status_code == 200
        assert client.get("http://localhost:8080/health").status_code == 404
        with pytest.raises(AllMockedAssertionError):
            client.get("http://localhost/models")
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/health"]


def test_earlier_routes_win_and_router_base_url_is_ignored(fake: FakeProvider) -> None:
    with respx.mock(base_url="https://elsewhere.test") as router:
        canned = router.get("/v1/models") % 503
        own = router.get(OPENAI_BASE_URL + "/models") % 418
        route = mock_provider(router, fake)
        with httpx.Client() as client:
            assert client.get("https://elsewhere.test/v1/models").status_code == 503
            assert client.get(OPENAI_BASE_URL + "/models").status_code == 418
            assert client.post(CHAT, json=request_body()).status_code == 200
    assert (canned.call_count, own.call_count, route.call_count) == (1, 1, 1)


def test_side_effect_on_a_route_of_your_own(router: respx.MockRouter, fake: FakeProvider) -> None:
    effect = ProviderSideEffect(fake)
    router.get(url__regex=r"^https://api\.openai\.com/(?P<what>health)$").mock(side_effect=effect)
    router.post(CHAT).mock(side_effect=effect)
    with httpx.Client() as client:
        health = client.get("https://api.openai.com/health")
        chat = client.post(CHAT, json=request_body())
    assert health.json() == {"status": "ok", "name": "fake"}
    assert chat.status_code == 200
    assert [r.path for r in fake.requests] == ["/health", "/v1/chat/completions"]
    assert repr(effect) == f"ProviderSideEffect({fake!r}, base_url='https://api.openai.com/v1')"


def test_a_plain_router_as_a_mock_transport(fake: FakeProvider) -> None:
    router = respx.Router(assert_all_mocked=True)
    mock_provider(router, fake)
    transport = httpx.MockTransport(router.handler)
    with httpx.Client(transport=transport) as client:
        reply = client.post(CHAT, json=request_body())
    assert reply.json()["usage"]["completion_tokens"] == 4
    router.assert_all_called()


@pytest.mark.parametrize("url", ["ftp://example.com/v1", "/v1", "api.openai.com/v1"])
def test_base_url_must_be_absolute_http(fake: FakeProvider, url: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        mock_provider(respx.Router(), fake, url)


def test_respx_mock_fixture(respx_mock: respx.MockRouter, fake: FakeProvider) -> None:
    mock_provider(respx_mock, fake)
    assert httpx.post(CHAT, json=request_body()).json()["usage"]["completion_tokens"] == 4


# -- the openai client on a legacy httpx client -------------------------------------------------
# openai 3.x runs on httpx2, which respx does not patch; but it still accepts an ``httpx`` client
# as ``http_client`` at runtime (its type hints only admit httpx2's), and that one respx sees.
def test_openai_client_on_httpx_is_routed(router: respx.MockRouter, fake: FakeProvider) -> None:
    route = mock_provider(router, fake)
    client = openai.OpenAI(
        base_url=OPENAI_BASE_URL,
        api_key="x",
        max_retries=0,
        http_client=httpx.Client(),  # type: ignore[arg-type]
    )
    with client:
        completion = client.chat.completions.create(model="fake-small", messages=MESSAGES)
        stream = client.chat.completions.create(
            model="fake-small",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-behaviour": "chunking:size=1"},
        )
        chunks = list(stream)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="fake-small",
                messages=MESSAGES,
                extra_headers={"x-fake-behaviour": "rate_limit"},
            )
    assert completion.choices[0].message.content == text(fake, 0)
    assert completion.usage is not None
    assert completion.usage.total_tokens == PROMPT_TOKENS + 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text(fake, 1)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert route.call_count == 3


@pytest.mark.anyio
async def test_async_openai_client_on_httpx_is_routed(
    router: respx.MockRouter, fake: FakeProvider
) -> None:
    mock_provider(router, fake)
    async with openai.AsyncOpenAI(
        base_url=OPENAI_BASE_URL,
        api_key="x",
        max_retries=0,
        timeout=5.0,
        http_client=httpx.AsyncClient(),  # type: ignore[arg-type]
    ) as client:
        completion = await client.chat.completions.create(model="fake-small", messages=MESSAGES)
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model="fake-small", messages=MESSAGES, extra_headers={"x-fake-behaviour": "hang"}
            )
    assert completion.choices[0].message.content == text(fake, 0)


@pytest.mark.loopback
def test_openai_default_client_is_not_seen_by_respx(fake: FakeProvider) -> None:
    """openai 3.x talks through httpx2 (and httpcore2), which respx does not patch."""
    other = FakeProvider(name="other")
    with FakeServer(fake) as server, respx.mock(assert_all_called=False) as router:
        route = mock_provider(router, other, server.url)
        with openai.OpenAI(base_url=server.url, api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="fake-small", messages=MESSAGES)
    assert route.call_count == 0
    assert (len(fake.requests), len(other.requests)) == (1, 0)
