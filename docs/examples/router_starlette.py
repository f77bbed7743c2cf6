"""Mount the router in a Starlette app; its own routes, websockets included, are untouched."""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from waterfall_asgi import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("home")


upstreams = FakeNetwork({"local": FakeProvider()})
config = {
    "providers": {"local": {"base_url": "http://local/v1"}},
    "chains": {"default": ["local/fake-small"]},
    "ledger": {"path": None},  # usage in memory here; SQLite by default
    "default_chain": "default",  # requests that name no model use this chain
}
app = Starlette(
    routes=[Route("/", home)],
    middleware=[Middleware(WaterfallMiddleware, config=config, transport=upstreams)],
)

with TestClient(app) as client:  # runs lifespan: the router opens its upstream client here
    assert client.get("/").text == "home"
    reply = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
    )
    assert reply.status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["default", "fake-small"]
