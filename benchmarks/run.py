"""What the router costs per request, against the smallest Python proxies (``make bench``).

One fast upstream (raw asyncio, precomputed bytes) and six proxies in front of it, each on
uvicorn in its own process on 127.0.0.1:

* ``aiohttp``: a raw-ASGI passthrough using aiohttp's client (the baseline of every ratio);
* ``httpx``: the same passthrough using httpx;
* ``router``: ``create_app`` with a one-entry chain, the ledger in memory;
* ``router+sqlite``: the same with the SQLite ledger in a temporary directory;
* ``serve``: ``router+sqlite`` after ``tune_gc()`` (``gc.freeze()``, a young-generation threshold
  of 10,000): what ``waterfall-asgi serve`` runs with its defaults;
* ``router/httpx``: ``router`` with httpx as its upstream client (``upstream.client = "httpx"``);
* ``router+redis``: ``router+sqlite`` with its cooldowns in Redis (``cooldowns.url``:
  ``REDIS_URL``, default ``redis://127.0.0.1:6379/0``, under a key prefix of the run's own);
* ``router+pg``: ``router`` with the PostgreSQL ledger (``ledger.url``), in a database made for
  the run on ``DATABASE_URL``'s server (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
  and dropped after it;
* ``router+redis+pg``: ``router+pg`` with its cooldowns in Redis too (``cooldowns.url``:
  ``REDIS_URL``, default ``redis://127.0.0.1:6379/0``, under a key prefix of the run's own);
* ``router+metrics``: ``router`` with its Prometheus metrics on (``metrics.enabled``);
* ``router+otel``: ``router`` with tracing on (``tracing.enabled``) and the OpenTelemetry SDK
  set up as a host would: a tracer provider whose batch span processor hands every span to an
  exporter that drops it, and a meter provider whose reader keeps the GenAI metrics in memory.

A row whose service cannot be reached (or whose extra is not installed) is left out, and said so.
After the ratios to the passthrough, the shared-store rows' CPU per request is also given as a
ratio to ``router+sqlite``'s, round by round (the target: at most 1.15 with both on). The
database's and Redis's own CPU is not in these numbers: only the router process's. The
observability rows' CPU per request is given as a ratio to ``router``'s the same way (the
target: at most 1.05).

Every server runs on one stack, ``--stack``: ``standard`` (the default; uvloop and httptools, what
``uvicorn[standard]`` installs and what the issue's own table was measured on) or ``asyncio``
(asyncio's loop and h11, plain ``uvicorn``). ``make bench`` installs uvloop and httptools
(``requirements-bench.txt``) beside the venv, not into it: the tests keep plain uvicorn.

A load generator (aiohttp, in this process, on uvloop with the standard stack) sends a fixed
number of requests per round, with concurrency 1 and 32, interleaving the proxies round by
round, for each workload (``--workloads`` picks some):

* ``json``: a chat completion;
* ``stream``: a streamed chat completion, 20 SSE events ending with ``data: [DONE]``;
* ``stream-responses``: a streamed OpenAI Responses API request (``POST /v1/responses``):
  ``response.created`` ... ``response.completed`` with usage, 24 events;
* ``stream-messages``: a streamed Anthropic Messages request (``POST /v1/messages``, with
  ``max_tokens``, ``x-api-key`` and ``anthropic-version``): ``message_start``, a ``ping``, ...
  ``message_stop``, 22 events.

Every stream carries the same 16 words, one content event each, as the fakes write them. The
server's CPU time is read per process (on Linux its CPU clock, to the nanosecond; elsewhere
psutil if installed, else ``/proc/<pid>/stat``) before and after each round; its peak RSS is read
from ``/proc``. After the table, the ratios to the passthrough are printed round by round too
(median and range), and the streams' side by side, with each dialect's ratio over chat's.

Run ``python benchmarks/run.py`` (about 3 minutes) or ``--quick`` (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

PATH = "/v1/chat/completions"
FAKE_MODEL = "fake-small"  # a model the fakes serve, so the captured bytes are a 200
STREAM_EVENTS = 20  # data events in the stream, [DONE] included
CLIENT_KEY = "sk-bench-client"  # the router's client key: auth is on, as in production
PROXIES = (
    "aiohttp",
    "httpx",
    "router",
    "router+sqlite",
    "serve",
    "router/httpx",
    "router+redis",
    "router+pg",
    "router+redis+pg",
    "router+metrics",
    "router+otel",
)
SHARED = (
    "router+redis",
    "router+pg",
    "router+redis+pg",
)  # the rows with a shared store: ratios to router+sqlite
OBSERVED = ("router+metrics", "router+otel")  # the observability rows: ratios to router
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
STACKS = {"standard": ("uvloop", "httptools"), "asyncio": ("asyncio", "h11")}  # loop, http
WORKLOADS = ("json", "stream", "stream-responses", "stream-messages")
STREAMS = WORKLOADS[1:]  # a stream per dialect: chat, the Responses API, Anthropic Messages
PATHS = {  # where each workload's client posts (and the proxy, upstream)
    "json": PATH,
    "stream": PATH,
    "stream-responses": "/v1/responses",
    "stream-messages": "/v1/messages",
}
CONTENT_EVENTS = STREAM_EVENTS - 4  # the words of every stream (chat: role, finish, usage, DONE)
CONTENT_EVENT = {  # what each stream's content events, and only they, contain
    "stream": b'"delta":{"content":',
    "stream-responses": b"event: response.output_text.delta\n",
    "stream-messages": b"event: content_block_delta\n",
}
ENDS = {  # how the last event of a whole stream starts
    "stream": b"data: [DONE]\n\n",
    "stream-responses": b"event: response.completed\n",
    "stream-messages": b"event: message_stop\n",
}
ANTHROPIC_VERSION = "2023-06-01"
APIS = ("chat", "responses", "messages")  # what the bench's provider speaks
STREAMED = re.compile(rb'"stream"\s*:\s*true')  # (a search costs less than decoding the body)
CONCURRENCY = (1, 32)
POOL = 100  # upstream connections each proxy may keep (the router's httpx default)


# -- the upstream -------------------------------------------------------------------------------


def _fake_request(workload: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """What the capture asks the fakes for: the path, headers and payload of ``workload``'s
    upstream request (a chat stream asks for its usage, as the router does)."""
    payload = json.loads(request_body(workload))
    payload["model"] = FAKE_MODEL
    if workload == "stream":
        payload["stream_options"] = {"include_usage": True}
    headers = {"content-type": "application/json"}
    if workload == "stream-messages":
        headers["anthropic-version"] = ANTHROPIC_VERSION
    return PATHS[workload], headers, payload


def upstream_payloads() -> dict[str, bytes]:
    """The upstream's HTTP/1.1 response to each workload, whole, captured once from the fakes:
    a chat completion, and an SSE stream in each dialect with the same :data:`CONTENT_EVENTS`
    words, one content event each (chat: :data:`STREAM_EVENTS` ``data:`` events ending with
    ``[DONE]``; the Responses API: ``response.created`` ... ``response.completed`` with usage;
    Anthropic Messages: ``message_start``, a ``ping``, ... ``message_stop``)."""
    from waterfall_fakes import FakeProvider

    provider = FakeProvider(reply_words=CONTENT_EVENTS)
    head = "HTTP/1.1 200 OK\r\ncontent-type: {}\r\n{}\r\n"
    payloads = {}
    for workload in WORKLOADS:
        path, headers, payload = _fake_request(workload)
        reply = provider.handle("POST", path, headers, json.dumps(payload).encode())
        if reply.status != 200:
            raise RuntimeError(f"the fake answered {reply.status}: {reply.body!r}")
        body = reply.body
        if workload == "json":
            payloads[workload] = (
                head.format("application/json", f"content-length: {len(body)}\r\n").encode() + body
            )
            continue
        events = [block + b"\n\n" for block in body.split(b"\n\n") if block]
        content = sum(CONTENT_EVENT[workload] in e for e in events)
        if (
            (workload == "stream" and len(events) != STREAM_EVENTS)
            or content != CONTENT_EVENTS
            or not events[-1].startswith(ENDS[workload])
        ):
            raise RuntimeError(f"the fake's {workload} does not have the expected shape")
        # Chunked, one chunk per event, written at once: the upstream costs next to nothing.
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
        payloads[workload] = (
            head.format(
                "text/event-stream; charset=utf-8",
                "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n",
            ).encode()
            + chunked
        )
    return payloads


def upstream_workload(path: str, body: bytes) -> str | None:
    """Which workload's answer a request to the upstream gets (``None``: none, a 404): by its
    path, and on the chat path by whether its JSON body says ``"stream": true``."""
    for workload in STREAMS[1:]:
        if path == PATHS[workload]:
            return workload
    if path != PATH:
        return None
    return "stream" if STREAMED.search(body) is not None else "json"


def take_requests(buffer: bytearray) -> list[tuple[str, bytes]]:
    """Take the complete HTTP/1.1 requests (``Content-Length`` bodies) off the front of
    ``buffer``; return their targets and bodies."""
    requests = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        length = 0
        request_line, *lines = bytes(buffer[:end]).split(b"\r\n")
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        if len(buffer) < total:
            break
        target = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b"/"
        requests.append((target.decode("latin-1"), bytes(buffer[end + 4 : total])))
        del buffer[:total]
    return requests


def request_bodies(buffer: bytearray) -> list[bytes]:
    """Take the complete HTTP/1.1 requests off the front of ``buffer``; return their bodies."""
    return [body for _, body in take_requests(buffer)]


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class UpstreamProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server: every request gets a precomputed response, the one
    :func:`upstream_workload` picks."""

    def __init__(self, responses: dict[str, bytes]) -> None:
        self.responses = responses
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer."""
        self.buffer += data
        for path, body in take_requests(self.buffer):
            workload = upstream_workload(path, body)
            assert self.transport is not None
            self.transport.write(self.responses[workload] if workload else NOT_FOUND)


def serve_upstream(conn: Connection) -> None:
    """Child process: run the upstream on a free loopback port; send the port up ``conn``."""
    responses = upstream_payloads()

    async def main() -> None:
        sock = _bind()
        server = await asyncio.get_running_loop().create_server(
            lambda: UpstreamProtocol(responses), sock=sock
        )
        conn.send(sock.getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the proxies --------------------------------------------------------------------------------


async def _read_body(receive: Receive) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _lifespan(
    startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]]
) -> Callable[[Receive, Send], Awaitable[None]]:
    async def run(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await startup()
                await send({"type": "lifespan.startup.complete"})
            else:
                await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return run


def aiohttp_passthrough(
    upstream: str, pool: int = POOL, *, leave_on_disconnect: bool = False
) -> ASGIApp:
    """The smallest proxy on aiohttp's client: body in, status + content type + bytes out.

    With ``leave_on_disconnect`` it also stops relaying (closing the upstream response) when the
    client disconnects, as a proxy holding slow streams must (``streams.py``); without, it reads
    an abandoned stream to its end, which costs nothing with this suite's fast streams."""
    import aiohttp

    state: dict[str, aiohttp.ClientSession] = {}

    async def startup() -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool), auto_decompress=False
        )

    async def shutdown() -> None:
        await state["session"].close()

    lifespan = _lifespan(startup, shutdown)

    async def relay(scope: Message, body: bytes, send: Send) -> None:
        async with state["session"].request(
            scope["method"],
            upstream + scope["path"],
            data=body,
            headers={"content-type": "application/json"},
        ) as response:
            content_type = response.headers.get("content-type", "").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", content_type)],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        body = await _read_body(receive)
        if not leave_on_disconnect:
            return await relay(scope, body, send)
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            # uvicorn drops the sends to a client that left: stop relaying once it says so
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await relay(scope, body, send)
        except asyncio.CancelledError:
            if not watcher.done() or task.uncancel():
                raise  # cancelled from outside, not by the client leaving
        finally:
            watcher.cancel()
        return None

    return app


def httpx_passthrough(upstream: str) -> ASGIApp:
    """The same passthrough on httpx (the router's client), with the router's pool limits."""
    import httpx

    state: dict[str, httpx.AsyncClient] = {}

    async def startup() -> None:
        state["client"] = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=POOL)
        )

    async def shutdown() -> None:
        await state["client"].aclose()

    lifespan = _lifespan(startup, shutdown)

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        body = await _read_body(receive)
        client = state["client"]
        request = client.build_request(
            scope["method"],
            upstream + scope["path"],
            content=body,
            headers={"content-type": "application/json"},
        )
        response = await client.send(request, stream=True)
        try:
            content_type = response.headers.get("content-type", "").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", content_type)],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": b""})
        return None

    return app


def router_app(
    upstream: str,
    ledger_path: str | None,
    client: str = "aiohttp",
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    observed: dict[str, Any] | None = None,
) -> ASGIApp:
    """The router standalone: one provider, a one-entry chain ``bench``, a client key; its ledger
    in PostgreSQL with ``database_url``, its cooldowns in Redis with ``redis_url``."""
    from waterfall_asgi import create_app

    config: dict[str, Any] = {
        "providers": {"up": {"base_url": upstream + "/v1", "apis": list(APIS)}},
        "chains": {"bench": [f"up/{FAKE_MODEL}"]},
        "client_keys": [CLIENT_KEY],
        "ledger": {"url": database_url} if database_url else {"path": ledger_path},
        "upstream": {"client": client},
    }
    if redis_url:
        config["cooldowns"] = {"url": redis_url, "prefix": f"waterfall:bench:{os.getpid()}:"}
    config.update(observed or {})
    app: ASGIApp = create_app(config)
    return app


def serve_proxy(kind: str, upstream: str, ledger_dir: str, stack: str, conn: Connection) -> None:
    """Child process: run proxy ``kind`` on uvicorn (on ``stack``, see :data:`STACKS`) on a free
    loopback port (sent up ``conn``)."""
    import uvicorn

    if kind == "aiohttp":
        app = aiohttp_passthrough(upstream)
    elif kind == "httpx":
        app = httpx_passthrough(upstream)
    elif kind == "router":
        app = router_app(upstream, None)
    elif kind == "router+sqlite":
        app = router_app(upstream, str(Path(ledger_dir) / "usage.db"))
    elif kind == "serve":
        from waterfall_asgi import tune_gc

        app = router_app(upstream, str(Path(ledger_dir) / "serve.db"))
        tune_gc()  # as `waterfall-asgi serve` does
    elif kind == "router/httpx":
        app = router_app(upstream, None, client="httpx")
    elif kind == "router+redis":
        redis_url = os.environ["WATERFALL_BENCH_REDIS_URL"]
        app = router_app(upstream, str(Path(ledger_dir) / "redis.db"), redis_url=redis_url)
    elif kind == "router+metrics":
        app = router_app(upstream, None, observed={"metrics": {"enabled": True}})
    elif kind == "router+otel":
        otel_sdk()
        app = router_app(upstream, None, observed={"tracing": {"enabled": True}})
    elif kind in SHARED:
        app = router_app(
            upstream,
            None,
            database_url=os.environ["WATERFALL_BENCH_DATABASE_URL"],
            redis_url=os.environ["WATERFALL_BENCH_REDIS_URL"] if "redis" in kind else None,
        )
    else:
        raise ValueError(kind)
    sock = _bind()
    conn.send(sock.getsockname()[1])
    loop, http = STACKS[stack]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, loop=loop, http=http
    )
    uvicorn.Server(config).run(sockets=[sock])


def otel_sdk() -> None:
    """Set the global OpenTelemetry providers up as a host would, exporting nowhere: a batch
    span processor handing spans to an exporter that drops them, a metric reader in memory."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def stack_unavailable(stack: str) -> str | None:
    """What to tell a user when ``stack`` cannot run here, for want of a module (``None``: it
    can)."""
    missing = [name for name in STACKS[stack] if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"--stack {stack} needs {', '.join(missing)}: pip install -r requirements-bench.txt "
        "(make bench does), or use --stack asyncio"
    )


def _bind() -> socket.socket:
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then (with proto 0,
    # Nagle plus delayed ACKs add ~40 ms to every response written in two pieces).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process this script started, and where it listens."""

    name: str
    process: multiprocessing.process.BaseProcess
    port: int

    @property
    def pid(self) -> int:
        """The process id (always set once started)."""
        assert self.process.pid is not None
        return self.process.pid


def start(name: str, target: Callable[..., None], *args: Any) -> Server:
    """Start ``target`` in a fresh (spawned) process and wait for the port it listens on."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, child), name=name, daemon=True)
    process.start()
    child.close()
    if not parent.poll(30):
        stop(Server(name, process, 0))
        raise RuntimeError(f"{name} did not start")
    port = parent.recv()
    parent.close()
    return Server(name, process, port)


def stop(server: Server) -> None:
    """Stop a process this script started: SIGTERM (uvicorn shuts down cleanly), then SIGKILL."""
    process = server.process
    if process.is_alive():
        process.terminate()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)


try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_clock(pid: int) -> int:
    """Linux's CPU clock of process ``pid`` (``CPUCLOCK_SCHED``, as ``clock_getcpuclockid``
    makes it): the time every thread of it, exited ones too, spent on a CPU, user and system, to
    the nanosecond. The tick-based counts of ``/proc/<pid>/stat`` and psutil move in 10 ms
    steps, which is a few percent of a round."""
    return ((~pid) << 3) | 2


def _precise() -> bool:
    try:
        time.clock_gettime(_process_clock(os.getpid()))
    except (AttributeError, OSError):  # not Linux
        return False
    return sys.platform == "linux"


PRECISE_CPU = _precise()
CPU_SOURCE = (
    "the process CPU clock (clock_gettime, ns)"
    if PRECISE_CPU
    else "psutil"
    if psutil is not None
    else "/proc/<pid>/stat"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    if PRECISE_CPU:
        return time.clock_gettime(_process_clock(pid))
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set size of ``pid`` (VmHWM), in MiB, where ``/proc`` has it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if psutil is not None:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    return None


# -- the load generator -------------------------------------------------------------------------


@dataclass
class Cell:
    """Everything measured for one proxy, workload and concurrency, over all rounds."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    rounds: list[tuple[int, float, float]] = field(default_factory=list)
    """Each round's requests, seconds and CPU seconds (for :func:`round_ratios`)."""


def request_body(workload: str) -> bytes:
    """The client's request for ``workload``, to the chain ``bench``: a chat completion (JSON or
    streamed), a streamed Responses API request, or a streamed Anthropic Messages request."""
    text = "Say something short."
    payload: dict[str, Any] = {"model": "bench"}
    if workload == "stream-responses":
        payload["input"] = text
    else:
        if workload == "stream-messages":
            payload["max_tokens"] = 256
        payload["messages"] = [{"role": "user", "content": text}]
    payload["stream"] = workload != "json"
    return json.dumps(payload).encode()


def request_headers(workload: str) -> dict[str, str]:
    """The client's headers for ``workload``: its key as the dialect's clients send it
    (Anthropic's ``x-api-key``, with ``anthropic-version``; else ``Authorization: Bearer``)."""
    headers = {"content-type": "application/json"}
    if workload == "stream-messages":
        headers["x-api-key"] = CLIENT_KEY
        headers["anthropic-version"] = ANTHROPIC_VERSION
    else:
        headers["authorization"] = f"Bearer {CLIENT_KEY}"
    return headers


def whole(workload: str, body: bytes) -> bool:
    """Whether ``body`` is a whole answer to ``workload``: a chat completion, or a stream whose
    last event is its dialect's terminal event."""
    if workload == "json":
        return body.startswith(b'{"id":"chatcmpl-')
    if not body.endswith(b"\n\n"):
        return False
    cut = body.rfind(b"\n\n", 0, len(body) - 2)
    return body[cut + 2 if cut >= 0 else 0 :].startswith(ENDS[workload])


async def one_round(
    server: Server, workload: str, concurrency: int, requests: int, seconds: float, cell: Cell
) -> None:
    """``requests`` requests (or as many as ``seconds`` allow) with ``concurrency`` in flight."""
    import aiohttp

    url = f"http://127.0.0.1:{server.port}{PATHS[workload]}"
    body = request_body(workload)
    headers = request_headers(workload)  # (the passthroughs get the key too, and ignore it)
    stream = workload != "json"
    issued = 0
    measuring = False
    deadline = 0.0

    async def one(session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        first = None
        ok = False
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if stream:
                    chunks = []
                    async for chunk in response.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                        chunks.append(chunk)
                    data = b"".join(chunks)
                else:
                    data = await response.read()
                ok = response.status == 200 and whole(workload, data)
        except aiohttp.ClientError:
            ok = False
        if not measuring:
            return
        ended = time.perf_counter()
        if not ok:
            cell.errors += 1
        cell.latencies.append(ended - started)
        if first is not None:
            cell.ttfbs.append(first - started)

    async def worker(session: aiohttp.ClientSession, limit: int) -> None:
        nonlocal issued
        while issued < limit and time.perf_counter() < deadline:
            issued += 1
            await one(session)

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        # Warm-up: open every connection and let the proxy warm its pool; not measured.
        deadline = time.perf_counter() + seconds
        warm = 3 * concurrency
        await asyncio.gather(*(worker(session, warm) for _ in range(concurrency)))
        issued = 0
        measuring = True
        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(session, requests) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(server.pid)
    cell.requests += issued
    cell.seconds += elapsed
    cell.cpu += cpu_after - cpu_before
    cell.rounds.append((issued, elapsed, cpu_after - cpu_before))


# -- the report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def version(name: str) -> str:
    """The installed version of distribution ``name`` (or ``-``)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def describe_machine() -> str:
    """Cores, Python and the versions of everything measured."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    names = ("waterfall-asgi", "httpx", "aiohttp", "uvicorn", "h11", "httptools", "uvloop")
    versions = ", ".join(f"{n} {version(n)}" for n in names)
    return (
        f"machine: {platform.machine()}, {cores} cores ({usable} usable), "
        f"{platform.system()} {platform.release()}\n"
        f"python {platform.python_version()} ({platform.python_implementation()}); {versions}; "
        f"cpu measured with {CPU_SOURCE}"
    )


def table(cells: dict[tuple[str, str, int], Cell], rss: dict[str, float | None]) -> str:
    """The one table: a row per proxy, workload and concurrency."""
    header = (
        "proxy",
        "workload",
        "conc",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "TTFB p50 ms",
        "CPU ms/req",
        "peak RSS MiB",
        "CPU/req ×",
        "req/s ×",
    )
    rows = []
    for workload in WORKLOADS:
        for concurrency in CONCURRENCY:
            base = cells.get(("aiohttp", workload, concurrency))
            for proxy in PROXIES:
                cell = cells.get((proxy, workload, concurrency))
                if cell is None or not cell.requests:
                    continue
                rate = cell.requests / cell.seconds
                cpu = 1000 * cell.cpu / cell.requests
                base_rate = base.requests / base.seconds if base and base.requests else None
                base_cpu = 1000 * base.cpu / base.requests if base and base.requests else None
                memory = rss.get(proxy)
                rows.append(
                    (
                        proxy,
                        workload,
                        str(concurrency),
                        str(cell.requests),
                        str(cell.errors),
                        f"{rate:.0f}",
                        f"{1000 * percentile(cell.latencies, 0.5):.2f}",
                        f"{1000 * percentile(cell.latencies, 0.99):.2f}",
                        f"{1000 * percentile(cell.ttfbs, 0.5):.2f}" if cell.ttfbs else "-",
                        f"{cpu:.2f}",
                        f"{memory:.1f}" if memory is not None else "-",
                        f"{cpu / base_cpu:.2f}" if base_cpu else "-",
                        f"{rate / base_rate:.2f}" if base_rate else "-",
                    )
                )
    return _grid(header, rows)


def _grid(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A Markdown table, its columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _columns(cells: dict[tuple[str, str, int], Cell]) -> list[tuple[str, int]]:
    """The workloads measured, each with every concurrency, in the order of :data:`WORKLOADS`."""
    measured = {key[1] for key in cells}
    return [(w, c) for w in WORKLOADS if w in measured for c in CONCURRENCY]


def _cpu_ratios(mine: Cell, theirs: Cell) -> list[float | None]:
    """``mine``'s CPU per request over ``theirs``, round by round (each round paired with the
    round of the same number); ``None`` for a round without requests or CPU."""
    return [
        (a[2] / a[0]) / (b[2] / b[0]) if a[0] and b[0] and b[2] else None
        for a, b in zip(mine.rounds, theirs.rounds, strict=False)
    ]


def _median_range(ratios: Sequence[float | None]) -> str:
    """The median and range of the ratios that are there, or ``-``."""
    known = [r for r in ratios if r is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):.2f} ({min(known):.2f}-{max(known):.2f})"


def dialect_ratios(cells: dict[tuple[str, str, int], Cell]) -> str:
    """Each proxy's CPU per request over the passthrough's for the stream of each dialect, and
    each other dialect's ratio over chat's (its rounds paired with chat's of the same number):
    median and range of the rounds. Empty unless a dialect's stream besides chat's was measured.

    The target is that every dialect costs the router what chat does, relative to a proxy that
    relays the same bytes: a ``÷ chat`` of 1.00."""
    others = [w for w in STREAMS[1:] if any(key[1] == w for key in cells)]
    if not others or not any(key[1] == "stream" for key in cells):
        return ""
    streams = ("stream", *others)
    header = (
        "proxy",
        "conc",
        *(f"{w} ×" for w in streams),
        *(f"{w} ÷ chat" for w in others),
    )
    rows: list[tuple[str, ...]] = []
    for proxy in PROXIES[1:]:
        for concurrency in CONCURRENCY:
            per: dict[str, list[float | None]] = {}
            for workload in streams:
                base = cells.get(("aiohttp", workload, concurrency))
                cell = cells.get((proxy, workload, concurrency))
                per[workload] = _cpu_ratios(cell, base) if cell and base else []
            if not any(per.values()):
                continue
            over_chat = [
                [
                    a / b if a is not None and b else None
                    for a, b in zip(per[w], per["stream"], strict=False)
                ]
                for w in others
            ]
            rows.append(
                (
                    proxy,
                    str(concurrency),
                    *(_median_range(per[w]) for w in streams),
                    *(_median_range(r) for r in over_chat),
                )
            )
    title = "Streams by dialect, CPU/req ×, round by round: median (lowest-highest)"
    return f"{title}\n" + _grid(header, rows)


def round_ratios(cells: dict[tuple[str, str, int], Cell]) -> str:
    """Each proxy's ratios to ``aiohttp`` round by round: the median and the range.

    A proxy's round runs next to the passthrough's round of the same number, so each ratio
    compares two measurements a few seconds apart; the median of them shrugs off a round that a
    hiccup of the machine hit, which the sums of the main table do not."""
    columns = _columns(cells)
    header = ("proxy", *(f"{w} c={c}" for w, c in columns))
    sections = []

    def cpu_per_request(r: tuple[int, float, float]) -> float | None:
        return r[2] / r[0] if r[0] else None

    def rate(r: tuple[int, float, float]) -> float | None:
        return r[0] / r[1] if r[0] and r[1] else None

    for title, of in (("CPU/req ×", cpu_per_request), ("req/s ×", rate)):
        rows: list[tuple[str, ...]] = []
        for proxy in PROXIES[1:]:
            if not any(key[0] == proxy for key in cells):
                continue  # (not measured)
            row = [proxy]
            for workload, concurrency in columns:
                base = cells.get(("aiohttp", workload, concurrency))
                cell = cells.get((proxy, workload, concurrency))
                ratios: list[float] = []
                if base is not None and cell is not None:
                    for mine, theirs in zip(cell.rounds, base.rounds, strict=False):
                        a, b = of(mine), of(theirs)
                        if a is not None and b:
                            ratios.append(a / b)
                row.append(_median_range(ratios))
            rows.append(tuple(row))
        sections.append(f"{title}, round by round: median (lowest-highest)\n" + _grid(header, rows))
    return "\n".join(sections)


def ratios_to_sqlite(cells: dict[tuple[str, str, int], Cell]) -> str:
    """The shared-store rows' CPU per request as a ratio to ``router+sqlite``'s, round by round
    (median and range), each round paired with ``router+sqlite``'s round of the same number."""
    return _ratios_to(cells, "router+sqlite", SHARED)


def ratios_to_router(cells: dict[tuple[str, str, int], Cell]) -> str:
    """The observability rows' CPU per request as a ratio to ``router``'s, round by round (as
    :func:`ratios_to_sqlite`)."""
    return _ratios_to(cells, "router", OBSERVED)


def _ratios_to(
    cells: dict[tuple[str, str, int], Cell], baseline: str, proxies: Sequence[str]
) -> str:
    columns = _columns(cells)
    header = ("proxy", *(f"{w} c={c}" for w, c in columns))
    rows: list[tuple[str, ...]] = []
    for proxy in proxies:
        if not any(key[0] == proxy for key in cells):
            continue
        row = [proxy]
        for workload, concurrency in columns:
            base = cells.get((baseline, workload, concurrency))
            cell = cells.get((proxy, workload, concurrency))
            ratios = _cpu_ratios(cell, base) if base is not None and cell is not None else []
            row.append(_median_range(ratios))
        rows.append(tuple(row))
    if not rows:
        return ""
    return f"CPU/req ÷ {baseline}, round by round: median (lowest-highest)\n" + _grid(header, rows)


def shared_services() -> tuple[str | None, str | None, Callable[[], None], list[str]]:
    """A fresh PostgreSQL database for the run and a Redis URL, where they can be had: the
    database's URL (or ``None``), Redis's (or ``None``), a clean-up, and why any is missing."""
    notes: list[str] = []
    database_url: str | None = None
    redis_url: str | None = None

    def nothing() -> None:
        return None

    cleanup: Callable[[], None] = nothing
    server = os.environ.get("DATABASE_URL") or DATABASE_URL
    try:
        import asyncpg

        name = f"waterfall_bench_{os.getpid()}"

        async def run(sql: str) -> None:
            conn = await asyncpg.connect(server, timeout=5)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
        database_url = server.rsplit("/", 1)[0] + "/" + name

        def drop() -> None:
            asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        cleanup = drop
    except Exception as exc:  # no driver, no server: the rows are left out, and said so
        notes.append(f"router+pg, router+redis+pg left out: no PostgreSQL ({type(exc).__name__})")
    try:
        import redis

        from waterfall_asgi.config import RouterConfig

        if "cooldowns" not in RouterConfig.model_fields:
            raise LookupError("this waterfall-asgi has no Redis cooldowns")
        url = os.environ.get("REDIS_URL") or REDIS_URL
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        redis_url = url
    except Exception as exc:
        notes.append(f"router+redis(+pg) left out: no Redis ({type(exc).__name__}: {exc})")
    return database_url, redis_url, cleanup, notes


# -- main ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    rounds: int
    requests: dict[int, int]  # per concurrency, per round
    round_seconds: float  # the most one round of one cell may take
    total_seconds: float  # no new round starts past this


FULL = Plan(rounds=5, requests={1: 400, 32: 1500}, round_seconds=2.5, total_seconds=400)
QUICK = Plan(rounds=1, requests={1: 100, 32: 300}, round_seconds=0.8, total_seconds=25)


async def measure(
    plan: Plan, proxies: dict[str, Server], workloads: Sequence[str] = WORKLOADS
) -> dict[tuple[str, str, int], Cell]:
    """Run the rounds, interleaving the proxies; stop starting rounds past the time budget."""
    cells: dict[tuple[str, str, int], Cell] = {}
    began = time.monotonic()
    for number in range(plan.rounds):
        if number and time.monotonic() - began > plan.total_seconds:
            print(f"time budget reached: {number} of {plan.rounds} rounds", file=sys.stderr)
            break
        for workload in workloads:
            for concurrency in CONCURRENCY:
                for name, server in proxies.items():
                    cell = cells.setdefault((name, workload, concurrency), Cell())
                    await one_round(
                        server,
                        workload,
                        concurrency,
                        plan.requests[concurrency],
                        plan.round_seconds,
                        cell,
                    )
        print(f"round {number + 1}/{plan.rounds} done", file=sys.stderr)
    return cells


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def loop_factory(stack: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The load generator's event loop: uvloop's with the standard stack, else asyncio's."""
    if STACKS[stack][0] != "uvloop":
        return None
    import uvloop

    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Start the servers, measure, print the table, stop every server started."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--proxies",
        help="measure only these proxies, separated by commas (aiohttp, the baseline, always)",
    )
    parser.add_argument(
        "--workloads",
        help=f"measure only these workloads, separated by commas ({', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="standard",
        help="the servers' loop and HTTP parser: standard (uvloop, httptools; the default) or "
        "asyncio (asyncio, h11)",
    )
    args = parser.parse_args(argv)
    if (problem := stack_unavailable(args.stack)) is not None:
        print(problem, file=sys.stderr)
        return 2
    asked = set(args.workloads.split(",")) if args.workloads else set(WORKLOADS)
    if unknown_workloads := asked - set(WORKLOADS):
        print(f"unknown workloads: {', '.join(sorted(unknown_workloads))}", file=sys.stderr)
        return 2
    workloads = [w for w in WORKLOADS if w in asked]
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(args.rounds, plan.requests, plan.round_seconds, plan.total_seconds)

    print(describe_machine())
    loop, http = STACKS[args.stack]
    print(f"stack: {args.stack} (uvicorn on {loop} with {http}; the load generator on {loop})")
    print(
        f"plan: {plan.rounds} round(s); per round and cell {plan.requests[1]} requests at "
        f"concurrency 1, {plan.requests[32]} at 32, at most {plan.round_seconds} s; "
        f"workloads {', '.join(workloads)}; every stream {CONTENT_EVENTS} content events "
        f"(chat: {STREAM_EVENTS} SSE events)"
    )
    started: list[Server] = []
    database_url, redis_url, cleanup, notes = shared_services()
    for note in notes:
        print(note)
    chosen = set(args.proxies.split(",")) | {"aiohttp"} if args.proxies else set(PROXIES)
    if unknown := chosen - set(PROXIES):
        print(f"unknown proxies: {', '.join(sorted(unknown))}", file=sys.stderr)
        cleanup()
        return 2
    for extra, module in (("metrics", "prometheus_client"), ("otel", "opentelemetry.sdk")):
        name = f"router+{extra}"
        if name in chosen and not _importable(module):
            chosen.discard(name)
            print(f"{name} left out: {module} is not installed")
    wanted = [
        p
        for p in PROXIES
        if p in chosen and ("pg" not in p or database_url) and ("redis" not in p or redis_url)
    ]
    os.environ["WATERFALL_BENCH_DATABASE_URL"] = database_url or ""
    os.environ["WATERFALL_BENCH_REDIS_URL"] = redis_url or ""
    try:
        with tempfile.TemporaryDirectory(prefix="waterfall-bench-") as ledger_dir:
            upstream = start("upstream", serve_upstream)
            started.append(upstream)
            base = f"http://127.0.0.1:{upstream.port}"
            proxies = {}
            for name in wanted:
                proxies[name] = start(name, serve_proxy, name, base, ledger_dir, args.stack)
                started.append(proxies[name])
            with asyncio.Runner(loop_factory=loop_factory(args.stack)) as runner:
                cells = runner.run(measure(plan, proxies, workloads))
            rss = {name: peak_rss_mb(server.pid) for name, server in proxies.items()}
            for server in reversed(started):
                stop(server)
    finally:
        for server in reversed(started):
            stop(server)
        cleanup()
    print(table(cells, rss))
    print(round_ratios(cells))
    if dialects := dialect_ratios(cells):
        print(dialects)
    if shared := ratios_to_sqlite(cells):
        print(shared)
    if observed := ratios_to_router(cells):
        print(observed)
    errors = sum(c.errors for c in cells.values())
    if errors:
        print(f"{errors} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
