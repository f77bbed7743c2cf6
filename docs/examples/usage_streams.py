"""What the router adds to a stream, what it takes away, and how each kind of stream ends."""

import asyncio
import json

import httpx

from waterfall_asgi import MemoryLedger, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

# One fake whose script sends each request a different way.
SCRIPT = [
    "ok",
    "ok",
    "no_done",
    "truncate:events=5",
    "cut:bytes=1500",
    "slow_chunks:seconds=2",
    "error_event:after=3",
]
upstreams = FakeNetwork({"openai": FakeProvider(script=SCRIPT)})
config = {
    # a stream silent for 0.25 s once it has begun is given up (the default is 15 s)
    "providers": {"openai": {"base_url": "http://openai/v1", "timeouts": {"stall": 0.25}}},
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
        # 3-7. Streams that end without [DONE]: whole, or gone wrong after they had begun
        # (still 200: the status line is sent before the stream).
        replies = [first, second]
        for _ in SCRIPT[2:]:
            replies.append(await client.post("/v1/chat/completions", json=STREAM))
        assert [reply.status_code for reply in replies] == [200] * len(SCRIPT)
    await app.shutdown()

    print("upstream               status             tokens  error in the record", end="")
    print("                      the end of the client's stream")
    for step, reply, record in zip(SCRIPT, replies, ledger.records.values(), strict=True):
        tokens = "-" if record.total_tokens is None else str(record.total_tokens)
        error = record.error or "-"
        print(f"{step:<22} {record.status:<18} {tokens:>6}  {error:<40} {ending(reply.text)}")


asyncio.run(main())
