"""``waterfall-asgi demo``: a tour on embedded defaults, no keys, nothing beyond 127.0.0.1.

Each :class:`Section` starts what it shows (fakes as ``waterfall_fakes.FakeServer`` on loopback
ports or in process, the router on uvicorn or in process) with a script of faults, sends requests
with httpx and prints what the client saw, request by request: the fakes' faults, the waterfall
router under a 429 storm, cost routing, one chain serving the three APIs, and the usage ledger.
"""

from __future__ import annotations

import codecs
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

if TYPE_CHECKING:
    from waterfall_fakes import FakeProvider, FakeServer

__all__ = [
    "API_PATHS",
    "PROMPT",
    "RETRY_HEADERS",
    "SECTIONS",
    "Exchange",
    "Section",
    "Table",
    "api_verdict",
    "exchange",
    "header_hint",
    "run",
    "split_characters",
    "tokens_in_out",
]

PROMPT = [{"role": "user", "content": "Tell me about waterfalls"}]
"""The one message every demo request sends (7 prompt tokens by the fakes' count)."""

API_PATHS = {"chat": "/chat/completions", "responses": "/responses", "messages": "/messages"}
"""The route of each API the router speaks, after its prefix."""

_TERMINAL = {"chat": "[DONE]", "responses": "response.completed", "messages": "message_stop"}
_JSON_END = {"chat": "finish_reason", "responses": "status", "messages": "stop_reason"}

RETRY_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-reset",
)
"""The response headers that say when to retry, in every dialect the fakes speak."""

_LIMITER_HEADERS = ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


def header_hint(headers: httpx.Headers, names: Sequence[str] = RETRY_HEADERS) -> str:
    """The ``names`` present in ``headers``, as ``name: value`` pairs (``-`` if none).

    >>> header_hint(httpx.Headers({"Retry-After": "2", "content-type": "text/plain"}))
    'retry-after: 2'
    >>> header_hint(httpx.Headers({}))
    '-'
    """
    found = [f"{name}: {headers[name]}" for name in names if name in headers]
    return ", ".join(found) or "-"


def split_characters(chunks: Sequence[bytes]) -> int:
    """How many chunk boundaries fall inside a multi-byte UTF-8 character.

    >>> split_characters([b"caf\\xc3", b"\\xa9 ok"])
    1
    """
    count, offset = 0, 0
    body = b"".join(chunks)
    for chunk in chunks[:-1]:
        offset += len(chunk)
        if offset < len(body) and body[offset] & 0b1100_0000 == 0b1000_0000:
            count += 1
    return count


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


@dataclass
class Exchange:
    """What the client saw for one request: status, headers, raw chunks, and any error."""

    status: int | None = None
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    chunks: list[bytes] = field(default_factory=list)
    error: str | None = None

    @property
    def body(self) -> bytes:
        """Every body byte received."""
        return b"".join(self.chunks)

    def text(self) -> str:
        """The body decoded chunk by chunk, as a streaming client must (split characters and all).

        >>> Exchange(chunks=[b"caf\\xc3", b"\\xa9"]).text()
        'café'
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return "".join(decoder.decode(c) for c in self.chunks) + decoder.decode(b"", final=True)

    def data_lines(self) -> list[str]:
        """The ``data:`` payloads of a stream, in order, whatever the line endings."""
        lines = self.text().replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return [line[5:].strip() for line in lines if line.startswith("data:")]

    @property
    def done(self) -> int:
        """How many ``data: [DONE]`` lines arrived."""
        return self.data_lines().count("[DONE]")

    @property
    def usage(self) -> str:
        """``prompt+completion=total`` from the JSON body or the stream's usage chunk."""
        for obj in reversed(self.objects()):
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                return "{prompt_tokens}+{completion_tokens}={total_tokens}".format(**usage)
        return "-"

    def objects(self) -> list[Any]:
        """The JSON body, or each ``data:`` payload of a stream, parsed (``None`` if not JSON)."""
        if self.headers.get("content-type", "").startswith("application/json"):
            return [_loads(self.body)]
        return [_loads(line) for line in self.data_lines() if line != "[DONE]"]

    def outcome(self) -> str:
        """A one-phrase verdict on a stream, from the client's side."""
        if self.error:
            return self.error
        data = [line for line in self.data_lines() if line != "[DONE]"]
        parsed = [_loads(line) for line in data]
        if any(obj is None for obj in parsed):
            return "event with bad JSON"
        if any(isinstance(obj, dict) and "error" in obj for obj in parsed):
            return "error event"
        if self.done == 0:
            return "ended without [DONE]"
        return "complete" if self.done == 1 else f"[DONE] x{self.done}"


def exchange(
    client: httpx.Client,
    url: str,
    *,
    stream: bool = False,
    max_tokens: int = 4,
    model: str = "fake-small",
    include_usage: bool = True,
    api: str = "chat",
) -> Exchange:
    """POST :data:`PROMPT` to ``url`` in ``api`` (``chat``, ``responses`` or ``messages``, each
    with its own route, body and headers) and record every raw chunk that arrives."""
    body: dict[str, Any] = {"model": model}
    headers: dict[str, str] = {}
    if api == "responses":
        body |= {"input": PROMPT, "max_output_tokens": max_tokens}
    else:
        body |= {"messages": PROMPT, "max_tokens": max_tokens}
    if api == "messages":
        headers["anthropic-version"] = "2023-06-01"
    if stream:
        body["stream"] = True
        if include_usage and api == "chat":  # the other APIs always stream their usage
            body["stream_options"] = {"include_usage": True}
    seen = Exchange()
    try:
        with client.stream("POST", url + API_PATHS[api], json=body, headers=headers) as response:
            seen.status, seen.headers = response.status_code, response.headers
            for chunk in response.iter_raw():
                seen.chunks.append(chunk)
    except httpx.HTTPError as exc:
        seen.error = type(exc).__name__
    return seen


def _error_name(obj: dict[str, Any]) -> str | None:
    """The code (else the type) of an error body or event in any of the three APIs."""
    error = obj.get("error")
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type"))
    if obj.get("type") in ("error", "response.failed"):
        return str(obj.get("code") or obj["type"])
    return None


def api_verdict(api: str, seen: Exchange) -> str:
    """Whether the client got a whole answer in ``api``, from the client's side.

    A stream is complete when its API's own last event arrived: ``data: [DONE]`` (chat),
    ``response.completed`` (responses) or ``message_stop`` (messages). A JSON answer is complete
    with its API's own verdict on the answer (``finish_reason``, ``status``, ``stop_reason``).
    Otherwise: the transport error, the error's code or type, or what was missing.

    >>> ok = b'event: message_stop\\ndata: {"type":"message_stop"}\\n\\n'
    >>> api_verdict("messages", Exchange(200, httpx.Headers(), [ok]))
    'complete: message_stop'
    >>> api_verdict("messages", Exchange(200, httpx.Headers(), [ok.replace(b"stop", b"delta")]))
    'ended without message_stop'
    """
    if seen.error:
        return seen.error
    objects = seen.objects()
    if any(obj is None for obj in objects):
        return "bad JSON"
    errors = [_error_name(obj) for obj in objects if isinstance(obj, dict)]
    if any(errors) or seen.status != 200:
        return "error: " + next((e for e in errors if e), str(seen.status))
    terminal = _TERMINAL[api]
    if seen.headers.get("content-type", "").startswith("application/json"):
        (obj,) = objects
        end = (obj.get("choices") or [{}])[0] if api == "chat" else obj
        return f"complete: {_JSON_END[api]} {end.get(_JSON_END[api])}"
    if api == "chat":
        arrived = seen.done
    else:
        arrived = sum(isinstance(obj, dict) and obj.get("type") == terminal for obj in objects)
    if arrived == 0:
        return f"ended without {terminal}"
    return f"complete: {terminal}" if arrived == 1 else f"{terminal} x{arrived}"


def tokens_in_out(seen: Exchange) -> str:
    """``in/out`` tokens as the client was told them, in whichever API's words (``-`` if not).

    The last count of each kind wins, as an Anthropic stream's ``message_delta`` updates the
    ``message_start``'s.

    >>> body = b'{"usage": {"input_tokens": 7, "output_tokens": 12}}'
    >>> tokens_in_out(Exchange(200, httpx.Headers({"content-type": "application/json"}), [body]))
    '7/12'
    """
    counts: dict[str, Any] = {}
    for obj in seen.objects():
        if not isinstance(obj, dict):
            continue
        for holder in (obj, obj.get("response"), obj.get("message")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                counts |= {k: v for k, v in usage.items() if isinstance(v, int)}
    got_in = counts.get("prompt_tokens", counts.get("input_tokens"))
    got_out = counts.get("completion_tokens", counts.get("output_tokens"))
    return "-" if got_in is None or got_out is None else f"{got_in}/{got_out}"


class Table:
    """A plain-text table that sizes its columns to fit."""

    def __init__(self, *columns: str) -> None:
        self.columns = columns
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: object) -> None:
        """Append one row (cells are turned into text)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} cells, got {len(cells)}")
        self.rows.append(tuple(str(c) for c in cells))

    def render(self) -> str:
        """The table as lines of text.

        >>> t = Table("a", "long name")
        >>> t.add(1, "x")
        >>> print(t.render())
        a  long name
        -  ---------
        1  x
        """
        rows = (self.columns, *self.rows)
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        lines = [self.columns, tuple("-" * w for w in widths), *self.rows]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
        )


@dataclass(frozen=True)
class Section:
    """One part of the tour: a title, a line of explanation, and what to play.

    ``play`` starts what it needs on the given :class:`~contextlib.ExitStack` (closed when the
    section ends), sends its requests with the loopback client and returns the table to print.
    """

    title: str
    intro: str
    play: Callable[[ExitStack, httpx.Client], Table]


def _provider(name: str, **config: Any) -> FakeProvider:
    from waterfall_fakes import FakeProvider

    return FakeProvider(name=name, **config)


def _serve(stack: ExitStack, name: str, **config: Any) -> FakeServer:
    from waterfall_fakes import FakeServer

    return stack.enter_context(FakeServer(_provider(name, **config)))


def _applied(fake: FakeProvider) -> str:
    """The behaviours the fake applied to its latest request, in header syntax."""
    from waterfall_fakes import format_behaviours

    return format_behaviours(list(fake.requests[-1].behaviours)) or "ok"


_STREAM_COLUMNS = ("#", "fake", "behaviour", "status", "chunks", "bytes", "split chars")
_STREAM_TAIL = ("[DONE]", "usage", "client saw")


def _stream_row(
    table: Table, number: int, fake: FakeProvider, seen: Exchange, *extra: object
) -> None:
    table.add(
        number,
        fake.config.name,
        _applied(fake),
        seen.status,
        len(seen.chunks),
        len(seen.body),
        split_characters(seen.chunks),
        *extra,
        "yes" if seen.done else "no",
        seen.usage,
        seen.outcome(),
    )


def _storm(stack: ExitStack, client: httpx.Client) -> Table:
    dialects = ("retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter", "none")
    script = [f"rate_limit:dialect={d},seconds=2" for d in dialects] + ["ok"]
    server = _serve(stack, "storm", script=script)
    table = Table("#", "fake", "behaviour", "status", "when to retry", "usage")
    for number in range(1, len(script) + 1):
        seen = exchange(client, server.url)
        hint = header_hint(seen.headers)
        table.add(number, "storm", _applied(server.provider), seen.status, hint, seen.usage)
    return table


def _quota(stack: ExitStack, client: httpx.Client) -> Table:
    server = _serve(stack, "quota", limits={"requests": 2, "window": 60, "dialect": "openai"})
    table = Table("#", "fake", "behaviour", "status", "what the limiter says", "usage")
    for number in range(1, 4):
        seen = exchange(client, server.url)
        hint = header_hint(seen.headers, _LIMITER_HEADERS)
        verdict = "refused by the limiter" if seen.status == 429 else f"request {number} of 2"
        table.add(number, "quota", verdict, seen.status, hint, seen.usage)
    return table


def _streams(stack: ExitStack, client: httpx.Client) -> Table:
    script = [
        "ok",
        "truncate:events=3",
        "cut:bytes=200",
        "no_done",
        "double_done",
        "error_event:after=2",
        "malformed_event:after=2",
        "line_endings:style=crlf; keepalive:every=2",
    ]
    server = _serve(stack, "flaky", script=script)
    table = Table(*_STREAM_COLUMNS, *_STREAM_TAIL)
    for number in range(1, len(script) + 1):
        _stream_row(table, number, server.provider, exchange(client, server.url, stream=True))
    return table


def _chunk_exact(stack: ExitStack, client: httpx.Client) -> Table:
    from waterfall_fakes import FakeTransport

    script = ["chunking:size=1", "chunking:size=5", "chunking:seed=7,max_size=16"]
    fake = _provider("exact", script=script)
    local = stack.enter_context(httpx.Client(transport=FakeTransport(fake)))
    table = Table(*_STREAM_COLUMNS, "each chunk decoded alone", *_STREAM_TAIL)
    for number in range(1, len(script) + 1):
        seen = exchange(local, "http://fake/v1", stream=True, max_tokens=6)
        broken = sum(c.decode("utf-8", errors="replace").count("\ufffd") for c in seen.chunks)
        naive = f"would show {broken} x U+FFFD" if broken else "intact"
        _stream_row(table, number, fake, seen, naive)
    return table


def _router_storm(stack: ExitStack, client: httpx.Client) -> Table:
    """The router on uvicorn (loopback) in front of three fake servers under a 429 storm."""
    import time

    from waterfall_fakes import LoopbackServer

    from .app import create_app

    scripts = {
        # (a 503 or an empty stream is retried once on the same entry: so each fails twice)
        "openai": [
            "rate_limit:dialect=retry-after-ms,seconds=1.5",
            "truncate:events=0",
            "truncate:events=0",
        ],
        "openrouter": ["ok", "rate_limit:dialect=openrouter,seconds=1"],
        "local": ["ok", "status:code=503", "status:code=503"],
    }
    models = {"openai": "fake-large", "openrouter": "fake-medium", "local": "fake-small"}
    fakes = {name: _serve(stack, name, script=script) for name, script in scripts.items()}
    config = {
        "providers": {name: {"base_url": fake.url} for name, fake in fakes.items()},
        # prices in msat per token, as the fakes publish them in sats per token (x 1000)
        "deployments": [
            {"provider": name, "model": model, "price": _msat_price(fakes[name].provider, model)}
            for name, model in models.items()
        ],
        "chains": {"best": [f"{name}/{models[name]}" for name in fakes]},
        "policy": {"default_cooldown": 3},
        "ledger": {"path": str(_LEDGER.path)},
    }
    router = stack.enter_context(LoopbackServer(create_app(config), lifespan="on"))
    table = Table("#", "request", "status", "served by", "entries tried or skipped", "client saw")
    steps: list[tuple[str, bool, float]] = [
        ("openai says 429 (retry-after-ms)", False, 0),
        ("openrouter says 429 (X-RateLimit-Reset)", True, 0),
        ("local fails with 503, retried: all exhausted", False, 0),
        ("after waiting Retry-After", False, -1),
        ("openai's 200 closes before any event, twice", True, 0.6),
    ]
    retry_after = 0.0
    for number, (what, stream, wait) in enumerate(steps, 1):
        time.sleep(retry_after if wait < 0 else wait)
        # the client does not ask for usage: the router does, and keeps it from the client
        seen = exchange(client, router.url, stream=stream, model="best", include_usage=False)
        retry_after = float(seen.headers.get("retry-after", 0))
        served = seen.headers.get("x-waterfall-provider", "-")
        trail = seen.headers.get("x-waterfall-attempts", "-")
        if seen.status == 503:
            error = _loads(seen.body) or {}
            trail = f"{trail}; Retry-After: {seen.headers.get('retry-after')}"
            verdict = error.get("error", {}).get("code", "-")
        else:
            verdict = seen.outcome() if stream else "json, usage " + seen.usage
        table.add(
            number, ("stream: " if stream else "") + what, seen.status, served, trail, verdict
        )
    return table


def _three_apis(stack: ExitStack, client: httpx.Client) -> Table:
    """One chain serving chat, responses and messages: an entry whose provider does not speak
    the request's API is skipped without a call, and Anthropic's 529 and 429 fall through."""
    from waterfall_fakes import FakeNetwork, LoopbackServer

    from .app import create_app

    # anthropic is called only for Messages: overloaded twice (529, retried once), then a 429
    # with Anthropic's headers (retry-after and anthropic-ratelimit-*-reset)
    script = ["status:code=529", "status:code=529", "rate_limit:dialect=anthropic,seconds=20"]
    fakes = {"anthropic": _provider("anthropic", script=script), "gateway": _provider("gateway")}
    models = {"anthropic": "fake-small", "gateway": "fake-medium"}
    apis = {"anthropic": ["messages"], "gateway": ["chat", "responses", "messages"]}
    config = {
        # the fakes answer in process (FakeNetwork), the router on a loopback port
        "providers": {
            name: {"base_url": f"http://{name}/v1", "apis": apis[name]} for name in fakes
        },
        "deployments": [
            {"provider": name, "model": model, "price": _msat_price(fakes[name], model)}
            for name, model in models.items()
        ],
        "chains": {"main": [f"{name}/{models[name]}" for name in fakes]},
        "ledger": {"path": str(_LEDGER.path)},
    }
    app = create_app(config, transport=FakeNetwork(fakes))
    router = stack.enter_context(LoopbackServer(app, lifespan="on"))
    table = Table(
        "API",
        "request",
        "status",
        "served by",
        "entries tried or skipped",
        "client saw",
        "tokens in/out",
    )
    upstream = {
        ("messages", False): ": anthropic overloaded (529)",
        ("messages", True): ": anthropic says 429 (Anthropic headers)",
    }
    for api in API_PATHS:
        for stream in (False, True):
            seen = exchange(client, router.url, api=api, stream=stream, model="main", max_tokens=20)
            table.add(
                api,
                ("stream" if stream else "JSON") + upstream.get((api, stream), ""),
                seen.status,
                seen.headers.get("x-waterfall-provider", "-"),
                seen.headers.get("x-waterfall-attempts", "-"),
                api_verdict(api, seen),
                tokens_in_out(seen),
            )
    return table


def _msat_price(fake: FakeProvider, model: str) -> dict[str, str]:
    listing = {m.id: m for m in fake.config.models}[model]
    return {
        "unit": "msat",
        "prompt": str(listing.sats_prompt * 1000),
        "completion": str(listing.sats_completion * 1000),
        "request": str(listing.sats_request * 1000),
    }


class _DemoLedger:
    """Where the tour's router keeps its usage ledger: a file in a temporary directory."""

    path: Path = Path("waterfall-usage.db")


_LEDGER = _DemoLedger()


def _usage(stack: ExitStack, client: httpx.Client) -> Table:
    """The ledger of the router's requests, grouped as ``waterfall-asgi usage --by
    provider,status`` does (its time-to-first-byte columns left out: they vary by run)."""
    from .usage_report import read_usage

    report = read_usage(_LEDGER.path, by=("provider", "status"))
    table = Table("provider", "status", "requests", "prompt", "completion", "cost")
    for group in [*report.groups, report.total]:
        provider, status = (group.key.get("provider"), group.key.get("status"))
        cost = ", ".join(f"{v} {u}" for u, v in sorted(group.cost.items())) or "-"
        table.add(
            "TOTAL" if group is report.total else provider or "-",
            status or "",
            group.requests,
            group.prompt_tokens,
            group.completion_tokens,
            cost,
        )
    return table


_QUALITY = {"fake-small": 40, "fake-medium": 70, "fake-large": 90}
_CAN = {"fake-small": [], "fake-medium": ["tools"], "fake-large": ["tools", "vision"]}


def _cost_routing(stack: ExitStack, client: httpx.Client) -> Table:
    """Route 'auto': the cheapest fitting deployment, down the price list under 429s."""
    import asyncio

    from waterfall_fakes import DEFAULT_MODELS, FakeNetwork, FakeProvider

    from .middleware import WaterfallMiddleware

    hosts = {"cheap": "fake-small", "mid": "fake-medium", "dear": "fake-large"}
    catalog = {m.id: m for m in DEFAULT_MODELS}
    net = FakeNetwork(
        {
            "cheap": FakeProvider(name="cheap", script=["ok", "rate_limit"]),
            "mid": FakeProvider(name="mid"),
            "dear": FakeProvider(name="dear"),
        }
    )
    config = {
        "providers": {h: {"base_url": f"http://{h}/v1"} for h in hosts},
        "deployments": [
            {
                "provider": h,
                "model": m,
                "price": {
                    "unit": "msat",
                    "prompt": str(catalog[m].sats_prompt * 1000),
                    "completion": str(catalog[m].sats_completion * 1000),
                    "request": str(catalog[m].sats_request * 1000),
                },
            }
            for h, m in hosts.items()
        ],
        "models": {
            m: {
                "quality": _QUALITY[m],
                "context_window": catalog[m].context_length,
                "capabilities": _CAN[m],
            }
            for m in hosts.values()
        },
        "routes": {"auto": {"min_quality": 30, "quality_bounds": [30, 95]}},
        "ledger": {"path": str(_LEDGER.path)},
    }
    question = [{"role": "user", "content": "What does a waterfall cost?"}]
    tool = {"type": "function", "function": {"name": "quote", "parameters": {}}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    asks: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("a plain question", {}, {}),
        ("needs tools", {"tools": [tool]}, {}),
        ("cheapest says 429", {}, {}),
        ("needs vision", {"messages": [{"role": "user", "content": [image]}]}, {}),
        ("quality >= 60 (header)", {}, {"x-waterfall-min-quality": "60"}),
    ]
    table = Table("#", "request", "served by", "estimated", "charged", "reference", "saved")
    totals = [0, 0]

    async def play() -> None:
        app = WaterfallMiddleware(None, config, transport=net)
        await app.startup()
        seen: list[Any] = []
        app.on_complete = seen.append
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as router:
            for number, (what, extra, headers) in enumerate(asks, 1):
                body = {"model": "auto", "messages": question, "max_tokens": 20, **extra}
                reply = await router.post("/v1/chat/completions", json=body, headers=headers)
                record = seen[-1]
                saved = (record.reference_cost or 0) - (record.cost or 0)
                totals[0] += record.cost or 0
                totals[1] += record.reference_cost or 0
                table.add(
                    number,
                    what,
                    reply.headers.get("x-waterfall-attempts", "-"),
                    reply.headers.get("x-waterfall-estimated-cost", "-"),
                    f"{record.cost} msat",
                    f"{record.reference_cost} msat",
                    f"{saved} msat",
                )
        await app.shutdown()

    asyncio.run(play())
    saved = totals[1] - totals[0]
    share = f"{100 * saved / totals[1]:.1f}%" if totals[1] else "-"
    table.add(
        "", "TOTAL", "", "", f"{totals[0]} msat", f"{totals[1]} msat", f"{saved} msat ({share})"
    )
    return table


SECTIONS: list[Section] = [
    Section(
        "A 429 storm, one header dialect per request",
        "Each provider says 'come back in 2 s' its own way; a router must read them all.",
        _storm,
    ),
    Section(
        "A real rate limiter: 2 requests per 60 s window (OpenAI headers)",
        "Successes report what is left; the third request is refused until the window resets.",
        _quota,
    ),
    Section(
        "Streams that go wrong (stream=true, include_usage) over loopback TCP",
        "Only a stream that ends with data: [DONE] is complete. TCP may merge or split writes.",
        _streams,
    ),
    Section(
        "Chunk-exact, in-process (FakeTransport): boundaries inside multi-byte characters",
        "Each scripted chunk is one read. A client that decoded each chunk on its own would show\n"
        "   U+FFFD (the replacement character) where a character is split; decoded incrementally,\n"
        "   as here, every stream arrives intact ('client saw: complete').",
        _chunk_exact,
    ),
    Section(
        "The waterfall router on uvicorn (loopback) in front of three fakes, under a 429 storm",
        "Chain 'best' = openai, openrouter, local. A failing entry cools down for as long as it "
        "said;\n   a cooling entry is skipped without a call; streams fall through before any "
        "byte is sent.",
        _router_storm,
    ),
    Section(
        "Cost routing: route 'auto' picks the cheapest deployment that fits (quality >= 30)",
        "Priced exactly in msat (millisatoshi: 1/1000 of a satoshi, 1/100,000,000,000 of a\n"
        "   bitcoin) from the fakes' published prices; the reference is the dearest\n"
        "   fitting deployment: what always using it would have cost for the same tokens.",
        _cost_routing,
    ),
    Section(
        "One router, three APIs: Chat Completions, Responses and Anthropic Messages, one chain",
        "Chain 'main' = anthropic (speaks only Messages), gateway (speaks all three). An entry "
        "whose\n   provider does not speak the request's API is skipped without a call; "
        "Anthropic's 529 and\n   429 fall through, unseen by the client. Complete: the API's "
        "own last event arrived.",
        _three_apis,
    ),
    Section(
        "The usage ledger (SQLite) of the router's requests, by provider and status",
        "One record per request, whatever happened; tokens from the streams and bodies, cost\n"
        "   exact in msat, millisatoshi (waterfall-asgi usage --by provider,status prints the\n"
        "   same).",
        _usage,
    ),
]
"""The tour, in order."""


def _lines(sections: Sequence[Section], client: httpx.Client) -> Iterator[str]:
    for index, section in enumerate(sections, 1):
        yield f"{index}. {section.title}"
        yield f"   {section.intro}"
        yield ""
        with ExitStack() as stack:  # the section's fakes stop when it ends
            table = section.play(stack, client)
        yield table.render()
        yield ""


def run(out: TextIO | None = None, sections: Sequence[Section] | None = None) -> int:
    """Play the tour (``sections``, by default :data:`SECTIONS`) to ``out``; return 0."""
    out = out if out is not None else sys.stdout
    try:
        import waterfall_fakes  # noqa: F401
    except ImportError:  # pragma: no cover - the Makefile installs both packages
        print("the demo needs waterfall-fakes: pip install ./fakes", file=sys.stderr)
        return 1
    print("waterfall-asgi demo: fake providers on 127.0.0.1, no network, no API keys.\n", file=out)
    with (
        tempfile.TemporaryDirectory(prefix="waterfall-demo-") as scratch,
        httpx.Client(timeout=5.0, trust_env=False) as client,
    ):
        _LEDGER.path = Path(scratch) / "waterfall-usage.db"
        for line in _lines(SECTIONS if sections is None else sections, client):
            print(line, file=out, flush=True)
    print(
        "Every part is on show: the fakes, the waterfall router, the cost router, the three "
        "APIs and\nthe usage ledger. Run `waterfall-asgi usage` on a router's ledger for the "
        "same table any day.",
        file=out,
    )
    return 0
