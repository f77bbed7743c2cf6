"""Upstreams that misbehave: huge, endless or slow non-stream bodies, compressed answers,
redirects, bodies that are not JSON, and error bodies that echo the router's secrets.

Each upstream is a raw asyncio server (``raw_http``) so it can misbehave at the byte level; each
test runs with both upstream clients (aiohttp and httpx).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import brotli  # type: ignore[import-untyped,unused-ignore]
import pytest
from asgi_helpers import Result, call
from raw_http import RawRequest, RawUpstream, response

from waterfall_asgi import MemoryLedger, WaterfallMiddleware

pytestmark = pytest.mark.anyio

KEY = "sk-router-KEY-0123456789abcdef"
HEADER_SECRET = "hdr-SECRET-9876543210"
CLIENTS = ["aiohttp", "httpx"]
ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}

Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


async def good(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, json.dumps(ANSWER).encode()))


@asynccontextmanager
async def router(
    client: str, *handlers: Handler, limits: dict[str, Any] | None = None
) -> AsyncIterator[tuple[WaterfallMiddleware, MemoryLedger, list[RawUpstream]]]:
    """A router over one raw upstream per handler, chained in order as ``fast``."""
    async with AsyncExitStack() as stack:
        ups = [await stack.enter_async_context(RawUpstream(h)) for h in handlers]
        ledger = MemoryLedger()
        config = {
            "providers": {
                f"p{i}": {
                    "base_url": up.url,
                    "api_key": KEY,
                    "headers": {"x-secret": HEADER_SECRET},
                    "timeouts": {"read": 5, "first_byte": 5},
                }
                for i, up in enumerate(ups)
            },
            "chains": {"fast": [f"p{i}/m" for i in range(len(ups))]},
            "upstream": {"client": client},
            "limits": limits or {},
            "ledger": {"path": ""},
        }
        app = WaterfallMiddleware(None, config, ledger=ledger)
        try:
            yield app, ledger, ups
        finally:
            await app.shutdown()


async def chat(app: WaterfallMiddleware, payload: dict[str, Any] | None = None) -> Result:
    async with asyncio.timeout(30):
        return await call(app, "POST", "/v1/chat/completions", payload or CHAT)


def only(ledger: MemoryLedger) -> Any:
    (record,) = ledger.records.values()
    return record


# -- 1. a non-stream body is bounded in size and time -------------------------------------------


async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """A 200 whose chunked body never ends (an event stream, to a non-stream request)."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunk = b'data: {"choices": [{"delta": {"content": "' + b"x" * 8000 + b'"}}]}\n\n'
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while True:  # until the router hangs up (the handler's task is then cancelled)
        writer.write(framed)
        await writer.drain()


async def huge(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """A JSON answer announced as 1 GiB, written lazily until the router hangs up."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n"
    )
    writer.write(b'{"padding": "')
    block = b"x" * 65536
    while True:
        writer.write(block)
        await writer.drain()


async def trickle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """A JSON answer whose bytes come one at a time, each well within the read timeout."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    )
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("bad", [huge, endless], ids=["huge", "endless"])
async def test_an_oversized_body_falls_through(client: str, bad: Handler) -> None:
    async with router(client, bad, good, limits={"max_response_bytes": 1_000_000}) as (
        app,
        ledger,
        _,
    ):
        result = await chat(app)
    assert result.status == 200, result.body
    assert result.json() == ANSWER
    assert result.headers["x-waterfall-attempts"] == "p0/m too_large, p1/m 200"
    record = only(ledger)
    assert (record.status, record.total_tokens) == ("success", 5)


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_oversized_body_alone_is_a_503_never_half_a_body(client: str) -> None:
    async with router(client, huge, limits={"max_response_bytes": 1_000_000}) as (app, ledger, _):
        result = await chat(app)
    assert result.status == 503
    assert result.json()["error"]["code"] == "all_providers_exhausted"
    assert b"padding" not in result.body
    assert only(ledger).status == "exhausted"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_body_that_never_ends_is_bounded_in_time(client: str) -> None:
    async with router(client, trickle, good, limits={"max_response_seconds": 0.3}) as (
        app,
        _ledger,
        _,
    ):
        result = await chat(app)
    assert result.status == 200
    assert result.headers["x-waterfall-attempts"] == "p0/m timeout, p1/m 200"


# -- 2. what an upstream says never carries the router's secrets ---------------------------------


def echo(status: int) -> Handler:
    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        said = "; ".join(f"{k}: {v}" for k, v in request.headers)
        body = {"error": {"message": f"you sent {said}", "code": request.header("authorization")}}
        writer.write(
            response(
                status,
                json.dumps(body).encode(),
                [("content-type", f"application/json; echo={request.header('x-secret')}")],
            )
        )

    return handler


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("status", [400, 500])
async def test_an_echoed_key_never_reaches_the_client_log_or_ledger(
    client: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="waterfall_asgi")
    async with router(client, echo(status)) as (app, ledger, ups):
        result = await chat(app)
    assert ups[0].requests[0].header("authorization") == f"Bearer {KEY}"  # it was sent
    assert result.status == (400 if status == 400 else 503)
    seen = [
        result.body.decode(),
        json.dumps(result.headers),
        caplog.text,
        json.dumps([r.to_dict() for r in ledger.records.values()]),
    ]
    for text in seen:
        assert KEY not in text
        assert HEADER_SECRET not in text
    if status == 400:  # passed back, redacted
        assert "[redacted]" in result.json()["error"]["message"]
    else:  # the exhaustion message names the status, and no code that is not one
        assert result.json()["error"]["message"] == (
            "All providers for 'fast' are exhausted: p0/m: HTTP 500, retried; p0/m: HTTP 500."
        )


# -- 5. compressed answers are decoded, and relayed with the right headers ----------------------


def compressed(encoding: str, body: bytes, status: int = 200, sse: bool = False) -> Handler:
    if encoding == "gzip":
        data = gzip.compress(body)
    elif encoding == "br":
        data = brotli.compress(body)
    elif encoding == "deflate":
        data = zlib.compress(body)
    else:  # raw deflate, as some servers send "deflate"
        encoding, data = "deflate", zlib.compress(body)[2:-4]
    kind = "text/event-stream" if sse else "application/json"

    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(
            response(status, data, [("content-type", kind), ("content-encoding", encoding)])
        )

    return handler


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br"])
async def test_a_compressed_answer_is_decoded_and_billed(client: str, encoding: str) -> None:
    body = json.dumps(ANSWER).encode()
    async with router(client, compressed(encoding, body)) as (app, ledger, _):
        result = await chat(app)
    assert result.status == 200
    assert result.body == body
    assert result.headers["content-length"] == str(len(body))
    assert "content-encoding" not in result.headers
    record = only(ledger)
    assert (record.status, record.total_tokens) == ("success", 5)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_compressed_stream_is_decoded(client: str) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"choices": [], "usage": ANSWER["usage"]},
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    stream += b"data: [DONE]\n\n"
    async with router(client, compressed("gzip", stream, sse=True)) as (app, ledger, _):
        result = await chat(app, {**CHAT, "stream": True})
    assert result.status == 200
    assert b'"content": "hi"' in result.body
    assert result.body.endswith(b"data: [DONE]\n\n")
    record = only(ledger)
    assert (record.status, record.total_tokens) == ("success", 5)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_body_that_does_not_decode_falls_through(client: str) -> None:
    async def corrupt(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"not gzip at all", [("content-encoding", "gzip")]))

    async def corrupt_br(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"not br either", [("content-encoding", "br")]))

    async def unknown(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"(\xb5/\xfd{}", [("content-encoding", "zstd")]))

    async with router(client, corrupt, corrupt_br, unknown, good) as (app, _ledger, _):
        result = await chat(app)
    assert result.status == 200
    assert result.json() == ANSWER
    # (a body that does not decode is taken for a transient cut: retried once first)
    assert result.headers["x-waterfall-attempts"] == (
        "p0/m retried, p0/m transport_error, p1/m retried, p1/m transport_error, p2/m 200, p3/m 200"
    )


# -- 6. a redirect, or a 200 that is not JSON, is not an answer ---------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (302, b"", "text/html"),
        (301, b"<a>moved</a>", "text/html"),
        (200, b"<html>Bad gateway</html>", "text/html"),
        (200, b'{"choices": [', "application/json"),
        (200, b"", "application/json"),
        (200, b"[1, 2]", "application/json"),
    ],
)
async def test_an_answer_that_is_not_one_falls_through(
    client: str, status: int, body: bytes, kind: str
) -> None:
    async def bad(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(
            response(status, body, [("content-type", kind), ("location", "http://127.0.0.1:9/")])
        )

    async with router(client, bad, good) as (app, ledger, _):
        result = await chat(app)
    assert result.status == 200
    assert result.json() == ANSWER
    assert not result.headers["x-waterfall-attempts"].startswith("p0/m 200")
    assert only(ledger).provider == "p1"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_redirect_alone_is_an_exhaustion_not_a_success(client: str) -> None:
    async def moved(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(302, b"", [("location", "http://127.0.0.1:9/elsewhere")]))

    async with router(client, moved) as (app, ledger, _):
        result = await chat(app)
    assert result.status == 503
    assert "HTTP 302" in result.json()["error"]["message"]
    assert only(ledger).status == "exhausted"


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_error_event_mid_stream_never_carries_a_key(
    client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="waterfall_asgi")
    first = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    error = {"error": {"code": KEY, "type": HEADER_SECRET, "message": f"Bearer {KEY}"}}
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (first, error))

    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, stream, [("content-type", "text/event-stream")]))

    async with router(client, handler) as (app, ledger, _):
        result = await chat(app, {**CHAT, "stream": True})
    assert result.status == 200
    assert b"[redacted]" in result.body  # the event reached the client, cleaned
    record = only(ledger)
    assert record.status == "upstream_error"
    for text in (result.body.decode(), caplog.text, json.dumps(record.to_dict())):
        assert KEY not in text
        assert HEADER_SECRET not in text
