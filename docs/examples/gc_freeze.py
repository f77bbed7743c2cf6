"""After startup, set up the garbage collector for serving (what `waterfall-asgi serve` does)."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from waterfall_asgi import GC_YOUNG_THRESHOLD, WaterfallMiddleware, tune_gc
from waterfall_fakes import FakeNetwork, FakeProvider


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Modules, classes, config, the router: alive for as long as the process. A full
    # collection then skips them (shorter pauses), and young collections come less often.
    threshold = gc.get_threshold()
    tune_gc()
    yield
    gc.unfreeze()  # (only for this example, which runs inside the test suite's process)
    gc.set_threshold(*threshold)


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
    assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
    chat = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
assert gc.get_freeze_count() == 0  # and given back at shutdown
