"""How fast a cooldown recorded by one replica reaches the others, and what Redis costs a request
where nothing cools (``python benchmarks/redis_propagation.py``; ``--quick`` for a smoke run).

1. **Propagation.** One writer process and ``--replicas`` reader processes, each with its own
   ``RedisCooldownStore`` on one Redis under a fresh prefix. The writer records a cooldown on a
   new key every ``--interval`` ms; each reader notes the wall-clock moment the key appears in its
   mirror (what the router's next request reads). Latency = that moment minus the moment the
   writer called ``extend`` (one host, one clock). ``--busy`` makes each reader's event loop
   also run a CPU-bound task that holds the loop for that many ms at a time and then lets it go
   as long (half a core per reader), as a loaded router's requests do. Printed: p50, p99 and max
   per run, and any key a reader never saw.
2. **The request path.** A router (``WaterfallMiddleware`` over the in-process fakes, Redis
   cooldowns on) serves ``--requests`` chat completions where nothing is cooling; the Redis
   server's own command counts (``INFO commandstats``) before and after say how many commands
   those requests cost: the goal is none (the heartbeat's ``TIME`` once a second is counted
   apart).

Redis: a throwaway ``redis-server`` started from the installed binary on a free loopback port
(stopped at the end), else ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) under a prefix
of the run's own, whose keys are deleted at the end (there, other clients' commands would be
counted too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/0"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# -- Redis ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(directory: Path) -> tuple[str, subprocess.Popen[bytes]] | None:
    """A throwaway ``redis-server`` (no persistence) on a free port, or ``None``."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    options = ["--bind", "127.0.0.1", "--dir", str(directory), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(500):
        client = redis.Redis.from_url(url, socket_timeout=1)
        try:
            if client.ping():
                return url, process
        except redis.RedisError:
            time.sleep(0.01)
        finally:
            client.close()
    process.kill()
    process.wait(10)
    return None


def command_counts(url: str) -> dict[str, int]:
    """The server's command counts so far (``INFO commandstats``), by command."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


# -- 1. propagation ----------------------------------------------------------------------------
def reader(url: str, prefix: str, keys: int, busy_ms: float, conn: Connection) -> None:
    """Child process: a replica that notes when each key reaches its mirror."""
    from waterfall_asgi import RedisCooldownStore

    seen: dict[str, float] = {}

    class Noting(RedisCooldownStore):
        def _learn(self, key: str, deadline: int) -> None:
            super()._learn(key, deadline)
            if key not in seen and key in self._mirror:
                seen[key] = time.time()

    async def hog() -> None:
        while True:  # hold the loop busy_ms at a time, then let it go as long: half a core
            end = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(busy_ms / 1000)

    async def main() -> None:
        store = Noting(url, prefix=prefix)
        await store.open()
        hogging = asyncio.ensure_future(hog()) if busy_ms else None
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # the writer is done (the loop keeps running)
        for _ in range(200):  # bounded: 2 s for stragglers
            if len(seen) >= keys:
                break
            await asyncio.sleep(0.01)
        if hogging is not None:
            hogging.cancel()
        await store.close()
        conn.send(seen)

    asyncio.run(main())


async def write(url: str, prefix: str, keys: int, interval: float) -> dict[str, float]:
    """Record a cooldown on ``keys`` new keys, ``interval`` s apart; when each was recorded."""
    from waterfall_asgi import RedisCooldownStore

    store = RedisCooldownStore(url, prefix=prefix)
    await store.open()
    sent: dict[str, float] = {}
    try:
        for i in range(keys):
            key = f"p{i}/m"
            now = time.time()
            sent[key] = now
            await store.extend(key, now + 60)
            await asyncio.sleep(interval)
        await store.flush()
    finally:
        await store.close()
    return sent


def propagation(url: str, replicas: int, keys: int, interval: float, busy_ms: float) -> str:
    """Run one propagation measurement; return its line of results."""
    prefix = f"waterfall:bench-propagation:{uuid.uuid4().hex[:8]}:"
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for _ in range(replicas):
        parent, child = context.Pipe()
        process = context.Process(
            target=reader, args=(url, prefix, keys, busy_ms, child), daemon=True
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a reader did not start")
            pipe.recv()
        sent = asyncio.run(write(url, prefix, keys, interval))
        for pipe in pipes:
            pipe.send("done")
        seens = [pipe.recv() if pipe.poll(30) else {} for pipe in pipes]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
    latencies = [1000 * (seen[k] - t) for seen in seens for k, t in sent.items() if k in seen]
    missed = sum(1 for seen in seens for k in sent if k not in seen)
    return (
        f"{replicas} readers, {keys} cooldowns {1000 * interval:g} ms apart, "
        f"reader loop busy {busy_ms:g} ms at a time: "
        f"p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
        f"max {max(latencies):.2f} ms, mean {statistics.fmean(latencies):.2f} ms; "
        f"{len(latencies)} seen, {missed} missed"
    )


# -- 2. the request path -------------------------------------------------------------------------
async def request_path(url: str, requests: int) -> str:
    """Serve ``requests`` requests (nothing cooling) and count the Redis commands they cost."""
    import httpx

    from waterfall_asgi import WaterfallMiddleware
    from waterfall_fakes import FakeNetwork, FakeProvider

    net = FakeNetwork({"a": FakeProvider(name="a")})
    config: dict[str, Any] = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "ledger": {"path": None},
        "cooldowns": {"url": url, "prefix": f"waterfall:bench-path:{uuid.uuid4().hex[:8]}:"},
    }
    app = WaterfallMiddleware(None, config, transport=net)
    await app.startup()
    body = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            before = command_counts(url)
            started = time.monotonic()
            for _ in range(requests):
                response = await client.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"a request failed: {response.status_code}")
            elapsed = time.monotonic() - started
            after = command_counts(url)
    finally:
        await app.shutdown()
    ran = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    ran = {k: v for k, v in ran.items() if v and k not in ("info", "hello", "client|setinfo")}
    heartbeat = ran.pop("time", 0)
    return (
        f"{requests} requests in {elapsed:.1f} s with nothing cooling: "
        f"{sum(ran.values())} Redis commands ({json.dumps(ran)}), "
        f"{sum(ran.values()) / requests:.4f} per request; heartbeat TIME: {heartbeat}"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure both; print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    parser.add_argument("--replicas", type=int, default=3, help="reader processes (default 3)")
    parser.add_argument("--keys", type=int, help="cooldowns recorded (default 500)")
    parser.add_argument("--interval", type=float, default=10, help="ms between two (default 10)")
    parser.add_argument(
        "--busy", type=float, action="append", help="ms the readers' loops are held (repeatable)"
    )
    parser.add_argument("--requests", type=int, help="requests through the router (2000)")
    args = parser.parse_args(argv)
    keys = args.keys or (100 if args.quick else 500)
    requests = args.requests or (200 if args.quick else 2000)
    busy = args.busy or ([0.0] if args.quick else [0.0, 1.0, 5.0])
    with tempfile.TemporaryDirectory(prefix="waterfall-redis-bench-") as directory:
        throwaway = start_redis(Path(directory))
        url = throwaway[0] if throwaway else os.environ.get("REDIS_URL") or REDIS_URL
        print(f"Redis: {'a throwaway redis-server' if throwaway else url}; cpus {os.cpu_count()}")
        try:
            for ms in busy:
                print(propagation(url, args.replicas, keys, args.interval / 1000, ms))
            print(asyncio.run(request_path(url, requests)))
        finally:
            if throwaway:
                throwaway[1].kill()
                throwaway[1].wait(10)
            else:
                import redis

                client = redis.Redis.from_url(url)
                try:
                    names = list(client.scan_iter(match="waterfall:bench-*", count=1000))
                    if names:
                        client.delete(*names)
                finally:
                    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
