"""The standalone proxy: the router with nothing behind it (every other path is a JSON 404)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from .config import RouterConfig
from .cooldown import CooldownStore
from .ledger import LedgerStore, UsageRecord
from .middleware import WaterfallMiddleware
from .upstream import Upstream

__all__ = ["create_app"]


def create_app(
    config: RouterConfig | Mapping[str, Any] | str | Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    upstream: Upstream | None = None,
    cooldowns: CooldownStore | None = None,
    ledger: LedgerStore | None = None,
    on_complete: Callable[[UsageRecord], Any] | None = None,
) -> WaterfallMiddleware:
    """An ASGI app serving only the router's routes and ``GET /health``.

    >>> app = create_app({"providers": {"a": {"base_url": "http://127.0.0.1:9/v1"}},
    ...                   "chains": {"fast": ["a/m"]}})
    >>> app.config.prefix
    '/v1'
    """
    return WaterfallMiddleware(
        None,
        config,
        transport=transport,
        upstream=upstream,
        cooldowns=cooldowns,
        ledger=ledger,
        on_complete=on_complete,
    )
