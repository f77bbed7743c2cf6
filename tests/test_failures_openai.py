"""The failure model end to end: the official ``openai`` client, the router on a loopback uvicorn
server, loopback fakes behind it (a clock both the router and the fakes read, moved by hand)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeProvider, FakeServer, LoopbackServer

pytestmark = pytest.mark.loopback

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something nice"}]
START = 1_700_000_000.0


class ManualClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def start(
    stack: ExitStack,
    fakes: dict[str, FakeProvider],
    chain: list[str],
    clock: ManualClock,
    **extra: Any,
) -> openai.OpenAI:
    servers = {name: stack.enter_context(FakeServer(f)) for name, f in fakes.items()}
    config = {
        "providers": {
            name: {"base_url": s.url, "api_key": f"key-{name}"} for name, s in servers.items()
        },
        "chains": {"fast": chain},
        "ledger": {"path": None},
        **extra,
    }
    app = WaterfallMiddleware(None, config, clock=clock, health_path=None)
    router = stack.enter_context(LoopbackServer(app, lifespan="on"))
    return openai.OpenAI(base_url=router.url, api_key="sk-client", max_retries=0, timeout=10)


def fake(name: str, *script: str, clock: ManualClock, **extra: Any) -> FakeProvider:
    return FakeProvider(
        clock=clock, name=name, api_key=f"key-{name}", reply_words=5, script=list(script), **extra
    )


def ask(client: openai.OpenAI) -> tuple[str, str, str]:
    """The served model, the entry that served and the attempts trail of one request."""
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content
    return (
        completion.model,
        raw.headers["x-waterfall-provider"],
        raw.headers["x-waterfall-attempts"],
    )


def test_a_transient_500_is_served_by_the_same_entry() -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        a = fake("a", "status:code=500", clock=clock)
        client = start(
            stack, {"a": a, "b": fake("b", clock=clock)}, ["a/fake-small", "b/fake-small"], clock
        )
        model, provider, trail = ask(client)
    assert (model, provider) == ("fake-small", "a")
    assert trail == "a/fake-small 500 retried, a/fake-small 200"
    assert [r.status for r in a.calls()] == [500, 200]


def test_a_context_length_400_is_served_by_the_larger_model() -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        small = fake("a", "context_length_exceeded", clock=clock)
        large = fake("b", clock=clock)
        client = start(
            stack,
            {"a": small, "b": large},
            ["a/fake-small", "b/fake-large"],
            clock,
            models={
                "fake-small": {"context_window": 8192},
                "fake-large": {"context_window": 128000},
            },
        )
        model, provider, trail = ask(client)
        # a content-policy refusal goes straight back: not retried, no other entry asked
        small.config = small.config.model_copy(update={"script": ()})
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="fast",
                messages=MESSAGES,
                extra_headers={"x-fake-behaviour": "content_filter"},
            )
    assert (model, provider) == ("fake-large", "b")
    assert trail == "a/fake-small 400 too_long, b/fake-large 200"
    assert refused.value.code == "content_policy_violation"
    assert [r.status for r in small.calls()] == [400, 400]
    assert [r.status for r in large.calls()] == [200]


def test_a_minute_long_outage_is_served_by_the_fallback_and_recovers() -> None:
    clock = ManualClock()
    with ExitStack() as stack:
        # a answers 503 to everything for its first 60 s, then is healthy again
        primary = fake("a", "when:end=60; status:code=503", clock=clock, repeat_last=True)
        fallback = fake("b", clock=clock)
        client = start(
            stack, {"a": primary, "b": fallback}, ["a/fake-small", "b/fake-small"], clock
        )
        served: list[tuple[float, str]] = []
        for _ in range(120):  # a request a second, for two minutes
            served.append((clock.now - START, ask(client)[1]))
            clock.advance(1)
    during = [p for t, p in served if t < 60]
    assert during == ["b"] * 60  # every request served during the outage
    # the outage cost a few calls to a: 5 failures in a row (a retry included) opened its
    # circuit, then one probe per open period (5, 10, 20, 30 s)
    assert len([r for r in primary.calls() if r.status == 503]) <= 10
    back = next(t for t, p in served if t >= 60 and p == "a")
    assert back <= 60 + 30  # within the longest open period of the recovery
    assert all(p == "a" for t, p in served if t >= back)  # and stays there
