"""Route requests mocked with `respx <https://lundberg.github.io/respx/>`_ to a fake provider.

For code whose tests already mock ``httpx`` with respx: add a route that answers from a
:class:`~waterfall_fakes.FakeProvider`, with its scripted faults, exact chunks and exact usage.
Install it with the ``respx`` extra (``pip install waterfall-fakes[respx]``).

>>> import httpx, respx
>>> from waterfall_fakes import FakeProvider
>>> from waterfall_fakes.respx import mock_provider
>>> fake = FakeProvider()
>>> with respx.mock:
...     route = mock_provider(respx.mock, fake)
...     reply = httpx.get("https://api.openai.com/v1/models")
>>> reply.json()["data"][0]["id"], route.call_count, fake.requests[0].path
('fake-small', 1, '/v1/models')

How the fake's timing maps onto a mock: the side effect never sleeps before it returns the
response (respx calls it the same way for sync and async clients, so it cannot know which kind of
sleep is allowed). Instead:

- a wait that would outlast the request's read timeout (a ``hang``, or a ``slow_first_byte`` or
  ``slow_chunks`` longer than the timeout) raises :class:`httpx.ReadTimeout` at once, without
  waiting the timeout out: the headers are never sent for a hang, and the body stops at the slow
  chunk otherwise;
- shorter waits are really slept while the body is read (``time.sleep`` for sync clients,
  ``anyio.sleep`` for async ones), and a short ``hang`` delays the first body byte rather than
  the headers.

Chunks reach the client exactly as scripted (one ``iter_raw()`` item each) and a ``cut`` raises
:class:`httpx.RemoteProtocolError` after the last one, as :class:`~waterfall_fakes.FakeTransport`
does.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import respx

from .provider import FakeProvider
from .transport import ReplyStream, _limit, read_timeout

__all__ = ["OPENAI_BASE_URL", "ProviderSideEffect", "mock_provider"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""The base URL :func:`mock_provider` routes by default: the OpenAI API's."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _base_path(base_url: str) -> str:
    return httpx.URL(base_url).path.rstrip("/")


class ProviderSideEffect:
    """A respx side effect that answers every request it gets from ``provider``.

    Paths under ``base_url`` are mapped onto the fake's ``/v1`` (``base_url`` is what you would
    give an OpenAI client, as :attr:`FakeServer.url <waterfall_fakes.FakeServer.url>` is), so
    ``https://openrouter.ai/api/v1/chat/completions`` reaches the fake's
    ``/v1/chat/completions`` when ``base_url`` is ``https://openrouter.ai/api/v1``. Other paths
    reach the fake as they are (``/health``).

    Use it on a route of your own, e.g.
    ``respx_mock.post(url).mock(side_effect=ProviderSideEffect(fake))``; or let
    :func:`mock_provider` add the route.
    """

    def __init__(self, provider: FakeProvider, base_url: str = OPENAI_BASE_URL) -> None:
        self.provider = provider
        self.base_url = base_url
        self._base = _base_path(base_url)

    def __repr__(self) -> str:
        return f"ProviderSideEffect({self.provider!r}, base_url={self.base_url!r})"

    def provider_path(self, path: str) -> str:
        """The fake's path for a request to ``path``.

        >>> effect = ProviderSideEffect(FakeProvider(), "https://openrouter.ai/api/v1")
        >>> effect.provider_path("/api/v1/chat/completions"), effect.provider_path("/health")
        ('/v1/chat/completions', '/health')
        """
        if path == self._base or path.startswith(self._base + "/"):
            return "/v1" + path[len(self._base) :]
        return path

    def __call__(self, request: httpx.Request, **context: Any) -> httpx.Response:
        """Answer ``request`` (``context``: whatever a route's pattern captured; unused)."""
        reply = self.provider.handle(
            request.method,
            self.provider_path(request.url.path),
            request.headers.multi_items(),
            request.read(),
        )
        wait, expires = _limit(reply.headers_delay, read_timeout(request))
        if expires:
            raise httpx.ReadTimeout("timed out waiting for the response headers", request=request)
        return httpx.Response(
            reply.status,
            headers=list(reply.headers),
            stream=ReplyStream(reply, request, first_wait=wait, wait_out_timeouts=False),
            request=request,
        )


def mock_provider(
    router: respx.Router,
    provider: FakeProvider,
    base_url: str = OPENAI_BASE_URL,
    *,
    name: str | None = None,
) -> respx.Route:
    """Add a route to ``router`` that sends every request under ``base_url`` to ``provider``.

    ``router`` is a :class:`respx.Router` or :class:`respx.MockRouter` (``respx.mock``, the
    ``respx_mock`` fixture, ...). The route matches any method on ``base_url``'s scheme, host and
    port and on paths at or below its path (``/v1`` matches ``/v1/models``, not ``/v10``); the
    router's own ``base_url``, if any, does not apply to it. It is returned, so that
    ``route.calls`` and ``router.assert_all_called()`` work as usual; ``provider.requests`` has
    what the fake saw.
    """
    url = httpx.URL(base_url)
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
    base = _base_path(base_url)
    route = router.route(
        scheme=url.scheme,
        host=url.host,
        port=url.port or _DEFAULT_PORTS[url.scheme],
        path__regex=re.compile("^" + re.escape(base) + "(?:/|$)"),
        name=name,
    )
    return route.mock(side_effect=ProviderSideEffect(provider, base_url))
