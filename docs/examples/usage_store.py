"""A ledger store of your own: every save appended to a JSON Lines file, off the event loop."""

import asyncio
import json
import tempfile
from pathlib import Path

import httpx

from waterfall_asgi import LedgerStore, UsageRecord, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider


class JsonLinesLedger:
    """Each save is one line; the last line of an id is its record. Blocking file I/O runs in
    a worker thread, never on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self) -> None:
        await asyncio.to_thread(self.path.touch)

    async def save(self, record: UsageRecord) -> None:
        line = json.dumps(record.to_dict()) + "\n"  # serialised now: a snapshot
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)

    async def close(self) -> None:
        pass  # every save is written before it returns: nothing to flush


# one success, then a 503 on the request and on its one retry
upstreams = FakeNetwork(
    {"openai": FakeProvider(script=["ok", "status:code=503", "status:code=503"])}
)
config = {
    "providers": {"openai": {"base_url": "http://openai/v1"}},
    "chains": {"fast": ["openai/fake-small"]},
}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hello"}]}


async def main(path: Path) -> None:
    store = JsonLinesLedger(path)
    assert isinstance(store, LedgerStore)  # the protocol is runtime-checkable
    app = WaterfallMiddleware(None, config, transport=upstreams, ledger=store)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503
    await app.shutdown()


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "usage.jsonl"
    asyncio.run(main(path))
    saves = [UsageRecord.from_dict(json.loads(line)) for line in path.read_text().splitlines()]
    # the served request was saved when accepted (pending), then finished; the 503 the router
    # answered itself (every entry failed) was saved once, finished
    assert [(s.status, s.http_status) for s in saves] == [
        ("pending", 200),
        ("success", 200),
        ("exhausted", 503),
    ]
    assert saves[0].id == saves[1].id != saves[2].id
    assert saves[0].ttfb_ms is not None
    assert saves[0].total_tokens is None
    assert saves[1].total_tokens == 17
