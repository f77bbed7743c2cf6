"""What the router adds to a stream, what it takes away, and how each kind of stream ends."""

import asyncio
import json

import httpx

from waterfall_asgi import MemoryLedger, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

# One fake whose script sends each request a different way.
SCRIPT = ["ok", "ok", "no_done", "cut:bytes=1500", "error_event:after=3"]
upstreams = FakeNetwork({"openai": FakeProvider(script=SCRIPT)})
config = {
    "providers": {"openai": {"base_url": "http://openai/v1"}},
    "chains": {"fast": ["openai/fake-small"]},
}
ledger = MemoryLedger()
app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger)
STREAM = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "Hi there"}]}


def events(text: str) -> list[str]:
    """The data of every event the client received."""
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def ending(text: str) -> str:
    """How a stream ended: its [DONE] and its error events (by code), in order."""
    tail = [d if d == "[DONE]" else json.loads(d).get("error") for d in events(text)]
    return " + ".join(t if isinstance(t, str) else f"error {t['code']}" for t in tail if t)


async def main() -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        # 1. The client did not ask for usage: the router asks for it upstream...
        first = await client.post("/v1/chat/completions", json=STREAM)
        assert upstreams["openai"].calls()[0].json["stream_options"] == {"include_usage": True}
        # ...and removes the usage-only chunk, so the client sees the stream it asked for.
        assert not any('"choices":[]' in data for data in events(first.text))
        # 2. A client that asked for usage keeps its own choice, and gets the chunk.
        asked = {**STREAM, "stream_options": {"include_usage": True}}
        second = await client.post("/v1/chat/completions", json=asked)
        usage = json.loads(events(second.text)[-2])
        assert (usage["choices"], usage["usage"]["total_tokens"]) == ([], 17)
        # 3-5. Streams that go wrong after they have begun: still 200, the status is sent.
        replies = [first, second]
        for _ in range(3):
            replies.append(await client.post("/v1/chat/completions", json=STREAM))
        assert [reply.status_code for reply in replies] == [200] * 5
    await app.shutdown()

    print("upstream             status             tokens  error in the record", end="")
    print("                      the end of the client's stream")
    for step, reply, record in zip(SCRIPT, replies, ledger.records.values(), strict=True):
        tokens = "-" if record.total_tokens is None else str(record.total_tokens)
        error = record.error or "-"
        print(f"{step:<20} {record.status:<18} {tokens:>6}  {error:<40} {ending(reply.text)}")


asyncio.run(main())
