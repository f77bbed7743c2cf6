"""After startup, freeze what is alive out of the garbage collector's full passes."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from waterfall_asgi import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Modules, classes, config, the router: alive for as long as the process. A full
    # collection then skips them, instead of walking them all every time (shorter pauses).
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


config = {
    "providers": {"local": {"base_url": "http://local/v1"}},
    "chains": {"default": ["local/fake-small"]},
    "ledger": {"path": None},
}
app = Starlette(
    lifespan=lifespan,
    middleware=[
        Middleware(
            WaterfallMiddleware, config=config, transport=FakeNetwork({"local": FakeProvider()})
        )
    ],
)

with TestClient(app) as client:
    assert gc.get_freeze_count() > 0  # frozen at startup
    chat = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
assert gc.get_freeze_count() == 0  # and given back at shutdown
