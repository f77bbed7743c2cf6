"""The one seam between the router and the network: :class:`Upstream`.

The router only ever asks an :class:`Upstream` for a response's status and headers, then reads
its body chunk by chunk. Two implementations ship:

- :class:`AiohttpUpstream`, the default in production: aiohttp's client costs a fraction of
  httpx's CPU per request, and its pool does not degrade with concurrency (the numbers are in
  the benchmarks page);
- :class:`HttpxUpstream`, over any ``httpx.AsyncClient`` or transport: the testing seam, where the
  fakes' in-process ``FakeTransport`` and respx plug in.

Both report failures the same way, as :class:`UpstreamError` subclasses that keep the name of the
client library's own exception (``name``) for messages and logs, and both honour
:class:`~waterfall_asgi.config.Timeouts`: ``read`` bounds the wait for every body chunk.

Both decode a body sent with ``Content-Encoding: gzip``, ``deflate`` or (with the ``brotli``
package installed: the ``brotli`` extra) ``br`` (the router asks for
``identity``, but a provider may compress all the same): the response's ``read_chunk`` returns the
decoded bytes (at most 64 KiB per call, however well they were compressed) and its headers no
longer carry ``content-encoding`` or ``content-length``. Another encoding is left as it is, named
in the headers (the router refuses such an answer). A body that does not decode raises
:class:`UpstreamTransportError`.
"""

from __future__ import annotations

import errno
import http.cookiejar
import os
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import aiohttp
import httpx

try:  # the optional extra "brotli": without it, a br-encoded answer is refused (it falls through)
    import brotli  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - depends on the installed extras
    brotli = None

from .config import Timeouts

__all__ = [
    "AiohttpUpstream",
    "HttpxUpstream",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamLocalError",
    "UpstreamResponse",
    "UpstreamStaleConnection",
    "UpstreamTimeout",
    "UpstreamTransportError",
    "as_upstream",
    "decoded",
]


class UpstreamError(Exception):
    """An upstream call failed below HTTP. ``name`` is the client library's exception class."""

    def __init__(self, name: str, message: str = "") -> None:
        super().__init__(message or name)
        self.name = name


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No connection, response or body chunk within its timeout."""


class UpstreamConnectError(UpstreamError):
    """The connection could not be opened."""


class UpstreamTransportError(UpstreamError):
    """The connection failed after it was opened (a cut body, a protocol error)."""


class UpstreamLocalError(UpstreamError):
    """The router could not make the call for a reason of its own, not the provider's: it is out
    of file descriptors, buffers or local ports (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ...), or
    waited too long for a slot in its own connection pool."""


class UpstreamStaleConnection(UpstreamLocalError):
    """The connection closed before any byte of the response: most often a kept-alive connection
    the upstream had already closed. Safe to send again, on another connection."""


# errno values that mean the router's own host is short of something
LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)


def _local_errno(exc: BaseException) -> int | None:
    """The local-resource errno behind ``exc`` (its own, ``os_error``'s, or a cause's)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        for candidate in (current, getattr(current, "os_error", None)):
            if isinstance(candidate, OSError) and candidate.errno in LOCAL_ERRNOS:
                return candidate.errno
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _local_message(code: int) -> str:
    """``EMFILE: Too many open files``: the problem, never an address or a secret."""
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


class UpstreamResponse(Protocol):
    """A response whose status and headers have arrived; its body is read with
    :meth:`read_chunk`.

    A response may also have an ``at_end()`` method (both shipped ones do): whether the body has
    been read to its end already, so that the next :meth:`read_chunk` would return ``b""`` at
    once. The relay then sends a stream's last events together with the end of the response,
    one message (and one write to the client's socket) instead of two. Without it, or when it
    says ``False``, the relay reads on until ``b""``.
    """

    @property
    def status(self) -> int:
        """The HTTP status code."""
        ...  # pragma: no cover

    @property
    def reason(self) -> str:
        """The reason phrase (may be empty)."""
        ...  # pragma: no cover

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, names lower-cased (a repeated header: its last value)."""
        ...  # pragma: no cover

    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive, ``b""`` at the end; raises :class:`UpstreamError`
        (:class:`UpstreamTimeout` when nothing arrives within the read timeout)."""
        ...  # pragma: no cover

    async def aclose(self) -> None:
        """Release the connection (closing it if the body was not read to its end)."""
        ...  # pragma: no cover


class Upstream(Protocol):
    """Sends requests upstream; one is shared by all requests of a router."""

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers have arrived."""
        ...  # pragma: no cover

    async def aclose(self) -> None:
        """Close every connection."""
        ...  # pragma: no cover


# -- content-encoding --------------------------------------------------------------------------

_DECODED_CHUNK = 64 * 1024  # the most decoded bytes one read returns
_WBITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": 32 + zlib.MAX_WBITS,
}


class _Decoded:
    """A response whose body arrives compressed, read decoded (see :func:`decoded`)."""

    __slots__ = ("_decoder", "_done", "_inner", "_pending", "_seen", "_wbits", "headers")

    def __init__(self, inner: UpstreamResponse, headers: dict[str, str], wbits: int) -> None:
        self._inner = inner
        self.headers = headers
        self._wbits = wbits
        self._decoder = zlib.decompressobj(wbits)
        self._pending = b""  # encoded bytes read but not decoded yet
        self._seen = False  # whether any encoded byte arrived
        self._done = False

    @property
    def status(self) -> int:
        return self._inner.status

    @property
    def reason(self) -> str:
        return self._inner.reason

    def _more(self) -> bool:
        """Whether decoded bytes are waiting without a further read."""
        return bool(self._pending)

    def _next(self) -> bytes:
        return self._decode(self._pending)

    def _finished(self) -> bool:
        return bool(self._decoder.eof)

    def _decode(self, data: bytes) -> bytes:
        try:
            out = self._decoder.decompress(data, _DECODED_CHUNK)
        except zlib.error:
            if self._seen or self._wbits != _WBITS["deflate"]:
                raise UpstreamTransportError("zlib.error", "the body does not decode") from None
            # "deflate" without its zlib wrapper, as some servers send it
            self._wbits = -zlib.MAX_WBITS
            self._decoder = zlib.decompressobj(self._wbits)
            return self._decode(data)
        self._seen = True
        decoder = self._decoder
        if decoder.unconsumed_tail:  # more output than one read returns: the rest next time
            self._pending = decoder.unconsumed_tail
        elif decoder.eof and decoder.unused_data:  # another gzip member follows
            self._pending = decoder.unused_data
            self._decoder = zlib.decompressobj(self._wbits)
        else:
            self._pending = b""
        return out

    def at_end(self) -> bool:
        """Never known ahead: the relay reads on until ``b""``."""
        return False

    async def read_chunk(self) -> bytes:
        while True:
            if self._more():
                out = self._next()
            elif self._done:
                return b""
            else:
                data = await self._inner.read_chunk()
                if not data:
                    self._done = True
                    if self._seen and not self._finished():
                        raise UpstreamTransportError("zlib.error", "the encoded body is cut short")
                    return b""
                out = self._decode(data)
            if out:
                return out

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BrotliDecoded(_Decoded):
    """A response whose body arrives br-encoded, read decoded."""

    __slots__ = ("_br",)

    def __init__(self, inner: UpstreamResponse, headers: dict[str, str]) -> None:
        super().__init__(inner, headers, zlib.MAX_WBITS)
        self._br = brotli.Decompressor()

    def _more(self) -> bool:
        return self._seen and not self._br.can_accept_more_data()

    def _next(self) -> bytes:
        return self._decode(b"")

    def _finished(self) -> bool:
        return bool(self._br.is_finished())

    def _decode(self, data: bytes) -> bytes:
        try:
            out: bytes = self._br.process(data, output_buffer_limit=_DECODED_CHUNK)
        except brotli.error:
            raise UpstreamTransportError("brotli.error", "the body does not decode") from None
        self._seen = True
        return out


def decoded(response: UpstreamResponse) -> UpstreamResponse:
    """``response`` read decoded when its body is gzip-, deflate- or (with the ``brotli``
    package) br-encoded, else itself.

    The decoded response's headers lose ``content-encoding`` and ``content-length`` (which
    described the encoded body)."""
    headers = response.headers
    encoding = headers.get("content-encoding")
    if encoding is None:
        return response
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return response
    wbits = _WBITS.get(coding)
    if wbits is None and (coding != "br" or brotli is None):
        return response  # another encoding (or several): left for the router to refuse
    plain = {k: v for k, v in headers.items() if k not in ("content-encoding", "content-length")}
    if wbits is None:
        return _BrotliDecoded(response, plain)
    return _Decoded(response, plain, wbits)


# -- httpx -------------------------------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_chunks", "_response", "_whole", "headers")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        # a response made from bytes (respx, MockTransport) has been read already: its body is
        # one chunk, and then the end (b""); only a streamed one is read from the network
        self._whole: bytes | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        if response.is_stream_consumed:
            self._whole = response.content
        else:
            self._chunks = response.aiter_raw()
        # multi_items: a repeated header keeps its last value (items() would join them)
        self.headers = {k.lower(): v for k, v in response.headers.multi_items()}

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def reason(self) -> str:
        return self._response.reason_phrase

    def at_end(self) -> bool:
        """The body was read whole already, and handed over (a streamed one cannot tell)."""
        return self._whole == b""

    async def read_chunk(self) -> bytes:
        chunks = self._chunks
        if chunks is None:
            chunk, self._whole = self._whole or b"", b""
            return chunk
        try:
            while True:
                chunk = await anext(chunks)
                if chunk:
                    return chunk
        except StopAsyncIteration:
            return b""
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(type(exc).__name__, str(exc)) from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise UpstreamTransportError(type(exc).__name__, str(exc)) from None

    async def aclose(self) -> None:
        await self._response.aclose()


def _httpx_error(exc: httpx.TransportError) -> UpstreamError:
    name = type(exc).__name__
    code = _local_errno(exc)
    if code is not None:
        return UpstreamLocalError(name, _local_message(code))
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(name, str(exc))
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        return UpstreamStaleConnection(name, str(exc))
    return UpstreamTransportError(name, str(exc))


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class HttpxUpstream:
    """An :class:`Upstream` over an ``httpx.AsyncClient`` (made here from ``transport`` and the
    pool limits when no ``client`` is given; a given client is not closed by :meth:`aclose`)."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 1000,
        max_keepalive: int = 100,
    ) -> None:
        self._own = client is None
        self.client = client or httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            follow_redirects=False,
            cookies=_NoCookies(),  # an upstream's cookies are never sent on another's behalf
        )

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        t = timeouts
        request = self.client.build_request(
            method,
            url,
            content=body,
            headers=list(headers),
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.PoolTimeout as exc:
            raise UpstreamLocalError(type(exc).__name__, "no free connection in the pool") from None
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(type(exc).__name__, str(exc)) from None
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None
        return decoded(_HttpxResponse(response))

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()


# -- aiohttp -----------------------------------------------------------------------------------


class _AiohttpResponse:
    __slots__ = ("_content", "_response", "headers")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.raw_headers
        }

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def reason(self) -> str:
        return self._response.reason or ""

    def at_end(self) -> bool:
        """The whole body has arrived and been read (and no failure is waiting to be raised)."""
        content = self._content
        return content.at_eof() and content.exception() is None

    async def read_chunk(self) -> bytes:
        content = self._content
        try:
            if content.exception() is not None and getattr(content, "_buffer", None):
                # readany() raises a failure before the bytes that arrived ahead of it
                return content._read_nowait(-1)
            return await content.readany()
        except TimeoutError as exc:  # the session's sock_read timeout
            raise UpstreamTimeout(type(exc).__name__, str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamTransportError(type(exc).__name__, str(exc)) from None

    async def aclose(self) -> None:
        if self._content.at_eof():
            self._response.release()  # back to the pool
        else:
            self._response.close()  # an unread body: the connection cannot be reused


_CACHED = 1024  # URLs and timeouts remembered, at most


class AiohttpUpstream:
    """An :class:`Upstream` over one ``aiohttp.ClientSession`` (made on first use, in the
    running event loop, unless ``session`` is given; a given session is not closed)."""

    def __init__(
        self, session: aiohttp.ClientSession | None = None, *, max_connections: int = 1000
    ) -> None:
        self._own = session is None
        self._session = session
        self._limit = max_connections
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}
        self._proxies: dict[str, str | None] = {}

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The session requests go through (``None`` until the first request)."""
        return self._session

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            # trust_env would look up .netrc and the proxy in a thread on every request; the
            # proxy is looked up here once per URL instead (see _proxy)
            trust_env=False,
            # an upstream's cookies are never kept, so never sent on another client's behalf
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``...),
        looked up once per URL (the router's URLs are its providers' few endpoints)."""
        try:
            return self._proxies[url]
        except KeyError:
            pass
        parts = urllib.parse.urlsplit(url)
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(parts.scheme) or None
        if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
            proxy = None
        if len(self._proxies) >= _CACHED:  # a caller of its own may use any number of URLs
            self._proxies.clear()
        self._proxies[url] = proxy
        return proxy

    def _timeout(self, t: Timeouts) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(t)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=t.pool + t.connect,  # a free pool slot, then the connection
                sock_connect=t.connect,
                sock_read=t.read,
            )
            if len(self._timeouts) >= _CACHED:
                self._timeouts.clear()
            self._timeouts[t] = timeout
        return timeout

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        session = self._session if self._session is not None else self._open()
        try:
            response = await session.request(
                method,
                url,
                data=body,
                # one case for every name: aiohttp would let a repeat in another case replace
                headers=[(k.lower(), v) for k, v in headers],
                timeout=self._timeout(timeouts),
                allow_redirects=False,
                proxy=self._proxy(url),
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(type(exc).__name__, str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _aiohttp_error(exc) from None
        return decoded(_AiohttpResponse(response))

    async def aclose(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None


def _aiohttp_error(exc: aiohttp.ClientError | OSError) -> UpstreamError:
    name = type(exc).__name__
    code = _local_errno(exc)
    if code is not None:
        return UpstreamLocalError(name, _local_message(code))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(name, str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamStaleConnection(name, str(exc))
    return UpstreamTransportError(name, str(exc))


def as_upstream(client: Upstream | httpx.AsyncClient) -> Upstream:
    """``client`` as an :class:`Upstream` (an ``httpx.AsyncClient`` is wrapped, not closed)."""
    if isinstance(client, httpx.AsyncClient):
        return HttpxUpstream(client)
    return client
