"""Anthropic Messages through the router: the official SDK, a 429 it never sees, exact usage."""

import asyncio

import anthropic
import httpx2

from waterfall_asgi import MemoryLedger, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

# Two upstreams that speak Anthropic Messages; the first is rate limited the Anthropic way
# (retry-after and anthropic-ratelimit-*-reset headers) for the first request it gets.
claude = FakeProvider(api_key="sk-ant-upstream", script=["rate_limit:dialect=anthropic,seconds=20"])
backup = FakeProvider()
upstreams = FakeNetwork({"claude": claude, "backup": backup})
config = {
    "providers": {
        "claude": {
            "base_url": "http://claude/v1",
            "api_key": "sk-ant-upstream",  # sent upstream as x-api-key
            "apis": ["messages"],
        },
        "backup": {"base_url": "http://backup/v1", "apis": ["chat", "messages"]},
    },
    "deployments": [
        {
            "provider": "backup",
            "model": "fake-medium",
            "price": {"unit": "usd_micro", "prompt": "3", "completion": "15"},
        }
    ],
    "chains": {"smart": ["claude/fake-small", "backup/fake-medium"]},
    "client_keys": ["router-key"],
}
ledger = MemoryLedger()
app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger)
HELLO = [{"role": "user", "content": "Say hello"}]


async def main() -> None:
    # In-process for this example; in production, base_url is your server's address.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app))
    async with anthropic.AsyncAnthropic(
        base_url="http://router", api_key="router-key", http_client=http, max_retries=0
    ) as client:
        message = await client.messages.create(model="smart", max_tokens=100, messages=HELLO)
        async with client.messages.stream(model="smart", max_tokens=100, messages=HELLO) as s:
            streamed = await s.get_final_message()
    await app.shutdown()

    assert message.stop_reason == streamed.stop_reason == "end_turn"
    for record in ledger.records.values():
        trail = ", ".join(f"{a['entry']} {a['status'] or a['outcome']}" for a in record.attempts)
        print(record.route, record.status, record.prompt_tokens, record.completion_tokens,
              record.cost, record.cost_unit, "|", trail)  # fmt: skip
    # the upstream got its own key the Anthropic way, never the client's
    (seen, *_) = backup.requests
    assert "authorization" not in seen.headers  # backup has no key: nothing is sent
    assert "x-api-key" not in seen.headers
    (refused,) = claude.requests
    assert refused.headers["x-api-key"] == "sk-ant-upstream"
    assert (
        refused.headers["anthropic-version"]
        == anthropic.Anthropic(api_key="-").default_headers["anthropic-version"]
    )  # the client's version, passed through


asyncio.run(main())
