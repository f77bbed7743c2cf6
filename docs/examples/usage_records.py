"""Every request the router handles leaves one record: a MemoryLedger and an on_complete hook."""

import asyncio

import httpx

from waterfall_asgi import MemoryLedger, UsageRecord, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

upstreams = FakeNetwork(
    {
        "openai": FakeProvider(script=["rate_limit:dialect=retry-after,seconds=20"]),
        "groq": FakeProvider(),
    }
)
config = {
    "providers": {
        "openai": {"base_url": "http://openai/v1"},
        "groq": {"base_url": "http://groq/v1"},
    },
    "chains": {"fast": ["openai/fake-small", "groq/fake-medium"]},
}
ledger = MemoryLedger()  # records in memory, nothing on disk
finished: list[UsageRecord] = []  # what the hook was given, in order
app = WaterfallMiddleware(
    None, config, transport=upstreams, ledger=ledger, on_complete=finished.append
)
HI = [{"role": "user", "content": "Say hello"}]


async def main() -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        fallback = await client.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
        stream = await client.post(
            "/v1/chat/completions", json={"model": "fast", "messages": HI, "stream": True}
        )
        refused = await client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": HI})
        assert [r.status_code for r in (fallback, stream, refused)] == [200, 200, 404]
        # neither the model list nor the health check is usage: no record, no hook call
        await client.get("/v1/models")
        await client.get("/health")
    await app.shutdown()  # closes the ledger too

    assert list(ledger.records.values()) == finished  # the hook saw each finished record
    # the id of a record is the x-waterfall-request-id the client received
    assert finished[0].id == fallback.headers["x-waterfall-request-id"]
    # each attempt is kept, with the cooldown it caused: the 20 s the 429 asked for
    assert finished[0].attempts[0]["cooldown_s"] == 20.0
    print("status    http  model  provider  stream  tokens  attempts, or the error")
    for r in finished:
        tokens = f"{r.prompt_tokens}+{r.completion_tokens}" if r.total_tokens else "-"
        tried = ", ".join(f"{a['entry']} {a['status'] or a['outcome']}" for a in r.attempts)
        print(
            f"{r.status:<9} {r.http_status:>4}  {r.model:<5}  {r.provider or '-':<8}  "
            f"{'yes' if r.stream else 'no':<6}  {tokens:<6}  {tried or r.error}"
        )


asyncio.run(main())
