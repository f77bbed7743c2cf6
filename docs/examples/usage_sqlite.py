"""The router writes its ledger to SQLite; `waterfall-asgi usage` reads it back."""

import asyncio
import tempfile
from pathlib import Path

import httpx

from waterfall_asgi import WaterfallMiddleware, read_records
from waterfall_asgi.cli import main as waterfall_asgi
from waterfall_fakes import FakeNetwork, FakeProvider

upstreams = FakeNetwork(
    {
        # openai serves two requests, then says 429 and cools down for 20 s
        "openai": FakeProvider(script=["ok", "ok", "rate_limit:dialect=retry-after,seconds=20"]),
        # groq serves one, then its stream closes after three events, then it fails with a 503
        # (and again on the router's one retry)
        "groq": FakeProvider(
            script=["ok", "truncate:events=3", "status:code=503", "status:code=503"]
        ),
    }
)
PROVIDERS = {"openai": {"base_url": "http://openai/v1"}, "groq": {"base_url": "http://groq/v1"}}
DEPLOYMENTS = [  # each entry's price: micro-dollars at openai, millisatoshis at groq
    {
        "provider": "openai",
        "model": "fake-small",
        "price": {"unit": "usd_micro", "prompt": "0.15", "completion": "0.6"},
    },
    {
        "provider": "groq",
        "model": "fake-medium",
        "price": {"unit": "msat", "prompt": "1", "completion": "4", "request": "1000"},
    },
]
HI = [{"role": "user", "content": "Say hello"}]  # 5 prompt tokens; the fakes reply with 12


async def serve(database: Path) -> None:
    config = {
        "providers": PROVIDERS,
        "deployments": DEPLOYMENTS,
        "chains": {"fast": ["openai/fake-small", "groq/fake-medium"]},
        "ledger": {"path": str(database)},  # the default is waterfall-usage.db
    }
    app = WaterfallMiddleware(None, config, transport=upstreams)
    chat = {"model": "fast", "messages": HI}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://proxy"
    ) as client:
        for body in (
            chat,  # openai
            {**chat, "stream": True},  # openai
            chat,  # openai 429 -> groq
            {**chat, "stream": True},  # openai cooling -> groq, cut short
            {**chat, "model": "gpt-5"},  # no such chain or model: 404
            chat,  # openai cooling, groq 503: exhausted
        ):
            await client.post("/v1/chat/completions", json=body)
    await app.shutdown()  # the ledger's last batch is written here


with tempfile.TemporaryDirectory() as tmp:
    database = Path(tmp) / "waterfall-usage.db"
    asyncio.run(serve(database))
    records = read_records(database)
    assert [r.status for r in records] == [
        "success",
        "success",
        "success",
        "stream_incomplete",
        "rejected",
        "exhausted",
    ]
    assert waterfall_asgi(["usage", "--db", str(database)]) == 0
    print()
    assert waterfall_asgi(["usage", "--db", str(database), "--by", "status"]) == 0
