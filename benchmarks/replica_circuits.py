"""What keeping health circuits per replica costs, and what it saves
(``python benchmarks/replica_circuits.py``).

Routers in one process, each with its own circuits (as separate replicas have), over the fakes
in-process; the chain is ``a`` then ``b``; requests go round-robin:

1. **``a`` fails for everyone** (503 without a hint, a health signal): how many calls reach
   ``a`` before no replica calls it any more, with 1 replica and with 3.
2. **Only replica 0's path to ``a`` is broken** (connections refused from that replica alone):
   which share of each replica's requests ``a`` still serves. Per-replica circuits keep the other
   replicas on ``a``; evidence pooled between replicas would have moved them all to ``b`` for the
   circuit's open period.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}


def replicas(count: int, providers: dict[str, Any], down: set[str] | None = None) -> list[Any]:
    """``count`` routers, each over its own network to the same fakes (``down``: hosts that
    replica 0 cannot reach)."""
    from waterfall_asgi import WaterfallMiddleware
    from waterfall_fakes import FakeNetwork

    config: dict[str, Any] = {
        "providers": {h: {"base_url": f"http://{h}/v1"} for h in providers},
        "chains": {"fast": ["a/fake-small", "b/fake-small"]},
        "ledger": {"path": None},
    }
    apps = []
    for i in range(count):
        net = FakeNetwork(providers)
        if i == 0 and down:
            net.down |= down
        apps.append(WaterfallMiddleware(None, config, transport=net))
    return apps


async def serve(apps: list[Any], requests: int) -> list[str]:
    """Send ``requests`` requests round-robin; the provider that served each, by replica."""
    import httpx

    served: list[str] = []
    for app in apps:
        await app.startup()
    try:
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router")
            for app in apps
        ]
        for i in range(requests):
            response = await clients[i % len(apps)].post("/v1/chat/completions", json=CHAT)
            if response.status_code != 200:
                raise RuntimeError(f"request {i} failed: {response.status_code}")
            served.append(response.headers["x-waterfall-provider"])
        for client in clients:
            await client.aclose()
    finally:
        for app in apps:
            await app.shutdown()
    return served


async def failing_everywhere(count: int, requests: int) -> str:
    from waterfall_fakes import FakeProvider

    providers = {
        "a": FakeProvider(name="a", script=["status:code=503"], cycle=True),
        "b": FakeProvider(name="b"),
    }
    await serve(replicas(count, providers), requests)
    return (
        f"a fails for everyone, {count} replica(s), {requests} requests: "
        f"{len(providers['a'].calls())} calls reached a"
    )


async def broken_path(count: int, requests: int) -> str:
    from waterfall_fakes import FakeProvider

    providers = {"a": FakeProvider(name="a"), "b": FakeProvider(name="b")}
    served = await serve(replicas(count, providers, down={"a"}), requests)
    shares = []
    for i in range(count):
        mine = served[i::count]
        shares.append(f"replica {i}: {100 * mine.count('a') / len(mine):.0f}% by a")
    return f"only replica 0 cannot reach a, {requests} requests: " + ", ".join(shares)


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios; print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=90)
    args = parser.parse_args(argv)
    print(asyncio.run(failing_everywhere(1, args.requests)))
    print(asyncio.run(failing_everywhere(3, args.requests)))
    print(asyncio.run(broken_path(3, args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
