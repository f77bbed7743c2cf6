"""The fake provider: one request in, one scripted :class:`Reply` out.

:class:`FakeProvider` holds a fake's state (its config, script position, rate limiter and the
requests it has received) and turns each request into a :class:`Reply`: a status, headers, the
exact body chunks, the delays between them and whether the connection is cut at the end. The
transports and the ASGI app only play a :class:`Reply` back; all behaviour lives here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import random
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sse_starlette.event import ServerSentEvent

from .behaviours import (
    BEHAVIOUR_HEADER,
    Behaviour,
    BehaviourError,
    BigEvent,
    Chunking,
    ContentFilter,
    ContextLengthExceeded,
    Cut,
    DoubleDone,
    ErrorEvent,
    Fields,
    Hang,
    InsufficientBalance,
    KeepAlive,
    LineEndings,
    MalformedEvent,
    NoDone,
    NoUsage,
    Prefill,
    RateLimit,
    SlowChunks,
    SlowFirstByte,
    Stall,
    Status,
    ToolCall,
    Truncate,
    When,
    parse_behaviours,
)
from .catalog import (
    DEFAULT_MODELS,
    FakeModel,
    count_prompt_tokens,
    dumps,
    message_text,
    reply_words,
)
from .dialects import (
    Api,
    ToolCallPlan,
    anthropic_error,
    anthropic_error_type,
    count_input_tokens,
    plan_tool_call,
)
from .journal import Delivery, usage_sent
from .ratelimit import Limits, RateLimiter, rate_limit_headers, remaining_headers
from .rules import Draw, Rule, RuleStatus

__all__ = ["FakeConfig", "FakeProvider", "RecordedRequest", "Reply", "chunk_bytes"]

_B = TypeVar("_B")
_DONE = "[DONE]"
_LINE_ENDS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
_STATUS_TEXT = {
    400: ("invalid_request_error", "invalid_request", "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", "forbidden", "You are not allowed to use this model."),
    404: ("invalid_request_error", "not_found", "Not found."),
    408: ("timeout", "timeout", "Request timed out."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", "unprocessable", "Unprocessable request."),
    500: ("server_error", "server_error", "The server had an error processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "overloaded", "The engine is currently overloaded."),
    504: ("server_error", "gateway_timeout", "Gateway timeout."),
    529: ("server_error", "overloaded", "Overloaded"),
}
_NAMED_EVENTS = ("responses", "messages")  # dialects whose events carry their own names
_MALFORMED = {
    "chat": (None, '{"choices": [{"delta": {"content": "oops'),
    "responses": ("response.output_text.delta", '{"type": "response.output_text.delta", "delta'),
    "messages": ("content_block_delta", '{"type": "content_block_delta", "delta": {"text'),
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}


class FakeConfig(BaseModel):
    """Everything that makes one fake behave the way it does.

    ``script`` is a list of steps, one per request that takes behaviours (chat, text
    completions, embeddings, the Responses API, Anthropic Messages), each step a behaviour list
    (or its header text); when the script runs out the fake answers normally, starts again
    from the top with ``cycle``, or repeats its last step forever with ``repeat_last``.
    ``rules`` (see :mod:`waterfall_fakes.rules`) add behaviours to the requests they match,
    after the step's. Behaviours from the ``x-fake-behaviour`` header come last.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "fake"
    seed: int = 0
    models: tuple[FakeModel, ...] = DEFAULT_MODELS
    script: tuple[tuple[Behaviour, ...], ...] = ()
    cycle: bool = False
    repeat_last: bool = False
    rules: tuple[Rule, ...] = ()
    limits: Limits | None = None
    api_key: str | None = Field(default=None, repr=False)
    reply_words: int = Field(default=12, ge=0)
    created: int = Field(default=1_700_000_000, description="the `created` timestamp replies carry")

    @field_validator("script", mode="before")
    @classmethod
    def _parse_script(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        try:
            return tuple(tuple(parse_behaviours(step)) for step in value)
        except BehaviourError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_ending(self) -> FakeConfig:
        if self.cycle and self.repeat_last:
            raise ValueError("a script either cycles or repeats its last step, not both")
        names = [r.name for r in self.rules if r.name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"two rules have the same name: {sorted(names)}")
        return self


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received and how it was answered, kept for assertions.

    The same fields as an entry of the control plane's journal (``GET /_fake/journal``):

    - ``index``: its place in the journal since the last reset, from 0;
    - ``number``: its place among the requests the script and rules count (chat, completions,
      embeddings, responses, messages), from 0; ``None`` for the others (``/health``,
      ``/v1/models``, unknown paths);
    - ``answered_by``: what chose its behaviours, e.g. ``("script:0", "rule:flaky", "header")``
      (a script step by its index, a rule by its name); empty when it was answered normally;
    - ``draws``: the chances drawn for it (:class:`~waterfall_fakes.rules.Draw`: the gate, its
      count, the value drawn and the ``p`` it was compared with), which the fake's seed decides;
    - ``behaviours`` and ``status``: what was applied, and the status sent;
    - ``response_headers``: the headers sent with it;
    - ``usage``: the ``usage`` object the reply carried (``None``: none);
    - ``received_at``: when it arrived, on the fake's clock (seconds);
    - ``client``: the client's ``host:port`` over TCP (``None`` in-process);
    - ``delivery``: how the reply went out (:class:`~waterfall_fakes.journal.Delivery`), filled in
      while it is sent.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    behaviours: tuple[Behaviour, ...]
    status: int
    index: int = 0
    number: int | None = None
    answered_by: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    usage: dict[str, Any] | None = None
    received_at: float = 0.0
    client: str | None = None
    draws: tuple[Draw, ...] = ()
    delivery: Delivery = field(default_factory=Delivery, compare=False)


@dataclass(frozen=True)
class Reply:
    """What to send back, byte for byte and moment by moment.

    ``headers_delay`` is the wait before the headers (``None``: forever). ``delays[i]`` is the wait
    before ``chunks[i]`` (``None``: forever, a stall). With ``cut`` the connection is cut after
    the last chunk instead of ending cleanly.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    delays: tuple[float | None, ...] = ()
    headers_delay: float | None = 0.0
    cut: bool = False

    @property
    def body(self) -> bytes:
        """All the body bytes joined."""
        return b"".join(self.chunks)

    def delay_before(self, index: int) -> float | None:
        """The wait before chunk ``index`` (``None``: forever)."""
        return self.delays[index] if index < len(self.delays) else 0.0


def chunk_bytes(
    data: bytes, chunking: Chunking | None, natural: list[int] | None = None
) -> list[bytes]:
    """Split ``data`` where ``chunking`` says (else at the ``natural`` offsets, else not at all)."""
    if not data:
        return []
    if chunking is None:
        cuts = natural or []
    elif chunking.size is not None:
        cuts = list(range(chunking.size, len(data), chunking.size))
    elif chunking.at is not None:
        cuts = list(chunking.at)
    else:
        rng = random.Random(0 if chunking.seed is None else chunking.seed)  # reproducible
        cuts, pos = [], 0
        while True:
            pos += rng.randint(1, chunking.max_size)
            if pos >= len(data):
                break
            cuts.append(pos)
    edges = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _chat_tool_message(tool: ToolCallPlan) -> dict[str, Any]:
    call = {"name": tool.name, "arguments": tool.arguments}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": tool.call_id, "type": "function", "function": call}],
        "refusal": None,
    }


def _first(behaviours: Iterable[Any], kind: type[_B]) -> _B | None:
    for b in behaviours:
        if isinstance(b, kind):
            return b
    return None


def _prefill_mode(behaviours: Iterable[Any], default: str) -> str:
    """How a request's prefill is treated: a ``prefill`` behaviour's mode, else the model's."""
    override = _first(behaviours, Prefill)
    return override.mode if override is not None else default


def _error_body(message: str, type_: str, code: str | None, **extra: Any) -> bytes:
    return dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code, **extra}}
    )


@dataclass
class _Event:
    data: str | None = None
    comment: str | None = None
    event: str | None = None
    id: str | None = None
    tokens: int = 0  # the completion tokens this event carries
    terminal: bool = False  # the event that proves the stream complete ([DONE], ...)

    def encode(self, sep: str) -> bytes:
        return ServerSentEvent(
            data=self.data, event=self.event, id=self.id, comment=self.comment, sep=sep
        ).encode()


def _json_object(event: _Event) -> dict[str, Any] | None:
    try:
        obj = json.loads(event.data or "")
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _enlarge(events: list[_Event], big: BigEvent) -> None:
    """Pad the JSON event at index ``big.after`` (or the nearest JSON one after it, else before
    it) until its data is at least ``big.size`` bytes; a stream with no JSON event is left as is.
    An error event is never padded: it keeps OpenAI's shape, ``{"error": {...}}`` alone.
    """
    if not events:  # e.g. truncated to nothing before the padding applies
        return
    start = min(big.after, len(events) - 1)
    order = [*range(start, len(events)), *range(start - 1, -1, -1)]
    for index in order:
        obj = _json_object(events[index])
        if obj is None or "error" in obj or obj.get("type") == "error":
            continue
        obj["x_padding"] = ""
        missing = big.size - len(dumps(obj))
        obj["x_padding"] = "·" * max(0, -(-missing // len("·".encode())))  # 2 bytes each
        events[index].data = dumps(obj).decode()
        return


def _split_at(chunks: list[bytes], offset: int) -> tuple[list[bytes], int]:
    """``chunks`` split so that one begins at byte ``offset`` (an empty one at the very end),
    and its index."""
    pos = 0
    for i, c in enumerate(chunks):
        if pos == offset:
            return chunks, i
        if offset < pos + len(c):
            head, tail = c[: offset - pos], c[offset - pos :]
            return [*chunks[:i], head, tail, *chunks[i + 1 :]], i + 1
        pos += len(c)
    return [*chunks, b""], len(chunks)


@dataclass
class _Draft:
    """A reply under construction; the behaviours edit it, then it is frozen into a Reply."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[_Event] | None = None
    natural: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # where each data event begins
    token_spans: list[tuple[int, int]] = field(default_factory=list)  # each token's event
    api: Api = "chat"
    response: dict[str, Any] | None = None  # Responses API: the response, for response.failed


@dataclass
class _Answer:
    """What a generating request is answered with, in any dialect: the prompt tokens, the words
    (after ``lead``), why it finished, the tool call if any and the limiter's headers."""

    prompt: int
    words: list[str]
    lead: str
    finish: str  # stop, length, content_filter or tool_calls
    tool: ToolCallPlan | None
    headers: list[tuple[str, str]]
    digest: str

    @property
    def completion(self) -> int:
        return self.tool.tokens if self.tool is not None else len(self.words)

    @property
    def text(self) -> str:
        return (self.lead if self.words else "") + " ".join(self.words)


@dataclass
class _Decision:
    """What was chosen for one request: its number, its behaviours, where they came from
    (``script:INDEX``, ``rule:NAME``, ``header``) and the chances drawn."""

    number: int = 0
    behaviours: tuple[Behaviour, ...] = ()
    sources: list[str] = field(default_factory=list)
    draws: list[Draw] = field(default_factory=list)

    def add(self, source: str, behaviours: tuple[Behaviour, ...]) -> None:
        if behaviours:
            self.behaviours += behaviours
            self.sources.append(source)


@dataclass
class _Gate:
    """What one gate (a ``when`` behaviour, in its place) has seen so far."""

    seen: int = 0
    hits: int = 0


def _draw(seed: int, key: str, number: int) -> float:
    """A number in [0, 1) that depends on the seed, the gate and the candidate's number only."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeProvider:
    """One fake provider: its config, state and the requests it received.

    ``clock`` gives wall-clock seconds (for the rate limiter, HTTP dates, reset timestamps and
    the time windows of ``when`` gates, which count from the fake's creation or its last
    :meth:`reset`); pass your own to control time in tests.
    """

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> None:
        base = config or FakeConfig()
        self.config = base.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._step = 0
        self._count = 0
        self._limiter = RateLimiter(self.config.limits, clock) if self.config.limits else None
        self._models = {m.id: m for m in self.config.models}
        self._gates: dict[str, _Gate] = {}
        self._started = clock()
        self._first: float | None = None
        self._rules: dict[str, Rule] = {}
        self._queued: set[str] = set()
        self._set_rules()

    def __repr__(self) -> str:
        return f"FakeProvider(name={self.config.name!r}, requests={len(self.requests)})"

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget received requests, rewind the script and the gates' counts, restart the time
        windows, put back the config's rules (rules added since and queued behaviours go) and
        empty the rate limiter."""
        with self._lock:
            self.requests.clear()
            self._step = self._count = 0
            self._gates.clear()
            self._started, self._first = self.clock(), None
            self._set_rules()
            if self._limiter:
                self._limiter.reset()

    def set_script(self, script: Any, *, cycle: bool = False, repeat_last: bool = False) -> None:
        """Replace the script (steps as :class:`FakeConfig` takes them) while the fake runs, and
        play it from its first step; the journal, the rules and the limiter are kept.
        ``ValueError`` (a pydantic ``ValidationError``) for a bad script, which changes nothing."""
        data = {**self.config.model_dump(), "script": script, "cycle": cycle}
        config = FakeConfig.model_validate({**data, "repeat_last": repeat_last})
        with self._lock:
            self.config = config
            self._step = 0
            self._gates = {k: v for k, v in self._gates.items() if not k.startswith("script:")}

    def calls(self, path: str = "/v1/chat/completions") -> list[RecordedRequest]:
        """The recorded requests to ``path``."""
        return [r for r in self.requests if r.path == path]

    # -- rules ---------------------------------------------------------------------------------
    def _set_rules(self) -> None:
        self._rules.clear()
        self._queued.clear()
        self._names = itertools.count()
        for rule in self.config.rules:
            self._put(rule)

    def _put(self, rule: Rule) -> Rule:
        name = rule.name
        if name is None:
            name = f"rule-{next(self._names)}"
            while name in self._rules:
                name = f"rule-{next(self._names)}"
            rule = rule.model_copy(update={"name": name})
        if name in self._rules:  # replaced: it starts counting again
            self._forget(name)
        self._rules[name] = rule
        return rule

    def _forget(self, name: str) -> None:
        self._rules.pop(name, None)
        self._queued.discard(name)
        self._gates.pop(f"rule:{name}", None)

    def add_rule(self, rule: Rule | Mapping[str, Any]) -> Rule:
        """Add a rule (a :class:`~waterfall_fakes.rules.Rule` or its JSON shape) and return it
        with its name (``rule-N`` when it had none). A rule of the same name is replaced, and
        the new one counts its matching requests from zero."""
        rule = rule if isinstance(rule, Rule) else Rule.model_validate(rule)
        with self._lock:
            return self._put(rule)

    def queue(self, behaviours: Any, count: int = 1, **match: Any) -> Rule:
        """Give ``behaviours`` (header text, behaviours, or their JSON) to exactly the next
        ``count`` requests that match ``match`` (a :class:`~waterfall_fakes.rules.Rule`'s
        matching fields: ``model``, ``stream``, ``tools``, ``headers``, ``messages``, ``path``;
        none: every request). The queued entry is a rule named ``queue-N`` with ``times=count``;
        it goes away once spent."""
        with self._lock:
            if count < 0:
                raise ValueError(f"count={count} must be at least 0")
            name = f"queue-{next(self._names)}"
            rule = Rule.model_validate(
                {**match, "name": name, "times": count, "behaviours": behaviours}
            )
            self._put(rule)
            self._queued.add(name)
            if count == 0:
                self._forget(name)
            return rule

    def remove_rule(self, name: str) -> bool:
        """Remove the rule (or queued entry) called ``name``; False when there is none."""
        with self._lock:
            found = name in self._rules
            self._forget(name)
            return found

    def clear_rules(self) -> None:
        """Remove every rule and queued entry, the config's included (until :meth:`reset`)."""
        with self._lock:
            for name in list(self._rules):
                self._forget(name)

    def rules(self) -> list[RuleStatus]:
        """The rules and queued entries in force, in the order they apply, with their counts."""
        with self._lock:
            out = []
            for name, rule in self._rules.items():
                gate = self._gates.get(f"rule:{name}", _Gate())
                out.append(RuleStatus(rule, gate.seen, gate.hits, name in self._queued))
            return out

    # -- choosing a request's behaviours -------------------------------------------------------
    def _next_step(
        self, path: str, hdrs: dict[str, str], body: bytes, header: str | None
    ) -> _Decision:
        """The request's number and the behaviours that apply to it: its script step's, the
        matching rules' and its header's, each let through (or not) by its gates."""
        header_behaviours = parse_behaviours(header)
        decision = _Decision()
        with self._lock:
            decision.number = self._count
            self._count += 1
            now = self.clock()
            if self._first is None:
                self._first = now
            script = self.config.script
            if script:
                index = self._step
                if self.config.cycle:
                    index %= len(script)
                elif self.config.repeat_last:
                    index = min(index, len(script) - 1)
                self._step += 1
                if index < len(script):
                    self._gated(decision, f"script:{index}", script[index], now)
            payload: Any = None
            if self._rules:  # only rules read the body here
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    payload = None
            for name, rule in list(self._rules.items()):
                if not rule.matches(path, hdrs, payload):
                    continue
                key = f"rule:{name}"
                if self._passes(decision, key, rule.gate(), now):
                    decision.add(key, rule.behaviours)
                    if name in self._queued and self._gates[key].hits >= (rule.times or 0):
                        self._rules.pop(name)
                        self._queued.discard(name)
            if header_behaviours:
                key = f"header:{(header or '').strip()}"
                self._gated(decision, key, header_behaviours, now, source="header")
            return decision

    def _gated(
        self,
        decision: _Decision,
        key: str,
        behaviours: Iterable[Behaviour],
        now: float,
        source: str | None = None,
    ) -> None:
        """Add ``behaviours`` less their gates to ``decision`` if every gate lets this request
        through."""
        behaviours = tuple(behaviours)
        gates = [b for b in behaviours if isinstance(b, When)]
        for i, gate in enumerate(gates):
            if not self._passes(decision, f"{key}:{i}" if i else key, gate, now):
                return
        decision.add(source or key, tuple(b for b in behaviours if not isinstance(b, When)))

    def _passes(self, decision: _Decision, key: str, gate: When, now: float) -> bool:
        """Whether ``gate`` (whose counts are kept under ``key``) hits this request."""
        origin = self._started if gate.since == "start" else self._first
        if origin is None:
            origin = now
        elapsed = now - origin
        if (gate.start is not None and elapsed < gate.start) or (
            gate.end is not None and elapsed >= gate.end
        ):
            return False
        state = self._gates.setdefault(key, _Gate())
        number = state.seen
        state.seen += 1
        if number < gate.skip or (gate.times is not None and state.hits >= gate.times):
            return False
        if gate.p < 1:
            draw = Draw(key, number, _draw(self.config.seed, key, number), gate.p)
            decision.draws.append(draw)
            if not draw.hit:
                return False
        state.hits += 1
        return True

    # -- the entry point -----------------------------------------------------------------------
    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
    ) -> Reply:
        """Answer one request. ``headers`` may be a mapping or (name, value) pairs."""
        return self.handle_recorded(method, path, headers, body)[0]

    def handle_recorded(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        client: str | None = None,
    ) -> tuple[Reply, RecordedRequest]:
        """Answer one request like :meth:`handle`; also return its record (in :attr:`requests`),
        whose ``delivery`` the caller fills in as it sends the reply."""
        received_at = self.clock()
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        hdrs = {k.lower(): v for k, v in pairs}
        path = "/" + path.strip("/")
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = None
        decision: _Decision | None = None
        try:
            reply, decision = self._route(method.upper(), path, hdrs, body)
        except BehaviourError as exc:
            reply = self._error(
                400,
                f"Bad {BEHAVIOUR_HEADER} header: {exc}",
                "invalid_request_error",
                "invalid_fake_behaviour",
            )
        usage = usage_sent(reply)
        with self._lock:
            record = RecordedRequest(
                method.upper(),
                path,
                hdrs,
                body,
                payload,
                decision.behaviours if decision else (),
                reply.status,
                index=len(self.requests),
                number=decision.number if decision else None,
                answered_by=tuple(decision.sources) if decision else (),
                draws=tuple(decision.draws) if decision else (),
                response_headers=reply.headers,
                usage=usage,
                received_at=received_at,
                client=client,
            )
            self.requests.append(record)
        return reply, record

    def _route(
        self, method: str, path: str, hdrs: dict[str, str], body: bytes
    ) -> tuple[Reply, _Decision | None]:
        routes: dict[str, tuple[str, Callable[..., Reply] | None]] = {
            "/health": ("GET", None),
            "/v1/models": ("GET", None),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/responses": ("POST", self._responses),
            "/v1/messages": ("POST", self._messages),
        }
        if path not in routes:
            return self._error(
                404, f"Unknown path {path}.", "invalid_request_error", "unknown_url"
            ), None
        want, handler = routes[path]
        if method != want:
            reply = self._error(
                405,
                f"Method {method} not allowed on {path}.",
                "invalid_request_error",
                "method_not_allowed",
            )
            return replace(reply, headers=(*reply.headers, ("allow", want))), None
        if path == "/health":
            return self._json(200, {"status": "ok", "name": self.config.name}), None
        if handler is None:
            data = [m.listing(self.config.created) for m in self.config.models]
            return self._json(200, {"object": "list", "data": data}), None
        header_spec = hdrs.get(BEHAVIOUR_HEADER) or hdrs.get("x-fake-behavior")
        decision = self._next_step(path, hdrs, body, header_spec)
        number, behaviours = decision.number, decision.behaviours
        key = self.config.api_key
        if path == "/v1/messages":  # Anthropic: x-api-key (or Bearer), and a version
            if key is not None and key not in (
                hdrs.get("x-api-key"),
                (hdrs.get("authorization") or "").removeprefix("Bearer "),
            ):
                return self._anthropic(
                    self._error(401, "invalid x-api-key", "invalid_request_error", None)
                ), decision
            if not hdrs.get("anthropic-version"):
                return self._anthropic(
                    self._error(
                        400,
                        "anthropic-version: header is required",
                        "invalid_request_error",
                        None,
                    )
                ), decision
        elif key is not None and hdrs.get("authorization") != f"Bearer {key}":
            return self._error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ), decision
        return handler(number, body, behaviours), decision

    # -- building blocks -----------------------------------------------------------------------
    def _json(self, status: int, obj: Any, extra: Iterable[tuple[str, str]] = ()) -> Reply:
        data = dumps(obj)
        headers = (
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            ("x-fake-name", self.config.name),
            *extra,
        )
        return Reply(status, headers, (data,))

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        extra: Iterable[tuple[str, str]] = (),
        **more: Any,
    ) -> Reply:
        body = json.loads(_error_body(message, type_, code, **more))
        return self._json(status, body, extra)

    def _prefill_refused(self) -> Reply:
        """The 400 of a model that refuses an assistant prefill."""
        return self._error(
            400,
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message.",
            "invalid_request_error",
            "prefill_not_supported",
            param="messages",
        )

    def _validate(self, body: bytes, need: str) -> tuple[dict[str, Any] | None, Reply | None]:
        try:
            req = json.loads(body)
        except ValueError:
            return None, self._error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                "invalid_json",
            )
        if not isinstance(req, dict):
            return None, self._error(
                400,
                "The request body must be a JSON object.",
                "invalid_request_error",
                "invalid_json",
            )
        for key in ("model", need):
            if key not in req:
                return None, self._error(
                    400,
                    f"Missing required parameter: '{key}'.",
                    "invalid_request_error",
                    "missing_required_parameter",
                    param=key,
                )
        if req["model"] not in self._models:
            return None, self._error(
                404,
                f"The model `{req['model']}` does not exist.",
                "invalid_request_error",
                "model_not_found",
            )
        return req, None

    def _context_error(
        self,
        model: str,
        prompt: int,
        completion: int | None,
        param: str,
        message: str | None,
        style: str = "openai",
    ) -> Reply:
        """A provider's 400 for a prompt (plus ``max_tokens``) over the model's context window,
        in ``style``; the token count said is at least one more than the window."""
        window = self._models[model].context_length if model in self._models else 0
        total = max(prompt + (completion or 0), window + 1)
        asked = total - prompt
        type_, code, says = "invalid_request_error", None, message
        if style == "openai" or style == "vllm":
            head = f"This model's maximum context length is {window} tokens. However, "
            if completion is None and style == "openai":
                words = (
                    f"{head}your messages resulted in {total} tokens. "
                    "Please reduce the length of the messages."
                )
            else:
                words = (
                    f"{head}you requested {total} tokens ({prompt} in the messages, "
                    f"{asked} in the completion). "
                    "Please reduce the length of the messages or completion."
                )
            if style == "openai":
                code = "context_length_exceeded"
            else:
                type_, param = "BadRequestError", ""
        elif style == "anthropic":
            words = f"prompt is too long: {total} tokens > {window} maximum"
        elif style == "gemini":
            words = (
                f"The input token count ({total}) exceeds the maximum number of tokens allowed "
                f"({window})."
            )
            type_ = "INVALID_ARGUMENT"
        elif style == "mistral":
            words = (
                f"Prompt contains {total} tokens and 0 draft tokens, too large for model with "
                f"{window} maximum context length"
            )
        elif style == "openrouter":
            words = (
                f"This endpoint's maximum context length is {window} tokens. However, you "
                f"requested about {total} tokens ({prompt} of text input, {asked} in the "
                'output). Please reduce the length of either one, or use the "middle-out" '
                "transform to compress your prompt automatically."
            )
        else:  # llama.cpp's server
            words = "the request exceeds the available context size, try increasing it"
            type_ = "exceed_context_size_error"
        return self._error(400, says or words, type_, code, param=param or None)

    def _content_filter(self, code: str) -> Reply:
        if code == "content_filter":  # Azure OpenAI's prompt filter
            filtered = {"filtered": True, "severity": "high"}
            safe = {"filtered": False, "severity": "safe"}
            return self._json(
                400,
                {
                    "error": {
                        "message": "The response was filtered due to the prompt triggering "
                        "Azure OpenAI's content management policy. Please modify your prompt "
                        "and retry.",
                        "type": None,
                        "param": "prompt",
                        "code": "content_filter",
                        "status": 400,
                        "innererror": {
                            "code": "ResponsibleAIPolicyViolation",
                            "content_filter_result": {
                                "hate": safe,
                                "jailbreak": {"filtered": False, "detected": False},
                                "self_harm": safe,
                                "sexual": safe,
                                "violence": filtered,
                            },
                        },
                    }
                },
            )
        return self._error(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may "
            "contain text that is not allowed by our safety system.",
            "invalid_request_error",
            "content_policy_violation",
        )

    def _failure(
        self,
        behaviours: tuple[Behaviour, ...],
        tokens: int,
        context: tuple[str, int, int | None, str] = ("", 0, None, "messages"),
    ) -> tuple[Reply | None, list[tuple[str, str]]]:
        """A reply that replaces the normal answer (the limiter's 429, or a scripted error), and
        the limiter's headers for a success. ``context`` is the model, the prompt tokens, the
        completion tokens asked for and the prompt's parameter name, for a context error."""
        now = self.clock()
        ok_headers: list[tuple[str, str]] = []
        if self._limiter is not None:
            verdict = self._limiter.check(tokens)
            lim = self._limiter.limits
            if not verdict.allowed:
                if lim.dialect in ("openai", "openrouter", "anthropic"):
                    extra = remaining_headers(verdict, lim.dialect, now, verdict.retry_after)
                else:
                    extra = rate_limit_headers(lim.dialect, verdict.retry_after, now)
                return self._error(
                    429,
                    "Rate limit reached. Please try again later.",
                    "requests",
                    "rate_limit_exceeded",
                    extra,
                ), []
            ok_headers = remaining_headers(verdict, lim.dialect, now, verdict.window_reset)
        for b in behaviours:
            if isinstance(b, RateLimit):
                return self._error(
                    429,
                    f"Rate limit reached. Please try again in {b.seconds}s.",
                    "requests",
                    "rate_limit_exceeded",
                    rate_limit_headers(b.dialect, b.seconds, now),
                ), []
            if isinstance(b, InsufficientBalance):
                return self._error(
                    402,
                    "Insufficient balance. Please top up your account.",
                    "insufficient_quota",
                    "insufficient_balance",
                    details={"required_msats": 1000, "available_msats": 0},
                ), []
            if isinstance(b, Status):
                type_, code, default = _STATUS_TEXT.get(
                    b.code, ("server_error", f"http_{b.code}", f"Error {b.code}.")
                )
                return self._error(b.code, b.message or default, type_, code), []
            if isinstance(b, ContextLengthExceeded):
                return self._context_error(*context, b.message, b.style), []
            if isinstance(b, ContentFilter) and b.after is None:
                return self._content_filter(b.code), []
        return None, ok_headers

    # -- endpoints -----------------------------------------------------------------------------
    def _chat(self, number: int, body: bytes, behaviours: tuple[Behaviour, ...]) -> Reply:
        return self._generate(number, body, behaviours, legacy=False)

    def _completions(self, number: int, body: bytes, behaviours: tuple[Behaviour, ...]) -> Reply:
        """The legacy text completions endpoint: ``prompt`` in, ``choices[].text`` out."""
        return self._generate(number, body, behaviours, legacy=True)

    def _generate(
        self, number: int, body: bytes, behaviours: tuple[Behaviour, ...], *, legacy: bool
    ) -> Reply:
        field = "prompt" if legacy else "messages"
        req, bad = self._validate(body, field)
        if bad is not None or req is None:
            return self._finish(bad or self._json(500, {}), behaviours)
        given = req[field]
        if legacy and isinstance(given, str):
            given = [given]
        if not isinstance(given, list) or (legacy and not all(isinstance(p, str) for p in given)):
            what = "a string or an array of strings" if legacy else "an array"
            return self._finish(
                self._error(
                    400,
                    f"{field} must be {what}.",
                    "invalid_request_error",
                    "invalid_type",
                    param=field,
                ),
                behaviours,
            )
        n = req.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 8:
            return self._finish(
                self._error(
                    400,
                    "n must be an integer from 1 to 8.",
                    "invalid_request_error",
                    "invalid_value",
                    param="n",
                ),
                behaviours,
            )
        model = self._models[req["model"]]
        count = self.config.reply_words
        limit = req.get("max_completion_tokens", req.get("max_tokens"))
        if not isinstance(limit, int) or isinstance(limit, bool):
            limit = None
        # chat: 3 per message plus its words; text completions: the prompt's words
        prompt = sum(len(t.split()) for t in given) if legacy else count_prompt_tokens(given)
        lead = ""  # before the first word: a space when it continues a prefill
        skip = 0  # the words of the answer a prefill already holds
        last = given[-1] if given and not legacy else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            mode = _prefill_mode(behaviours, model.prefill)
            if mode == "reject":
                return self._finish(
                    self._prefill_refused(),
                    behaviours,
                )
            if mode == "honour":
                text = message_text(last.get("content"))
                skip = len(text.split())
                lead = " " if text and not text[-1].isspace() else ""
                count = max(count - skip, 0)
        if model.enforce_context and prompt + max(limit or 0, 0) > model.context_length:
            asked = None if limit is None else max(limit, 0)
            return self._finish(
                self._context_error(model.id, prompt, asked, field, None), behaviours
            )
        finish = "stop"
        if limit is not None and limit < count:
            count, finish = max(limit, 0), "length"
        failed, ok_headers = self._failure(
            behaviours,
            prompt + (max(limit, 0) if limit is not None else count) * n,
            (model.id, prompt, None if limit is None else max(limit, 0), field),
        )
        if failed is not None:
            return self._finish(failed, behaviours)
        filtered = _first(behaviours, ContentFilter)
        if filtered is not None and filtered.after is not None:
            count, finish = min(count, filtered.after), "content_filter"
        tool = None if legacy else self._tool_plan("chat", req, behaviours, number)
        if tool is not None:
            count, finish = 0, "tool_calls"
        tokens = (tool.tokens if tool is not None else count) * n
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
        }
        words = [
            reply_words(self.config.seed, number, c, body, skip + count)[skip:] for c in range(n)
        ]
        digest = hashlib.sha256(b"%d:%d" % (self.config.seed, number)).hexdigest()
        base = {
            "id": f"{'cmpl' if legacy else 'chatcmpl'}-{digest[:24]}",
            "created": self.config.created,
            "model": req["model"],
            "system_fingerprint": "fp_waterfall_fake",
        }
        no_usage = _first(behaviours, NoUsage) is not None
        extra = [("x-request-id", f"req_{digest[:24]}"), *ok_headers]
        if req.get("stream") is True:
            opts = req.get("stream_options")
            include = isinstance(opts, dict) and opts.get("include_usage") is True
            events = self._stream_events(
                base,
                words,
                finish,
                usage if include and not no_usage else None,
                include,
                legacy,
                lead,
                tool,
            )
            draft = _Draft(
                200,
                [
                    ("content-type", "text/event-stream; charset=utf-8"),
                    ("cache-control", "no-cache"),
                    ("x-fake-name", self.config.name),
                    *extra,
                ],
                events=events,
            )
            return self._finish_stream(draft, behaviours)
        completion = {
            **base,
            "object": "text_completion" if legacy else "chat.completion",
            "choices": [
                {
                    "index": c,
                    **(
                        {"text": " ".join(w)}
                        if legacy
                        else {"message": _chat_tool_message(tool)}
                        if tool is not None
                        else {
                            "message": {
                                "role": "assistant",
                                "content": (lead if w else "") + " ".join(w),
                                "refusal": None,
                            }
                        }
                    ),
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for c, w in enumerate(words)
            ],
        }
        if not no_usage:
            completion["usage"] = usage
        return self._finish(self._json(200, completion, extra), behaviours)

    def _embeddings(self, number: int, body: bytes, behaviours: tuple[Behaviour, ...]) -> Reply:
        req, bad = self._validate(body, "input")
        if bad is not None or req is None:
            return self._finish(bad or self._json(500, {}), behaviours)
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        texts = [
            i if isinstance(i, str) else " ".join(map(str, i)) if isinstance(i, list) else str(i)
            for i in inputs
        ]
        prompt = sum(max(1, len(t.split())) for t in texts)
        failed, ok_headers = self._failure(
            behaviours, prompt, (req["model"], prompt, None, "input")
        )
        if failed is not None:
            return self._finish(failed, behaviours)
        as_base64 = req.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            # 16 values of the form k / 2**15: exact in float32, so both encodings agree
            digest = hashlib.sha256(b"%d:" % self.config.seed + text.encode()).digest()
            vector = [v / 2**15 for v in struct.unpack(">16h", digest)]
            embedding: Any = vector
            if as_base64:  # what the real service sends when asked (the openai client asks)
                embedding = base64.b64encode(struct.pack("<16f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        out: dict[str, Any] = {"object": "list", "data": data, "model": req["model"]}
        if _first(behaviours, NoUsage) is None:
            out["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return self._finish(self._json(200, out, ok_headers), behaviours)

    # -- the Responses API and Anthropic Messages -----------------------------------------------
    def _tool_plan(
        self, api: Api, req: dict[str, Any], behaviours: tuple[Behaviour, ...], number: int
    ) -> ToolCallPlan | None:
        wanted = _first(behaviours, ToolCall)
        return plan_tool_call(
            api,
            req,
            wanted is not None,
            wanted.name if wanted else None,
            wanted.arguments if wanted else None,
            self.config.seed,
            number,
        )

    def _plan(
        self,
        api: Api,
        number: int,
        body: bytes,
        behaviours: tuple[Behaviour, ...],
        req: dict[str, Any],
        limit: int | None,
        param: str,
    ) -> _Answer | Reply:
        """The answer to a Responses or Messages request, or the reply that replaces it."""
        model = self._models[req["model"]]
        prompt = count_input_tokens(api, req)
        count = self.config.reply_words
        lead, skip = "", 0
        messages = req.get("messages") if api == "messages" else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":  # a prefill
            mode = _prefill_mode(behaviours, model.prefill)
            if mode == "reject":
                return self._finish(
                    self._prefill_refused(),
                    behaviours,
                    api,
                )
            if mode == "honour":
                content = last.get("content")
                text = message_text(content)
                skip = len(text.split())
                lead = " " if text and not text[-1].isspace() else ""
                count = max(count - skip, 0)
        if model.enforce_context and prompt + max(limit or 0, 0) > model.context_length:
            asked = None if limit is None else max(limit, 0)
            return self._finish(
                self._context_error(model.id, prompt, asked, param, None), behaviours, api
            )
        finish = "stop"
        if limit is not None and limit < count:
            count, finish = max(limit, 0), "length"
        failed, ok_headers = self._failure(
            behaviours,
            prompt + (max(limit, 0) if limit is not None else count),
            (model.id, prompt, None if limit is None else max(limit, 0), param),
        )
        if failed is not None:
            return self._finish(failed, behaviours, api)
        filtered = _first(behaviours, ContentFilter)
        if filtered is not None and filtered.after is not None:
            count, finish = min(count, filtered.after), "content_filter"
        tool = self._tool_plan(api, req, behaviours, number)
        if tool is not None:
            count, finish = 0, "tool_calls"
        words = reply_words(self.config.seed, number, 0, body, skip + count)[skip:]
        digest = hashlib.sha256(b"%d:%d" % (self.config.seed, number)).hexdigest()
        return _Answer(prompt, words, lead, finish, tool, ok_headers, digest)

    def _bad_type(
        self, param: str, what: str, behaviours: tuple[Behaviour, ...], api: Api
    ) -> Reply:
        return self._finish(
            self._error(
                400,
                f"{param} must be {what}.",
                "invalid_request_error",
                "invalid_type",
                param=param,
            ),
            behaviours,
            api,
        )

    def _stream_headers(self, extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("x-fake-name", self.config.name),
            *extra,
        ]

    def _responses(self, number: int, body: bytes, behaviours: tuple[Behaviour, ...]) -> Reply:
        """The OpenAI Responses API: ``input`` in, ``output`` items out."""
        req, bad = self._validate(body, "input")
        if bad is not None or req is None:
            return self._finish(bad or self._json(500, {}), behaviours)
        if not isinstance(req["input"], (str, list)):
            return self._bad_type(
                "input", "a string or an array of input items", behaviours, "chat"
            )
        limit = req.get("max_output_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool):
            limit = None
        answer = self._plan("responses", number, body, behaviours, req, limit, "input")
        if isinstance(answer, Reply):
            return answer
        no_usage = _first(behaviours, NoUsage) is not None
        usage = {
            "input_tokens": answer.prompt,
            "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
            "output_tokens": answer.completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.prompt + answer.completion,
        }
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
            answer.finish
        )
        status = "incomplete" if reason else "completed"
        resp_id, msg_id = f"resp_{answer.digest[:24]}", f"msg_{answer.digest[24:48]}"
        tool = answer.tool
        text = answer.text
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item: dict[str, Any]
        if tool is not None:
            item = {
                "id": tool.item_id,
                "type": "function_call",
                "status": "completed",
                "arguments": tool.arguments,
                "call_id": tool.call_id,
                "name": tool.name,
            }
        else:
            item = {
                "id": msg_id,
                "type": "message",
                "status": status,
                "content": [part],
                "role": "assistant",
            }
        created = self.config.created

        def response(state: str, output: list[Any], used: Any) -> dict[str, Any]:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "status": state,
                "background": False,
                "completed_at": created if state == "completed" else None,
                "error": None,
                "incomplete_details": {"reason": reason} if state == "incomplete" else None,
                "instructions": req.get("instructions"),
                "max_output_tokens": req.get("max_output_tokens"),
                "model": req["model"],
                "output": output,
                "parallel_tool_calls": req.get("parallel_tool_calls", True),
                "previous_response_id": req.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "store": req.get("store", True),
                "temperature": req.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": req.get("tool_choice", "auto"),
                "tools": req.get("tools", []),
                "top_p": req.get("top_p", 1.0),
                "truncation": req.get("truncation", "disabled"),
                "usage": used,
                "user": None,
                "metadata": req.get("metadata") or {},
            }

        extra = [("x-request-id", f"req_{answer.digest[:24]}"), *answer.headers]
        final = response(status, [item], None if no_usage else usage)
        if req.get("stream") is not True:
            return self._finish(self._json(200, final, extra), behaviours)
        events: list[_Event] = []

        def emit(kind: str, tokens: int = 0, terminal: bool = False, **fields: Any) -> None:
            obj = {"type": kind, "sequence_number": len(events), **fields}
            events.append(_Event(dumps(obj).decode(), event=kind, tokens=tokens, terminal=terminal))

        started = response("in_progress", [], None)
        emit("response.created", response=started)
        emit("response.in_progress", response=started)
        at = {"item_id": item["id"], "output_index": 0}
        if tool is not None:
            emit(
                "response.output_item.added",
                output_index=0,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for fragment in tool.fragments:
                emit("response.function_call_arguments.delta", 1, **at, delta=fragment)
            emit("response.function_call_arguments.done", **at, arguments=tool.arguments)
        else:
            at["content_index"] = 0
            emit(
                "response.output_item.added",
                output_index=0,
                item={**item, "status": "in_progress", "content": []},
            )
            emit("response.content_part.added", **at, part={**part, "text": ""})
            for i, word in enumerate(answer.words):
                delta = (answer.lead if i == 0 else " ") + word
                emit("response.output_text.delta", 1, **at, delta=delta, logprobs=[])
            emit("response.output_text.done", **at, text=text, logprobs=[])
            emit("response.content_part.done", **at, part=part)
        emit("response.output_item.done", output_index=0, item=item)
        emit(f"response.{status}", terminal=True, response=final)
        draft = _Draft(200, self._stream_headers(extra), events=events, api="responses")
        draft.response = started
        return self._finish_stream(draft, behaviours)

    def _messages(self, number: int, body: bytes, behaviours: tuple[Behaviour, ...]) -> Reply:
        """Anthropic's Messages API: ``messages`` (and ``system``) in, content blocks out."""
        req, bad = self._validate(body, "messages")
        if bad is not None or req is None:
            return self._finish(bad or self._json(500, {}), behaviours, "messages")
        if not isinstance(req["messages"], list):
            return self._bad_type("messages", "an array", behaviours, "messages")
        limit = req.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            what = (
                "max_tokens: Field required"
                if "max_tokens" not in req
                else ("max_tokens: Input should be a valid integer greater than or equal to 1")
            )
            return self._finish(
                self._error(400, what, "invalid_request_error", None), behaviours, "messages"
            )
        answer = self._plan("messages", number, body, behaviours, req, limit, "messages")
        if isinstance(answer, Reply):
            return answer
        no_usage = _first(behaviours, NoUsage) is not None
        usage: dict[str, Any] = {
            "input_tokens": answer.prompt,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": answer.completion,
            "service_tier": "standard",
        }
        tool = answer.tool
        block: dict[str, Any]
        if tool is not None:
            block = {"type": "tool_use", "id": tool.call_id, "name": tool.name, "input": tool.input}
        else:
            block = {"type": "text", "text": answer.text}
        message: dict[str, Any] = {
            "id": f"msg_{answer.digest[:24]}",
            "type": "message",
            "role": "assistant",
            "model": req["model"],
            "content": [block],
            "stop_reason": _STOP_REASONS[answer.finish],
            "stop_sequence": None,
        }
        if not no_usage:
            message["usage"] = usage
        extra = [("request-id", f"req_{answer.digest[:24]}"), *answer.headers]
        if req.get("stream") is not True:
            return self._finish(self._json(200, message, extra), behaviours)
        events: list[_Event] = []

        def emit(kind: str, tokens: int = 0, terminal: bool = False, **fields: Any) -> None:
            obj = {"type": kind, **fields}
            events.append(_Event(dumps(obj).decode(), event=kind, tokens=tokens, terminal=terminal))

        start = {**message, "content": [], "stop_reason": None}
        if not no_usage:
            start["usage"] = {**usage, "output_tokens": min(1, answer.completion)}
        emit("message_start", message=start)
        if tool is not None:
            emit("content_block_start", index=0, content_block={**block, "input": {}})
            emit("ping")
            for fragment in tool.fragments:
                part = {"type": "input_json_delta", "partial_json": fragment}
                emit("content_block_delta", 1, index=0, delta=part)
        else:
            emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
            emit("ping")
            for i, word in enumerate(answer.words):
                text = (answer.lead if i == 0 else " ") + word
                emit("content_block_delta", 1, index=0, delta={"type": "text_delta", "text": text})
        emit("content_block_stop", index=0)
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        if no_usage:
            emit("message_delta", delta=delta)
        else:
            emit("message_delta", delta=delta, usage={"output_tokens": answer.completion})
        emit("message_stop", terminal=True)
        draft = _Draft(200, self._stream_headers(extra), events=events, api="messages")
        return self._finish_stream(draft, behaviours)

    def _stream_events(
        self,
        base: dict[str, Any],
        words: list[list[str]],
        finish: str,
        usage: dict[str, int] | None,
        include: bool,
        legacy: bool = False,
        lead: str = "",
        tool: ToolCallPlan | None = None,
    ) -> list[_Event]:
        kind = "text_completion" if legacy else "chat.completion.chunk"

        def chunk(choices: list[dict[str, Any]], last_usage: Any = None, tokens: int = 0) -> _Event:
            obj = {**base, "object": kind, "choices": choices}
            if include:
                obj["usage"] = last_usage
            return _Event(data=dumps(obj).decode(), tokens=tokens)

        def choice(c: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            if legacy:  # text completions carry the text itself, not a delta
                text = delta.get("content", "")
                return {"index": c, "text": text, "logprobs": None, "finish_reason": reason}
            return {"index": c, "delta": delta, "logprobs": None, "finish_reason": reason}

        n = len(words)
        if tool is not None:  # a tool call instead of content, in every choice
            call = {"index": 0, "id": tool.call_id, "type": "function"}
            first = {**call, "function": {"name": tool.name, "arguments": ""}}
            opening = {"role": "assistant", "content": None, "tool_calls": [first]}
            events = [chunk([choice(c, {**opening, "refusal": None})]) for c in range(n)]
            for fragment in tool.fragments:
                for c in range(n):
                    part = {"index": 0, "function": {"arguments": fragment}}
                    events.append(chunk([choice(c, {"tool_calls": [part]})], tokens=1))
            events += [chunk([choice(c, {}, finish)]) for c in range(n)]
            if usage is not None:
                events.append(chunk([], usage))
            events.append(_Event(data=_DONE, terminal=True))
            return events
        events = (
            []
            if legacy
            else [
                chunk([choice(c, {"role": "assistant", "content": "", "refusal": None})])
                for c in range(n)
            ]
        )
        for i in range(len(words[0])):
            for c in range(n):
                text = (lead if i == 0 else " ") + words[c][i]
                events.append(chunk([choice(c, {"content": text})], tokens=1))
        events += [chunk([choice(c, {}, finish)]) for c in range(n)]
        if usage is not None:
            events.append(chunk([], usage))
        events.append(_Event(data=_DONE, terminal=True))
        return events

    # -- applying behaviours -------------------------------------------------------------------
    def _finish_stream(self, draft: _Draft, behaviours: tuple[Behaviour, ...]) -> Reply:
        events = draft.events or []
        api = draft.api
        terminal = [e for e in events if e.terminal]
        done = list(terminal)
        data_events = [e for e in events if not e.terminal]
        for b in behaviours:
            if isinstance(b, BigEvent):
                _enlarge(data_events, b)
            elif isinstance(b, MalformedEvent):
                name, text = _MALFORMED.get(api, _MALFORMED["chat"])
                data_events.insert(min(b.after, len(data_events)), _Event(data=text, event=name))
            elif isinstance(b, ErrorEvent):
                kept = data_events[: b.after]
                data_events = [*kept, self._error_event(b, api, len(kept), draft.response)]
                done = done if b.done else []
            elif isinstance(b, Truncate):
                data_events, done = data_events[: b.events], []
            elif isinstance(b, NoDone):
                done = []
            elif isinstance(b, DoubleDone):
                if api in _NAMED_EVENTS:
                    done = [replace(e) for e in terminal[:1] * 2]
                else:
                    done = [_Event(data=_DONE, terminal=True), _Event(data=_DONE, terminal=True)]
        events = data_events + done
        fields = _first(behaviours, Fields)
        if fields is not None:
            for i, e in enumerate(events):
                if api not in _NAMED_EVENTS:
                    e.event = fields.event
                e.id = str(i + 1) if fields.ids else None
        keepalive = _first(behaviours, KeepAlive)
        if keepalive is not None:
            with_comments: list[_Event] = []
            for i, e in enumerate(events):
                if i % keepalive.every == 0:
                    with_comments.append(_Event(comment=keepalive.text))
                with_comments.append(e)
            events = with_comments
        style = _first(behaviours, LineEndings)
        sep = _LINE_ENDS[style.style if style else "lf"]
        encoded = [e.encode(sep) for e in events]
        pos = 0
        for e, piece in zip(events, encoded, strict=True):
            if e.data is not None:
                draft.starts.append(pos)
            if e.tokens:
                draft.token_spans.append((pos, pos + len(piece)))
            pos += len(piece)
            draft.natural.append(pos)
        draft.natural = draft.natural[:-1]
        draft.body = b"".join(encoded)
        return self._timed(draft, behaviours)

    @staticmethod
    def _error_event(
        b: ErrorEvent, api: Api, sequence: int, response: dict[str, Any] | None
    ) -> _Event:
        """The error event ``b`` sends in ``api``'s form, as the ``sequence``-th event."""
        if api == "responses":
            if b.failed:
                error = {"code": b.code, "message": b.message}
                failed = {**(response or {}), "status": "failed", "error": error, "usage": None}
                obj = {"type": "response.failed", "sequence_number": sequence, "response": failed}
                return _Event(dumps(obj).decode(), event="response.failed")
            obj = {
                "type": "error",
                "code": b.code,
                "message": b.message,
                "param": None,
                "sequence_number": sequence,
            }
            return _Event(dumps(obj).decode(), event="error")
        if api == "messages":
            kind = "api_error" if b.code == "server_error" else b.code
            return _Event(dumps(anthropic_error(kind, b.message)).decode(), event="error")
        err = {
            "error": {"message": b.message, "type": "server_error", "param": None, "code": b.code}
        }
        return _Event(data=dumps(err).decode())

    def _finish(self, reply: Reply, behaviours: tuple[Behaviour, ...], api: Api = "chat") -> Reply:
        if api == "messages":
            reply = self._anthropic(reply)
        draft = _Draft(reply.status, list(reply.headers), body=reply.body)
        return self._timed(draft, behaviours)

    def _anthropic(self, reply: Reply) -> Reply:
        """An OpenAI-shaped error reply in Anthropic's shape (other replies unchanged)."""
        if reply.status < 400:
            return reply
        try:
            obj = json.loads(reply.body)
        except ValueError:
            return reply
        error = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(error, dict):
            return reply
        message = str(error.get("message") or "")
        skip = {"content-type", "content-length", "x-fake-name"}
        extra = [(k, v) for k, v in reply.headers if k.lower() not in skip]
        body = anthropic_error(anthropic_error_type(reply.status), message)
        return self._json(reply.status, body, extra)

    def _timed(self, draft: _Draft, behaviours: tuple[Behaviour, ...]) -> Reply:
        chunks = chunk_bytes(draft.body, _first(behaviours, Chunking), draft.natural)
        stall = _first(behaviours, Stall)
        stalled = None  # the index of the chunk the stall comes before
        if stall is not None and draft.events is not None:
            at = draft.starts[stall.events] if stall.events < len(draft.starts) else len(draft.body)
            chunks, stalled = _split_at(chunks, at)
        cut = _first(behaviours, Cut)
        if cut is not None:
            left = cut.bytes
            if cut.tokens is not None and draft.events is not None:
                spans = draft.token_spans
                if not spans:
                    pass
                elif cut.tokens == 0:
                    left += spans[0][0]
                else:
                    left += spans[min(cut.tokens, len(spans)) - 1][1]
            kept: list[bytes] = []
            for c in chunks:
                if left <= 0:
                    break
                kept.append(c[:left])
                left -= len(c)
            chunks = kept
        hang = _first(behaviours, Hang)
        slow_first = _first(behaviours, SlowFirstByte)
        slow = _first(behaviours, SlowChunks)
        delays: list[float | None] = [slow.seconds if slow else 0.0] * len(chunks)
        if delays:
            delays[0] = slow_first.seconds if slow_first else 0.0
        if stall is not None and stalled is not None and stalled < len(delays):
            delays[stalled] = stall.seconds
        headers_delay = 0.0 if hang is None else hang.seconds
        if headers_delay is not None and math.isinf(headers_delay):
            headers_delay = None
        return Reply(
            draft.status,
            tuple(draft.headers),
            tuple(chunks),
            tuple(delays),
            headers_delay,
            cut is not None,
        )
