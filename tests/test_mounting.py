"""``WaterfallMiddleware`` mounted in front of FastAPI, Starlette, a bare ASGI callable, or nothing.

The router answers its own routes; everything else (other paths, paths under the prefix that it
does not serve, websockets) reaches the wrapped app untouched. Part of this is driven by hand
with a recording ``receive``/``send`` pair, so that the exact message sequence is checked (httpx's
``ASGITransport`` and Starlette's ``TestClient`` buffer whole bodies).
"""

from __future__ import annotations

import asyncio
import gc
import json
import operator
import re
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

from waterfall_asgi import TERMINAL_STATUSES, MemoryLedger, WatchStarter
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider, Reply

Message = MutableMapping[str, Any]

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hello there"}]}


# -- helpers ------------------------------------------------------------------------------------
def router_config(**extra: Any) -> dict[str, Any]:
    """Two providers, ``a`` then ``b``, both serving ``fake-small``, chained as ``fast``."""
    return {
        "providers": {
            "a": {"base_url": "http://a/v1", "api_key": "key-a"},
            "b": {"base_url": "http://b/v1", "api_key": "key-b"},
        },
        "chains": {"fast": ["a/fake-small", "b/fake-small"]},
        "ledger": {"path": None},  # usage in memory: these tests are about mounting
        **extra,
    }


def network(**scripts: list[str]) -> FakeNetwork:
    """Fakes ``a`` and ``b`` (each insisting on its own provider key), optionally scripted."""
    return FakeNetwork(
        {
            name: FakeProvider(
                name=name, api_key=f"key-{name}", reply_words=3, script=scripts.get(name, [])
            )
            for name in ("a", "b")
        }
    )


def twin_reply(fake: FakeProvider, index: int = -1) -> Reply:
    """What ``fake`` sent for its request ``index``: a fresh fake with the same config replays
    every request up to it (the fakes are deterministic)."""
    twin = FakeProvider(fake.config)
    reply = None
    for r in fake.requests[: index % len(fake.requests) + 1]:
        reply = twin.handle(r.method, r.path, r.headers, r.body)
    assert reply is not None
    return reply


class BareApp:
    """A bare ASGI callable that records what reaches it and answers ``bare METHOD PATH``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.last: tuple[Any, Any, Any] | None = None

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        self.last = (scope, receive, send)
        if scope["type"] == "lifespan":
            raise RuntimeError("this bare app does not speak lifespan")
        self.seen.append((scope["type"], scope["path"]))
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": "bare:" + message["text"]})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = f"bare {scope['method']} {scope['path']}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def build_fastapi() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/v1/files")
    async def files() -> dict[str, str]:
        return {"owner": "app", "path": "/v1/files"}

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text("echo:" + text)
        await websocket.close()

    return app


def build_starlette() -> Starlette:
    async def item(request: Request) -> Response:
        return JSONResponse({"item": request.path_params["item_id"]})

    async def files(request: Request) -> Response:
        return JSONResponse({"owner": "app", "path": "/v1/files"})

    async def echo(websocket: Any) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text("echo:" + text)
        await websocket.close()

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/v1/files", files),
            WebSocketRoute("/ws", echo),
        ]
    )


class Exchange:
    """One HTTP request driven by hand: ``receive`` hands over the body, then waits (like a
    server) until :attr:`gone` is set to report ``http.disconnect``; ``send`` records."""

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raw_headers = [(b"host", b"router.test")]
        if body:
            raw_headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("router.test", 80),
        }
        self.sent: list[Message] = []
        self.receives = 0
        self.gone = asyncio.Event()
        self._body = body
        self.on_send: Callable[[Message], None] | None = None

    async def receive(self) -> Message:
        self.receives += 1
        if self.receives == 1:
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(dict(message))
        if self.on_send is not None:
            self.on_send(message)

    async def run(self, app: Any) -> None:
        await asyncio.wait_for(app(self.scope, self.receive, self.send), 10)

    @property
    def start(self) -> Message:
        assert self.sent[0]["type"] == "http.response.start"
        return self.sent[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def bodies(self) -> list[tuple[bytes, bool]]:
        assert all(m["type"] == "http.response.body" for m in self.sent[1:])
        return [(m.get("body", b""), m.get("more_body", False)) for m in self.sent[1:]]


# -- FastAPI and Starlette, through Starlette's TestClient ---------------------------------------
FRAMEWORKS = {
    "fastapi": (build_fastapi, lambda r: r.json() == {"detail": "Not Found"}),
    "starlette": (build_starlette, lambda r: r.text == "Not Found"),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_framework_routes_and_router_routes_live_side_by_side(framework: str) -> None:
    build, is_apps_404 = FRAMEWORKS[framework]
    net = network()
    mw = WaterfallMiddleware(build(), router_config(), transport=net)
    with TestClient(mw) as client:
        # The app's own routes, including one under the router's prefix.
        assert client.get("/items/7").json() == {"item": 7}
        files = client.get("/v1/files")
        assert (files.status_code, files.json()) == (200, {"owner": "app", "path": "/v1/files"})
        # A path under the prefix that the router does not serve is the app's to answer.
        unknown = client.get("/v1/assistants")
        assert unknown.status_code == 404
        assert is_apps_404(unknown)
        assert "x-waterfall-request-id" not in unknown.headers
        # The router's routes.
        chat = client.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 200
        assert chat.headers["x-waterfall-provider"] == "a"
        assert chat.content == twin_reply(net["a"]).body
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["fast", "fake-small"]
        assert client.get("/health").json() == {"status": "ok"}
        # The app's websocket route.
        with client.websocket_connect("/ws") as ws:
            ws.send_text("ping")
            assert ws.receive_text() == "echo:ping"
    assert [len(net[h].requests) for h in "ab"] == [1, 0]


def test_fastapi_openapi_schema_is_the_apps_own() -> None:
    mw = WaterfallMiddleware(build_fastapi(), router_config(), transport=network())
    with TestClient(mw) as client:
        schema = client.get("/openapi.json").json()
    assert sorted(schema["paths"]) == ["/items/{item_id}", "/v1/files"]


def test_lifespan_state_of_the_app_reaches_its_routes() -> None:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        yield {"greeting": "hello from lifespan"}

    async def hello(request: Request) -> Response:
        return PlainTextResponse(request.state.greeting)

    app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    with TestClient(WaterfallMiddleware(app, router_config(), transport=network())) as client:
        assert client.get("/hello").text == "hello from lifespan"


# -- a bare ASGI callable --------------------------------------------------------------------
def test_bare_callable_gets_everything_the_router_does_not_serve() -> None:
    bare = BareApp()
    net = network()
    with TestClient(WaterfallMiddleware(bare, router_config(), transport=net)) as client:
        assert client.get("/").text == "bare GET /"
        assert client.post("/v1/files", content=b"x").text == "bare POST /v1/files"
        assert client.get("/v1/chat/completions/").text == "bare GET /v1/chat/completions/"
        assert client.get("/v1").text == "bare GET /v1"
        assert client.post("/v1/chat/completions", json=CHAT).headers["x-waterfall-model"] == (
            "fake-small"
        )
        assert client.get("/health").json() == {"status": "ok"}
        # The router answers a wrong method on its own paths itself (the app never sees it).
        wrong = client.get("/v1/chat/completions")
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
        with client.websocket_connect("/v1/chat/completions") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "bare:hi"
    assert bare.seen == [
        ("http", "/"),
        ("http", "/v1/files"),
        ("http", "/v1/chat/completions/"),
        ("http", "/v1"),
        ("websocket", "/v1/chat/completions"),
    ]


@pytest.mark.anyio
async def test_passthrough_hands_over_the_very_same_scope_receive_and_send() -> None:
    bare = BareApp()
    mw = WaterfallMiddleware(bare, router_config(), transport=network())
    ex = Exchange("GET", "/elsewhere")
    await ex.run(mw)
    assert bare.last is not None
    scope, receive, send = bare.last
    assert scope is ex.scope
    assert receive == ex.receive
    assert send == ex.send
    assert ex.sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"19")],
        },
        {"type": "http.response.body", "body": b"bare GET /elsewhere"},
    ]


@pytest.mark.anyio
async def test_websocket_scope_passes_through_untouched() -> None:
    bare = BareApp()
    mw = WaterfallMiddleware(bare, router_config(), transport=network())
    inbox = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "yo"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope: Message = {"type": "websocket", "path": "/v1/models", "headers": [], "query_string": b""}
    await asyncio.wait_for(mw(scope, receive, send), 5)
    assert bare.last is not None
    assert bare.last[0] is scope
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.send", "text": "bare:yo"},
        {"type": "websocket.close", "code": 1000},
    ]


# -- no app at all ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_without_an_app_other_paths_get_a_json_404() -> None:
    mw = WaterfallMiddleware(None, router_config(), transport=network())
    ex = Exchange("GET", "/v1/files")
    await ex.run(mw)
    body = (
        b'{"error":{"message":"Unknown path /v1/files.","type":"invalid_request_error",'
        b'"param":null,"code":"unknown_url"}}'
    )
    assert ex.sent == [
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


@pytest.mark.anyio
async def test_without_an_app_over_asgi_transport() -> None:
    mw = WaterfallMiddleware(None, router_config(), transport=network())
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
        for path in ("/", "/v1", "/v1/assistants", "/health/"):
            r = await client.get(path)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "unknown_url"
            assert r.json()["error"]["message"] == f"Unknown path {path}."
        assert (await client.get("/health")).json() == {"status": "ok"}
    await mw.shutdown()


@pytest.mark.anyio
async def test_without_an_app_a_websocket_is_refused() -> None:
    mw = WaterfallMiddleware(None, router_config(), transport=network())
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope: Message = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    await asyncio.wait_for(mw(scope, receive, send), 5)
    assert [m["type"] for m in sent] == ["websocket.close"]


# -- where the router answers ---------------------------------------------------------------
def test_a_custom_prefix_moves_the_router_and_frees_v1_for_the_app() -> None:
    bare = BareApp()
    net = network()
    mw = WaterfallMiddleware(bare, router_config(prefix="/llm/v1/"), transport=net)
    with TestClient(mw) as client:
        chat = client.post("/llm/v1/chat/completions", json=CHAT)
        assert (chat.status_code, chat.headers["x-waterfall-provider"]) == (200, "a")
        assert [m["id"] for m in client.get("/llm/v1/models").json()["data"]] == [
            "fast",
            "fake-small",
        ]
        assert client.post("/v1/chat/completions", json=CHAT).text == (
            "bare POST /v1/chat/completions"
        )
        assert client.get("/v1/models").text == "bare GET /v1/models"
    assert bare.seen == [("http", "/v1/chat/completions"), ("http", "/v1/models")]
    # The upstream path is the provider's own, whatever the router's prefix.
    assert [r.path for r in net["a"].requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize(
    ("health_path", "app_gets"),
    [(None, ["/health"]), ("/healthz", ["/health"]), ("/health", [])],
)
def test_health_path_can_be_moved_or_given_back_to_the_app(
    health_path: str | None, app_gets: list[str]
) -> None:
    bare = BareApp()
    mw = WaterfallMiddleware(bare, router_config(), transport=network(), health_path=health_path)
    with TestClient(mw) as client:
        r = client.get("/health")
        if app_gets:
            assert r.text == "bare GET /health"
        else:
            assert r.json() == {"status": "ok"}
        if health_path is not None:
            assert client.get(health_path).json() == {"status": "ok"}
            assert client.head(health_path).status_code == 200
            post = client.post(health_path)
            assert (post.status_code, post.headers["allow"]) == (405, "GET")
    assert [p for _, p in bare.seen] == app_gets


def test_mounted_under_a_starlette_mount() -> None:
    net = network()
    inner = WaterfallMiddleware(None, router_config(), transport=net)
    outer = Starlette(routes=[Mount("/llm", app=inner)])
    with TestClient(outer) as client:
        assert client.get("/llm/health").json() == {"status": "ok"}
        models = client.get("/llm/v1/models")
        assert models.status_code == 200
        chat = client.post("/llm/v1/chat/completions", json=CHAT)
        assert (chat.status_code, chat.headers["x-waterfall-provider"]) == (200, "a")


# -- httpx.ASGITransport: simple non-streaming checks -------------------------------------------
@pytest.mark.anyio
async def test_router_routes_over_asgi_transport() -> None:
    bare = BareApp()
    net = network()
    mw = WaterfallMiddleware(bare, router_config(), transport=net)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 200
        assert chat.content == twin_reply(net["a"]).body
        assert chat.headers["content-length"] == str(len(chat.content))
        assert chat.headers["x-waterfall-attempts"] == "a/fake-small 200"

        emb = await client.post("/v1/embeddings", json={"model": "fast", "input": ["one", "two"]})
        assert emb.status_code == 200
        assert emb.content == twin_reply(net["a"]).body
        assert [d["index"] for d in emb.json()["data"]] == [0, 1]

        comp = await client.post("/v1/completions", json={"model": "fast", "prompt": "Hi"})
        assert comp.status_code == 200
        assert comp.json()["object"] == "text_completion"
        assert comp.headers["x-waterfall-attempts"] == "a/fake-small 200"

        missing = await client.post("/v1/chat/completions", json={"model": "fast"})
        assert missing.status_code == 400
        assert missing.json()["error"]["param"] == "messages"

        app_route = await client.get("/anything")
        assert app_route.text == "bare GET /anything"
    assert bare.seen == [("http", "/anything")]
    assert [r.path for r in net["a"].requests] == [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    ]
    assert net["a"].requests[0].headers["authorization"] == "Bearer key-a"
    await mw.shutdown()


# -- the exact message sequence, driven by hand -------------------------------------------------
@pytest.mark.anyio
async def test_non_streaming_answer_is_one_start_and_one_body() -> None:
    net = network()
    mw = WaterfallMiddleware(BareApp(), router_config(), transport=net)
    ex = Exchange("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await ex.run(mw)
    reply = twin_reply(net["a"])
    assert [m["type"] for m in ex.sent] == ["http.response.start", "http.response.body"]
    assert ex.start["status"] == 200
    names = [name for name, _ in ex.start["headers"]]
    assert names == [
        b"content-type",
        b"x-waterfall-request-id",
        b"x-waterfall-provider",
        b"x-waterfall-model",
        b"x-waterfall-attempts",
        b"content-length",
    ]
    h = ex.headers
    assert h[b"content-type"] == b"application/json"
    assert re.fullmatch(rb"[0-9a-f]{32}", h[b"x-waterfall-request-id"])
    assert (h[b"x-waterfall-provider"], h[b"x-waterfall-model"]) == (b"a", b"fake-small")
    assert h[b"x-waterfall-attempts"] == b"a/fake-small 200"
    assert h[b"content-length"] == str(len(reply.body)).encode()
    assert ex.bodies == [(reply.body, False)]
    await mw.shutdown()


@pytest.mark.anyio
async def test_streaming_answer_relays_every_upstream_chunk_as_it_came() -> None:
    net = network(a=["rate_limit:seconds=5"])
    mw = WaterfallMiddleware(BareApp(), router_config(), transport=net)
    ex = Exchange("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode())
    await ex.run(mw)
    reply = twin_reply(net["b"])
    # role, 3 words, finish, the usage chunk the router asked for, [DONE]: one chunk each
    assert len(reply.chunks) == 7
    h = ex.headers
    assert ex.start["status"] == 200
    assert h[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert (h[b"cache-control"], h[b"x-accel-buffering"]) == (b"no-cache", b"no")
    assert b"content-length" not in h
    # The fallback is invisible: nothing of a's 429 reached the client.
    assert h[b"x-waterfall-attempts"] == b"a/fake-small 429, b/fake-small 200"
    # every chunk as it came, but the usage chunk the client did not ask for
    usage_chunk = reply.chunks[-2]
    assert b'"choices":[]' in usage_chunk
    assert ex.bodies == [*((c, True) for c in reply.chunks if c != usage_chunk), (b"", False)]
    assert [r.status for r in net["a"].requests] == [429]
    await mw.shutdown()


@pytest.mark.anyio
async def test_client_gone_during_the_waterfall_sends_nothing_and_stops() -> None:
    net = network(a=["hang"])
    mw = WaterfallMiddleware(None, router_config(), transport=net)
    ex = Exchange("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    before = asyncio.all_tasks()
    call = asyncio.ensure_future(ex.run(mw))
    for _ in range(100):  # until the upstream call to a is under way
        if net["a"].requests:
            break
        await asyncio.sleep(0.01)
    assert [r.path for r in net["a"].requests] == ["/v1/chat/completions"]
    ex.gone.set()
    await call
    assert ex.sent == []
    assert net["b"].requests == []
    for _ in range(10):
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
    await mw.shutdown()


@pytest.mark.anyio
async def test_a_request_over_before_its_watch_would_start_never_listens() -> None:
    mw = WaterfallMiddleware(None, router_config(), transport=network())
    mw._watches = WatchStarter(delay=3600)  # (these take milliseconds; this makes it certain)
    for stream in (False, True):
        body = json.dumps({**CHAT, "stream": stream}).encode()
        ex = Exchange("POST", "/v1/chat/completions", body)
        await ex.run(mw)
        assert ex.start["status"] == 200
        assert ex.receives == 1  # the request body only: no task listened for a disconnect
    assert mw._watches.waiting == 0
    await mw.shutdown()


@pytest.mark.anyio
async def test_the_request_json_is_let_go_while_the_stream_is_relayed() -> None:
    marker = "a prompt that need not stay in memory while its answer streams"
    net = FakeNetwork(
        {"a": FakeProvider(name="a", reply_words=4, script=["slow_chunks:seconds=0.01"])}
    )
    cfg = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "ledger": {"path": None},
    }
    mw = WaterfallMiddleware(None, cfg, transport=net)
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": marker}], "stream": True})
    ex = Exchange("POST", "/v1/chat/completions", body.encode())
    held: list[bool] = []
    chain = mw.config.chains["fast"]

    def a_plan(obj: object) -> bool:  # a list of the chain's deployments, as router.plan makes
        return type(obj) is list and len(obj) == len(chain) and all(map(operator.is_, obj, chain))

    await mw.startup()  # (the router's own lists of deployments are made there)
    lists_before = {id(o) for o in gc.get_objects() if a_plan(o)}

    def on_send(message: Message) -> None:
        if message["type"] == "http.response.body" and not held:  # the relay is under way
            objects = gc.get_objects()
            held.append(any(_holds(o, marker) for o in objects))
            held.append(any(a_plan(o) and id(o) not in lists_before for o in objects))

    ex.on_send = on_send
    await ex.run(mw)
    assert held == [False, False]  # neither the request nor the plan it was routed by
    assert ex.bodies[-1][1] is False  # and the stream went on to its end
    await mw.shutdown()


def _holds(obj: object, marker: str) -> bool:
    """Whether ``obj`` is the client's request as the router decoded it, with ``marker`` as a
    message (its model is the chain's name: what the fake upstream keeps has the provider's
    model; and a dict of strings only is not tracked by the collector, so the request dict,
    which holds a list, is looked for)."""
    if type(obj) is not dict or obj.get("model") != "fast":
        return False
    if type(messages := obj.get("messages")) is not list:
        return False
    return any(type(m) is dict and m.get("content") == marker for m in messages)


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.pulled += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class _Spy(httpx.AsyncBaseTransport):
    """Wraps a transport and keeps every response stream, to see how far each was read."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.streams: list[_CountingStream] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        stream = _CountingStream(response.stream)
        self.streams.append(stream)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, request=request
        )


@pytest.mark.anyio
async def test_client_gone_mid_stream_stops_reading_the_upstream() -> None:
    net = FakeNetwork(
        {"a": FakeProvider(name="a", reply_words=8, script=["slow_chunks:seconds=0.02"])}
    )
    spy = _Spy(net)
    cfg = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "ledger": {"path": None, "drain_seconds": 0},  # no drain: stop reading at once
    }
    mw = WaterfallMiddleware(None, cfg, transport=spy)
    ex = Exchange("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode())
    gone = False

    def on_send(message: Message) -> None:
        nonlocal gone
        if message["type"] == "http.response.body" and not gone:
            gone = True
            ex.gone.set()  # the client leaves as soon as the first bytes reach it

    ex.on_send = on_send
    await ex.run(mw)
    total = len(twin_reply(net["a"]).chunks)
    assert total == 12
    (stream,) = spy.streams
    assert stream.closed
    assert stream.pulled < total
    await mw.shutdown()


@pytest.mark.anyio
async def test_a_server_that_fails_the_response_start_still_gets_the_upstream_released() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a", script=["slow_chunks:seconds=0.02"])})
    spy = _Spy(net)
    cfg = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "ledger": {"path": None},
    }
    ledger = MemoryLedger()
    mw = WaterfallMiddleware(None, cfg, transport=spy, ledger=ledger)
    ex = Exchange("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode())

    def on_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the connection is gone")

    ex.on_send = on_send
    with pytest.raises(OSError, match="the connection is gone"):
        await ex.run(mw)
    (stream,) = spy.streams
    assert stream.closed  # not left open until the garbage collector finds it
    (record,) = ledger.records.values()
    assert record.status in TERMINAL_STATUSES
    await mw.shutdown()
