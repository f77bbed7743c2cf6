"""Prices imported from the providers' GET /v1/models, in both styles, converted through the
configured rates only, with a price in the config winning over an imported one."""

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import httpx

from waterfall_asgi import MemoryLedger, PriceBook, WaterfallMiddleware, load_config, rank
from waterfall_fakes import FakeNetwork, FakeProvider

HERE = Path(__file__).parent
config = load_config(HERE / "cost_import.toml")
request = json.loads((HERE / "cost_request.json").read_text(encoding="utf-8"))
upstreams = FakeNetwork({name: FakeProvider(name=name) for name in ("cheap", "mid", "dear")})


async def main() -> None:
    ledger = MemoryLedger()
    app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger)
    await app.startup()  # imports every provider's prices; fails if a candidate has none
    prices = app.prices
    # fake-small published in sats (Routstr style): 0.00015 sat = 0.15 msat, exactly;
    # fake-medium published in dollars (OpenRouter style): $0.000001 = 1 usd_micro, exactly
    assert (prices["cheap/fake-small"].unit, prices["cheap/fake-small"].prompt) == (
        "msat",
        Decimal("0.15"),
    )
    assert (prices["mid/fake-medium"].unit, prices["mid/fake-medium"].prompt) == (
        "usd_micro",
        Decimal("1"),
    )
    assert prices["dear/fake-large"].unit == "msat"  # "auto": the fake publishes both; sats win
    assert upstreams["dear"].requests[0].path == "/v1/models"

    # How the route ranks the request, with the imported prices (the config's win for dear).
    ranking = rank(app.config, "auto", request, prices=prices)
    print(ranking.explain())

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        reply = await client.post("/v1/chat/completions", json=request)
    await app.shutdown()
    assert reply.headers["x-waterfall-provider"] == "cheap"
    (record,) = ledger.records.values()
    # 8 x 0.15 + 10 x 0.6 = 7.2 msat, rounded up once: 8 msat;
    # the reference (the dearest fitting, dear, at its config price): 8 x 4 + 10 x 12 + 1000
    assert (record.cost, record.cost_unit, record.reference_cost) == (8, "msat", 1152)

    # Refreshing (every price_refresh seconds once started): a provider that cannot be reached
    # keeps its last good prices.
    book = PriceBook(config)
    async with httpx.AsyncClient(transport=upstreams) as client:
        assert await book.refresh(client) == {}
        upstreams.down.add("mid")
        assert await book.refresh(client) == {"mid": "ConnectError: cannot connect to 'mid'"}
    assert book.prices["mid/fake-medium"] == prices["mid/fake-medium"]
    assert dict(book.errors) == {"mid": "ConnectError: cannot connect to 'mid'"}


asyncio.run(main())
