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

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette.event import ServerSentEvent

from .behaviours import (
    BEHAVIOUR_HEADER,
    Behaviour,
    BehaviourError,
    BigEvent,
    Chunking,
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
    RateLimit,
    SlowChunks,
    SlowFirstByte,
    Status,
    Truncate,
    parse_behaviours,
)
from .catalog import DEFAULT_MODELS, FakeModel, count_prompt_tokens, dumps, reply_words
from .journal import Delivery, usage_sent
from .ratelimit import Limits, RateLimiter, rate_limit_headers, remaining_headers

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
}


class FakeConfig(BaseModel):
    """Everything that makes one fake behave the way it does.

    ``script`` is a list of steps, one per chat/embeddings request, each step a behaviour list
    (or its header text); when the script runs out the fake answers normally, or starts again
    from the top with ``cycle``. Behaviours from the ``x-fake-behaviour`` header are added to the
    step's own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "fake"
    seed: int = 0
    models: tuple[FakeModel, ...] = DEFAULT_MODELS
    script: tuple[tuple[Behaviour, ...], ...] = ()
    cycle: bool = False
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


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received and how it was answered, kept for assertions.

    The same fields as an entry of the control plane's journal (``GET /_fake/journal``):

    - ``index``: its place in the journal since the last reset, from 0;
    - ``number``: its place among the requests the script and rules count (chat, completions,
      embeddings), from 0; ``None`` for the others (``/health``, ``/v1/models``, unknown paths);
    - ``answered_by``: what chose its behaviours, e.g. ``("script:0", "header")``; empty when
      it was answered normally;
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
    delivery: Delivery = field(default_factory=Delivery, compare=False)


@dataclass(frozen=True)
class Reply:
    """What to send back, byte for byte and moment by moment.

    ``headers_delay`` is the wait before the headers (``None``: forever). ``delays[i]`` is the wait
    before ``chunks[i]``. With ``cut`` the connection is cut after the last chunk instead of
    ending cleanly.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    delays: tuple[float, ...] = ()
    headers_delay: float | None = 0.0
    cut: bool = False

    @property
    def body(self) -> bytes:
        """All the body bytes joined."""
        return b"".join(self.chunks)

    def delay_before(self, index: int) -> float:
        """The wait before chunk ``index``."""
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


def _first(behaviours: Iterable[Any], kind: type[_B]) -> _B | None:
    for b in behaviours:
        if isinstance(b, kind):
            return b
    return None


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
        if obj is None or "error" in obj:
            continue
        obj["x_padding"] = ""
        missing = big.size - len(dumps(obj))
        obj["x_padding"] = "·" * max(0, -(-missing // len("·".encode())))  # 2 bytes each
        events[index].data = dumps(obj).decode()
        return


@dataclass
class _Draft:
    """A reply under construction; the behaviours edit it, then it is frozen into a Reply."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[_Event] | None = None
    natural: list[int] = field(default_factory=list)


class FakeProvider:
    """One fake provider: its config, state and the requests it received.

    ``clock`` gives wall-clock seconds (for the rate limiter, HTTP dates and reset timestamps);
    pass your own to control time in tests.
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

    def __repr__(self) -> str:
        return f"FakeProvider(name={self.config.name!r}, requests={len(self.requests)})"

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget received requests, rewind the script and empty the rate limiter."""
        with self._lock:
            self.requests.clear()
            self._step = self._count = 0
            if self._limiter:
                self._limiter.reset()

    def calls(self, path: str = "/v1/chat/completions") -> list[RecordedRequest]:
        """The recorded requests to ``path``."""
        return [r for r in self.requests if r.path == path]

    def _next_step(self) -> tuple[int, tuple[Behaviour, ...]]:
        with self._lock:
            number = self._count
            self._count += 1
            script = self.config.script
            if not script:
                return number, ()
            index = self._step % len(script) if self.config.cycle else self._step
            self._step += 1
            return number, script[index] if index < len(script) else ()

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
        behaviours: tuple[Behaviour, ...] = ()
        try:
            reply, behaviours = self._route(method.upper(), path, hdrs, body)
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
                behaviours,
                reply.status,
                index=len(self.requests),
                response_headers=reply.headers,
                usage=usage,
                received_at=received_at,
                client=client,
            )
            self.requests.append(record)
        return reply, record

    def _route(
        self, method: str, path: str, hdrs: dict[str, str], body: bytes
    ) -> tuple[Reply, tuple[Behaviour, ...]]:
        routes: dict[str, tuple[str, Callable[..., Reply] | None]] = {
            "/health": ("GET", None),
            "/v1/models": ("GET", None),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
        }
        if path not in routes:
            return self._error(
                404, f"Unknown path {path}.", "invalid_request_error", "unknown_url"
            ), ()
        want, handler = routes[path]
        if method != want:
            reply = self._error(
                405,
                f"Method {method} not allowed on {path}.",
                "invalid_request_error",
                "method_not_allowed",
            )
            return replace(reply, headers=(*reply.headers, ("allow", want))), ()
        if path == "/health":
            return self._json(200, {"status": "ok", "name": self.config.name}), ()
        if handler is None:
            data = [m.listing(self.config.created) for m in self.config.models]
            return self._json(200, {"object": "list", "data": data}), ()
        number, step = self._next_step()
        header_spec = hdrs.get(BEHAVIOUR_HEADER) or hdrs.get("x-fake-behavior")
        behaviours = (*step, *parse_behaviours(header_spec))
        if (
            self.config.api_key is not None
            and hdrs.get("authorization") != f"Bearer {self.config.api_key}"
        ):
            return self._error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ), behaviours
        return handler(number, body, behaviours), behaviours

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

    def _failure(
        self, behaviours: tuple[Behaviour, ...], tokens: int
    ) -> tuple[Reply | None, list[tuple[str, str]]]:
        """A reply that replaces the normal answer (the limiter's 429, or a scripted error), and
        the limiter's headers for a success."""
        now = self.clock()
        ok_headers: list[tuple[str, str]] = []
        if self._limiter is not None:
            verdict = self._limiter.check(tokens)
            lim = self._limiter.limits
            if not verdict.allowed:
                if lim.dialect in ("openai", "openrouter"):
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
        count = self.config.reply_words
        limit = req.get("max_completion_tokens", req.get("max_tokens"))
        if not isinstance(limit, int) or isinstance(limit, bool):
            limit = None
        finish = "stop"
        if limit is not None and limit < count:
            count, finish = max(limit, 0), "length"
        # chat: 3 per message plus its words; text completions: the prompt's words
        prompt = sum(len(t.split()) for t in given) if legacy else count_prompt_tokens(given)
        failed, ok_headers = self._failure(
            behaviours, prompt + (max(limit, 0) if limit is not None else count) * n
        )
        if failed is not None:
            return self._finish(failed, behaviours)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": count * n,
            "total_tokens": prompt + count * n,
        }
        words = [reply_words(self.config.seed, number, c, body, count) for c in range(n)]
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
                base, words, finish, usage if include and not no_usage else None, include, legacy
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
                        else {
                            "message": {
                                "role": "assistant",
                                "content": " ".join(w),
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
        failed, ok_headers = self._failure(behaviours, prompt)
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

    def _stream_events(
        self,
        base: dict[str, Any],
        words: list[list[str]],
        finish: str,
        usage: dict[str, int] | None,
        include: bool,
        legacy: bool = False,
    ) -> list[_Event]:
        kind = "text_completion" if legacy else "chat.completion.chunk"

        def chunk(choices: list[dict[str, Any]], last_usage: Any = None) -> _Event:
            obj = {**base, "object": kind, "choices": choices}
            if include:
                obj["usage"] = last_usage
            return _Event(data=dumps(obj).decode())

        def choice(c: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            if legacy:  # text completions carry the text itself, not a delta
                text = delta.get("content", "")
                return {"index": c, "text": text, "logprobs": None, "finish_reason": reason}
            return {"index": c, "delta": delta, "logprobs": None, "finish_reason": reason}

        n = len(words)
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
                events.append(
                    chunk([choice(c, {"content": words[c][i] if i == 0 else " " + words[c][i]})])
                )
        events += [chunk([choice(c, {}, finish)]) for c in range(n)]
        if usage is not None:
            events.append(chunk([], usage))
        events.append(_Event(data=_DONE))
        return events

    # -- applying behaviours -------------------------------------------------------------------
    def _finish_stream(self, draft: _Draft, behaviours: tuple[Behaviour, ...]) -> Reply:
        events = draft.events or []
        done = [e for e in events if e.data == _DONE]
        data_events = [e for e in events if e.data != _DONE]
        for b in behaviours:
            if isinstance(b, BigEvent):
                _enlarge(data_events, b)
            elif isinstance(b, MalformedEvent):
                data_events.insert(
                    min(b.after, len(data_events)),
                    _Event(data='{"choices": [{"delta": {"content": "oops'),
                )
            elif isinstance(b, ErrorEvent):
                err = {
                    "error": {
                        "message": b.message,
                        "type": "server_error",
                        "param": None,
                        "code": b.code,
                    }
                }
                data_events = [*data_events[: b.after], _Event(data=dumps(err).decode())]
                done = done if b.done else []
            elif isinstance(b, Truncate):
                data_events, done = data_events[: b.events], []
            elif isinstance(b, NoDone):
                done = []
            elif isinstance(b, DoubleDone):
                done = [_Event(data=_DONE), _Event(data=_DONE)]
        events = data_events + done
        fields = _first(behaviours, Fields)
        if fields is not None:
            for i, e in enumerate(events):
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
        offsets, pos = [], 0
        for piece in encoded[:-1]:
            pos += len(piece)
            offsets.append(pos)
        draft.body, draft.natural = b"".join(encoded), offsets
        return self._timed(draft, behaviours)

    def _finish(self, reply: Reply, behaviours: tuple[Behaviour, ...]) -> Reply:
        draft = _Draft(reply.status, list(reply.headers), body=reply.body)
        return self._timed(draft, behaviours)

    def _timed(self, draft: _Draft, behaviours: tuple[Behaviour, ...]) -> Reply:
        chunks = chunk_bytes(draft.body, _first(behaviours, Chunking), draft.natural)
        cut = _first(behaviours, Cut)
        if cut is not None:
            kept, left = [], cut.bytes
            for c in chunks:
                if left <= 0:
                    break
                kept.append(c[:left])
                left -= len(c)
            chunks = kept
        hang = _first(behaviours, Hang)
        slow_first = _first(behaviours, SlowFirstByte)
        slow = _first(behaviours, SlowChunks)
        delays = [slow.seconds if slow else 0.0] * len(chunks)
        if delays:
            delays[0] = slow_first.seconds if slow_first else 0.0
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
