"""The OpenAI Responses API through the router: the official SDK, a 429 it never sees."""

import asyncio

import httpx2
import openai

from waterfall_asgi import MemoryLedger, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

# Two upstreams that speak the Responses API; the first is rate limited the OpenAI way
# (x-ratelimit-* headers) for the first request it gets.
primary = FakeProvider(script=["rate_limit:dialect=openai,seconds=20"])
secondary = FakeProvider()
upstreams = FakeNetwork({"primary": primary, "secondary": secondary})
config = {
    "providers": {
        "primary": {"base_url": "http://primary/v1", "apis": ["chat", "responses"]},
        "secondary": {"base_url": "http://secondary/v1", "apis": ["responses"]},
    },
    "deployments": [
        {
            "provider": "secondary",
            "model": "fake-medium",
            "price": {"unit": "usd_micro", "prompt": "2", "completion": "8"},
        }
    ],
    "chains": {"smart": ["primary/fake-small", "secondary/fake-medium"]},
}
ledger = MemoryLedger()
app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger)


async def main() -> None:
    # In-process for this example; in production, base_url is your server's /v1.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app))
    async with openai.AsyncOpenAI(
        base_url="http://router/v1", api_key="-", http_client=http, max_retries=0
    ) as client:
        response = await client.responses.create(model="smart", input="Say hello")
        async with client.responses.stream(model="smart", input="Say hello") as stream:
            streamed = await stream.get_final_response()
    await app.shutdown()

    assert response.status == streamed.status == "completed"
    assert response.output_text
    assert streamed.output_text
    for record in ledger.records.values():
        trail = ", ".join(f"{a['entry']} {a['status'] or a['outcome']}" for a in record.attempts)
        print(record.route, record.status, record.prompt_tokens, record.completion_tokens,
              record.cost, record.cost_unit, "|", trail)  # fmt: skip


asyncio.run(main())
