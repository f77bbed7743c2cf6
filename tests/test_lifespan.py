"""The middleware's upstream client follows the ASGI lifespan, whoever speaks it.

It is opened at startup and closed at shutdown when the wrapped app handles lifespan (Starlette,
FastAPI), when the app ignores or refuses lifespan (a bare callable), or when there is no app; when
the server sends no lifespan at all it is opened on the first request and closed by
``shutdown()``. The app's own startup and shutdown still run, a client the user passed in is never
closed, and nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from waterfall_asgi.app import create_app
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.upstream import HttpxUpstream
from waterfall_fakes import FakeNetwork, FakeProvider

Message = dict[str, Any]
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
CONFIG = {
    "providers": {
        "a": {"base_url": "http://a/v1", "api_key": "key-a"},
        "b": {"base_url": "http://b/v1", "api_key": "key-b"},
    },
    "chains": {"fast": ["a/fake-small", "b/fake-small"]},
}


def network(**scripts: list[str]) -> FakeNetwork:
    return FakeNetwork(
        {
            name: FakeProvider(name=name, reply_words=3, script=scripts.get(name, []))
            for name in ("a", "b")
        }
    )


def owned(mw: WaterfallMiddleware) -> httpx.AsyncClient | None:
    """The middleware's upstream httpx client right now (``None``: not open)."""
    upstream = mw._upstream
    if upstream is None:
        return None
    assert isinstance(upstream, HttpxUpstream)
    return upstream.client


class Lifespan:
    """A server's side of the lifespan protocol, recording every message the app sends."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.scope: Message = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": {},
        }
        self.sent: list[str] = []
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.task: asyncio.Future[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        self.sent.append(message["type"])
        await self._outbox.put(message["type"])

    async def startup(self) -> str:
        """Start the app's lifespan and send ``lifespan.startup``; return the app's answer."""
        self.task = asyncio.ensure_future(self.app(self.scope, self._receive, self._send))
        await self._inbox.put({"type": "lifespan.startup"})
        return await asyncio.wait_for(self._outbox.get(), 5)

    async def shutdown(self) -> str:
        """Send ``lifespan.shutdown``; return the app's answer."""
        await self._inbox.put({"type": "lifespan.shutdown"})
        return await asyncio.wait_for(self._outbox.get(), 5)

    async def finish(self) -> None:
        """Wait for the app's lifespan call to return (raising what it raised)."""
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def ask(mw: WaterfallMiddleware, body: dict[str, Any] = CHAT) -> httpx.Response:
    """One chat request through ``mw`` (httpx's ASGI transport sends no lifespan)."""
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
        return await client.post("/v1/chat/completions", json=body)


# -- apps that handle lifespan ------------------------------------------------------------------
def starlette_with_lifespan(events: list[str]) -> Any:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    return Starlette(lifespan=lifespan)


def fastapi_with_lifespan(events: list[str]) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    return FastAPI(lifespan=lifespan)


@pytest.mark.parametrize(
    "build", [starlette_with_lifespan, fastapi_with_lifespan], ids=["starlette", "fastapi"]
)
@pytest.mark.anyio
async def test_app_with_lifespan_the_client_lives_from_startup_to_shutdown(
    build: Callable[[list[str]], Any],
) -> None:
    events: list[str] = []
    net = network()
    mw = WaterfallMiddleware(build(events), CONFIG, transport=net)
    life = Lifespan(mw)
    assert owned(mw) is None
    assert await life.startup() == "lifespan.startup.complete"
    assert events == ["app startup"]
    client = owned(mw)
    assert client is not None
    assert client.is_closed is False

    answer = await ask(mw)
    assert answer.status_code == 200
    assert owned(mw) is client  # the request used the client opened at startup
    assert len(net["a"].requests) == 1

    assert await life.shutdown() == "lifespan.shutdown.complete"
    await life.finish()
    assert events == ["app startup", "app shutdown"]
    assert life.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert client.is_closed is True
    assert owned(mw) is None


@pytest.mark.parametrize("build", [Starlette, FastAPI], ids=["starlette", "fastapi"])
@pytest.mark.anyio
async def test_app_with_default_lifespan(build: Callable[[], Any]) -> None:
    mw = WaterfallMiddleware(build(), CONFIG, transport=network())
    life = Lifespan(mw)
    assert await life.startup() == "lifespan.startup.complete"
    client = owned(mw)
    assert client is not None
    assert client.is_closed is False
    assert await life.shutdown() == "lifespan.shutdown.complete"
    await life.finish()
    assert client.is_closed is True


def test_test_client_context_runs_both_lifespans() -> None:
    events: list[str] = []

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    app = starlette_with_lifespan(events)
    app.router.routes.append(Route("/hello", hello))
    mw = WaterfallMiddleware(app, CONFIG, transport=network())
    with TestClient(mw) as client:
        opened = owned(mw)
        assert opened is not None
        assert opened.is_closed is False
        assert events == ["app startup"]
        assert client.get("/hello").text == "hello"
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert events == ["app startup", "app shutdown"]
    assert opened.is_closed is True
    assert owned(mw) is None


# -- apps that do not handle lifespan, and no app -----------------------------------------------
async def ignores_lifespan(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    raise AssertionError("no http request is sent in these tests")


async def raises_on_lifespan(scope: Message, receive: Any, send: Any) -> None:
    assert scope["type"] == "http", "http only"


async def reads_startup_then_returns(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        assert (await receive())["type"] == "lifespan.startup"


@pytest.mark.parametrize(
    "app",
    [ignores_lifespan, raises_on_lifespan, reads_startup_then_returns, None],
    ids=["ignores", "raises", "reads-startup-then-returns", "no-app"],
)
@pytest.mark.anyio
async def test_the_middleware_speaks_lifespan_itself_when_the_app_does_not(app: Any) -> None:
    mw = WaterfallMiddleware(app, CONFIG, transport=network())
    life = Lifespan(mw)
    assert await life.startup() == "lifespan.startup.complete"
    client = owned(mw)
    assert client is not None
    assert client.is_closed is False
    assert await life.shutdown() == "lifespan.shutdown.complete"
    await life.finish()
    assert life.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert client.is_closed is True
    assert owned(mw) is None


@pytest.mark.anyio
async def test_standalone_app_speaks_lifespan() -> None:
    app = create_app(CONFIG, transport=network())
    life = Lifespan(app)
    assert await life.startup() == "lifespan.startup.complete"
    client = owned(app)
    assert client is not None
    assert (await ask(app)).status_code == 200
    assert await life.shutdown() == "lifespan.shutdown.complete"
    await life.finish()
    assert client.is_closed is True


# -- when the app's own lifespan fails ----------------------------------------------------------
@pytest.mark.anyio
async def test_app_failing_at_shutdown_still_gets_the_client_closed() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        raise RuntimeError("shutdown went wrong")

    mw = WaterfallMiddleware(Starlette(lifespan=lifespan), CONFIG, transport=network())
    life = Lifespan(mw)
    assert await life.startup() == "lifespan.startup.complete"
    client = owned(mw)
    assert client is not None
    assert await life.shutdown() == "lifespan.shutdown.failed"
    with pytest.raises(RuntimeError, match="shutdown went wrong"):
        await life.finish()
    assert life.sent == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    assert client.is_closed is True


@pytest.mark.anyio
async def test_app_failing_at_startup_fails_the_startup() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("startup went wrong")
        yield  # pragma: no cover

    mw = WaterfallMiddleware(Starlette(lifespan=lifespan), CONFIG, transport=network())
    life = Lifespan(mw)
    try:
        assert await life.startup() == "lifespan.startup.failed"
        for _ in range(10):
            await asyncio.sleep(0)
        assert life.sent == ["lifespan.startup.failed"]
        with pytest.raises(RuntimeError, match="startup went wrong"):
            await life.finish()
        assert owned(mw) is None
    finally:
        life.cancel()
        await mw.shutdown()


# -- no lifespan at all -----------------------------------------------------------------------
@pytest.mark.anyio
async def test_without_lifespan_the_client_opens_on_first_request_and_shutdown_closes_it() -> None:
    net = network()
    mw = WaterfallMiddleware(None, CONFIG, transport=net)
    assert owned(mw) is None
    assert (await ask(mw)).status_code == 200
    client = owned(mw)
    assert client is not None
    assert client.is_closed is False
    assert (await ask(mw)).status_code == 200
    assert owned(mw) is client
    await mw.shutdown()
    assert client.is_closed is True
    assert owned(mw) is None
    await mw.shutdown()  # twice is fine
    # A request after shutdown opens a fresh client.
    assert (await ask(mw)).status_code == 200
    again = owned(mw)
    assert again is not None
    assert again is not client
    await mw.shutdown()
    assert again.is_closed is True
    assert len(net["a"].requests) == 3


@pytest.mark.anyio
async def test_concurrent_first_requests_open_a_single_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = network()
    made: list[httpx.AsyncClient] = []
    real = httpx.AsyncClient

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if kwargs.get("transport") is net:
                made.append(self)

    mw = WaterfallMiddleware(None, CONFIG, transport=net)
    transport = httpx.ASGITransport(app=mw)
    async with real(transport=transport, base_url="http://router.test") as client:
        monkeypatch.setattr(httpx, "AsyncClient", Counting)
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(8))
        )
    assert [a.status_code for a in answers] == [200] * 8
    assert len(made) == 1
    assert owned(mw) is made[0]
    await mw.shutdown()
    assert made[0].is_closed is True


# -- a client passed in by the user ---------------------------------------------------------
@pytest.mark.parametrize(
    "build", [lambda: starlette_with_lifespan([]), lambda: ignores_lifespan, lambda: None]
)
@pytest.mark.anyio
async def test_a_client_passed_in_is_used_and_never_closed(build: Callable[[], Any]) -> None:
    net = network()
    async with httpx.AsyncClient(transport=net) as mine:
        mw = WaterfallMiddleware(build(), CONFIG, client=mine)
        life = Lifespan(mw)
        assert await life.startup() == "lifespan.startup.complete"
        assert owned(mw) is mine
        assert (await ask(mw)).status_code == 200
        assert len(net["a"].requests) == 1
        assert await life.shutdown() == "lifespan.shutdown.complete"
        await life.finish()
        assert mine.is_closed is False
        await mw.shutdown()
        assert mine.is_closed is False
        # Without lifespan too: the next request still goes through the user's client.
        assert (await ask(mw)).status_code == 200
        assert len(net["a"].requests) == 2
        await mw.shutdown()
        assert mine.is_closed is False
    assert mine.is_closed is True


# -- nothing left behind ------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_full_run_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    events: list[str] = []
    net = network(a=["rate_limit"], b=["ok", "error_event:after=0", "rate_limit"])
    mw = WaterfallMiddleware(starlette_with_lifespan(events), CONFIG, transport=net)
    life = Lifespan(mw)
    assert await life.startup() == "lifespan.startup.complete"
    client = owned(mw)
    assert client is not None
    streamed = {**CHAT, "stream": True}
    # a: 429 -> b streams; then a cools down and b's stream starts with an error event, and its
    # retry gets a 429: 503; then both cool down: 503 without an upstream call.
    answers = [await ask(mw, streamed), await ask(mw, streamed), await ask(mw)]
    assert [a.status_code for a in answers] == [200, 503, 503]
    assert answers[0].text.endswith("data: [DONE]\n\n")
    assert answers[1].json()["error"]["code"] == "all_providers_exhausted"
    assert (
        answers[1].headers["x-waterfall-request-id"] != answers[2].headers["x-waterfall-request-id"]
    )
    assert [r.status for r in net["a"].requests] == [429]
    assert [r.status for r in net["b"].requests] == [200, 200, 429]
    assert await life.shutdown() == "lifespan.shutdown.complete"
    await life.finish()
    assert client.is_closed is True
    assert events == ["app startup", "app shutdown"]
    for _ in range(10):
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
