"""The router's own work per request, in instructions: a count that repeats, for A/B of a change.

CPU time on a shared VM moves by tens of percent between identical runs; the number of
instructions a request executes does not. This drives the ASGI app in one process (no sockets,
no server: ``receive``/``send`` are plain functions) with a stub upstream that answers with the
same bytes as ``run.py``'s upstream, in one read, and counts instructions with
``valgrind --tool=callgrind`` (every thread: the SQLite ledger's writer too). Each proxy runs
twice, with ``--requests`` and four times as many, and the difference is divided by the extra
requests, so startup and warm-up cancel out.

Workloads, as ``run.py``'s (``--workload``): ``json`` and ``stream`` (chat's: the default,
``both``), ``stream-responses`` (the Responses API) and ``stream-messages`` (Anthropic
Messages), each request sent where its dialect's clients send it, with their headers;
``streams`` is the three streams, ``all`` all four.

Proxies: ``passthrough`` (the smallest raw-ASGI proxy over the same stub: the baseline of the
ratios), ``router`` (``create_app`` with a one-entry chain, the ledger in memory) and
``router+sqlite`` (the SQLite ledger in a temporary directory), ``router+metrics`` (``router``
with its Prometheus metrics on) and ``router+otel`` (``router`` with tracing on and the
OpenTelemetry SDK exporting nowhere, as ``run.py``'s row of that name).

Run ``python benchmarks/instructions.py`` (``make bench-instructions``: about 3 minutes on 2
cores; needs valgrind), or ``--cpu`` for process CPU time per request instead (no valgrind;
noisy, a quick look only). ``python benchmarks/instructions.py passthrough router --workload
streams`` (about 3 minutes) compares what each dialect's stream costs the router.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # (the bench's bytes and request bodies)

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
PROXIES = ("passthrough", "router", "router+sqlite", "router+metrics", "router+otel")
WARM_UP = 192  # requests before the measured ones, whatever their count
WORKLOADS = run.WORKLOADS
GROUPS = {"both": ("json", "stream"), "streams": run.STREAMS, "all": WORKLOADS}


def bodies() -> dict[str, tuple[str, bytes]]:
    """The upstream's content type and body per workload (the streams de-chunked)."""
    replies = {}
    for workload, response in run.upstream_payloads().items():
        head, body = response.split(b"\r\n\r\n", 1)
        if b"transfer-encoding: chunked" in head:
            chunked, body = body, b""
            while True:
                size_text, _, rest = chunked.partition(b"\r\n")
                size = int(size_text, 16)
                if not size:
                    break
                body += rest[:size]
                chunked = rest[size + 2 :]
        content_type = head.split(b"content-type: ", 1)[1].split(b"\r\n", 1)[0]
        replies[workload] = (content_type.decode(), body)
    return replies


class StubResponse:
    """An :class:`~waterfall_asgi.upstream.UpstreamResponse` with its whole body in one read."""

    __slots__ = ("_chunks", "headers", "reason", "status")

    def __init__(self, content_type: str, body: bytes) -> None:
        self.status, self.reason = 200, "OK"
        self.headers = {"content-type": content_type}
        self._chunks = [body]

    async def read_chunk(self) -> bytes:
        return self._chunks.pop() if self._chunks else b""

    async def aclose(self) -> None:
        self._chunks.clear()


class StubUpstream:
    """An :class:`~waterfall_asgi.upstream.Upstream` that answers every request at once."""

    def __init__(self) -> None:
        self.replies = bodies()

    async def request(
        self, method: str, url: str, headers: Any, body: bytes | None, timeouts: Any
    ) -> StubResponse:
        workload = run.upstream_workload(url.removeprefix("http://up"), body or b"")
        if workload is None:
            raise RuntimeError(f"the stub has no answer for {url}")
        return StubResponse(*self.replies[workload])

    async def aclose(self) -> None:
        pass


def passthrough(upstream: StubUpstream) -> ASGIApp:
    """Body in, the upstream's status, content type and bytes out."""

    async def nothing() -> None:
        pass

    lifespan = run._lifespan(nothing, nothing)

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await run._read_body(receive)
        response = await upstream.request("POST", "http://up" + scope["path"], [], body, None)
        content_type = response.headers["content-type"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type)],
            }
        )
        while chunk := await response.read_chunk():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await response.aclose()
        await send({"type": "http.response.body", "body": b""})

    return app


def make_app(proxy: str, directory: str) -> ASGIApp:
    if proxy == "passthrough":
        return passthrough(StubUpstream())
    from waterfall_asgi import create_app

    ledger = str(Path(directory) / "usage.db") if proxy == "router+sqlite" else None
    config = {
        "providers": {"up": {"base_url": "http://up/v1", "apis": list(run.APIS)}},
        "chains": {"bench": [f"up/{run.FAKE_MODEL}"]},
        "client_keys": [run.CLIENT_KEY],
        "ledger": {"path": ledger},
    }
    if proxy == "router+metrics":
        config["metrics"] = {"enabled": True}
    elif proxy == "router+otel":
        run.otel_sdk()
        config["tracing"] = {"enabled": True}
    app: ASGIApp = create_app(config, upstream=StubUpstream())
    return app


async def request(app: ASGIApp, body: bytes, workload: str = "json") -> list[Message]:
    """One request of ``workload``, as a server would make it; returns what the app sent."""
    path = run.PATHS[workload]
    headers = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in run.request_headers(workload).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    done = asyncio.get_running_loop().create_future()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await done  # like a server: a pending receive() ends once the response has
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        last = message["type"] == "http.response.body" and not message.get("more_body")
        if last and not done.done():
            done.set_result(None)

    await app(scope, receive, send)
    return sent


async def drive(proxy: str, workload: str, requests: int, concurrency: int) -> float:
    """Run ``requests`` (after :data:`WARM_UP` more) in rounds of ``concurrency``; returns the
    process CPU seconds of the measured part."""
    body = run.request_body(workload)
    with tempfile.TemporaryDirectory() as directory:
        app = make_app(proxy, directory)
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.ensure_future(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
        )
        await outbox.get()
        started = 0.0
        for part, total in enumerate((WARM_UP, requests)):
            if part:
                started = time.process_time()
            for _ in range(-(-total // concurrency)):  # (whole rounds, as main() counts them)
                answers = await asyncio.gather(
                    *(request(app, body, workload) for _ in range(concurrency))
                )
                if not part and any(sent[0].get("status") != 200 for sent in answers):
                    raise RuntimeError(f"{proxy} did not answer 200: {answers[0][:2]!r}")
        spent = time.process_time() - started
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan
    return spent


def count(proxy: str, workload: str, requests: int, concurrency: int) -> int:
    """Instructions of a child process that drives ``requests`` requests (callgrind)."""
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={directory}/out",
                sys.executable,
                __file__,
                "--child",
                proxy,
                workload,
                str(requests),
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode or found is None:
        raise RuntimeError(f"callgrind run failed: {result.stderr[-2000:]}")
    return int(found[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("proxies", nargs="*", default=list(PROXIES), help=", ".join(PROXIES))
    parser.add_argument(
        "--workload",
        choices=(*WORKLOADS, *GROUPS),
        default="both",
        help="one workload, or both (chat's json and stream: the default), streams (the stream "
        "of each dialect) or all",
    )
    parser.add_argument(
        "--requests", type=int, default=320, help="the smaller run's count (whole rounds)"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cpu", action="store_true", help="CPU time instead (no valgrind)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        proxy, workload, requests, concurrency = args.child
        asyncio.run(drive(proxy, workload, int(requests), int(concurrency)))
        return 0
    unknown = [p for p in args.proxies if p not in PROXIES]
    if unknown or args.requests < 1 or args.concurrency < 1:
        parser.error(f"unknown proxy {unknown}" if unknown else "counts must be at least 1")
    if not args.cpu and shutil.which("valgrind") is None:
        print("valgrind is not installed: install it, or run with --cpu", file=sys.stderr)
        return 2
    workloads = GROUPS.get(args.workload, (args.workload,))
    # whole rounds of `concurrency` requests, so that every count is the one divided by
    small = -(-args.requests // args.concurrency) * args.concurrency
    large = 4 * small
    unit = "µs CPU" if args.cpu else "k instructions"
    print(f"per request, in process, concurrency {args.concurrency}: {unit}")
    values: dict[tuple[str, str], float] = {}
    if args.cpu:
        for workload in workloads:
            for proxy in args.proxies:
                spent = asyncio.run(drive(proxy, workload, large, args.concurrency))
                values[workload, proxy] = 1e6 * spent / large
    else:  # the children side by side (instruction counts do not mind sharing the cores)
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            runs = {
                (workload, proxy, n): pool.submit(count, proxy, workload, n, args.concurrency)
                for workload in workloads
                for proxy in args.proxies
                for n in (small, large)
            }
            for (workload, proxy, n), future in runs.items():
                if n == large:
                    low = runs[workload, proxy, small].result()
                    values[workload, proxy] = (future.result() - low) / (large - small) / 1000
    for workload in workloads:
        base = values.get((workload, "passthrough"))
        for proxy in args.proxies:
            value = values[workload, proxy]
            ratio = f"  {value / base:5.2f}×" if base else ""
            print(f"{workload:16s} {proxy:14s} {value:10.1f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
