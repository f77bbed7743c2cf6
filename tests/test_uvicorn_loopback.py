"""The router on a real uvicorn server on 127.0.0.1, in front of real loopback fake providers.

Both the standalone app and the middleware mounted in front of a Starlette app. Streaming is
checked where it can be: over a socket, bytes arriving over time.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from waterfall_asgi.app import create_app
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.upstream import AiohttpUpstream
from waterfall_fakes import FakeProvider, FakeServer, LoopbackServer, Reply

pytestmark = pytest.mark.loopback

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Tell me something"}]}
STREAM = {**CHAT, "stream": True}


@contextmanager
def upstreams(**providers: FakeProvider) -> Iterator[dict[str, FakeServer]]:
    """Start one loopback fake per provider; stop them all at the end."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(FakeServer(p)) for name, p in providers.items()}


@contextmanager
def standalone(
    **providers: FakeProvider,
) -> Iterator[tuple[dict[str, FakeServer], LoopbackServer]]:
    """Loopback fakes, and the standalone router in front of them (in that order)."""
    with (
        upstreams(**providers) as ups,
        LoopbackServer(create_app(config_for(ups)), lifespan="on") as server,
    ):
        yield ups, server


def fake(name: str, *script: str, words: int = 4) -> FakeProvider:
    return FakeProvider(name=name, api_key=f"key-{name}", reply_words=words, script=list(script))


def config_for(servers: dict[str, FakeServer], **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            name: {"base_url": s.url, "api_key": f"key-{name}"} for name, s in servers.items()
        },
        "chains": {"fast": [f"{name}/fake-small" for name in servers]},
        **extra,
    }


def twin_reply(provider: FakeProvider) -> Reply:
    """What ``provider`` answered to its last request (a fresh twin replays them all)."""
    twin = FakeProvider(provider.config)
    reply = None
    for r in provider.requests:
        reply = twin.handle(r.method, r.path, r.headers, r.body)
    assert reply is not None
    return reply


def sse_data(body: bytes) -> list[str]:
    """The ``data`` of every event of an LF-separated SSE body."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    data = []
    for event in events:
        lines = [line for line in event.split("\n") if not line.startswith(":")]
        assert all(line.startswith("data: ") for line in lines), event
        data.append("\n".join(line[len("data: ") :] for line in lines))
    return data


@asynccontextmanager
async def client_for(server: LoopbackServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.root, timeout=10) as client:
        yield client


# -- the standalone app ------------------------------------------------------------------------
@pytest.mark.anyio
async def test_standalone_non_streaming() -> None:
    with upstreams(a=fake("a"), b=fake("b")) as ups:
        app = create_app(config_for(ups))
        with LoopbackServer(app, lifespan="on") as server:
            async with client_for(server) as client:
                assert (await client.get("/health")).json() == {"status": "ok"}
                r = await client.post(
                    "/v1/chat/completions",
                    json=CHAT,
                    headers={"authorization": "Bearer client-secret", "x-trace": "t-1"},
                )
                other = await client.get("/v1/files")
            opened = app._upstream
            assert isinstance(opened, AiohttpUpstream)  # the default client
            session = opened.session
            assert session is not None
        # uvicorn's lifespan shutdown closed the client the router opened at startup.
        assert session.closed is True
        assert app._upstream is None
    assert r.status_code == 200
    assert r.content == twin_reply(ups["a"].provider).body
    assert r.headers["x-waterfall-attempts"] == "a/fake-small 200"
    assert r.json()["model"] == "fake-small"
    assert (other.status_code, other.json()["error"]["code"]) == (404, "unknown_url")
    (seen,) = ups["a"].provider.requests
    assert seen.headers["authorization"] == "Bearer key-a"
    assert seen.headers["x-trace"] == "t-1"
    assert json.loads(seen.body) == {**CHAT, "model": "fake-small"}
    assert ups["b"].provider.requests == []


@pytest.mark.anyio
async def test_standalone_streaming_arrives_over_time_and_ends_with_done() -> None:
    delay, words = 0.05, 5
    with standalone(a=fake("a", f"slow_chunks:seconds={delay}", words=words)) as (ups, server):
        async with client_for(server) as client:
            arrivals: list[tuple[float, bytes]] = []
            async with client.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                status, headers = r.status_code, r.headers
                async for chunk in r.aiter_raw():
                    arrivals.append((time.monotonic(), chunk))
    reply = twin_reply(ups["a"].provider)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["transfer-encoding"] == "chunked"
    body = b"".join(c for _, c in arrivals)
    # the upstream's bytes, less the usage chunk the router asked for and the client did not
    events = reply.body.split(b"\n\n")
    assert sum(b'"choices":[],' in e for e in events) == 1
    assert body == b"\n\n".join(e for e in events if b'"choices":[],' not in e)
    data = sse_data(body)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len(chunks) == words + 2  # role, one per word, finish
    # The upstream waits `delay` before each of its chunks after the first: relayed as they
    # come, they reach the client in several reads spread over (at least) most of that time.
    assert len(reply.chunks) == words + 4  # ... and the usage chunk, and [DONE]
    assert len(arrivals) >= 4
    assert arrivals[-1][0] - arrivals[0][0] >= delay * (len(reply.chunks) - 1) / 2


@pytest.mark.anyio
async def test_429_storm_on_the_first_entry_is_absorbed_by_the_second() -> None:
    with standalone(a=fake("a", "rate_limit:seconds=30"), b=fake("b")) as (ups, server):
        async with client_for(server) as client:
            answers = [
                await client.post("/v1/chat/completions", json=body)
                for body in (CHAT, STREAM, CHAT, STREAM)
            ]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.headers["x-waterfall-provider"] for a in answers] == ["b"] * 4
    assert [a.headers["x-waterfall-attempts"] for a in answers] == [
        "a/fake-small 429, b/fake-small 200",
        "a/fake-small cooling, b/fake-small 200",
        "a/fake-small cooling, b/fake-small 200",
        "a/fake-small cooling, b/fake-small 200",
    ]
    assert answers[1].text.endswith("data: [DONE]\n\n")
    assert "Rate limit" not in answers[0].text
    assert [r.status for r in ups["a"].provider.requests] == [429]
    assert [r.status for r in ups["b"].provider.requests] == [200] * 4


@pytest.mark.anyio
async def test_all_exhausted_is_a_503_with_retry_after() -> None:
    # (a 429 without a hint cools for the default 30 s; a 503 without one would only count)
    a, b = fake("a", "rate_limit:seconds=2"), fake("b", "rate_limit:dialect=none")
    with standalone(a=a, b=b) as (ups, server):
        async with client_for(server) as client:
            first = await client.post("/v1/chat/completions", json=STREAM)
            second = await client.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 503
    assert first.headers["retry-after"] == "2"
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {
        "error": {
            "message": "All providers for 'fast' are exhausted: "
            "a/fake-small: HTTP 429 rate_limit_exceeded (cooling down 2s); "
            "b/fake-small: HTTP 429 rate_limit_exceeded (cooling down 30s).",
            "type": "server_error",
            "param": None,
            "code": "all_providers_exhausted",
        }
    }
    # Both now cool down: the next request is refused without calling anyone.
    assert second.status_code == 503
    assert second.headers["retry-after"] == "2"
    assert second.json()["error"]["code"] == "all_providers_exhausted"
    assert "a/fake-small: cooling down" in second.json()["error"]["message"]
    assert [len(ups[h].provider.requests) for h in "ab"] == [1, 1]


@pytest.mark.anyio
async def test_a_client_leaving_mid_stream_does_not_break_the_server() -> None:
    with standalone(a=fake("a", "slow_chunks:seconds=0.05", words=6)) as (ups, server):
        async with (
            client_for(server) as client,
            client.stream("POST", "/v1/chat/completions", json=STREAM) as r,
        ):
            assert r.status_code == 200
            first = await anext(r.aiter_raw())
        # The response and its connection are closed here, with most of the stream to come.
        assert b"[DONE]" not in first
        assert sse_data(first)[0].startswith("{")
        async with client_for(server) as client:
            after = await client.post("/v1/chat/completions", json=CHAT)
            health = await client.get("/health")
    assert after.status_code == 200
    assert after.json()["choices"][0]["finish_reason"] == "stop"
    assert health.json() == {"status": "ok"}
    assert [r.status for r in ups["a"].provider.requests] == [200, 200]


# -- mounted in front of a Starlette app ---------------------------------------------------------
@pytest.mark.anyio
async def test_mounted_in_front_of_starlette_on_uvicorn() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    async def orders(request: Request) -> Response:
        return JSONResponse({"orders": [1, 2]})

    app = Starlette(routes=[Route("/orders", orders)], lifespan=lifespan)
    # a answers every request with a 500
    failing = FakeProvider(name="a", api_key="key-a", script=["status:code=500"], repeat_last=True)
    with upstreams(a=failing, b=fake("b")) as ups:
        mw = WaterfallMiddleware(app, config_for(ups))
        with LoopbackServer(mw, lifespan="on") as server:
            assert events == ["app startup"]
            opened = mw._upstream
            assert isinstance(opened, AiohttpUpstream)
            async with client_for(server) as client:
                own = await client.get("/orders")
                missing = await client.get("/v1/files")
                chat = await client.post("/v1/chat/completions", json=CHAT)
                chunks = []
                async with client.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                    stream_status = r.status_code
                    async for chunk in r.aiter_raw():
                        chunks.append(chunk)
                emb = await client.post(
                    "/v1/embeddings", json={"model": "fast", "input": "hello world"}
                )
    assert events == ["app startup", "app shutdown"]
    assert opened.session is None  # closed at shutdown
    assert own.json() == {"orders": [1, 2]}
    assert (missing.status_code, missing.text) == (404, "Not Found")
    assert chat.status_code == 200
    assert chat.headers["x-waterfall-attempts"] == (
        "a/fake-small 500 retried, a/fake-small 500, b/fake-small 200"
    )
    assert stream_status == 200
    assert sse_data(b"".join(chunks))[-1] == "[DONE]"
    # a's fifth 500 in a row opened its circuit: the embedding did not retry it, went on to b.
    assert emb.status_code == 200
    assert emb.headers["x-waterfall-attempts"] == "a/fake-small 500, b/fake-small 200"
    assert emb.content == twin_reply(ups["b"].provider).body
    assert [(r.path, r.status) for r in ups["a"].provider.requests] == [
        *[("/v1/chat/completions", 500)] * 4,
        ("/v1/embeddings", 500),
    ]
