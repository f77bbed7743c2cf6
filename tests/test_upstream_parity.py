"""Differential tests: the whole router behaves the same over aiohttp (production) as over httpx
(the test seam), under every fault the fakes can provoke.

The router (``WaterfallMiddleware``) is served on a loopback port in front of two loopback fake
providers, ``a`` and ``b``, and every scenario runs twice, once with ``upstream.client =
"aiohttp"`` and once with ``"httpx"``, from scratch each time (fresh fakes, fresh cooldowns, a
fresh ``MemoryLedger``). Both runs must give the client the same status, headers and body bytes,
leave the same ledger records and make the fakes see the same requests.

What is normalised, and nothing else:

- the router's request id (``x-waterfall-request-id``) and the timings (``ttfb_ms``,
  ``duration_ms``, ``started_at``, each attempt's ``elapsed_ms``); every clock that leaks into an
  answer (the fakes' and the router's) is fixed, and the fakes' ``created`` is fixed too;
- the name of the client library's exception class inside error messages, through the explicit
  :data:`LIBRARY_NAMES` map (each run is mapped with its own library's names only, and a run
  naming the other library's exceptions fails);
- in the one scenario whose router read timer and library read timer are equally long (as in
  the default config, 60 s each), the plain ``TimeoutError`` of the router's own timer as well:
  which timer fires first is a race there, and so is the name in the message;
- ``content-length``, which changes with those names' lengths (checked against each body).

A difference found is not normalised away: its test is marked ``xfail(strict=True)`` with the
reason.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi import MemoryLedger, UsageRecord, WaterfallMiddleware
from waterfall_asgi.upstream import AiohttpUpstream, HttpxUpstream
from waterfall_fakes import FakeProvider, FakeServer, LoopbackServer
from waterfall_fakes.behaviours import parse_behaviours
from waterfall_fakes.strategies import BEHAVIOUR_KINDS, behaviours, fault_scripts

pytestmark = pytest.mark.loopback

Kind = Literal["aiohttp", "httpx"]
KINDS: tuple[Kind, ...] = ("aiohttp", "httpx")
NOW = 1_750_000_000.0  # every clock: the fakes' (rate limit headers) and the router's


def fixed_clock() -> float:
    return NOW


# The client library's exception names that may appear in error messages (and the ledger's
# ``error``), each mapped to what it means; the only difference tolerated between two runs.
LIBRARY_NAMES: dict[Kind, dict[str, str]] = {
    "aiohttp": {
        "ClientPayloadError": "<body cut>",
        "ServerDisconnectedError": "<body cut>",
        "SocketTimeoutError": "<read timeout>",
        "ClientConnectorError": "<connect error>",
    },
    "httpx": {
        "RemoteProtocolError": "<body cut>",
        "ReadError": "<body cut>",
        "ReadTimeout": "<read timeout>",
        "ConnectError": "<connect error>",
    },
}


def _pattern(kind: Kind) -> re.Pattern[bytes]:
    return re.compile(rb"\b(" + b"|".join(n.encode() for n in LIBRARY_NAMES[kind]) + rb")\b")


PATTERNS = {kind: _pattern(kind) for kind in KINDS}


# When the router's own read timer (``asyncio.timeout``, whose error is a plain TimeoutError)
# and the client library's are set to the same length, which one fires first is a race, in
# either library: only the scenarios that set them so (``timers_race``) map this name too.
RACING_TIMERS = {"TimeoutError": "<read timeout>"}
RACE_PATTERN = re.compile(rb"\b(TimeoutError)\b")


def normalise(kind: Kind, data: bytes, *, race: bool = False) -> bytes:
    """``data`` with ``kind``'s exception names replaced by their meaning."""
    other: Kind = "httpx" if kind == "aiohttp" else "aiohttp"
    assert not PATTERNS[other].search(data), f"a {kind} run names {other}'s exceptions: {data!r}"
    names = LIBRARY_NAMES[kind]
    data = PATTERNS[kind].sub(lambda m: names[m.group(1).decode()].encode(), data)
    if race:
        data = RACE_PATTERN.sub(RACING_TIMERS["TimeoutError"].encode(), data)
    return data


def normalise_text(kind: Kind, text: str | None, *, race: bool = False) -> str | None:
    return None if text is None else normalise(kind, text.encode(), race=race).decode()


# -- the router and the fakes on loopback ------------------------------------------------------
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
STOP_PATH = "/__parity/stop"


class Switch:
    """An ASGI app handing every request to ``current`` (a fresh router for each run), and
    ``POST /__parity/stop`` to its shutdown, in the server's own event loop."""

    def __init__(self) -> None:
        self.current: WaterfallMiddleware | None = None
        self.used: list[str] = []
        """The class of the upstream client each router stopped had used."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", scope["type"]  # served with lifespan "off"
        router = self.current
        assert router is not None
        if scope["path"] != STOP_PATH:
            await router(scope, receive, send)
            return
        self.used.append(type(router._upstream).__name__)
        await router.shutdown()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Loopback:
    router: LoopbackServer
    switch: Switch
    fakes: dict[str, FakeServer]
    client: httpx.Client


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    switch = Switch()
    with (
        FakeServer(FakeProvider(name="idle-a")) as a,
        FakeServer(FakeProvider(name="idle-b")) as b,
        LoopbackServer(switch) as router,
        httpx.Client(
            base_url=router.root,
            timeout=30,
            # a connection per request: on a kept-alive one, each streamed answer's last chunk
            # waits 40 ms for a delayed ACK
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client,
    ):
        yield Loopback(router, switch, {"a": a, "b": b}, client)


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- scenarios ---------------------------------------------------------------------------------
TIMEOUTS = {"connect": 2.0, "first_byte": 0.4, "read": 0.25, "write": 2.0, "pool": 2.0}
PRICE = {"unit": "msat", "prompt": "0.15", "completion": "0.6", "request": "1"}
MESSAGES = [{"role": "user", "content": "Tell me something, please"}]


@dataclass(frozen=True)
class Scenario:
    """``a`` (and ``b``, when the chain has two entries) answer their requests with these script
    steps (header text), then normally."""

    a: tuple[Any, ...] = ()
    b: tuple[Any, ...] | None = ()
    requests: int = 1
    modes: tuple[bool, ...] = (True, False)  # streamed, not streamed
    timers_race: bool = False  # the router's read timer and the library's are the same length
    timeouts: dict[str, float] = field(default_factory=dict)
    limits: dict[str, Any] | None = None
    refused: bool = False  # nothing listens where ``a`` is
    wrong_key: bool = False  # ``a`` wants another key than the router sends


def step(*steps: str, **kw: Any) -> Scenario:
    return Scenario(a=steps, **kw)


def sse(*steps: str, **kw: Any) -> Scenario:
    """A fault that only a stream can show (a JSON answer is the same with or without it)."""
    return Scenario(a=steps, modes=(True,), **kw)


def alone(*steps: str, **kw: Any) -> Scenario:
    """A chain of ``a`` only: its failures end in a 503."""
    return Scenario(a=steps, b=None, **kw)


DIALECTS = ("retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter", "none")
SCENARIOS: dict[str, Scenario] = {
    "ok": step(),
    **{f"429-{d}": step(f"rate_limit:dialect={d},seconds=7") for d in DIALECTS},
    "429-alone": alone("rate_limit:dialect=retry-after-date,seconds=5"),
    "429-limiter": step(requests=3, limits={"requests": 1, "dialect": "retry-after"}),
    "402": step("insufficient_balance"),
    "500": step("status:code=500"),
    "502-alone": alone("status:code=502"),
    "503": step("status:code=503,message=Über busy 数据"),
    "504": step("status:code=504"),
    "401-status": step("status:code=401"),
    "401-wrong-key": step(wrong_key=True),
    "400-passed-back": step("status:code=400"),
    "404-passed-back": step("status:code=404"),
    "422-passed-back": alone("status:code=422"),
    "refused": step(refused=True),
    "refused-alone": alone(refused=True),
    "hang": step("hang"),
    "hang-alone": alone("hang"),
    "hang-short": step("hang:seconds=0.05"),
    # (b's stream is read with room to spare: a stall of a loaded machine is not the point here)
    "slow-first-byte": step("slow_first_byte:seconds=1.5", timeouts={"read": 1.0}),
    "slow-first-byte-short": step("slow_first_byte:seconds=0.05"),
    "slow-chunks": sse("slow_chunks:seconds=1.5"),
    "slow-chunks-same-timeouts": sse(
        "slow_chunks:seconds=1.5", timeouts={"first_byte": 0.3, "read": 0.3}, timers_race=True
    ),
    "slow-chunks-short": sse("slow_chunks:seconds=0.01"),
    "truncate-0": sse("truncate:events=0"),
    "truncate-0-alone": Scenario(a=("truncate:events=0",), b=None, modes=(True,)),
    "truncate-3": sse("truncate:events=3"),
    "cut-0": step("cut:bytes=0"),
    "cut-in-first-event": step("cut:bytes=50"),
    "cut-in-first-event-alone": alone("cut:bytes=50"),
    "cut-later": step("cut:bytes=900"),
    "cut-later-bytewise": sse("cut:bytes=900; chunking:size=1"),
    "cut-crlf-small-chunks": step("cut:bytes=777; chunking:size=3; line_endings:style=crlf"),
    "stall": sse("stall:events=2"),
    "stall-short": sse("stall:events=3,seconds=0.05"),
    "cut-after-tokens": sse("cut:tokens=3"),
    "context-length": step("context_length_exceeded"),
    "content-filter": step("content_filter"),
    "content-filter-azure": step("content_filter:code=content_filter"),
    "content-filter-output": step("content_filter:after=2"),
    "prefill-reject-no-prefill": step("prefill:mode=reject"),
    "when-once": step("when:times=1; status:code=500", requests=2),
    "no-done": sse("no_done"),
    "double-done": sse("double_done"),
    "error-event-first": sse("error_event:after=0"),
    "error-event-later": sse("error_event:after=2"),
    "error-event-later-done": sse("error_event:after=2,done=true,message=Ошибка ⚠"),
    "malformed-first": sse("malformed_event:after=0"),
    "malformed-later": sse("malformed_event:after=3"),
    "big-first-event": sse("big_event:size=70000,after=0"),
    "big-later-event": sse("big_event:size=70000,after=2; chunking:seed=7,max_size=4096"),
    "no-usage": step("no_usage"),
    "keepalive": sse("keepalive"),
    "keepalive-every-3": sse("keepalive:every=3,text=ping"),
    "fields": sse("fields"),
    "fields-no-ids": sse("fields:event=delta,ids=false"),
    "crlf": sse("line_endings:style=crlf"),
    "cr": sse("line_endings:style=cr"),
    "lf": sse("line_endings:style=lf"),
    "split-utf8": step("chunking:size=1"),
    "split-at": sse("chunking:at=1|2|3|5|8|13|21|34|55|89|144"),
    "split-seed-cr": sse("chunking:seed=3,max_size=5; line_endings:style=cr"),
    "ok-step": step("ok"),
    "tool-call": step("tool_call"),
    "fall-through-twice": Scenario(a=("status:code=500",), b=("rate_limit",), requests=2),
    "second-request-after-cut": step("cut:bytes=200", requests=2),
}


def test_the_scenarios_cover_every_behaviour_and_dialect() -> None:
    used = {
        b
        for s in SCENARIOS.values()
        for steps in (s.a, s.b or ())
        for text in steps
        for b in parse_behaviours(text)
    }
    assert {b.kind for b in used} == set(BEHAVIOUR_KINDS)
    assert {b.dialect for b in used if b.kind == "rate_limit"} == set(DIALECTS)
    assert {b.style for b in used if b.kind == "line_endings"} == {"lf", "crlf", "cr"}


# -- one run -----------------------------------------------------------------------------------
@dataclass
class Run:
    """What one run of a scenario gave: per request, the client's answer; then the ledger and
    what the fakes received."""

    answers: list[dict[str, Any]]
    records: list[dict[str, Any]]
    upstream: dict[str, list[dict[str, Any]]]


def config_for(kind: Kind, scenario: Scenario, fakes: dict[str, FakeServer]) -> dict[str, Any]:
    timeouts = {**TIMEOUTS, **scenario.timeouts}
    names = ["a"] if scenario.b is None else ["a", "b"]
    providers = {
        name: {"base_url": fakes[name].url, "api_key": f"key-{name}", "timeouts": timeouts}
        for name in names
    }
    if scenario.refused:
        providers["a"]["base_url"] = closed_port_url()
    return {
        "upstream": {"client": kind},
        "providers": providers,
        "deployments": [{"provider": n, "model": "fake-small", "price": PRICE} for n in names],
        "chains": {"fast": [f"{n}/fake-small" for n in names]},
        "ledger": {"path": None},
    }


def fake_for(name: str, scenario: Scenario) -> FakeProvider:
    steps = scenario.a if name == "a" else (scenario.b or ())
    key = "another-key" if (name == "a" and scenario.wrong_key) else f"key-{name}"
    return FakeProvider(
        name=name,
        api_key=key,
        script=list(steps),
        reply_words=6,
        clock=fixed_clock,
        limits=scenario.limits if name == "a" else None,
    )


def wait_until_finished(ledger: MemoryLedger) -> None:
    """Every record reaches a terminal status just after its last byte is sent: wait for it."""
    for _ in range(500):
        if all(r.status != "pending" for r in ledger.records.values()):
            return
        time.sleep(0.01)
    raise AssertionError(f"records left pending: {list(ledger.records.values())}")


def run(
    loop: Loopback,
    kind: Kind,
    scenario: Scenario,
    *,
    stream: bool | list[bool],
    ledger: MemoryLedger | None = None,
) -> Run:
    """Run ``scenario`` over the ``kind`` client: its requests streamed or not (``stream``: for
    all, or one by one)."""
    streams = stream if isinstance(stream, list) else [stream] * scenario.requests
    ledger = ledger if ledger is not None else MemoryLedger()
    providers = {name: fake_for(name, scenario) for name in loop.fakes}
    for name, provider in providers.items():
        loop.fakes[name].provider = provider
    router = WaterfallMiddleware(
        None, config_for(kind, scenario, loop.fakes), ledger=ledger, clock=fixed_clock
    )
    loop.switch.current = router
    answers = []
    try:
        for streamed in streams:
            payload = {"model": "fast", "messages": MESSAGES, "stream": streamed}
            r = loop.client.post(
                "/v1/chat/completions",
                json=payload,
                headers={"authorization": "Bearer client-secret", "x-client-trace": "t-1"},
            )
            answers.append(answer(kind, r, race=scenario.timers_race))
        wait_until_finished(ledger)
    finally:
        loop.client.post(STOP_PATH)
        loop.switch.current = None
    # the run used the client it was asked to, and the stop closed it
    wanted = AiohttpUpstream if kind == "aiohttp" else HttpxUpstream
    assert loop.switch.used[-1] == wanted.__name__
    assert router._upstream is None
    assert ledger.closed
    return Run(
        answers,
        [record_fields(kind, r, race=scenario.timers_race) for r in ledger.records.values()],
        {name: [seen(r) for r in p.requests] for name, p in providers.items()},
    )


DROPPED_HEADERS = {"date", "server", "x-waterfall-request-id", "content-length"}


def answer(kind: Kind, r: httpx.Response, *, race: bool) -> dict[str, Any]:
    body = r.content
    if "content-length" in r.headers:
        assert int(r.headers["content-length"]) == len(body)
    else:
        assert r.headers["transfer-encoding"] == "chunked"
    assert len(r.headers["x-waterfall-request-id"]) == 32
    headers = {
        k: normalise(kind, v.encode(), race=race).decode()
        for k, v in r.headers.items()
        if k not in DROPPED_HEADERS
    }
    return {"status": r.status_code, "headers": headers, "body": normalise(kind, body, race=race)}


def record_fields(kind: Kind, record: UsageRecord, *, race: bool) -> dict[str, Any]:
    data = record.to_dict()
    for timing in ("id", "started_at", "ttfb_ms", "duration_ms"):
        data.pop(timing)
    assert record.started_at == NOW
    data["attempts"] = [{k: v for k, v in a.items() if k != "elapsed_ms"} for a in data["attempts"]]
    data["error"] = normalise_text(kind, data["error"], race=race)
    return data


def seen(request: Any) -> dict[str, Any]:
    """What a fake received, less what each client library adds on its own (user-agent, ...)."""
    kept = ("authorization", "content-type", "accept-encoding", "x-client-trace")
    return {
        "method": request.method,
        "path": request.path,
        "json": request.json,
        "status": request.status,
        "headers": {k: request.headers.get(k) for k in kept},
    }


def assert_parity(aio: Run, hx: Run) -> None:
    assert aio.answers == hx.answers
    assert aio.records == hx.records
    assert aio.upstream == hx.upstream
    # and the runs did reach the fakes as the router means to
    for requests in aio.upstream.values():
        for r in requests:
            assert r["headers"]["authorization"] in ("Bearer key-a", "Bearer key-b")
            assert r["headers"]["accept-encoding"] == "identity"
            assert r["headers"]["x-client-trace"] == "t-1"


def both_runs(loop: Loopback, scenario: Scenario, *, stream: bool) -> tuple[Run, Run]:
    return (
        run(loop, "aiohttp", scenario, stream=stream),
        run(loop, "httpx", scenario, stream=stream),
    )


# -- the table ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "stream"),
    [
        pytest.param(name, stream, id=f"{name}-{'stream' if stream else 'json'}")
        for name, scenario in SCENARIOS.items()
        for stream in scenario.modes
    ],
)
def test_parity(loopback: Loopback, name: str, stream: bool) -> None:
    aio, hx = both_runs(loopback, SCENARIOS[name], stream=stream)
    assert_parity(aio, hx)
    assert len(aio.records) == SCENARIOS[name].requests


# -- a late reader -----------------------------------------------------------------------------
class SlowLedger(MemoryLedger):
    """A ledger that takes its time to save an accepted request (as the SQLite ledger does
    when its queue is full): meanwhile the upstream's bytes, and its cut, arrive unread."""

    async def save(self, record: UsageRecord) -> None:
        if record.status == "pending":
            await asyncio.sleep(0.5)
        await super().save(record)


def test_parity_when_the_cut_arrives_before_the_router_reads(loopback: Loopback) -> None:
    scenario = sse("slow_chunks:seconds=0.05; cut:bytes=1000")
    aio = run(loopback, "aiohttp", scenario, stream=True, ledger=SlowLedger())
    hx = run(loopback, "httpx", scenario, stream=True, ledger=SlowLedger())
    # the same end, in both: an interrupted stream, after the first event was accepted
    assert [r["status"] for r in aio.records] == ["upstream_error"]
    assert aio.records == hx.records
    assert [a["status"] for a in aio.answers] == [200]
    assert hx.answers[0]["body"].count(b"data: ") > 3  # the first event, more, and the error
    # ... and the same events before it: aiohttp's StreamReader.readany raises a stored failure
    # before the bytes buffered ahead of it, which AiohttpUpstream must not lose
    assert aio.answers == hx.answers
    assert aio.upstream == hx.upstream


# -- random fault scripts ----------------------------------------------------------------------
def _cheap(step: list[Any]) -> bool:
    """Leave out a big event cut into small chunks (a hundred thousand messages: slow)."""
    kinds = {b.kind for b in step}
    return not {"big_event", "chunking"} <= kinds


STEPS = st.lists(behaviours(), max_size=3).filter(_cheap)  # no waits: max_delay is 0


@settings(max_examples=15, deadline=None)
@given(
    a=fault_scripts(STEPS, max_size=3),
    b=st.none() | fault_scripts(STEPS, max_size=2),
    streams=st.lists(st.booleans(), min_size=1, max_size=3),
)
def test_parity_under_random_fault_scripts(
    loopback: Loopback,
    a: list[list[Any]],
    b: list[list[Any]] | None,
    streams: list[bool],
) -> None:
    scenario = Scenario(a=tuple(a), b=None if b is None else tuple(b), requests=len(streams))
    aio = run(loopback, "aiohttp", scenario, stream=streams)
    hx = run(loopback, "httpx", scenario, stream=streams)
    assert [x["status"] for x in aio.answers] == [x["status"] for x in hx.answers]
    assert [x["body"] for x in aio.answers] == [x["body"] for x in hx.answers]
    assert [r["status"] for r in aio.records] == [r["status"] for r in hx.records]
    assert_parity(aio, hx)
