"""The fake over real TCP (FakeServer on 127.0.0.1) and the raw ASGI app underneath it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    ConnectionCut,
    FakeApp,
    FakeProvider,
    FakeServer,
)
from waterfall_fakes.server import _HideScriptedCuts

CHAT = "/chat/completions"
BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
STREAM = {**BODY, "stream": True}


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeServer]:
    with FakeServer(FakeProvider()) as running:
        yield running


@pytest.fixture
def server(shared_server: FakeServer) -> FakeServer:
    """The module's running server, its fake reset (no requests, request number 0)."""
    shared_server.provider.reset()
    return shared_server


def twin_body(spec: str | None, body: dict[str, Any] = STREAM) -> bytes:
    """What a fresh fake answers to the same first request, in-process."""
    headers = {BEHAVIOUR_HEADER: spec} if spec else {}
    reply = FakeProvider().handle(
        "POST", "/v1/chat/completions", headers, json.dumps(body).encode()
    )
    return reply.body


def post_stream(client: httpx.Client, spec: str, body: dict[str, Any] = STREAM) -> Any:
    return client.stream(
        "POST", CHAT, content=json.dumps(body).encode(), headers={BEHAVIOUR_HEADER: spec}
    )


def collect(r: httpx.Response, into: list[bytes]) -> None:
    """Read raw chunks into ``into`` until the stream ends or fails."""
    for chunk in r.iter_raw():
        into.append(chunk)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for_requests(fake: FakeProvider, count: int) -> None:
    for _ in range(500):
        if len(fake.requests) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"the fake never saw {count} request(s)")


# -- loopback --------------------------------------------------------------------------------------


@pytest.mark.loopback
def test_urls_and_health(server: FakeServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.root == f"http://127.0.0.1:{server.port}"
    assert server.url == server.root + "/v1"
    r = httpx.get(server.root + "/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "name": "fake"}
    assert r.headers["x-fake-name"] == "fake"
    assert repr(server) == (
        f"FakeServer(http://127.0.0.1:{server.port}, running, "
        "FakeProvider(name='fake', requests=1))"
    )


@pytest.mark.loopback
def test_models_decimals_over_tcp(server: FakeServer) -> None:
    r = httpx.get(server.url + "/models")
    data = json.loads(r.content, parse_float=Decimal)["data"]
    assert data[0]["sats_pricing"]["prompt"] == Decimal("0.00015")
    assert data[0]["pricing"]["prompt"] == "0.00000015"


@pytest.mark.loopback
@pytest.mark.parametrize(
    "spec",
    [
        "ok",
        "chunking:size=1",
        "chunking:seed=3,max_size=60; slow_chunks:seconds=0.001",
        "keepalive; fields; line_endings:style=crlf",
        "big_event:size=70000",
    ],
)
def test_stream_bytes_survive_tcp(server: FakeServer, spec: str) -> None:
    with httpx.Client(base_url=server.url) as c, post_stream(c, spec) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        got = b"".join(r.iter_raw())
    assert got == twin_body(spec)


@pytest.mark.loopback
def test_same_seed_same_bytes_over_tcp_and_in_process(server: FakeServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post(CHAT, content=json.dumps(BODY).encode())
    assert r.status_code == 200
    assert r.content == twin_body(None, BODY)
    assert r.headers["content-length"] == str(len(r.content))


@pytest.mark.loopback
def test_error_answers_over_tcp(server: FakeServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/nope").status_code == 404
        r = c.get(CHAT)
        assert r.status_code == 405
        assert r.headers["allow"] == "POST"
        r = c.post(CHAT, json=BODY, headers={BEHAVIOUR_HEADER: "rate_limit:seconds=2.5"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert c.post(CHAT, content=b"{").status_code == 400
    assert [q.status for q in server.provider.requests] == [404, 405, 429, 400]
    recorded = server.provider.requests[2]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["host"] == f"127.0.0.1:{server.port}"
    assert recorded.json == BODY


@pytest.mark.loopback
@pytest.mark.parametrize("spec", ["cut:bytes=300", "chunking:size=50; cut:bytes=301", "cut"])
def test_a_stream_cut_is_an_error_for_the_client(server: FakeServer, spec: str) -> None:
    got: list[bytes] = []
    with httpx.Client(base_url=server.url) as c, post_stream(c, spec) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            collect(r, got)
    assert b"".join(got) == twin_body(spec)
    with httpx.Client(base_url=server.url) as c:  # the server carries on
        assert c.get("/models").status_code == 200


@pytest.mark.loopback
def test_a_json_cut_is_an_error_for_the_client(server: FakeServer) -> None:
    with httpx.Client(base_url=server.url) as c, pytest.raises(httpx.RemoteProtocolError):
        c.post(CHAT, json=BODY, headers={BEHAVIOUR_HEADER: "cut:bytes=40"})


@pytest.mark.loopback
def test_scripted_cuts_are_not_logged(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        with httpx.Client(base_url=server.url) as c, pytest.raises(httpx.RemoteProtocolError):
            c.post(CHAT, json=STREAM, headers={BEHAVIOUR_HEADER: "cut:bytes=10"})
        with httpx.Client(base_url=server.url) as c:
            c.get("/health")
    assert [r for r in caplog.records if r.name == "uvicorn.error"] == []


def test_cut_filter_sees_through_exception_chains() -> None:
    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "x", None, info)

    try:
        try:
            raise ConnectionCut("scripted")
        except ConnectionCut as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        wrapped = outer
    hide = _HideScriptedCuts()
    assert hide.filter(record(ConnectionCut("x"))) is False
    assert hide.filter(record(wrapped)) is False
    assert hide.filter(record(ValueError("real"))) is True
    assert hide.filter(record(None)) is True


@pytest.mark.loopback
def test_a_hang_hits_the_client_timeout(server: FakeServer) -> None:
    timeout = httpx.Timeout(5.0, read=0.1)
    with httpx.Client(base_url=server.url, timeout=timeout) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(CHAT, json=BODY, headers={BEHAVIOUR_HEADER: "hang"})
        with post_stream(c, "slow_first_byte:seconds=30") as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                r.read()
        # the server is still fine (a normal timeout here: the machine may be busy)
        assert c.post(CHAT, json=BODY, timeout=10.0).status_code == 200


@pytest.mark.loopback
def test_stop_returns_with_a_hanging_request_open() -> None:
    fake = FakeProvider(script=["hang"])
    server = FakeServer(fake).start()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(server.url + CHAT, json=BODY, timeout=60)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    client = threading.Thread(target=call, daemon=True)
    client.start()
    try:
        wait_for_requests(fake, 1)
    finally:
        server.stop()
    client.join(10)
    assert not client.is_alive()
    # the server closed the connection: no 500, and not the client's own 60 s timeout
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    assert repr(server).endswith(", stopped, FakeProvider(name='fake', requests=1))")


@pytest.mark.loopback
def test_start_twice_raises_and_stop_is_idempotent() -> None:
    server = FakeServer()
    with server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        assert httpx.get(server.root + "/health").status_code == 200
    server.stop()
    with server:  # a stopped server can start again
        assert httpx.get(server.root + "/health").status_code == 200
        assert len(server.provider.requests) == 2


@pytest.mark.loopback
def test_a_port_can_be_chosen() -> None:
    port = free_port()
    with FakeServer(FakeProvider(name="chosen"), port=port) as server:
        assert server.port == port
        assert server.url == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["name"] == "chosen"


@pytest.mark.loopback
def test_a_busy_port_fails_to_start() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = FakeServer(port=busy.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            server.start()
        assert "stopped" in repr(server)


# -- the ASGI app itself ---------------------------------------------------------------------------


class Peer:
    """Plays an ASGI server: feeds request messages and collects what the app sends."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming: list[MutableMapping[str, Any]] = list(messages)
        self.sent: list[MutableMapping[str, Any]] = []
        self.gone = anyio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers}


def body_message(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


@pytest.mark.anyio
async def test_app_lifespan() -> None:
    peer = Peer({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await FakeApp()({"type": "lifespan"}, peer.receive, peer.send)
    assert peer.sent == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


@pytest.mark.anyio
async def test_app_ignores_websockets() -> None:
    peer = Peer()
    await FakeApp()({"type": "websocket"}, peer.receive, peer.send)
    assert peer.sent == []


@pytest.mark.anyio
async def test_app_sends_one_body_message_per_chunk() -> None:
    fake = FakeProvider()
    raw = json.dumps(STREAM).encode()
    peer = Peer(body_message(raw[:10], more=True), body_message(raw[10:]))
    headers = [(b"X-Fake-Behaviour", b"chunking:size=100")]
    await FakeApp(fake)(
        http_scope("POST", "/v1/chat/completions", headers), peer.receive, peer.send
    )
    expected = FakeProvider().handle(
        "POST", "/v1/chat/completions", {BEHAVIOUR_HEADER: "chunking:size=100"}, raw
    )
    start, *bodies, end = peer.sent
    assert start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(k.encode(), v.encode()) for k, v in expected.headers],
    }
    assert bodies == [
        {"type": "http.response.body", "body": chunk, "more_body": True}
        for chunk in expected.chunks
    ]
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}
    assert fake.requests[0].json == STREAM


@pytest.mark.anyio
async def test_app_cut_raises_connection_cut_after_the_bytes() -> None:
    peer = Peer(body_message(json.dumps(STREAM).encode()))
    scope = http_scope("POST", "/v1/chat/completions", [(b"x-fake-behaviour", b"cut:bytes=9")])
    with pytest.raises(ConnectionCut):
        await FakeApp()(scope, peer.receive, peer.send)
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]
    assert peer.sent[1]["body"] == b'data: {"i'


@pytest.mark.anyio
async def test_app_hang_ends_when_the_client_goes() -> None:
    peer = Peer(body_message(json.dumps(BODY).encode()))
    scope = http_scope("POST", "/v1/chat/completions", [(b"x-fake-behaviour", b"hang")])
    async with anyio.create_task_group() as tg:
        tg.start_soon(FakeApp().__call__, scope, peer.receive, peer.send)
        await anyio.sleep(0.02)
        peer.gone.set()
    assert peer.sent == []


@pytest.mark.anyio
async def test_app_slow_chunks_stop_when_the_client_goes() -> None:
    peer = Peer(body_message(json.dumps(STREAM).encode()))
    scope = http_scope(
        "POST", "/v1/chat/completions", [(b"x-fake-behaviour", b"slow_chunks:seconds=30")]
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(FakeApp().__call__, scope, peer.receive, peer.send)
        await anyio.sleep(0.02)
        peer.gone.set()
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]


@pytest.mark.anyio
async def test_app_client_gone_before_the_body_ends() -> None:
    fake = FakeProvider()
    peer = Peer(body_message(b"{", more=True), {"type": "http.disconnect"})
    await FakeApp(fake)(http_scope("POST", "/v1/chat/completions", []), peer.receive, peer.send)
    assert peer.sent == []
    assert fake.requests == []
