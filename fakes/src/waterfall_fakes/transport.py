"""An httpx transport that plays a fake's replies back in-process, chunk for chunk.

Unlike ``httpx.ASGITransport`` (which buffers the whole body), :class:`FakeTransport` hands the
client exactly the scripted chunks, one ``aiter_raw()`` item each, after the scripted delays. It
honours the request's read timeout the way a real connection does: a hang or a slow chunk longer
than the timeout raises ``httpx.ReadTimeout``. A cut connection raises
``httpx.RemoteProtocolError``, as httpx does when a server closes mid-body.

It works for ``httpx.AsyncClient`` and ``httpx.Client`` alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx

from .provider import FakeProvider, Reply

__all__ = ["FakeTransport"]

_FOREVER = 3600.0 * 24


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout", {})
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if value is not None else None


def _limit(delay: float | None, timeout: float | None) -> tuple[float, bool]:
    """How long to wait, and whether the wait ends in a timeout."""
    wanted = _FOREVER if delay is None else delay
    if timeout is not None and wanted > timeout:
        return timeout, True
    return wanted, False


def _cut_error(request: httpx.Request) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(
        "peer closed connection without sending complete message body", request=request
    )


class _AsyncReplyStream(httpx.AsyncByteStream):
    def __init__(self, reply: Reply, request: httpx.Request) -> None:
        self._reply, self._request = reply, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        timeout = _read_timeout(self._request)
        for i, chunk in enumerate(self._reply.chunks):
            wait, expires = _limit(self._reply.delay_before(i), timeout)
            if wait:
                await asyncio.sleep(wait)
            if expires:
                raise httpx.ReadTimeout("timed out reading the body", request=self._request)
            yield chunk
        if self._reply.cut:
            raise _cut_error(self._request)


class _SyncReplyStream(httpx.SyncByteStream):
    def __init__(self, reply: Reply, request: httpx.Request) -> None:
        self._reply, self._request = reply, request

    def __iter__(self) -> Iterator[bytes]:
        timeout = _read_timeout(self._request)
        for i, chunk in enumerate(self._reply.chunks):
            wait, expires = _limit(self._reply.delay_before(i), timeout)
            if wait:
                time.sleep(wait)
            if expires:
                raise httpx.ReadTimeout("timed out reading the body", request=self._request)
            yield chunk
        if self._reply.cut:
            raise _cut_error(self._request)


class FakeTransport(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Serve requests from a :class:`FakeProvider` without a network.

    >>> import httpx
    >>> from waterfall_fakes import FakeProvider, FakeTransport
    >>> fake = FakeProvider()
    >>> client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
    >>> client.get("/health").json()["status"]
    'ok'
    """

    def __init__(self, provider: FakeProvider | None = None) -> None:
        self.provider = provider if provider is not None else FakeProvider()

    def _start(self, request: httpx.Request, body: bytes) -> tuple[Reply, float, bool]:
        reply = self.provider.handle(
            request.method, request.url.path, request.headers.items(), body
        )
        wait, expires = _limit(reply.headers_delay, _read_timeout(request))
        return reply, wait, expires

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the fake (async clients)."""
        reply, wait, expires = self._start(request, await request.aread())
        if wait:
            await asyncio.sleep(wait)
        if expires:
            raise httpx.ReadTimeout("timed out waiting for the response headers", request=request)
        return httpx.Response(
            reply.status,
            headers=list(reply.headers),
            stream=_AsyncReplyStream(reply, request),
            request=request,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the fake (sync clients)."""
        reply, wait, expires = self._start(request, request.read())
        if wait:
            time.sleep(wait)
        if expires:
            raise httpx.ReadTimeout("timed out waiting for the response headers", request=request)
        return httpx.Response(
            reply.status,
            headers=list(reply.headers),
            stream=_SyncReplyStream(reply, request),
            request=request,
        )
