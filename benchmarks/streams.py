"""What an open stream costs in memory: many slow SSE streams held open at once (``make bench``).

One slow upstream (raw asyncio) answers every POST with an SSE chat-completion stream sent slowly:
the role chunk at once, then one small content chunk every :data:`INTERVAL` seconds (as many as
the request's ``max_tokens``, bounded), then the finish chunk, the usage chunk and
``data: [DONE]``. Two proxies in front of it, each on uvicorn in its own process on 127.0.0.1:

* ``router``: ``create_app`` with one provider and a one-entry chain, the ledger in memory;
* ``aiohttp``: the raw-ASGI passthrough of ``run.py`` on aiohttp's client (the baseline), with a
  pool large enough for every stream, that also stops when its client disconnects.

A client (aiohttp, in this process, one connection per stream) opens streams in steps (0, 100,
250, 500, 1000 at once; ``--quick``: up to 200), and once every stream of a step has had its first
event it reads the proxy's resident memory (``VmRSS``). Then it keeps them all open for a few more
event intervals, reading the memory after each, closes them, waits until the proxy has let go of
its sockets (the router drains an abandoned upstream for ``ledger.drain_seconds`` to record usage),
and reads it once more. The proxies are measured one after the other, never at the same time.

Only failures decide the exit status (a stream that got no first event, errored or stalled, or a
server that died); memory is printed, never asserted.

The proxies run on ``--stack standard`` (the default: uvloop and httptools) or ``asyncio``, as
in ``run.py``. Run ``python benchmarks/streams.py`` (about 30 s on 2 cores) or ``--quick`` (about
20 s); ``--streams N`` changes the largest step (the open-file limit may lower it). Every wait has a
timeout and the whole run a deadline (120 s, quick 40 s), past which what was measured is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from run import (
    PATH,
    STACKS,
    ASGIApp,
    Server,
    _bind,
    aiohttp_passthrough,
    describe_machine,
    request_bodies,
    stack_unavailable,
    start,
    stop,
)

from waterfall_asgi.config import LedgerSettings

INTERVAL = 0.5  # seconds between two content events of a stream
MAX_EVENTS = 400  # content events per stream, at most (200 s): every stream is bounded
BACKLOG = 4096  # listen backlog of every server here (the kernel caps it at somaxconn)
OBSERVER_CAP_KIB = 64  # StreamObserver / SSEParser max_bytes (and EventAligner's cap)
CONSTANT_KIB = 64  # the allowance for a stream's fixed state: two sockets' objects, tasks
BOUND_KIB = OBSERVER_CAP_KIB + CONSTANT_KIB
PROXIES = ("router", "aiohttp")
MODEL = "fake-small"


# -- the slow upstream ---------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def _event(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)  # one HTTP chunk per event


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
FIRST = _chunk({"role": "assistant", "content": ""})
WORD = _chunk({"content": "word "})


def _tail(words: int) -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
    last = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0}
    return (
        _chunk({}, "stop")
        + _event({**last, "model": MODEL, "choices": [], "usage": usage})
        + _event("[DONE]")
        + b"0\r\n\r\n"
    )


class SlowUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every POST gets a slow SSE stream of ``max_tokens`` content events
    (``MAX_EVENTS`` at most), one request at a time per connection; writing stops when the
    connection goes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.bodies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; start serving its requests."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop writing."""
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        """Queue the body of every complete request in the buffer."""
        self.buffer += data
        for body in request_bodies(self.buffer):
            self.bodies.put_nowait(body)

    async def serve(self) -> None:
        """Answer the requests in order, each with its slow stream."""
        transport = self.transport
        assert transport is not None
        while True:
            body = await self.bodies.get()
            try:
                words = int(json.loads(body).get("max_tokens") or 0)
            except (ValueError, TypeError, AttributeError):
                words = 0
            words = max(0, min(words, MAX_EVENTS))
            transport.write(HEAD + FIRST)
            for _ in range(words):
                await asyncio.sleep(INTERVAL)
                transport.write(WORD)
            transport.write(_tail(words))


def _listen() -> socket.socket:
    sock = _bind()
    sock.listen(BACKLOG)  # listening again only raises the backlog (run.py's is 1024)
    return sock


def serve_upstream(conn: Connection) -> None:
    """Child process: the slow upstream on a free loopback port (sent up ``conn``)."""

    async def main() -> None:
        sock = _listen()
        server = await asyncio.get_running_loop().create_server(SlowUpstream, sock=sock)
        conn.send(sock.getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the proxies ---------------------------------------------------------------------------------


def serve_proxy(kind: str, upstream: str, streams: int, stack: str, conn: Connection) -> None:
    """Child process: proxy ``kind`` on uvicorn (on ``stack``, see ``run.STACKS``) on a free
    loopback port (sent up ``conn``)."""
    import uvicorn

    pool = max(1000, streams + 64)  # never queue for a pool slot: that is not what is measured
    app: ASGIApp
    if kind == "router":
        from waterfall_asgi import create_app

        config = {
            "providers": {"up": {"base_url": upstream + "/v1"}},
            "chains": {"bench": [f"up/{MODEL}"]},
            "ledger": {"path": None},
            "upstream": {"max_connections": pool},
        }
        app = create_app(config)
    elif kind == "aiohttp":
        app = aiohttp_passthrough(upstream, pool, leave_on_disconnect=True)
    else:
        raise ValueError(kind)
    sock = _listen()
    conn.send(sock.getsockname()[1])
    loop, http = STACKS[stack]
    config_ = uvicorn.Config(
        app,
        loop=loop,
        http=http,
        lifespan="on",
        log_level="warning",
        access_log=False,
        limit_concurrency=max(4096, 4 * streams),
        backlog=BACKLOG,  # informative: the socket is bound (and listening) already
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config_).run(sockets=[sock])


# -- /proc ---------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    """The current resident set size of ``pid`` (``VmRSS``), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sockets(pid: int) -> int:
    """How many sockets ``pid`` holds open."""
    count = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def fd_budget(wanted: int) -> int:
    """The most streams the open-file limit allows (raised to the hard limit if it can be):
    the proxy holds two sockets per stream, and this process and the upstream one each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    allowed = max(0, (soft - 256) // 2)
    print(
        f"open-file limit {soft} (ulimit -n) is too low for {wanted} streams "
        f"(about {need} descriptors in the proxy): at most {allowed} streams",
        file=sys.stderr,
    )
    return allowed


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Stream:
    """One client stream: what it has received, and how it failed."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)  # first event, or failure
    events: int = 0
    error: str | None = None
    done: bool = False  # [DONE] arrived (the stream ended before it was closed)


def request_body(words: int) -> bytes:
    """A streamed chat completion for the chain ``bench`` with ``words`` slow content events."""
    payload = {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say something slowly."}],
        "stream": True,
        "max_tokens": words,
    }
    return json.dumps(payload).encode()


async def read_stream(session: Any, url: str, body: bytes, stream: Stream) -> None:
    """Read one stream as it arrives, counting events; failures are kept in ``stream``."""
    import aiohttp

    try:
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as response:
            if response.status != 200:
                stream.error = f"HTTP {response.status}"
                return
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                end = pending.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, pending = pending[: end + 2], pending[end + 2 :]
                stream.events += complete.count(b"\n\n")
                stream.ready.set()
                if b'"error"' in complete:
                    stream.error = "error event: " + complete.decode(errors="replace")[-200:]
                    return
                if b"data: [DONE]\n\n" in complete:
                    stream.done = True
            if not stream.done:
                stream.error = "ended without data: [DONE]"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ready.set()


@dataclass
class Sample:
    """The proxy's memory and sockets at one moment."""

    label: str
    streams: int
    rss: float | None
    sockets: int
    seconds: float  # since the measurement of this proxy began
    held: bool = False  # taken while the largest step is held open


@dataclass
class Result:
    """Everything measured for one proxy."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    hold_events: tuple[int, int] = (0, 0)  # events per stream during the hold: min, max
    release_seconds: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    steps: tuple[int, ...]
    hold: int  # event intervals the largest step is held open for
    deadline: float  # seconds for the whole run


FULL = Plan(steps=(0, 100, 250, 500, 1000), hold=12, deadline=120)
QUICK = Plan(steps=(0, 50, 100, 200), hold=4, deadline=40)
STEP_TIMEOUT = 30.0  # the longest wait for one step's first events
WARMUP = 8  # short streams run to completion before the 0-stream sample


def scaled(steps: tuple[int, ...], largest: int) -> tuple[int, ...]:
    """``steps`` rescaled so that the last is ``largest``."""
    top = steps[-1]
    out = sorted({0, *(max(1, round(s * largest / top)) for s in steps if s), largest})
    return tuple(s for s in out if s <= largest)


async def measure(server: Server, plan: Plan, until: float, drain: float) -> Result:
    """Open the steps of streams against ``server``, hold, close; sample memory throughout."""
    result = Result(server.name)
    try:
        async with asyncio.timeout(max(until - time.monotonic(), 0.1)):
            await _measure(server, plan, until, drain, result)
    except ProcessLookupError as exc:
        result.failures.append(str(exc))
    except TimeoutError:
        result.note = "deadline reached: measurement cut short"
    return result


async def _measure(server: Server, plan: Plan, until: float, drain: float, result: Result) -> None:
    import aiohttp

    url = f"http://127.0.0.1:{server.port}{PATH}"
    began = time.monotonic()

    def sample(label: str, count: int, held: bool = False) -> None:
        rss, held_sockets = rss_mib(server.pid), sockets(server.pid)
        seconds = time.monotonic() - began
        result.samples.append(Sample(label, count, rss, held_sockets, seconds, held))
        if not server.process.is_alive():
            raise ProcessLookupError(f"{server.name} died (exit code {server.process.exitcode})")

    def left() -> float:
        return until - time.monotonic()

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=10 + 4 * INTERVAL)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        try:
            # Warm-up: a few short streams to their end, so that the proxy's client exists, its
            # code has run and its pool has connections before the first sample.
            warm = [Stream() for _ in range(WARMUP)]
            async with asyncio.timeout(min(STEP_TIMEOUT, max(left(), 0.1))):
                await asyncio.gather(*(read_stream(session, url, request_body(1), s) for s in warm))
            result.failures += [f"warm-up: {s.error}" for s in warm if s.error]
            await asyncio.sleep(INTERVAL)
            sample("0", 0)
            words = min(MAX_EVENTS, int(plan.deadline / INTERVAL) + 10)  # outlasts the run
            body = request_body(words)
            for step in plan.steps[1:]:
                new = [Stream() for _ in range(step - len(streams))]
                streams += new
                tasks += [asyncio.ensure_future(read_stream(session, url, body, s)) for s in new]
                wait = min(STEP_TIMEOUT, left())
                try:
                    async with asyncio.timeout(max(wait, 0.1)):
                        await asyncio.gather(*(s.ready.wait() for s in new))
                except TimeoutError:
                    missing = sum(1 for s in new if not s.ready.is_set())
                    result.failures.append(
                        f"{missing} of {len(new)} new streams had no first event within "
                        f"{wait:.0f} s (step {step})"
                    )
                failed = [s for s in streams if s.error]
                if failed:
                    result.failures.append(
                        f"{len(failed)} stream(s) failed by step {step}: {failed[0].error}"
                    )
                if result.failures:
                    break
                await asyncio.sleep(INTERVAL)  # one more event each: the steady state
                sample(str(step), step)
            if not result.failures:
                before = [s.events for s in streams]
                for number in range(plan.hold):
                    if left() < INTERVAL + drain + 5:
                        result.note = f"deadline: held {number} of {plan.hold} intervals"
                        break
                    await asyncio.sleep(INTERVAL)
                    sample(f"{len(streams)} held", len(streams), held=True)
                grew = [s.events - b for s, b in zip(streams, before, strict=True)]
                result.hold_events = (min(grew), max(grew)) if grew else (0, 0)
                failed = [s for s in streams if s.error]
                if failed:
                    result.failures.append(
                        f"{len(failed)} stream(s) failed while held: {failed[0].error}"
                    )
                if any(s.held for s in result.samples) and min(grew) == 0:
                    stalled = sum(1 for g in grew if g == 0)
                    result.failures.append(f"{stalled} stream(s) stalled while held")
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)
    # Closed: wait until the proxy lets go of the sockets (the router drains the upstream of an
    # abandoned stream for up to ledger.drain_seconds first), then sample once more.
    if result.samples:
        baseline = result.samples[0].sockets
        closed = time.monotonic()
        give_up = closed + min(drain + 5, max(left(), 0.1))
        for _ in range(1000):  # polled every 0.1 s, until give_up
            if time.monotonic() >= give_up or sockets(server.pid) <= baseline + 4:
                break
            await asyncio.sleep(0.1)
        if server.process.is_alive() and sockets(server.pid) <= baseline + 4:
            result.release_seconds = time.monotonic() - closed
        await asyncio.sleep(INTERVAL)
        sample("0 (closed)", 0)


# -- the report ----------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    """A row per proxy and sample (of the hold, only the last: the summary has the range)."""
    header = ("proxy", "streams open", "RSS MiB", "growth MiB", "KiB/stream", "sockets", "at s")
    rows = []
    for result in results:
        zero = result.samples[0].rss if result.samples else None
        held = [s for s in result.samples if s.held]
        for s in result.samples:
            if s.held and s is not held[-1]:
                continue
            label = s.label
            if s.held:  # for how long, since the sample of the step
                step = result.samples[result.samples.index(held[0]) - 1]
                label += f" +{s.seconds - step.seconds:.1f} s"
            growth = s.rss - zero if s.rss is not None and zero is not None else None
            per = 1024 * growth / s.streams if growth is not None and s.streams else None
            rows.append(
                (
                    result.name,
                    label,
                    f"{s.rss:.1f}" if s.rss is not None else "-",
                    f"{growth:+.1f}" if growth is not None else "-",
                    f"{per:.1f}" if per is not None else "-",
                    str(s.sockets),
                    f"{s.seconds:.1f}",
                )
            )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def per_stream(result: Result) -> tuple[int, float] | None:
    """(streams, KiB per open stream) at the largest step reached, before the hold."""
    zero = result.samples[0].rss if result.samples else None
    steps = [s for s in result.samples if s.streams and not s.held]
    if zero is None or not steps or steps[-1].rss is None:
        return None
    top = steps[-1]
    assert top.rss is not None
    return top.streams, 1024 * (top.rss - zero) / top.streams


def summary(results: list[Result]) -> list[str]:
    """The bound check, the hold and the release, per proxy; the router against the baseline."""
    lines = []
    costs: dict[str, float] = {}
    for result in results:
        measured = per_stream(result)
        if measured is None:
            lines.append(f"{result.name}: no streams measured")
            continue
        count, kib = measured
        costs[result.name] = kib
        verdict = "within" if kib <= BOUND_KIB else "OVER"
        lines.append(
            f"{result.name}: {kib:.1f} KiB per open stream at {count} streams; bound "
            f"{OBSERVER_CAP_KIB} KiB observer cap + {CONSTANT_KIB} KiB constant = "
            f"{BOUND_KIB} KiB: {verdict}"
        )
        held = [s for s in result.samples if s.held]
        top = [s for s in result.samples if s.streams == count and not s.held]
        if held and top and held[-1].rss is not None and top[-1].rss is not None:
            rss = [s.rss for s in held if s.rss is not None]
            low, high = result.hold_events
            lines.append(
                f"{result.name}: held {count} open {held[-1].seconds - top[-1].seconds:.1f} s "
                f"more ({low}-{high} events each): RSS {top[-1].rss:.1f} -> "
                f"{held[-1].rss:.1f} MiB ({held[-1].rss - top[-1].rss:+.1f}; "
                f"range {min(rss):.1f}-{max(rss):.1f})"
            )
        if result.release_seconds is not None:
            lines.append(
                f"{result.name}: sockets released {result.release_seconds:.1f} s after the "
                "client closed"
            )
        if result.note:
            lines.append(f"{result.name}: {result.note}")
    if "router" in costs and costs.get("aiohttp"):
        lines.append(
            f"router / aiohttp per open stream: {costs['router'] / costs['aiohttp']:.2f}× "
            f"({costs['router'] - costs['aiohttp']:+.1f} KiB)"
        )
    return lines


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Start the servers, measure each proxy in turn, print the table, stop every server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 200 streams, about 20 s")
    parser.add_argument("--streams", type=int, help="the largest step (default 1000; quick 200)")
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="standard",
        help="the proxies' loop and HTTP parser, as in run.py: standard (uvloop, httptools; the "
        "default) or asyncio (asyncio, h11)",
    )
    args = parser.parse_args(argv)
    if (problem := stack_unavailable(args.stack)) is not None:
        print(problem, file=sys.stderr)
        return 2
    began = time.monotonic()
    plan = QUICK if args.quick else FULL
    largest = fd_budget(args.streams or plan.steps[-1])
    if largest < 1:
        print("no streams possible", file=sys.stderr)
        return 1
    if largest != plan.steps[-1]:
        plan = Plan(scaled(plan.steps, largest), plan.hold, plan.deadline)
    until = began + plan.deadline
    drain = LedgerSettings().drain_seconds  # how long the router drains an abandoned stream

    print(describe_machine())
    loop, http = STACKS[args.stack]
    print(f"stack: {args.stack} (the proxies on uvicorn on {loop} with {http})")
    print(
        f"plan: steps {', '.join(map(str, plan.steps))} concurrent streams, one connection each; "
        f"one content event every {INTERVAL} s; held {plan.hold} intervals at the top; "
        f"deadline {plan.deadline:.0f} s"
    )
    started: list[Server] = []
    results: list[Result] = []
    failures: list[str] = []
    try:
        upstream = start("upstream", serve_upstream)
        started.append(upstream)
        base = f"http://127.0.0.1:{upstream.port}"
        servers = {}
        for name in PROXIES:
            servers[name] = start(name, serve_proxy, name, base, plan.steps[-1], args.stack)
            started.append(servers[name])
        for name in PROXIES:
            if time.monotonic() > until:
                print(f"{name}: not measured, deadline reached", file=sys.stderr)
                break
            print(f"measuring {name} ...", file=sys.stderr)
            result = asyncio.run(measure(servers[name], plan, until, drain))
            results.append(result)
            failures += [f"{name}: {f}" for f in result.failures]
            if not upstream.process.is_alive():
                failures.append("the upstream died")
                break
    finally:
        for server in reversed(started):
            stop(server)
    print(table(results))
    for line in summary(results):
        print(line)
    print(
        "RSS is resident memory only (socket buffers are the kernel's). It is not expected to "
        "fall after closing:\nCPython keeps freed memory for reuse, and the router's in-memory "
        "ledger keeps its latest 10,000 records."
    )
    print(f"total {time.monotonic() - began:.1f} s")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
