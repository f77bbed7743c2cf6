import asyncio
import json
from typing import Any

from waterfall_fakes import ConnectionCut, FakeApp, FakeProvider

app = FakeApp(FakeProvider(script=["chunking:size=50", "cut:bytes=120"]))


async def call(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive the ASGI app by hand and return every message it sends."""
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": json.dumps(body).encode()}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    await app(scope, receive, send)
    return sent


CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}

messages = asyncio.run(call(CHAT))
start, *bodies = messages
assert start["type"] == "http.response.start"
assert start["status"] == 200
assert [len(m["body"]) for m in bodies[:3]] == [50, 50, 50]  # one message per scripted chunk
assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

try:
    asyncio.run(call(CHAT))  # the second step of the script cuts the connection
except ConnectionCut:
    print("cut -> ConnectionCut raised mid-body; an ASGI server aborts the connection")
else:
    raise AssertionError("expected ConnectionCut")
