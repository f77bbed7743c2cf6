"""Wrap a bare ASGI callable, or run the router on its own with create_app."""

import asyncio
from typing import Any

import httpx

from waterfall_asgi import WaterfallMiddleware, create_app
from waterfall_fakes import FakeNetwork, FakeProvider


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest ASGI app: it knows nothing of lifespan and answers 204 to everything."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


upstreams = FakeNetwork({"a": FakeProvider(script=["status:code=503"]), "b": FakeProvider()})
config = {
    "providers": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
    "chains": {"fast": ["a/fake-small", "b/fake-small"]},
    "ledger": {"path": None},  # usage in memory here; SQLite by default
    "client_keys": ["my-client-key"],  # clients must send Authorization: Bearer my-client-key
}


async def main() -> None:
    for app in (
        WaterfallMiddleware(bare_app, config, transport=upstreams),
        create_app(config, transport=upstreams),
    ):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://proxy",
            headers={"authorization": "Bearer my-client-key"},
        ) as client:
            reply = await client.post(
                "/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "Hi"}]},
            )
            assert reply.status_code == 200
            assert (await client.get("/health")).json() == {"status": "ok"}
            other = await client.get("/elsewhere")
            # the bare app answers what the router does not serve; the standalone app says 404
            assert other.status_code == (204 if app.app is bare_app else 404)
        await app.shutdown()  # no lifespan here: close the upstream client by hand


asyncio.run(main())
