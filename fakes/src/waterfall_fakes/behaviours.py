"""The fault vocabulary of the fakes.

A *behaviour* changes how a fake answers one request. Behaviours compose: a request is answered by
a list of them, applied in order (an answer-replacing behaviour such as ``rate_limit`` wins over the
stream faults; stream faults transform the event list one after the other; ``chunking`` and
``cut`` act on the encoded bytes last).

They are pydantic models, so a config file is validated with errors that name the bad key, and
they have a compact text form for the ``x-fake-behaviour`` request header::

    rate_limit:dialect=retry-after-date,seconds=3; chunking:size=1

Behaviours are separated by ``;``; each is a name, optionally followed by ``:`` and
``key=value`` pairs separated by ``,``. List values (``chunking:at=...``) use ``|``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

__all__ = [
    "BEHAVIOUR_HEADER",
    "Behaviour",
    "BehaviourError",
    "BigEvent",
    "Chunking",
    "ContentFilter",
    "ContextLengthExceeded",
    "ContextStyle",
    "Cut",
    "Dialect",
    "DoubleDone",
    "ErrorEvent",
    "Fields",
    "Hang",
    "InsufficientBalance",
    "KeepAlive",
    "LineEndings",
    "MalformedEvent",
    "NoDone",
    "NoUsage",
    "Ok",
    "Prefill",
    "RateLimit",
    "SlowChunks",
    "SlowFirstByte",
    "Stall",
    "Status",
    "ToolCall",
    "Truncate",
    "When",
    "format_behaviours",
    "parse_behaviours",
]

BEHAVIOUR_HEADER = "x-fake-behaviour"
"""The request header that adds behaviours to one request (``x-fake-behavior`` works too)."""

Dialect: TypeAlias = Literal[
    "retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter", "anthropic", "none"
]
"""How a 429 tells the client when to come back.

- ``retry-after``: ``Retry-After`` in whole seconds (rounded up).
- ``retry-after-date``: ``Retry-After`` as an HTTP date.
- ``retry-after-ms``: ``retry-after-ms`` in milliseconds, nothing else.
- ``openai``: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go-style
  durations such as ``6m23.456s`` or ``500ms``.
- ``openrouter``: ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
  as a Unix timestamp in milliseconds.
- ``anthropic``: ``retry-after`` in whole seconds and
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``,
  resets as RFC 3339 times such as ``2026-12-07T10:45:03Z``.
- ``none``: no hint at all.
"""


class BehaviourError(ValueError):
    """A behaviour spec (header text or config) that cannot be understood."""


class _Behaviour(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ok(_Behaviour):
    """Answer normally (useful as a step in a script)."""

    kind: Literal["ok"] = "ok"


class RateLimit(_Behaviour):
    """Answer 429 with the given header dialect, saying to come back after ``seconds``."""

    kind: Literal["rate_limit"] = "rate_limit"
    dialect: Dialect = "retry-after"
    seconds: float = Field(default=1.0, ge=0)


class InsufficientBalance(_Behaviour):
    """Answer 402 with a Routstr-style insufficient balance body."""

    kind: Literal["insufficient_balance"] = "insufficient_balance"


class Status(_Behaviour):
    """Answer with an error status (400, 401, 500, 502, 503, 504, ...) and an OpenAI error body."""

    kind: Literal["status"] = "status"
    code: int = Field(default=500, ge=400, le=599)
    message: str | None = None


class Hang(_Behaviour):
    """Send nothing for ``seconds`` (forever when unset) before the response headers."""

    kind: Literal["hang"] = "hang"
    seconds: float | None = Field(default=None, ge=0)


class SlowFirstByte(_Behaviour):
    """Send the headers at once but the first body byte only after ``seconds``."""

    kind: Literal["slow_first_byte"] = "slow_first_byte"
    seconds: float = Field(default=0.5, ge=0)


class Truncate(_Behaviour):
    """Stream only the first ``events`` events, then close cleanly (no ``[DONE]``, no terminal
    event)."""

    kind: Literal["truncate"] = "truncate"
    events: int = Field(default=1, ge=0)


class Cut(_Behaviour):
    """Cut the connection after ``bytes`` body bytes (streaming or not).

    With ``tokens``, a stream is cut after the event that carries its ``tokens``-th completion
    token (one content delta is one token), plus ``bytes`` bytes of what follows: the answer
    breaks off in the middle. A JSON answer is cut after ``bytes`` bytes either way.
    """

    kind: Literal["cut"] = "cut"
    bytes: int = Field(default=0, ge=0)
    tokens: int | None = Field(default=None, ge=0)


class Stall(_Behaviour):
    """Streams: send the first ``events`` events, then nothing for ``seconds`` (forever when
    unset), then the rest. The response has begun, so only a stall timer (or the read timeout)
    notices."""

    kind: Literal["stall"] = "stall"
    events: int = Field(default=1, ge=0)
    seconds: float | None = Field(default=None, ge=0)


ContextStyle: TypeAlias = Literal[
    "openai", "anthropic", "gemini", "mistral", "openrouter", "vllm", "llamacpp"
]
"""Whose words a ``context_length_exceeded`` answer uses (see :class:`ContextLengthExceeded`)."""


class ContextLengthExceeded(_Behaviour):
    """Answer 400 as a provider does when the prompt does not fit the model's context window.

    ``openai`` (the default): type ``invalid_request_error``, code ``context_length_exceeded``,
    param ``messages``, and OpenAI's message with the model's context length and the request's
    token count (at least one more than the window). The other ``style``s put that provider's
    wording in the OpenAI error envelope, without OpenAI's code, so only the message says what
    happened: ``anthropic`` ("prompt is too long: N tokens > W maximum"), ``gemini`` ("The
    input token count (N) exceeds the maximum number of tokens allowed (W)."), ``mistral``
    ("Prompt contains N tokens ... too large for model with W maximum context length"),
    ``openrouter`` ("This endpoint's maximum context length is W tokens. However, you
    requested about N tokens ..."), ``vllm`` (OpenAI's words, type ``BadRequestError``) and
    ``llamacpp`` ("the request exceeds the available context size, try increasing it").
    ``message`` replaces the message.
    """

    kind: Literal["context_length_exceeded"] = "context_length_exceeded"
    message: str | None = None
    style: ContextStyle = "openai"


class ContentFilter(_Behaviour):
    """A content filter's answer.

    Without ``after``: 400 before any output, in OpenAI's shape (code
    ``content_policy_violation``, type ``invalid_request_error``) or, with
    ``code=content_filter``, Azure OpenAI's (param ``prompt``, an ``innererror`` with the
    filter's results). With ``after``: a 200 whose reply stops after ``after`` words with
    ``finish_reason: "content_filter"`` (the output filter).
    """

    kind: Literal["content_filter"] = "content_filter"
    code: Literal["content_policy_violation", "content_filter"] = "content_policy_violation"
    after: int | None = Field(default=None, ge=0)


class Prefill(_Behaviour):
    """How the model treats a prefill (a chat request whose last message has role
    ``assistant``), overriding the model's own ``prefill`` setting.

    ``honour``: the reply continues the prefilled text (the model's answer to the request without
    the prefill, less as many words as the prefill has). ``reject``: 400, code
    ``prefill_not_supported``, param ``messages``. ``ignore``: a new answer, as if no prefill.
    """

    kind: Literal["prefill"] = "prefill"
    mode: Literal["honour", "reject", "ignore"] = "honour"


class When(_Behaviour):
    """A gate: the other behaviours given with it apply only to some requests.

    Of the requests the gate sees (in a script step, a rule, or the same header text, each
    counted on its own), those inside the time window ``start`` to ``end`` (seconds since the
    fake started, or with ``since=first`` since its first chat or embeddings request; either
    bound may be left open) are candidates; the first ``skip`` candidates pass untouched; of
    the rest, each is hit with chance ``p``, drawn from the fake's seed (reproducible for the
    same sequence of requests), until ``times`` have been hit (no limit when unset). A request
    that is not hit is answered normally.
    """

    kind: Literal["when"] = "when"
    p: float = Field(default=1.0, ge=0, le=1)
    times: int | None = Field(default=None, ge=0)
    skip: int = Field(default=0, ge=0)
    start: float | None = Field(default=None, ge=0)
    end: float | None = Field(default=None, ge=0)
    since: Literal["start", "first"] = "start"


class ToolCall(_Behaviour):
    """Answer a request that offers tools with a call to one of them, in the request's dialect.

    ``name`` picks the tool (default, or when the request does not offer it: the first tool
    offered); ``arguments`` is the call's arguments as a JSON object's text (default: made from
    the tool's parameter schema, see :func:`waterfall_fakes.dialects.tool_arguments`). A request
    that offers no tools is answered normally. A request whose ``tool_choice`` requires a tool
    gets a call without this behaviour.
    """

    kind: Literal["tool_call"] = "tool_call"
    name: str | None = Field(default=None, min_length=1)
    arguments: str | None = None

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError("arguments must be the text of a JSON object") from None
            if not isinstance(parsed, dict):
                raise ValueError("arguments must be the text of a JSON object")
        return value


class NoDone(_Behaviour):
    """Send every event but leave out the stream's terminal event: the final ``data: [DONE]``
    (chat, text completions), ``response.completed`` (or ``response.incomplete``; Responses
    API) or ``message_stop`` (Anthropic Messages)."""

    kind: Literal["no_done"] = "no_done"


class DoubleDone(_Behaviour):
    """Send ``data: [DONE]`` (or the dialect's terminal event) twice."""

    kind: Literal["double_done"] = "double_done"


class ErrorEvent(_Behaviour):
    """After ``after`` events, send an error event in the request's dialect and end the stream.

    Chat and text completions: ``data: {"error": {...}}``; with ``done`` the stream still ends
    with ``[DONE]`` after the error, as some providers do. Responses API: an ``error`` event
    (``code`` and ``message``) or, with ``failed``, ``response.failed`` (the response with status
    ``failed`` and this error). Anthropic Messages: ``event: error`` with
    ``{"type": "error", "error": {"type": code, "message": message}}`` (the default code
    ``server_error`` is sent as Anthropic's ``api_error``; give ``code=overloaded_error`` for
    an overload). In those two dialects ``done`` sends the terminal event after the error.
    """

    kind: Literal["error_event"] = "error_event"
    after: int = Field(default=1, ge=0)
    message: str = "The server had an error while processing your request."
    code: str = "server_error"
    done: bool = False
    failed: bool = False


class MalformedEvent(_Behaviour):
    """After ``after`` events, insert one event whose data is not valid JSON."""

    kind: Literal["malformed_event"] = "malformed_event"
    after: int = Field(default=1, ge=0)


class BigEvent(_Behaviour):
    """Make the content event at index ``after`` at least ``size`` bytes long (valid JSON)."""

    kind: Literal["big_event"] = "big_event"
    size: int = Field(default=70_000, ge=1)
    after: int = Field(default=1, ge=0)


class NoUsage(_Behaviour):
    """Leave out usage: no usage chunk when streaming, no ``usage`` key otherwise."""

    kind: Literal["no_usage"] = "no_usage"


class SlowChunks(_Behaviour):
    """Wait ``seconds`` before every body chunk after the first."""

    kind: Literal["slow_chunks"] = "slow_chunks"
    seconds: float = Field(default=0.05, ge=0)


class KeepAlive(_Behaviour):
    """Send an SSE comment (``: text``) first and then after every ``every`` events."""

    kind: Literal["keepalive"] = "keepalive"
    every: int = Field(default=1, ge=1)
    text: str = "keep-alive"


class Fields(_Behaviour):
    """Give every data event an ``event:`` line and, with ``ids``, an ``id:`` line (the
    Responses API and Anthropic Messages keep their own event names and only get the ids)."""

    kind: Literal["fields"] = "fields"
    event: str = "completion"
    ids: bool = True


class LineEndings(_Behaviour):
    """Encode the stream with ``lf`` (default), ``crlf`` or ``cr`` line ends."""

    kind: Literal["line_endings"] = "line_endings"
    style: Literal["lf", "crlf", "cr"] = "crlf"


class Chunking(_Behaviour):
    """Choose where the body is split into chunks.

    One of: ``size`` (fixed size chunks), ``at`` (explicit byte offsets), or ``seed`` (random
    sizes from 1 to ``max_size``, reproducible). Boundaries fall anywhere, inside multi-byte
    characters and inside ``data:`` included.
    """

    kind: Literal["chunking"] = "chunking"
    size: int | None = Field(default=None, ge=1)
    at: tuple[int, ...] | None = None
    seed: int | None = None
    max_size: int = Field(default=16, ge=1)


Behaviour = Annotated[
    Ok
    | RateLimit
    | InsufficientBalance
    | Status
    | Hang
    | SlowFirstByte
    | Truncate
    | Cut
    | Stall
    | ContextLengthExceeded
    | ContentFilter
    | Prefill
    | ToolCall
    | When
    | NoDone
    | DoubleDone
    | ErrorEvent
    | MalformedEvent
    | BigEvent
    | NoUsage
    | SlowChunks
    | KeepAlive
    | Fields
    | LineEndings
    | Chunking,
    Field(discriminator="kind"),
]
"""Any one behaviour; ``kind`` says which."""

_ADAPTER: TypeAdapter[Behaviour] = TypeAdapter(Behaviour)
_LIST_KEYS = {"at"}


def _parse_one(text: str) -> Behaviour:
    name, _, args = text.partition(":")
    data: dict[str, Any] = {"kind": name.strip()}
    for pair in filter(None, (p.strip() for p in args.split(","))):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BehaviourError(f"{text.strip()!r}: expected key=value, got {pair!r}")
        value = value.strip()
        data[key] = [v for v in value.split("|") if v] if key in _LIST_KEYS else value
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'kind'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise BehaviourError(f"{text.strip()!r}: {problems}") from None


def parse_behaviours(
    spec: str | list[Any] | tuple[Any, ...] | Behaviour | dict[str, Any] | None,
) -> list[Behaviour]:
    """Turn header text, a config value or a behaviour into a list of behaviours.

    A list (or tuple) may mix all of these forms.

    >>> [b.kind for b in parse_behaviours("rate_limit:dialect=openai,seconds=2; chunking:size=1")]
    ['rate_limit', 'chunking']
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        return [_parse_one(part) for part in spec.split(";") if part.strip()]
    if isinstance(spec, (list, tuple)):
        out: list[Behaviour] = []
        for item in spec:
            out.extend(parse_behaviours(item))
        return out
    if isinstance(spec, dict):
        try:
            return [_ADAPTER.validate_python(spec)]
        except ValidationError as exc:
            raise BehaviourError(str(exc)) from None
    return [spec]


def format_behaviours(behaviours: list[Behaviour]) -> str:
    """The header text for ``behaviours`` (the inverse of :func:`parse_behaviours`)."""
    parts = []
    for b in behaviours:
        fields = b.model_dump(exclude={"kind"}, exclude_defaults=True)
        args = ",".join(
            f"{k}={'|'.join(str(x) for x in v) if isinstance(v, tuple) else _fmt(v)}"
            for k, v in fields.items()
        )
        parts.append(f"{b.kind}:{args}" if args else b.kind)
    return "; ".join(parts)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
