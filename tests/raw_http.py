"""A loopback HTTP/1.1 upstream that misbehaves in ways the fakes cannot: its handler writes any
bytes it likes (a gzip body, a redirect, an endless answer, an echo of the request)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class RawRequest:
    """What the upstream received."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


def response(
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    reason: str = "X",
) -> bytes:
    """The bytes of a whole response (content-length set, connection closed after it)."""
    head = f"HTTP/1.1 {status} {reason}\r\n"
    for name, value in [*(headers or [("content-type", "application/json")])]:
        head += f"{name}: {value}\r\n"
    head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode("latin-1") + body


@dataclass
class RawUpstream:
    """``async with RawUpstream(handler) as up:`` serves on ``up.url`` (``.../v1``)."""

    handler: Handler
    requests: list[RawRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines if x)]
            request = RawRequest(method, path, headers, b"")
            length = int(request.header("content-length") or 0)
            request.body = await reader.readexactly(length)
            self.requests.append(request)
            await self.handler(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # (cancelled: by __aexit__, which waits for it; the task ends normally)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
