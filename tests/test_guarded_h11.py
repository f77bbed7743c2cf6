"""The HTTP/1.1 protocol ``waterfall-asgi serve`` runs uvicorn with, in this process: request
heads bounded in time (408, or a silent close for a connection that sent nothing) and in size
(431, also for a head that arrives whole), errors as OpenAI-style JSON with a lingering close,
and the head timer armed again for each request of a kept-alive connection."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from waterfall_asgi._serving import guarded_h11, serve_logging
from waterfall_asgi.cli import main

pytestmark = [pytest.mark.loopback, pytest.mark.anyio]

WAIT = 20.0  # a hang guard on each wait, not a measure


async def hello(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


@asynccontextmanager
async def running(
    header_timeout: float = 0.3, max_head: int = 4096, limit: int | None = None
) -> AsyncIterator[int]:
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=0,
        http=guarded_h11(header_timeout),
        h11_max_incomplete_event_size=max_head,
        lifespan="off",
        log_config=None,
        timeout_keep_alive=5,
        limit_concurrency=limit,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(400):  # until it listens (a bounded poll)
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` (``pause`` seconds apart), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        data = b""
        async with asyncio.timeout(WAIT):
            while chunk := await reader.read(65536):
                data += chunk
        return data
    finally:
        writer.close()


def error(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head
    assert b"connection: close" in head
    return int(head.split()[1]), json.loads(body)["error"]


async def test_a_head_that_never_ends_gets_408() -> None:
    async with running() as port:
        status, body = error(await exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: "))
    assert (status, body["code"]) == (408, "request_timeout")


async def test_a_connection_that_sends_nothing_is_closed_silently() -> None:
    async with running() as port:
        assert await exchange(port) == b""


async def test_a_kept_alive_connection_gets_the_timer_again() -> None:
    async with running() as port:
        raw = await exchange(
            port,
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-",
            pause=0.1,
        )
    first, _, second = raw.partition(b"hello")
    assert first.startswith(b"HTTP/1.1 200 ")
    status, body = error(second)
    assert (status, body["code"]) == (408, "request_timeout")


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "in-parts"])
async def test_an_oversized_head_gets_431(whole: bool) -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 2000
    async with running() as port:
        if whole:
            raw = await exchange(port, head + b"\r\n")
        else:  # unfinished, past the limit: h11 refuses it
            # (and what the client sends after the answer is read and dropped)
            raw = await exchange(port, head[:3000], head[3000:], b"x-b: c\r\n", pause=0.05)
    status, body = error(raw)
    assert (status, body["code"]) == (431, "headers_too_large")


async def test_a_head_cut_across_reads_is_measured_whole() -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\nconnection: close\r\n\r\n"
    data = head + b"y" * 10000  # a body larger than the head limit, right behind the head
    async with running() as port:
        for cut in (len(head) - 3, len(head) - 2, len(head) - 1, len(head), len(data)):
            raw = await exchange(port, data[:cut], data[cut:])
            assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


async def test_idle_connections_hold_the_concurrency_limit_only_until_the_header_timeout() -> None:
    request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    async with running(header_timeout=0.5, limit=3) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            assert (await exchange(port, request)).startswith(b"HTTP/1.1 503 ")
            for reader, _ in idle:  # closed by the header timeout
                async with asyncio.timeout(WAIT):
                    assert await reader.read() == b""
            assert (await exchange(port, request)).startswith(b"HTTP/1.1 200 ")
        finally:
            for _, writer in idle:
                writer.close()


async def test_a_malformed_request_gets_a_json_400() -> None:
    async with running() as port:
        status, body = error(await exchange(port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert (status, body["code"]) == (400, "invalid_request")


def test_serve_logging_adds_the_routers_logger() -> None:
    config = serve_logging("warning")
    assert config["loggers"]["waterfall_asgi"] == {
        "handlers": ["default"],
        "level": "WARNING",
        "propagate": False,
    }
    assert "waterfall_asgi" not in uvicorn.config.LOGGING_CONFIG["loggers"]  # a copy
    assert logging.getLogger("waterfall_asgi").handlers == []  # nothing configured here


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"header_timeout": 10.0, "h11_max_incomplete_event_size": 32768,
              "timeout_keep_alive": 5.0, "limit_concurrency": 2048,
              "timeout_graceful_shutdown": 30.0, "level": "INFO"}),
        (["--header-timeout", "2.5", "--max-header-bytes", "8192", "--timeout-keep-alive", "1",
          "--limit-concurrency", "100", "--timeout-graceful-shutdown", "7",
          "--log-level", "warning"],
         {"header_timeout": 2.5, "h11_max_incomplete_event_size": 8192,
          "timeout_keep_alive": 1.0, "limit_concurrency": 100,
          "timeout_graceful_shutdown": 7.0, "level": "WARNING"}),
    ],
    ids=["defaults", "given"],
)  # fmt: skip
def test_serve_flags_reach_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], expected: dict[str, Any]
) -> None:
    seen: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *_, **__: seen.append(self.config))
    config = tmp_path / "router.toml"
    config.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[chains]\nfast = ["a/m"]\n'
        "[ledger]\npath = ''\n"
    )
    assert main(["serve", "--config", str(config), "--port", "0", *flags]) == 3  # (not run)
    (got,) = seen
    assert got.http.header_timeout == expected["header_timeout"]
    for name in ("h11_max_incomplete_event_size", "timeout_keep_alive", "limit_concurrency"):
        assert getattr(got, name) == expected[name]
    assert got.timeout_graceful_shutdown == expected["timeout_graceful_shutdown"]
    assert isinstance(got.log_config, dict)
    assert got.log_config["loggers"]["waterfall_asgi"]["level"] == expected["level"]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_serve_refuses_a_timeout_that_is_not_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--config", "x.toml", "--header-timeout", value])
    assert "give a number of seconds above 0" in capsys.readouterr().err
