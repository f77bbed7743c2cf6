"""A cost route over three fake providers: the cheapest fitting deployment serves, a 429 falls to
the next cheapest, a budget nothing fits is a 400, and the ledger records what each request saved
against the route's reference."""

import asyncio
import json
import tempfile
import textwrap
from decimal import Decimal
from pathlib import Path

import httpx

from waterfall_asgi import SQLiteLedger, WaterfallMiddleware, load_config, read_records
from waterfall_asgi.cli import main as waterfall_asgi
from waterfall_fakes import DEFAULT_MODELS, FakeNetwork, FakeProvider

HERE = Path(__file__).parent
config = load_config(HERE / "cost_route.toml")
request = json.loads((HERE / "cost_request.json").read_text(encoding="utf-8"))

# The prices in the file are the ones the fakes publish (sats per token), in msat.
published = {m.id: m for m in DEFAULT_MODELS}
for deployment in config.deployments:
    price, model = deployment.price, published[deployment.model]
    assert price is not None
    assert price.unit == "msat"
    assert price.exact(1, 0) - price.exact(0, 0) == model.sats_prompt * 1000
    assert price.exact(0, 1) - price.exact(0, 0) == model.sats_completion * 1000
    assert price.exact(0, 0) == model.sats_request * 1000

REQUESTS = [  # the same request four times, with these headers
    ("no header", {}),  # the route's own bar, quality 50: fake-small is too weak
    ("x-waterfall-min-quality: 30", {"x-waterfall-min-quality": "30"}),  # within the bounds
    ("x-waterfall-budget: 1000", {"x-waterfall-budget": "1000"}),  # at most 1000 msat
    ("no header, mid says 429", {}),
]
upstreams = FakeNetwork(
    {
        "cheap": FakeProvider(name="cheap"),
        "mid": FakeProvider(name="mid", script=["ok", "rate_limit"]),  # its 2nd request: 429
        "dear": FakeProvider(name="dear"),
    }
)


async def serve(database: Path) -> list[httpx.Response]:
    app = WaterfallMiddleware(None, config, transport=upstreams, ledger=SQLiteLedger(database))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        replies = []
        for number, (label, headers) in enumerate(REQUESTS, 1):
            reply = await client.post("/v1/chat/completions", json=request, headers=headers)
            replies.append(reply)
            if reply.status_code == 200:
                said = (
                    f"200, attempts {reply.headers['x-waterfall-attempts']},"
                    f" estimated cost {reply.headers['x-waterfall-estimated-cost']}"
                )
            else:
                error = reply.json()["error"]
                said = f"{reply.status_code} {error['code']}: {error['message']}"
            print(textwrap.fill(f"{number}. {label}: {said}", width=96, subsequent_indent="   "))
    await app.shutdown()  # the ledger's last batch is written here
    return replies


with tempfile.TemporaryDirectory() as tmp:
    database = Path(tmp) / "waterfall-usage.db"
    first, low, broke, fallen = asyncio.run(serve(database))

    # 13 prompt tokens by the router's estimate, and max_tokens = 10:
    # 13 x 1 + 10 x 4 + 1000 = 1053 msat at mid (the header rounds up: 13 x 0.15 + 10 x 0.6 = 7.95)
    assert first.headers["x-waterfall-provider"] == "mid"
    assert first.headers["x-waterfall-estimated-cost"] == "1053 msat"
    assert low.headers["x-waterfall-estimated-cost"] == "8 msat"
    assert broke.json()["error"]["code"] == "no_fitting_deployment"
    assert fallen.headers["x-waterfall-attempts"] == "mid/fake-medium 429, dear/fake-large 200"
    assert [r.path for r in upstreams["mid"].requests] == ["/v1/chat/completions"] * 2

    # Charged for the tokens the provider counted: 8 prompt, 10 completion tokens.
    records = read_records(database)
    charged = [(r.provider, r.prompt_tokens, r.completion_tokens, r.cost) for r in records]
    assert charged == [
        ("mid", 8, 10, 1048),  # 8 x 1 + 10 x 4 + 1000
        ("cheap", 8, 10, 8),  # 8 x 0.15 + 10 x 0.6 = 7.2, rounded up once
        (None, None, None, None),  # rejected: no provider was asked
        ("dear", 8, 10, 2190),  # 8 x 5 + 10 x 15 + 2000
    ]
    assert (records[2].status, records[2].error) == ("rejected", "no_fitting_deployment")
    # What the reference (dear) would have cost for the same tokens: 2190 msat each time.
    assert [r.reference_cost for r in records] == [2190, 2190, None, 2190]
    assert {r.cost_unit for r in records} == {"msat", None}
    assert sum((r.reference_cost or 0) - (r.cost or 0) for r in records) == Decimal(3324)

    print()
    assert waterfall_asgi(["usage", "--db", str(database)]) == 0
