"""An httpx transport that plays a fake's replies back in-process, chunk for chunk.

Unlike ``httpx.ASGITransport`` (which buffers the whole body), :class:`FakeTransport` hands the
client exactly the scripted chunks, one ``aiter_raw()`` item each, after the scripted delays. It
honours the request's read timeout the way a real connection does: a hang or a slow chunk longer
than the timeout raises ``httpx.ReadTimeout``. A cut connection raises
``httpx.RemoteProtocolError``, as httpx does when a server closes mid-body.

It works for ``httpx.AsyncClient`` and ``httpx.Client`` alike.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx

from .control import control_reply, is_control_path
from .provider import FakeProvider, Reply

__all__ = ["FakeTransport", "ReplyStream", "read_timeout"]

_FOREVER = 3600.0 * 24


def read_timeout(request: httpx.Request) -> float | None:
    """The read timeout httpx attached to ``request`` (``None``: no timeout)."""
    timeout = request.extensions.get("timeout", {})
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if value is not None else None


def _limit(delay: float | None, timeout: float | None) -> tuple[float, bool]:
    """How long to wait, and whether the wait ends in a timeout."""
    wanted = _FOREVER if delay is None else delay
    if timeout is not None and wanted > timeout:
        return timeout, True
    return wanted, False


_TIMED_OUT = object()


class ReplyStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A :class:`Reply`'s body as an httpx stream, for sync and async clients alike.

    Each scripted chunk is one item, after its scripted delay (plus ``first_wait`` before the
    first). A delay longer than the request's read timeout raises :class:`httpx.ReadTimeout`,
    after waiting the timeout out, or at once with ``wait_out_timeouts=False``. A cut reply raises
    :class:`httpx.RemoteProtocolError` after its last chunk, as httpx does when a server closes
    mid-body.
    """

    def __init__(
        self,
        reply: Reply,
        request: httpx.Request,
        *,
        first_wait: float = 0.0,
        wait_out_timeouts: bool = True,
    ) -> None:
        self._reply, self._request = reply, request
        self._first_wait, self._wait_out = first_wait, wait_out_timeouts

    def _plan(self) -> Iterator[tuple[float, object]]:
        timeout = read_timeout(self._request)
        chunks = self._reply.chunks
        for i, chunk in enumerate(chunks):
            wait, expires = _limit(self._reply.delay_before(i), timeout)
            wait += self._first_wait if i == 0 else 0.0
            if expires:
                yield (wait if self._wait_out else 0.0), _TIMED_OUT
                return
            yield wait, chunk
        if not chunks and self._first_wait:
            yield self._first_wait, b""
        if self._reply.cut:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body",
                request=self._request,
            )

    def _item(self, item: object) -> bytes:
        if item is _TIMED_OUT:
            raise httpx.ReadTimeout("timed out reading the body", request=self._request)
        assert isinstance(item, bytes)
        return item

    def __iter__(self) -> Iterator[bytes]:
        for wait, item in self._plan():
            if wait:
                time.sleep(wait)
            chunk = self._item(item)
            if chunk:
                yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for wait, item in self._plan():
            if wait:
                await anyio.sleep(wait)
            chunk = self._item(item)
            if chunk:
                yield chunk


class FakeTransport(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Serve requests from a :class:`FakeProvider` without a network.

    >>> import httpx
    >>> from waterfall_fakes import FakeProvider, FakeTransport
    >>> fake = FakeProvider()
    >>> client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake")
    >>> client.get("/health").json()["status"]
    'ok'
    """

    def __init__(self, provider: FakeProvider | None = None) -> None:
        self.provider = provider if provider is not None else FakeProvider()

    def _start(self, request: httpx.Request, body: bytes) -> tuple[Reply, float, bool]:
        provider = self.provider
        path = request.url.path
        if is_control_path(path):
            query = request.url.query.decode("latin-1")
            reply = control_reply(provider, request.method, path, query, body)
            return reply, 0.0, False
        reply, record = provider.handle_recorded(
            request.method, path, request.headers.items(), body
        )
        wait, expires = _limit(reply.headers_delay, read_timeout(request))
        if not expires and reply.headers_delay is not None:  # the headers reach the client
            record.delivery.headers_at = record.received_at + wait
        return reply, wait, expires

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the fake (async clients)."""
        reply, wait, expires = self._start(request, await request.aread())
        if wait:
            await anyio.sleep(wait)
        if expires:
            raise httpx.ReadTimeout("timed out waiting for the response headers", request=request)
        return httpx.Response(
            reply.status,
            headers=list(reply.headers),
            stream=ReplyStream(reply, request),
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
            stream=ReplyStream(reply, request),
            request=request,
        )
