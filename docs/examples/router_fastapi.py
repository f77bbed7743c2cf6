"""Mount the router in a FastAPI app, in front of two in-process fakes."""

import asyncio

import httpx
from fastapi import FastAPI

from waterfall_asgi import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

app = FastAPI()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


# Two upstreams behind one in-process transport; "openai" answers its first request with a 429.
upstreams = FakeNetwork(
    {
        "openai": FakeProvider(script=["rate_limit:dialect=retry-after,seconds=20"]),
        "groq": FakeProvider(),
    }
)
config = {
    "providers": {
        "openai": {"base_url": "http://openai/v1", "api_key": "sk-openai"},
        "groq": {"base_url": "http://groq/v1", "api_key": "sk-groq"},
    },
    "chains": {"fast": ["openai/fake-small", "groq/fake-medium"]},
    "ledger": {"path": None},  # usage in memory here; SQLite by default
}
# In production, leave out `transport`: the router then talks to the real base URLs.
app.add_middleware(WaterfallMiddleware, config=config, transport=upstreams)


async def main() -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/hello")).json() == {"hello": "world"}  # the app, untouched
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": "Hi!"}]},
        )
        assert reply.status_code == 200
        # openai said 429, so groq served, and openai cools down for the 20 s it asked for
        assert reply.headers["x-waterfall-provider"] == "groq"
        assert (
            reply.headers["x-waterfall-attempts"] == "openai/fake-small 429, groq/fake-medium 200"
        )
        print(reply.json()["choices"][0]["message"]["content"])


asyncio.run(main())
