"""Several fakes behind one in-process transport, told apart by host name.

>>> import httpx
>>> from waterfall_fakes import FakeNetwork, FakeProvider
>>> net = FakeNetwork({"openai": FakeProvider(name="openai"), "groq": FakeProvider(name="groq")})
>>> with httpx.Client(transport=net) as client:
...     client.get("http://groq/health").json()["name"]
'groq'
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .provider import FakeProvider
from .transport import FakeTransport

__all__ = ["FakeNetwork"]


class FakeNetwork(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Route each request to the fake named by its URL's host (``http://NAME/v1``).

    A host with no fake behind it fails like an unreachable one: ``httpx.ConnectError``.
    ``down`` names hosts that refuse connections even though they have a fake.
    """

    def __init__(self, providers: Mapping[str, FakeProvider]) -> None:
        self.providers = dict(providers)
        self.down: set[str] = set()
        self._transports = {host: FakeTransport(p) for host, p in self.providers.items()}

    def __getitem__(self, host: str) -> FakeProvider:
        return self.providers[host]

    def _pick(self, request: httpx.Request) -> FakeTransport:
        host = request.url.host
        transport = self._transports.get(host)
        if transport is None or host in self.down:
            raise httpx.ConnectError(f"cannot connect to {host!r}", request=request)
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the fake its host names (async clients)."""
        return await self._pick(request).handle_async_request(request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the fake its host names (sync clients)."""
        return self._pick(request).handle_request(request)
