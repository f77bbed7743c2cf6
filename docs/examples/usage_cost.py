"""A priced deployment: the exact cost of a stream, in the ledger and in an optional last event."""

import asyncio
import json
from decimal import Decimal

import httpx

from waterfall_asgi import MemoryLedger, Price, UsageRecord, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

upstreams = FakeNetwork({"openai": FakeProvider()})
config = {
    "providers": {"openai": {"base_url": "http://openai/v1"}},
    # $0.15 and $0.60 per million tokens: 0.15 and 0.6 micro-dollars per token
    "deployments": [
        {
            "provider": "openai",
            "model": "fake-small",
            "price": {"unit": "usd_micro", "prompt": "0.15", "completion": "0.6"},
        }
    ],
    "chains": {"fast": ["openai/fake-small"]},  # the entry takes the price listed above
    "ledger": {"path": None, "cost_event": True},  # no file; end each stream with its cost
}
spent: dict[str, int] = {}


async def bill(record: UsageRecord) -> None:
    """An async on_complete hook: add up what was spent, per unit."""
    if record.cost is not None and record.cost_unit is not None:
        spent[record.cost_unit] = spent.get(record.cost_unit, 0) + record.cost


ledger = MemoryLedger()
app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger, on_complete=bill)
CHAT = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "count my tokens please"}],  # 3 + 4 tokens
}


async def main() -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        reply = await client.post("/v1/chat/completions", json=CHAT)
    await app.shutdown()

    (record,) = ledger.records.values()
    assert (record.prompt_tokens, record.completion_tokens) == (7, 12)
    # exactly 7 x 0.15 + 12 x 0.6 = 1.05 + 7.2 = 8.25 micro-dollars, rounded up once: 9
    exact = 7 * Decimal("0.15") + 12 * Decimal("0.6")
    assert exact == Decimal("8.25")
    assert (record.cost, record.cost_unit) == (9, "usd_micro")
    price = Price(unit="usd_micro", prompt=Decimal("0.15"), completion=Decimal("0.6"))
    assert price.cost(7, 12) == 9  # the same arithmetic, on its own
    assert spent == {"usd_micro": 9}
    # the stream ends with [DONE], then the cost event (which the openai client never reads)
    body = reply.text
    assert body.count("data: [DONE]") == 1
    tail = body.split("data: [DONE]\n\n", 1)[1]
    print(tail, end="")
    event = json.loads(tail.split("data: ", 1)[1])
    assert event == {"id": record.id, "cost": 9, "unit": "usd_micro"}
    assert event["id"] == reply.headers["x-waterfall-request-id"]


asyncio.run(main())
