"""Micro-benchmarks of the router's hot parts: plain ``time.perf_counter`` loops, fixed counts.

* the SSE parser and ``StreamObserver`` on a realistic stream (MB/s, µs per event);
* ``EventAligner`` on the same stream;
* cooldown lookups on a long chain (``InMemoryCooldownStore``);
* ``cost.rank`` on a catalog of 500 priced deployments;
* ``SQLiteLedger`` writes per second (queued saves until ``close()`` has written them all).

Run ``python benchmarks/micro.py`` (a few seconds) or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from waterfall_asgi import EventAligner, InMemoryCooldownStore, RouterConfig, StreamObserver
from waterfall_asgi.cost import rank
from waterfall_asgi.ledger import UsageRecord
from waterfall_asgi.ledger_sqlite import SQLiteLedger
from waterfall_asgi.relay import _strip_usage
from waterfall_asgi.sse import SSEParser
from waterfall_fakes import FakeProvider

READ_SIZE = 1400  # bytes per feed: about one TCP segment, so events straddle reads


def realistic_stream(words: int = 200) -> bytes:
    """A chat-completion SSE stream from the fakes: one event per word, usage, ``[DONE]``."""
    provider = FakeProvider(reply_words=words)
    body = {
        "model": "fake-small",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = provider.handle(
        "POST",
        "/v1/chat/completions",
        {"content-type": "application/json"},
        json.dumps(body).encode(),
    )
    assert reply.status == 200, reply.body
    return reply.body


def pieces(data: bytes, size: int = READ_SIZE) -> list[bytes]:
    """``data`` cut into reads of ``size`` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def timed(repeat: int, body: Callable[[], object]) -> float:
    """Seconds per call of ``body``, the best of three batches of ``repeat`` calls."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeat):
            body()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best


def bench_streams(repeat: int) -> list[tuple[str, str]]:
    """The SSE parser, the observer and the aligner over one realistic stream."""
    stream = realistic_stream()
    reads = pieces(stream)
    events = stream.count(b"data: ")

    def parser() -> None:
        p = SSEParser()
        for chunk in reads:
            p.feed(chunk)

    def observer() -> None:
        o = StreamObserver()
        for chunk in reads:
            o.feed(chunk)
        assert o.result.complete

    def aligner() -> None:
        a = EventAligner()
        for chunk in reads:
            a.feed(chunk)
        assert not a.flush()

    def relay_path() -> None:
        # what the relay does with each read: take its whole events in one piece, observe them,
        # and cut the usage chunk it injected where the observer found it
        a, o, skip_lf = EventAligner(), StreamObserver(), False
        for chunk in reads:
            whole = a.take(chunk)
            if whole:
                o.feed(whole)
                whole, skip_lf = _strip_usage(whole, o.plain, o.usage_only, skip_lf)
        assert o.result.complete

    rows = []
    for name, body in (
        ("SSEParser.feed", parser),
        ("StreamObserver.feed", observer),
        ("EventAligner.feed", aligner),
        ("aligner + observer + usage cut (relay)", relay_path),
    ):
        seconds = timed(repeat, body)
        rows.append(
            (
                f"{name} ({len(stream)} B, {events} events, {READ_SIZE} B reads)",
                f"{len(stream) / seconds / 1e6:.1f} MB/s, {1e6 * seconds / events:.2f} µs/event",
            )
        )
    return rows


def bench_cooldowns(repeat: int, length: int = 100) -> list[tuple[str, str]]:
    """Walk a chain of ``length`` entries, the first 99 % cooling down, to the first ready one."""
    store = InMemoryCooldownStore()
    keys = [f"p{i % 10}/model-{i}" for i in range(length)]
    now = time.time()

    async def scan() -> str | None:
        for key in keys:
            until = await store.get(key)
            if until is None or until <= now:
                return key
        return None

    async def main() -> float:
        for key in keys[: length - 1]:
            await store.extend(key, now + 3600)
        assert await scan() == keys[-1]
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeat):
                await scan()
            best = min(best, (time.perf_counter() - started) / repeat)
        return best

    seconds = asyncio.run(main())
    return [
        (
            f"InMemoryCooldownStore: scan a {length}-entry chain",
            f"{1e6 * seconds:.1f} µs/scan, {1e6 * seconds / length:.3f} µs/lookup",
        )
    ]


def catalog(size: int = 500) -> RouterConfig:
    """A config with ``size`` priced deployments over 10 providers and a route over all."""
    providers = {f"p{i}": {"base_url": f"http://127.0.0.1:9/p{i}/v1"} for i in range(10)}
    deployments = [
        {
            "provider": f"p{i % 10}",
            "model": f"model-{i}",
            "price": {"unit": "msat", "prompt": str(1 + i % 37), "completion": str(2 + i % 53)},
        }
        for i in range(size)
    ]
    models = {
        f"model-{i}": {
            "quality": str(i % 10),
            "context_window": 8192 * (1 + i % 8),
            "capabilities": ["tools"] if i % 3 else [],
        }
        for i in range(size)
    }
    return RouterConfig.model_validate(
        {
            "providers": providers,
            "deployments": deployments,
            "models": models,
            "routes": {"cheap": {"min_quality": "3"}},
            "ledger": {"path": None},
        }
    )


def bench_rank(repeat: int, size: int = 500) -> list[tuple[str, str]]:
    """``cost.rank`` over every deployment of a ``size``-deployment catalog."""
    config = catalog(size)
    payload = {
        "model": "cheap",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plot of Hamlet in one sentence. " * 20},
        ],
        "max_tokens": 256,
    }
    ranking = rank(config, "cheap", payload)
    assert len(ranking.ranked) + len(ranking.excluded) == size
    seconds = timed(repeat, lambda: rank(config, "cheap", payload))
    return [
        (
            f"cost.rank over {size} deployments",
            f"{1e3 * seconds:.2f} ms/rank, {1e6 * seconds / size:.2f} µs/deployment",
        )
    ]


def bench_ledger(records: int) -> list[tuple[str, str]]:
    """Queue ``records`` finished records, then ``close()``: every one is on disk after it."""

    async def main(path: Path) -> tuple[float, int, int]:
        ledger = SQLiteLedger(path)
        await ledger.open()
        now = time.time()
        rows = [
            UsageRecord(
                id=f"req-{i}",
                started_at=now,
                route="bench",
                model="bench",
                provider="up",
                upstream_model="fake-small",
                stream=True,
                attempts=[{"entry": "up/fake-small", "outcome": "success", "status": 200}],
                status="success",
                http_status=200,
                ttfb_ms=3.5,
                duration_ms=12.0,
                prompt_tokens=40,
                completion_tokens=200,
                total_tokens=240,
            )
            for i in range(records)
        ]
        started = time.perf_counter()
        for record in rows:
            await ledger.save(record)
        await ledger.close()
        return time.perf_counter() - started, ledger.written, ledger.transactions

    with tempfile.TemporaryDirectory(prefix="waterfall-micro-") as folder:
        seconds, written, transactions = asyncio.run(main(Path(folder) / "usage.db"))
    assert written == records, (written, records)
    return [
        (
            f"SQLiteLedger: {records} saves + close (defaults)",
            f"{records / seconds:,.0f} records/s, {transactions} transactions",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every micro-benchmark and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    rows = [
        *bench_streams(max(1, int(200 * scale))),
        *bench_cooldowns(max(1, int(2000 * scale))),
        *bench_rank(max(1, int(30 * scale))),
        *bench_ledger(max(100, int(20_000 * scale))),
    ]
    width = max(len(name) for name, _ in rows)
    for name, result in rows:
        print(f"{name.ljust(width)}  {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
