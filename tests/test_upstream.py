"""Unit tests of the upstream seam (``waterfall_asgi.upstream``): ``AiohttpUpstream`` (production)
and ``HttpxUpstream`` (the test seam) side by side, over real loopback sockets.

Every test runs for both clients: the loopback fake provider answers with the scripted fault
asked for in the ``x-fake-behaviour`` request header, and a small raw-socket server shows the exact
bytes a client sends and answers with headers the fakes cannot produce (mixed case, repeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from types import SimpleNamespace
from typing import Any, Literal
from unittest.mock import ANY, Mock

import aiohttp
import httpx
import pytest

from waterfall_asgi.config import Timeouts
from waterfall_asgi.upstream import (
    AiohttpUpstream,
    HttpxUpstream,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTransportError,
    _AiohttpResponse,
    as_upstream,
)
from waterfall_fakes import FakeProvider, FakeServer, LoopbackServer, Reply
from waterfall_fakes.asgi import FakeApp

pytestmark = [pytest.mark.anyio, pytest.mark.loopback]

Kind = Literal["aiohttp", "httpx"]
KINDS: tuple[Kind, ...] = ("aiohttp", "httpx")
both = pytest.mark.parametrize("kind", KINDS)

SECRET = "sk-fake-0123456789abcdefSECRET"
AUTH = ("authorization", f"Bearer {SECRET}")
JSON_TYPE = ("content-type", "application/json")
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Tell me something"}]}
CHAT_BODY = json.dumps(CHAT).encode()
STREAM_BODY = json.dumps({**CHAT, "stream": True}).encode()
QUICK = Timeouts(connect=2, first_byte=5, read=5, write=5, pool=2)
SHORT_READ = Timeouts(connect=2, first_byte=5, read=0.3, write=5, pool=2)
MAX_CHUNKS = 10_000  # bounds every read loop


def make(kind: Kind) -> AiohttpUpstream | HttpxUpstream:
    return AiohttpUpstream() if kind == "aiohttp" else HttpxUpstream()


@contextlib.asynccontextmanager
async def opened(kind: Kind) -> AsyncIterator[AiohttpUpstream | HttpxUpstream]:
    upstream = make(kind)
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def post(
    upstream: Upstream,
    server: LoopbackServer,
    behaviour: str = "",
    body: bytes = CHAT_BODY,
    timeouts: Timeouts = QUICK,
) -> UpstreamResponse:
    headers = [JSON_TYPE, AUTH]
    if behaviour:
        headers.append(("x-fake-behaviour", behaviour))
    return await upstream.request("POST", server.url + "/chat/completions", headers, body, timeouts)


async def read_all(response: UpstreamResponse) -> list[bytes]:
    """Every body chunk up to the end (the ``b""`` is not included)."""
    chunks: list[bytes] = []
    for _ in range(MAX_CHUNKS):
        chunk = await response.read_chunk()
        if not chunk:
            return chunks
        chunks.append(chunk)
    raise AssertionError(f"no end of body after {MAX_CHUNKS} chunks")


async def served_once(upstream: Upstream, server: LoopbackServer) -> None:
    """One chat completion through ``upstream``: a 200, read to its end, then released."""
    response = await post(upstream, server)
    try:
        assert response.status == 200
        await read_all(response)
    finally:
        await response.aclose()


async def read_until_error(response: UpstreamResponse) -> tuple[bytes, UpstreamError]:
    """The body bytes read before ``read_chunk`` raised, and what it raised."""
    got = bytearray()
    for _ in range(MAX_CHUNKS):
        try:
            chunk = await response.read_chunk()
        except UpstreamError as exc:
            return bytes(got), exc
        if not chunk:
            raise AssertionError(f"the body ended cleanly after {len(got)} bytes")
        got += chunk
    raise AssertionError(f"no error after {MAX_CHUNKS} chunks")


def replies(provider: FakeProvider) -> list[Reply]:
    """What ``provider`` answered to each request it received (a twin replays them all)."""
    twin = FakeProvider(provider.config)
    return [twin.handle(r.method, r.path, r.headers, r.body) for r in provider.requests]


def library_exception(kind: Kind, name: str) -> type[BaseException]:
    """The client library's exception class called ``name`` (fails if there is none)."""
    module: Any = aiohttp if kind == "aiohttp" else httpx
    found = getattr(module, name, None)
    assert isinstance(found, type), f"{name!r} is not an exception of {module.__name__}"
    base = aiohttp.ClientError if kind == "aiohttp" else httpx.HTTPError
    assert issubclass(found, base), name
    return found


def served_headers(reply: Reply) -> dict[str, str]:
    """The headers a client sees for ``reply``: the fake's, and the two uvicorn adds."""
    return {"date": ANY, "server": "uvicorn", **{k.lower(): v for k, v in reply.headers}}


def assert_no_secret(exc: UpstreamError) -> None:
    for text in (str(exc), repr(exc), exc.name, *map(str, exc.args)):
        assert SECRET not in text
        assert "Bearer" not in text


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- a raw HTTP/1.1 server: the exact request bytes, and answers the fakes cannot give ----------
RAW_ANSWER = (
    b"HTTP/1.1 201 Created\r\n"
    b"Content-Type: text/plain\r\n"
    b"X-Mixed-Case: Value Kept\r\n"
    b"Content-Length: 2\r\n"
    b"\r\n"
    b"ok"
)
REPEATED_ANSWER = (
    b"HTTP/1.1 200 OK\r\nRetry-After: 7\r\nretry-after: 9\r\nContent-Length: 0\r\n\r\n"
)


@contextlib.asynccontextmanager
async def raw_server(
    answer: bytes = RAW_ANSWER, delay: float = 0.0
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Serve ``answer`` to every request on a loopback port, ``delay`` seconds after it came;
    yield the URL and the request heads received (one per request, exactly as sent)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100):  # keep-alive, bounded
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                heads.append(head)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await asyncio.sleep(delay)
                writer.write(answer)
                try:
                    await writer.drain()
                except ConnectionError:  # the client gave up waiting
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1/x", heads
    finally:
        server.close()
        await server.wait_closed()


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [
        (name, value.strip()) for name, _, value in (line.partition(b":") for line in lines if line)
    ]


# -- responses ----------------------------------------------------------------------------------
@both
async def test_a_json_response_whole(kind: Kind, fake_server: FakeServer) -> None:
    async with opened(kind) as upstream:
        response = await post(upstream, fake_server)
        try:
            assert (response.status, response.reason) == (200, "OK")
            headers = response.headers
            body = b"".join(await read_all(response))
            assert await response.read_chunk() == b""  # at the end ...
            assert await response.read_chunk() == b""  # ... and again
        finally:
            await response.aclose()
    (reply,) = replies(fake_server.provider)
    assert body == reply.body
    assert json.loads(body)["object"] == "chat.completion"
    assert headers == served_headers(reply)
    assert headers["content-length"] == str(len(body))
    assert headers["x-fake-name"] == "fake"


@both
@pytest.mark.parametrize(
    "behaviour", ["", "chunking:size=7", "slow_chunks:seconds=0.01; line_endings:style=cr"]
)
async def test_a_streamed_sse_response_chunk_by_chunk(
    kind: Kind, behaviour: str, fake_server: FakeServer
) -> None:
    async with opened(kind) as upstream:
        response = await post(upstream, fake_server, behaviour, STREAM_BODY)
        try:
            status, headers = response.status, response.headers
            chunks = await read_all(response)
            assert await response.read_chunk() == b""
            assert await response.read_chunk() == b""
        finally:
            await response.aclose()
    (reply,) = replies(fake_server.provider)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["transfer-encoding"] == "chunked"
    assert b"".join(chunks) == reply.body
    assert reply.body.rstrip().endswith(b"data: [DONE]")
    assert all(chunks)
    if "slow" in behaviour:  # events sent apart arrive apart
        assert len(chunks) > 1


async def read_all_trusting_at_end(response: UpstreamResponse) -> list[bytes]:
    """As :func:`read_all`, checking before each read that a response which says it is at its
    end (``at_end()``) is: the read gives ``b""``."""
    chunks: list[bytes] = []
    for _ in range(MAX_CHUNKS):
        said = response.at_end()  # type: ignore[attr-defined]
        chunk = await response.read_chunk()
        assert not (said and chunk), f"at_end() said the end, then {len(chunk)} bytes came"
        if not chunk:
            return chunks
        chunks.append(chunk)
    raise AssertionError(f"no end of body after {MAX_CHUNKS} chunks")


@both
@pytest.mark.parametrize("body", [CHAT_BODY, STREAM_BODY])
@pytest.mark.parametrize("behaviour", ["", "chunking:size=7", "slow_chunks:seconds=0.01"])
async def test_at_end_tells_only_an_end_that_has_come(
    kind: Kind, body: bytes, behaviour: str, fake_server: FakeServer
) -> None:
    """What lets the relay send a stream's last events with the end of the response: aiohttp
    knows once the end has arrived; an httpx stream read from the network never says."""
    async with opened(kind) as upstream:
        response = await post(upstream, fake_server, behaviour, body)
        try:
            assert not response.at_end()  # type: ignore[attr-defined]
            chunks = await read_all_trusting_at_end(response)
            ended = response.at_end()  # type: ignore[attr-defined]
        finally:
            await response.aclose()
    (reply,) = replies(fake_server.provider)
    assert b"".join(chunks) == reply.body
    assert ended is (kind == "aiohttp")


async def test_an_aiohttp_body_with_a_failure_waiting_is_not_at_its_end() -> None:
    """The end has arrived, and a failure after it (aiohttp's reader raises it on the next read):
    the read must happen, so at_end() says no."""
    content = aiohttp.StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())
    response = _AiohttpResponse(SimpleNamespace(content=content, raw_headers=()))  # type: ignore[arg-type]
    content.feed_data(b"data: [DONE]\n\n")
    content.feed_eof()
    assert not response.at_end()
    assert await response.read_chunk() == b"data: [DONE]\n\n"
    assert response.at_end()
    content.set_exception(aiohttp.ClientPayloadError("cut"))
    assert not response.at_end()
    with pytest.raises(UpstreamTransportError):
        await response.read_chunk()


async def test_at_end_of_a_response_httpx_read_whole_comes_after_its_one_chunk() -> None:
    """A response made from bytes (``httpx.MockTransport``, respx) has been read already: its
    body is one chunk, and the response knows that nothing follows it."""
    body = b'{"object":"chat.completion"}'
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await HttpxUpstream(client).request(
            "POST", "http://up/v1/chat/completions", [JSON_TYPE], CHAT_BODY, QUICK
        )
        assert await read_all_trusting_at_end(response) == [body]
        assert response.at_end()  # type: ignore[attr-defined]
        await response.aclose()


@both
@pytest.mark.parametrize(
    ("behaviour", "status", "reason", "header"),
    [
        ("status:code=503", 503, "Service Unavailable", None),
        ("insufficient_balance", 402, "Payment Required", None),
        ("rate_limit:dialect=retry-after,seconds=3", 429, "Too Many Requests", "retry-after"),
        (
            "rate_limit:dialect=openai,seconds=2",
            429,
            "Too Many Requests",
            "x-ratelimit-reset-requests",
        ),
    ],
)
async def test_error_statuses_come_back_as_responses(
    kind: Kind,
    behaviour: str,
    status: int,
    reason: str,
    header: str | None,
    fake_server: FakeServer,
) -> None:
    async with opened(kind) as upstream:
        response = await post(upstream, fake_server, behaviour, STREAM_BODY)
        try:
            got = (response.status, response.reason, response.headers)
            body = b"".join(await read_all(response))
        finally:
            await response.aclose()
    (reply,) = replies(fake_server.provider)
    assert got[:2] == (status, reason)
    assert got[2] == served_headers(reply)
    if header is not None:
        assert got[2][header] == dict(reply.headers)[header]
    assert body == reply.body
    assert "error" in json.loads(body)


@both
async def test_headers_come_back_lower_cased(kind: Kind) -> None:
    async with raw_server() as (url, _), opened(kind) as upstream:
        response = await upstream.request("GET", url, [], None, QUICK)
        try:
            got = (response.status, response.reason, response.headers)
            chunks = await read_all(response)
        finally:
            await response.aclose()
    assert got == (
        201,
        "Created",
        {"content-type": "text/plain", "x-mixed-case": "Value Kept", "content-length": "2"},
    )
    assert chunks == [b"ok"]


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_repeated_response_header_keeps_its_last_value(kind: Kind) -> None:
    async with raw_server(REPEATED_ANSWER) as (url, _), opened(kind) as upstream:
        response = await upstream.request("GET", url, [], None, QUICK)
        try:
            headers = response.headers
            assert await read_all(response) == []
        finally:
            await response.aclose()
    assert headers["retry-after"] == "9"


# -- failures -------------------------------------------------------------------------------------
CONNECT_ERRORS = {"aiohttp": "ClientConnectorError", "httpx": "ConnectError"}


@both
async def test_a_refused_connection_is_a_connect_error(kind: Kind) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    async with opened(kind) as upstream:
        with pytest.raises(UpstreamConnectError) as caught:
            await upstream.request("POST", url, [JSON_TYPE, AUTH], CHAT_BODY, QUICK)
    exc = caught.value
    assert exc.name == CONNECT_ERRORS[kind]
    library_exception(kind, exc.name)
    assert not isinstance(exc, TimeoutError)
    assert_no_secret(exc)


@both
async def test_a_hang_before_the_headers_times_out_in_request(
    kind: Kind, fake_server: FakeServer
) -> None:
    async with opened(kind) as upstream:
        with pytest.raises(UpstreamTimeout) as caught:
            await post(upstream, fake_server, "hang", STREAM_BODY, SHORT_READ)
        # the connection was given up on: the client still works
        response = await post(upstream, fake_server)
        try:
            assert response.status == 200
            assert b"".join(await read_all(response)) == replies(fake_server.provider)[1].body
        finally:
            await response.aclose()
    exc = caught.value
    assert isinstance(exc, TimeoutError)
    assert issubclass(
        library_exception(kind, exc.name), asyncio.TimeoutError | httpx.TimeoutException
    )
    assert_no_secret(exc)


@both
@pytest.mark.parametrize(
    ("behaviour", "before"),
    [("slow_first_byte:seconds=3", 0), ("slow_chunks:seconds=3", 1)],
)
async def test_a_stalled_body_times_out_in_read_chunk(
    kind: Kind, behaviour: str, before: int, fake_server: FakeServer
) -> None:
    async with opened(kind) as upstream:
        response = await post(upstream, fake_server, behaviour, STREAM_BODY, SHORT_READ)
        try:
            assert response.status == 200  # the headers came at once
            got = [await response.read_chunk() for _ in range(before)]
            with pytest.raises(UpstreamTimeout) as caught:
                await response.read_chunk()
        finally:
            await response.aclose()
    (reply,) = replies(fake_server.provider)
    assert got == list(reply.chunks[:before])
    exc = caught.value
    assert isinstance(exc, TimeoutError)
    library_exception(kind, exc.name)
    assert_no_secret(exc)


class WatchedServer(FakeServer):
    """A loopback fake that can tell when it has finished answering (a cut included)."""

    def __init__(self) -> None:
        super().__init__()
        self._done = threading.Semaphore(0)
        inner = self._fake_app

        async def app(
            scope: MutableMapping[str, Any],
            receive: Callable[[], Awaitable[Any]],
            send: Callable[[Any], Awaitable[None]],
        ) -> None:
            try:
                await inner(scope, receive, send)
            finally:
                if scope["type"] == "http":
                    self._done.release()

        self.app = app

    def forget(self) -> None:
        """Forget the requests answered so far."""
        self._done = threading.Semaphore(0)

    async def finished(self) -> None:
        """Wait (at most 5 s) until one more request has been answered to its end."""
        done = await asyncio.to_thread(self._done.acquire, True, 5)
        assert done, "the fake did not finish answering within 5 s"


@pytest.fixture(scope="module")
def cut_server() -> Iterator[WatchedServer]:
    with WatchedServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_cut_provider(request: pytest.FixtureRequest) -> None:
    if "cut_server" in request.fixturenames:
        server: WatchedServer = request.getfixturevalue("cut_server")
        server.provider = FakeProvider()
        server.forget()


CUT_ERRORS = {"aiohttp": "ClientPayloadError", "httpx": "RemoteProtocolError"}
CUTS = [
    ("json", "cut:bytes=100", CHAT_BODY),
    ("json-nothing", "cut:bytes=0", CHAT_BODY),
    ("sse", "cut:bytes=100", STREAM_BODY),
    ("sse-small-chunks", "cut:bytes=333; chunking:size=10", STREAM_BODY),
]


def _cut_cases() -> list[Any]:
    return [
        pytest.param(
            kind, late, behaviour, body, id=f"{name}-{kind}-{'late' if late else 'waiting'}"
        )
        for name, behaviour, body in CUTS
        for kind in KINDS
        # late: the bytes and the cut have both arrived before the first read (aiohttp's
        # StreamReader.readany raises a stored failure before the bytes buffered ahead of it)
        for late in (False, True)
    ]


@pytest.mark.parametrize(("kind", "late", "behaviour", "body"), _cut_cases())
async def test_a_cut_body_gives_the_bytes_before_the_cut_then_a_transport_error(
    kind: Kind, late: bool, behaviour: str, body: bytes, cut_server: WatchedServer
) -> None:
    async with opened(kind) as upstream:
        response = await post(upstream, cut_server, behaviour, body)
        try:
            assert response.status == 200
            if late:  # everything, the cut included, has arrived before the first read
                await cut_server.finished()
                await asyncio.sleep(0.05)  # the client's loop takes the bytes and the close in
            got, exc = await read_until_error(response)
            cut_ended = response.at_end()  # type: ignore[attr-defined]
        finally:
            await response.aclose()
    (reply,) = replies(cut_server.provider)
    assert reply.cut
    assert not cut_ended  # a cut body never reached its end
    size = int(behaviour.split("=")[1].split(";")[0])
    assert got == reply.body
    assert len(got) == size
    assert isinstance(exc, UpstreamTransportError)
    assert not isinstance(exc, TimeoutError)
    assert exc.name == CUT_ERRORS[kind]
    library_exception(kind, exc.name)
    assert_no_secret(exc)


# -- the connection pool --------------------------------------------------------------------------
class ClientRecorder:
    """An ASGI wrapper recording each HTTP request's client address (one per connection)."""

    def __init__(self, app: FakeApp) -> None:
        self.app = app
        self.clients: list[tuple[str, int]] = []

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            host, port = scope["client"]
            self.clients.append((host, port))
        await self.app(scope, receive, send)


@both
async def test_a_fully_read_response_returns_its_connection_to_the_pool(kind: Kind) -> None:
    recorder = ClientRecorder(FakeApp(FakeProvider()))
    with LoopbackServer(recorder) as server:
        async with opened(kind) as upstream:
            bodies = []
            for body in (CHAT_BODY, STREAM_BODY, CHAT_BODY, STREAM_BODY):
                response = await post(upstream, server, "", body)
                try:
                    bodies.append(b"".join(await read_all(response)))
                finally:
                    await response.aclose()
    assert bodies == [r.body for r in replies(recorder.app.provider)]
    assert len(recorder.clients) == 4
    # fewer connections than requests: every one of them went over the first connection
    assert len(set(recorder.clients)) == 1


@both
async def test_closing_a_half_read_response_does_not_break_the_next_request(kind: Kind) -> None:
    recorder = ClientRecorder(FakeApp(FakeProvider()))
    with LoopbackServer(recorder) as server:
        async with opened(kind) as upstream:
            first = await post(upstream, server, "slow_chunks:seconds=0.2", STREAM_BODY)
            try:
                start = await first.read_chunk()
            finally:
                await first.aclose()
            bodies = []
            for body in (CHAT_BODY, STREAM_BODY):
                response = await post(upstream, server, "", body)
                try:
                    assert response.status == 200
                    bodies.append(b"".join(await read_all(response)))
                finally:
                    await response.aclose()
    half, *whole = replies(recorder.app.provider)
    assert start == half.chunks[0]
    assert len(half.chunks) > 2  # it was closed with most of its body unread
    assert bodies == [r.body for r in whole]
    assert len(recorder.clients) == 3
    # the two complete ones after it shared a connection
    assert recorder.clients[1] == recorder.clients[2]


# -- who closes what ------------------------------------------------------------------------------
async def test_as_upstream_wraps_an_httpx_client_and_never_closes_it(
    fake_server: FakeServer,
) -> None:
    async with httpx.AsyncClient() as client:
        upstream = as_upstream(client)
        assert isinstance(upstream, HttpxUpstream)
        assert upstream.client is client
        await served_once(upstream, fake_server)
        await upstream.aclose()
        assert not client.is_closed
        again = await client.get(fake_server.root + "/health")  # still usable
        assert again.json()["status"] == "ok"
    own = AiohttpUpstream()
    assert as_upstream(own) is own


async def test_an_owned_httpx_client_is_closed() -> None:
    upstream = HttpxUpstream()
    assert not upstream.client.is_closed
    await upstream.aclose()
    assert upstream.client.is_closed


async def test_a_given_aiohttp_session_is_used_and_never_closed(fake_server: FakeServer) -> None:
    async with aiohttp.ClientSession() as session:
        upstream = AiohttpUpstream(session=session)
        assert upstream.session is session
        await served_once(upstream, fake_server)
        await upstream.aclose()
        assert upstream.session is session
        assert not session.closed
        async with session.get(fake_server.root + "/health") as again:  # still usable
            assert (await again.json())["status"] == "ok"
    assert len(fake_server.provider.requests) == 2


async def test_an_owned_aiohttp_session_is_made_on_first_use_and_closed(
    fake_server: FakeServer,
) -> None:
    def session_of(upstream: AiohttpUpstream) -> aiohttp.ClientSession | None:
        return upstream.session

    upstream = AiohttpUpstream()
    assert session_of(upstream) is None
    await upstream.aclose()  # nothing to close yet
    response = await post(upstream, fake_server)
    try:
        await read_all(response)
    finally:
        await response.aclose()
    session = session_of(upstream)
    assert session is not None
    closed = [session.closed]
    await upstream.aclose()
    closed.append(session.closed)
    assert closed == [False, True]
    assert session_of(upstream) is None


# -- what goes upstream ---------------------------------------------------------------------------
SENT_HEADERS = [
    ("X-Trace", "Mixed Case Value"),
    ("x-multi", "one"),
    ("x-multi", "two"),
    ("accept-encoding", "identity"),
    ("Content-Type", "application/json"),
]


@both
async def test_request_headers_arrive_as_given(kind: Kind) -> None:
    async with raw_server() as (url, heads), opened(kind) as upstream:
        response = await upstream.request("POST", url, SENT_HEADERS, b'{"a": 1}', QUICK)
        try:
            assert await read_all(response) == [b"ok"]
        finally:
            await response.aclose()
    (head,) = heads
    assert head.startswith(b"POST /v1/x HTTP/1.1\r\n")
    lines = [(n.lower(), v) for n, v in header_lines(head)]
    for name, value in SENT_HEADERS:  # every value as given (names: case-insensitive)
        assert (name.lower().encode(), value.encode()) in lines
    assert [v for n, v in lines if n == b"x-multi"] == [b"one", b"two"]  # repeats, in order
    # the caller's identity is the only Accept-Encoding: no gzip added behind its back
    assert [v for n, v in lines if n.lower() == b"accept-encoding"] == [b"identity"]
    assert [v for n, v in lines if n.lower() == b"content-length"] == [b"8"]
    assert [v for n, v in lines if n.lower() == b"content-type"] == [b"application/json"]


@both
async def test_a_header_repeated_in_another_case_is_kept(kind: Kind) -> None:
    given = [("X-Multi", "one"), ("x-multi", "two")]
    async with raw_server() as (url, heads), opened(kind) as upstream:
        response = await upstream.request("GET", url, given, None, QUICK)
        try:
            await read_all(response)
        finally:
            await response.aclose()
    (head,) = heads
    assert [v for n, v in header_lines(head) if n.lower() == b"x-multi"] == [b"one", b"two"]


COOKIE_ANSWER = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: session=upstream-secret; Path=/\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_an_upstreams_cookie_is_never_sent_back(kind: Kind) -> None:
    async with raw_server(COOKIE_ANSWER) as (url, heads), opened(kind) as upstream:
        for _ in range(2):
            response = await upstream.request("GET", url, [], None, QUICK)
            try:
                assert await read_all(response) == []
            finally:
                await response.aclose()
    assert len(heads) == 2
    assert all(b"upstream-secret" not in head for head in heads)


# -- the proxy from the environment --------------------------------------------------------------


@both
async def test_the_environments_proxy_is_used_and_no_proxy_is_honoured(
    kind: Kind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both clients send through ``HTTP_PROXY`` (the proxy sees the absolute URL) unless
    ``NO_PROXY`` names the host. The raw server stands in for the proxy."""
    for name in ("http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with raw_server() as (proxy_url, heads):
        proxy = proxy_url.removesuffix("/v1/x")
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
        target = "http://api.upstream.invalid/v1/chat/completions"
        async with opened(kind) as upstream:
            response = await upstream.request("POST", target, [JSON_TYPE], b"{}", QUICK)
            try:
                assert response.status == 201
                await read_all(response)
            finally:
                await response.aclose()
            with pytest.raises(UpstreamConnectError):  # NO_PROXY: straight to a host that is not
                await upstream.request("GET", "http://bypassed.invalid/v1/x", [], None, QUICK)
    assert len(heads) == 1
    assert heads[0].startswith(b"POST " + target.encode() + b" HTTP/1.1\r\n")


# -- the wait for headers ------------------------------------------------------------------------


def test_for_headers_stretches_only_a_read_timeout_shorter_than_first_byte() -> None:
    short = Timeouts(connect=1, first_byte=5, read=0.1, write=1, pool=1)
    assert short.for_headers() == short.model_copy(update={"read": 5})
    assert QUICK.for_headers() is QUICK  # read 5 >= first_byte 5: as it is


@both
async def test_a_clients_read_timeout_bounds_the_wait_for_headers(kind: Kind) -> None:
    """Both clients apply ``read`` to the wait for response headers, which is why the router
    (and the price import) ask with ``Timeouts.for_headers()``: a provider that answers a
    non-streaming request only once it is done must not be cut off by ``read``."""
    slow = Timeouts(connect=2, first_byte=3, read=0.1, write=2, pool=2)
    async with raw_server(delay=0.4) as (url, _), opened(kind) as upstream:
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", url, [], None, slow)
        response = await upstream.request("GET", url, [], None, slow.for_headers())
        try:
            assert response.status == 201
        finally:
            await response.aclose()
