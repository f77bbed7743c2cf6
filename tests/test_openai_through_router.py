"""The official ``openai`` client, pointed at the router on a loopback uvicorn server.

The upstreams are loopback fakes that insist on their own provider keys, so every success also
proves that the router swapped the client's key for the provider's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from waterfall_asgi import MemoryLedger, UsageRecord
from waterfall_asgi.app import create_app
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeProvider, FakeServer, LoopbackServer, Reply

pytestmark = pytest.mark.loopback

CLIENT_KEYS = ["sk-client-one", "sk-client-two"]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something nice"}]
START = 1_700_000_000.0


class ManualClock:
    """Wall-clock seconds that move only when told to (shared by the router and a fake)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Stack:
    """Two loopback fakes and the router in front of them."""

    a: FakeProvider
    b: FakeProvider
    router: LoopbackServer

    def client(self, key: str = CLIENT_KEYS[0]) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router.url, api_key=key, max_retries=0, timeout=10)


def fake(name: str, *script: str, clock: ManualClock | None = None) -> FakeProvider:
    return FakeProvider(
        clock=clock if clock is not None else time.time,
        name=name,
        api_key=f"key-{name}",
        reply_words=5,
        script=list(script),
    )


def router_config(servers: dict[str, FakeServer]) -> dict[str, Any]:
    return {
        "providers": {
            name: {"base_url": s.url, "api_key": f"key-{name}"} for name, s in servers.items()
        },
        "chains": {"fast": ["a/fake-small", "b/fake-small"]},
        "client_keys": CLIENT_KEYS,
        "ledger": {"path": None},  # usage in memory: module-scoped servers outlive tmp dirs
    }


def start_stack(
    stack: ExitStack, a: FakeProvider, b: FakeProvider, clock: ManualClock | None = None
) -> Stack:
    servers = {"a": stack.enter_context(FakeServer(a)), "b": stack.enter_context(FakeServer(b))}
    config = router_config(servers)
    app = (
        create_app(config)
        if clock is None
        else WaterfallMiddleware(None, config, clock=clock, health_path=None)
    )
    return Stack(a, b, stack.enter_context(LoopbackServer(app, lifespan="on")))


@pytest.fixture(scope="module")
def shared() -> Iterator[Stack]:
    """Well-behaved fakes behind one router, for the tests that cause no fault."""
    with ExitStack() as stack:
        yield start_stack(stack, fake("a"), fake("b"))


@pytest.fixture
def plain(shared: Stack) -> Stack:
    shared.a.reset()
    shared.b.reset()
    return shared


def twin_reply(provider: FakeProvider) -> Reply:
    """What ``provider`` answered to its last request (a fresh twin replays them all)."""
    twin = FakeProvider(provider.config)
    reply = None
    for r in provider.requests:
        reply = twin.handle(r.method, r.path, r.headers, r.body)
    assert reply is not None
    return reply


def stream_chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an SSE body, up to ``[DONE]``."""
    data = [
        line.removeprefix("data: ")
        for line in body.decode().split("\n")
        if line.startswith("data:")
    ]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


# -- what works ---------------------------------------------------------------------------------
def test_chat(plain: Stack) -> None:
    with plain.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=MESSAGES, max_tokens=50
        )
    completion = raw.parse()
    expected = json.loads(twin_reply(plain.a).body)
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.id == expected["id"]
    assert completion.model == "fake-small"
    assert completion.usage is not None
    assert completion.usage.total_tokens == expected["usage"]["total_tokens"]
    assert raw.headers["x-waterfall-provider"] == "a"
    assert raw.headers["x-waterfall-attempts"] == "a/fake-small 200"
    (seen,) = plain.a.requests
    sent = json.loads(seen.body)
    assert (sent["model"], sent["messages"], sent["max_tokens"]) == ("fake-small", MESSAGES, 50)


def test_streaming(plain: Stack) -> None:
    with plain.client() as client:
        stream = client.chat.completions.create(
            model="fast",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    expected = stream_chunks(twin_reply(plain.a).body)
    assert [c.model_dump(exclude_unset=True) for c in chunks] == expected
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_embeddings(plain: Stack) -> None:
    with plain.client() as client:
        result = client.embeddings.create(
            model="fast", input=["first text", "second"], encoding_format="float"
        )
    expected = json.loads(twin_reply(plain.a).body)
    assert [d.embedding for d in result.data] == [d["embedding"] for d in expected["data"]]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert [r.path for r in plain.a.requests] == ["/v1/embeddings"]


def test_models(plain: Stack) -> None:
    with plain.client(CLIENT_KEYS[1]) as client:
        models = list(client.models.list())
    assert [(m.id, m.owned_by) for m in models] == [
        ("fast", "waterfall-asgi"),
        ("fake-small", "waterfall-asgi"),
    ]


def test_the_client_key_never_travels_upstream(plain: Stack) -> None:
    with plain.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
        list(client.chat.completions.create(model="fast", messages=MESSAGES, stream=True))
        client.embeddings.create(model="fast", input="x", encoding_format="float")
    plain.b.reset()
    with plain.client(CLIENT_KEYS[1]) as client:
        client.chat.completions.create(model="b/fake-small", messages=MESSAGES)
    seen = [*plain.a.requests, *plain.b.requests]
    assert [r.headers["authorization"] for r in seen] == ["Bearer key-a"] * 3 + ["Bearer key-b"]
    for r in seen:
        assert not any("sk-client" in v for v in r.headers.values()), r.headers
        assert b"sk-client" not in r.body
        # The client's other headers did travel.
        assert r.headers["user-agent"].startswith("OpenAI/Python")
    # Nor does a provider key travel back.
    assert not any("key-a" in v for v in raw.headers.values())


# -- what fails, and how the client sees it --------------------------------------------------
def test_a_429_storm_in_every_dialect_is_absorbed() -> None:
    clock = ManualClock()
    dialects = ["retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter"]
    script = [f"rate_limit:dialect={d},seconds=2" for d in dialects] + ["rate_limit:dialect=none"]
    trails = []
    with ExitStack() as stack:
        s = start_stack(stack, fake("a", *script, clock=clock), fake("b"), clock)
        with s.client() as client:

            def ask() -> str:
                raw = client.chat.completions.with_raw_response.create(
                    model="fast", messages=MESSAGES
                )
                assert raw.parse().choices[0].finish_reason == "stop"
                return raw.headers["x-waterfall-attempts"]

            for _ in dialects:
                trails.append(ask())  # a answers 429 and cools down for the 2 s it asked
                trails.append(ask())  # a is skipped
                clock.advance(3)
            trails.append(ask())  # 429 with no hint: the default 30 s cooldown
            clock.advance(3)
            trails.append(ask())  # so a is still skipped 3 s later
            clock.advance(30)
            trails.append(ask())  # the script is over: a serves again
    storm, cooling = "a/fake-small 429, b/fake-small 200", "a/fake-small cooling, b/fake-small 200"
    assert trails == [storm, cooling] * 6 + ["a/fake-small 200"]
    assert [r.status for r in s.a.requests] == [429] * 6 + [200]
    assert [r.status for r in s.b.requests] == [200] * 12


def test_all_exhausted_is_a_503_for_the_client() -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        s = start_stack(
            stack,
            fake("a", "rate_limit:seconds=7", clock=clock),
            fake("b", "rate_limit:dialect=openai,seconds=9", clock=clock),
            clock,
        )
        with s.client() as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="fast", messages=MESSAGES)
    error = caught.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == 503
    assert error.response.headers["retry-after"] == "7"
    assert error.code == "all_providers_exhausted"
    assert error.type == "server_error"
    assert error.body == {
        "message": "All providers for 'fast' are exhausted: "
        "a/fake-small: HTTP 429 rate_limit_exceeded (cooling down 7s); "
        "b/fake-small: HTTP 429 rate_limit_exceeded (cooling down 9s).",
        "type": "server_error",
        "param": None,
        "code": "all_providers_exhausted",
    }
    assert [len(s.a.requests), len(s.b.requests)] == [1, 1]


def test_a_wrong_client_key_is_an_authentication_error(plain: Stack) -> None:
    with plain.client("sk-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fast", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.response.headers["www-authenticate"] == "Bearer"
    with plain.client("sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert plain.a.requests == []
    assert plain.b.requests == []


def test_an_unknown_model_is_not_found(plain: Stack) -> None:
    with plain.client() as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert error.body == {
        "message": "The model 'gpt-nope' does not exist; this router serves: fast, fake-small.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert plain.a.requests == []


# -- how a stream ends -------------------------------------------------------------------------
def recorded_stack(
    stack: ExitStack,
    a: FakeProvider,
    b: FakeProvider,
    more: dict[str, Any] | None = None,
    **timeouts: float,
) -> tuple[Stack, MemoryLedger]:
    """As :func:`start_stack`, with the ledger in reach, the providers' ``timeouts`` and
    ``more`` config."""
    servers = {"a": stack.enter_context(FakeServer(a)), "b": stack.enter_context(FakeServer(b))}
    config = {**router_config(servers), **(more or {})}
    for provider in config["providers"].values():
        provider["timeouts"] = timeouts
    ledger = MemoryLedger()
    app = WaterfallMiddleware(None, config, ledger=ledger, health_path=None)
    return Stack(a, b, stack.enter_context(LoopbackServer(app, lifespan="on"))), ledger


def final_record(ledger: MemoryLedger) -> UsageRecord:
    """The last request's record once it is terminal (the router saves it just after the
    response's last byte: a bounded wait)."""
    for _ in range(1000):
        records = list(ledger.records.values())
        if records and records[-1].status != "pending":
            return records[-1]
        time.sleep(0.005)
    raise AssertionError("the record never became terminal")


def test_a_whole_stream_without_done_reads_to_its_end() -> None:
    """The provider closes cleanly after the whole answer (its finish reason, the usage chunk)
    but sends no ``data: [DONE]``: the client reads every chunk and no exception, the ledger
    says success, with a note."""
    with ExitStack() as stack:
        s, ledger = recorded_stack(stack, fake("a", "no_done"), fake("b"))
        with s.client() as client:
            stream = client.chat.completions.create(
                model="fast",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)  # no exception
        record = final_record(ledger)
    expected = FakeProvider(s.a.config)  # what a replays: its reply without [DONE]
    (seen,) = s.a.requests
    sent = expected.handle(seen.method, seen.path, seen.headers, seen.body)
    assert b"[DONE]" not in sent.body
    whole = stream_chunks(sent.body + b"data: [DONE]\n\n")
    assert [c.model_dump(exclude_unset=True) for c in chunks] == whole
    assert chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (record.status, record.error, record.provider) == (
        "success",
        "upstream sent no [DONE]",
        "a",
    )
    assert record.total_tokens == chunks[-1].usage.total_tokens
    assert s.b.requests == []


def test_a_stalled_stream_is_ended_by_the_stall_timeout() -> None:
    """The provider goes silent after its first chunk (2 s between chunks): with a stall
    timeout of 0.2 s the client gets the error event long before its own 10 s read timeout."""
    with ExitStack() as stack:
        s, ledger = recorded_stack(
            stack, fake("a", "slow_chunks:seconds=2"), fake("b"), stall=0.2, read=5
        )
        with s.client() as client:
            stream = client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
            with pytest.raises(openai.APIError) as caught:
                for _ in stream:
                    pass
        record = final_record(ledger)
    assert str(caught.value) == "The upstream stream stalled: no byte for 0.2s after it began."
    assert (record.status, record.error) == (
        "stream_incomplete",
        "stream_stalled: no byte for 0.2s",
    )


CONTINUE = {
    "policy": {"continue_streams": True},
    "models": {"fake-small": {"capabilities": ["prefill"]}},
}


def _text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("fault", ["cut:tokens=3", "stall:events=4"])
def test_a_stream_cut_or_stalled_is_continued_into_one_whole_answer(fault: str) -> None:
    """a breaks off after three words (cut) or goes silent (stall), b honours a prefill: the
    client reads one stream, whose text is the whole answer, with no exception."""
    with ExitStack() as stack:
        s, ledger = recorded_stack(
            stack, fake("a", fault), fake("b", "prefill:mode=honour"), CONTINUE, stall=0.2
        )
        with s.client() as client:
            stream = client.chat.completions.create(
                model="fast",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)  # no exception
        record = final_record(ledger)
    # the client's text: what a sent before it broke off (the prefill b was given), then
    # exactly what b answered
    (continued,) = s.b.requests
    prefill = json.loads(continued.body)["messages"][-1]
    assert prefill["role"] == "assistant"
    assert prefill["content"]
    (asked,) = s.a.requests
    whole_a = fake("a").handle(asked.method, asked.path, asked.headers, asked.body)
    assert _text_of(stream_chunks(whole_a.body)).startswith(prefill["content"])
    continuation = _text_of(stream_chunks(twin_reply(s.b).body))
    assert continuation
    assert streamed_text(chunks) == prefill["content"] + continuation
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [r for r in reasons if r] == ["stop"]
    assert chunks[-1].usage is not None  # the continuation's usage chunk
    assert record.status == "success"
    assert (record.error or "").startswith("continued on b/fake-small")
    assert [(x["entry"], x.get("continuation")) for x in record.attempts] == [
        ("a/fake-small", None),
        ("b/fake-small", True),
    ]
    assert record.attempts[1]["cost"] is None  # (no prices in this config)
    assert record.attempts[1]["completion_tokens"] == chunks[-1].usage.completion_tokens
