"""The router's own small answers: its health (:func:`health`), its Prometheus metrics
(:func:`serve_metrics`) and its model list (:func:`model_list`), each sent whole
(:func:`send_whole`).

The health answer says whether the shared stores are shared right now (nothing secret); the
model list names each cost route, chain and model with its entries and the APIs it serves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._requests import authorize
from .config import Deployment, Price, RouterConfig
from .cooldown import CooldownStore
from .dialects import DIALECTS
from .errors import RouterError, send_error
from .ledger import LedgerStore
from .metrics import RouterMetrics
from .router import Router

__all__ = ["health", "model_list", "send_whole", "serve_metrics"]

logger = logging.getLogger("waterfall_asgi")

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_whole(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes = b"application/json",
) -> None:
    """Send a whole response: its start, with its length and ``headers``, then ``body``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def health(scope: Scope, send: Send, stores: dict[str, object]) -> None:
    """Answer a health check: ok, or degraded while a shared store among ``stores`` (by name)
    is not shared (each store with a ``health()`` says its state)."""
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(
            send,
            RouterError(405, "Use GET.", code="method_not_allowed", headers=[("allow", "GET")]),
        )
        return
    body = b'{"status":"ok"}'
    described = {}  # a shared store says whether it is shared right now (nothing secret)
    for name, store in stores.items():
        describe = getattr(store, "health", None)
        if describe is not None:
            described[name] = describe()
    if described:
        ok = all(store.get("state") == "ok" for store in described.values())
        body = json.dumps({"status": "ok" if ok else "degraded", **described}).encode()
    await send_whole(send, 200, body, [])


async def serve_metrics(
    scope: Scope,
    send: Send,
    metrics: RouterMetrics,
    *,
    keys: tuple[Any, ...],
    cooldowns: CooldownStore,
    ledger: LedgerStore,
    router: Router | None,
    clock: Callable[[], float],
) -> None:
    """Answer a scrape of the metrics path, with one of the client ``keys`` if any are given:
    the cooling entries, circuits and ledger are sampled first."""
    try:
        if scope["method"] not in ("GET", "HEAD"):
            raise RouterError(
                405, "Use GET.", code="method_not_allowed", headers=[("allow", "GET")]
            )
        authorize(scope, keys)
    except RouterError as exc:
        await send_error(send, exc)
        return
    try:
        metrics.set_cooling(await cooldowns.snapshot(), now=clock())
    except Exception:  # a store that does not answer leaves the gauge as it was
        logger.warning("metrics: the cooldown store could not be read", exc_info=True)
    if router is not None:
        metrics.set_circuits(router.circuits.values())
    metrics.sample_ledger(ledger)
    content_type, body = metrics.exposition()
    headers = [(b"cache-control", b"no-store")]
    await send_whole(send, 200, body, headers, content_type.encode("latin-1"))


def model_list(
    config: RouterConfig, router: Router, price_of: Callable[[Deployment], Price | None]
) -> bytes:
    """The model list: each cost route (its entries those ``price_of`` prices), chain and
    model, with its entries and the APIs (dialects) it serves (those some entry's provider
    speaks)."""
    data: list[dict[str, Any]] = []
    for name, route in config.routes.items():
        entries = [
            d for d in (route.deployments or config.all_deployments()) if price_of(d) is not None
        ]
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "waterfall-asgi",
                "waterfall": {
                    "kind": "route",
                    "min_quality": str(route.min_quality),
                    "entries": [d.key for d in entries],
                    "apis": _apis(config, entries),
                },
            }
        )
    for name in router.models():
        label, plan = router.plan(name)
        kind = "chain" if name in config.chains else "model"
        data.append(
            {
                "id": label,
                "object": "model",
                "created": 0,
                "owned_by": "waterfall-asgi",
                "waterfall": {
                    "kind": kind,
                    "entries": [d.key for d in plan],
                    "apis": _apis(config, plan),
                },
            }
        )
    return json.dumps({"object": "list", "data": data}, ensure_ascii=False).encode()


def _apis(config: RouterConfig, entries: list[Deployment]) -> list[str]:
    """The APIs some provider of ``entries`` speaks, in the order of :data:`DIALECTS`."""
    spoken = {api for d in entries for api in config.providers[d.provider].apis}
    return [name for name in DIALECTS if name in spoken]
