"""The waterfall: try each entry of a plan in order until one is accepted.

An entry is skipped without a call while it cools down. An attempt *falls through* (and cools its
entry down for as long as the provider asked, capped, else a default) on a status the policy names
(429, 402, 408, 401/403, every 5xx by default), a connect error, or a timeout before the first
byte. Any other status goes back to the client unchanged: the request itself is wrong.

A streaming attempt is *accepted* only once its first complete SSE event has arrived and is not an
error (policy ``accept = "first_event"``), so a 200 that closes, stalls or fails straight away
still falls through. Nothing reaches the client before that: the caller commits a :class:`Served`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._fastjson import encoder
from .config import Deployment, RouterConfig
from .cooldown import CooldownStore, preemptive_hint, retry_hint
from .deadline import Deadline
from .errors import RouterError
from .sse import BLANK_LINE, SSEParser
from .upstream import (
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
)

__all__ = ["Attempt", "Exhausted", "Router", "Served", "forwarded_headers"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent upstream: the client's credentials, hop-by-hop headers, and what the router sets.
_NOT_FORWARDED = HOP_BY_HOP | {
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "accept-encoding",
}
_ERROR_PEEK = 64 * 1024
_EVENT_CAP = 64 * 1024  # the largest first event parsed (SSEParser's max_bytes)
_ENCODE = encoder(ensure_ascii=False)


def forwarded_headers(client_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers that may travel upstream (no credentials, no hop-by-hop headers,
    none a ``Connection`` header names), in their order and as they were written."""
    kept: list[tuple[str, str]] = []
    named: set[str] = set()  # what the Connection headers name (hop-by-hop too)
    for name, value in client_headers:
        key = name.lower()
        if key not in _NOT_FORWARDED:
            kept.append((name, value))
        elif key == "connection":
            named.update(token.strip().lower() for token in value.split(","))
    if named:
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


@dataclass(frozen=True)
class Attempt:
    """What happened to one entry of the plan."""

    entry: str
    outcome: str
    """``served``, ``rejected`` (a 4xx sent back as is), ``cooling`` (skipped, no call),
    ``status`` (a failing status), ``timeout``, ``connect_error``, ``transport_error``,
    ``empty_stream`` or ``error_event``."""
    status: int | None = None
    elapsed: float = 0.0
    cooldown: float | None = None
    detail: str = ""

    def describe(self) -> str:
        """One human-readable phrase, for error messages and logs."""
        text = f"{self.entry}: {self.detail or self.outcome}"
        if self.cooldown is not None and self.outcome != "cooling":
            text += f" (cooling down {self.cooldown:g}s)"
        return text


@dataclass
class Served:
    """The accepted upstream response. ``prefix`` holds body bytes already read from it; the rest
    (if ``complete`` is false) is still to be read with :meth:`rest`."""

    deployment: Deployment
    response: UpstreamResponse
    prefix: bytes
    complete: bool
    attempts: list[Attempt] = field(default_factory=list)
    read_timeout: float = 60.0
    deadline: Deadline | None = None
    """The timer of the request's upstream waits (made on the first read if not given)."""

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining body chunks, each within the read timeout (raises as
        :meth:`read_chunk`)."""
        while chunk := await self.read_chunk():
            yield chunk

    async def read_chunk(self) -> bytes:
        """The next body chunk within the read timeout, ``b""`` at the end (raises
        ``TimeoutError`` or :class:`~waterfall_asgi.upstream.UpstreamError`)."""
        if self.complete:
            return b""
        deadline = self.deadline
        if deadline is None:
            deadline = self.deadline = Deadline()
        # one timer for every read of the stream, moved lazily (see Deadline)
        with deadline.after(self.read_timeout):
            return await self.response.read_chunk()

    def at_end(self) -> bool:
        """Whether the body has been read to its end already, so that the next read returns
        ``b""`` at once: as the response tells (see
        :class:`~waterfall_asgi.upstream.UpstreamResponse`; one that cannot tell: never)."""
        if self.complete:
            return True
        at_end = getattr(self.response, "at_end", None)
        return at_end is not None and bool(at_end())

    async def aclose(self) -> None:
        """Release the upstream connection (and the timer)."""
        if self.deadline is not None:
            self.deadline.close()
        await self.response.aclose()


class Exhausted(RouterError):
    """Every entry failed or is cooling down: 503 with ``Retry-After``."""

    def __init__(self, label: str, attempts: list[Attempt], retry_after: int) -> None:
        reasons = "; ".join(a.describe() for a in attempts)
        super().__init__(
            503,
            f"All providers for {label!r} are exhausted: {reasons}.",
            "server_error",
            "all_providers_exhausted",
            headers=[("retry-after", str(retry_after))],
        )
        self.attempts = attempts
        self.retry_after = retry_after


class _Failed(Exception):
    def __init__(
        self, outcome: str, detail: str, status: int | None = None, hint: float | None = None
    ) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.status, self.hint = outcome, detail, status, hint


class Router:
    """Plans candidates for a request and runs the waterfall over them."""

    def __init__(
        self,
        config: RouterConfig,
        upstream: Upstream,
        cooldowns: CooldownStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.cooldowns = cooldowns
        self.clock = clock
        self._by_model: dict[str, list[Deployment]] = {}
        self._by_key: dict[str, Deployment] = {}
        # made once: what the router sends each provider, and the client's timeouts for it
        self._sends = {
            name: ({**_BASE_HEADERS, **p.secret_headers()}, p.timeouts.for_headers())
            for name, p in config.providers.items()
        }
        for d in config.all_deployments():
            self._by_model.setdefault(d.model, []).append(d)
            self._by_key[d.key] = d

    def models(self) -> list[str]:
        """Every name a request's ``model`` can take: chains first, then models."""
        return [*self.config.chains, *(m for m in self._by_model if m not in self.config.chains)]

    def plan(self, model: str | None) -> tuple[str, list[Deployment]]:
        """The entries to try for ``model``, in order, and a label for messages."""
        if model is None:
            if self.config.default_chain is None:
                raise RouterError(
                    400,
                    "Missing required parameter: 'model'.",
                    code="missing_required_parameter",
                    param="model",
                )
            model = self.config.default_chain
        if model in self.config.chains:
            return model, list(self.config.chains[model])
        if model in self._by_model:
            return model, list(self._by_model[model])
        if model in self._by_key:
            return model, [self._by_key[model]]
        raise RouterError(
            404,
            f"The model {model!r} does not exist; this router serves: "
            f"{', '.join(self.models()) or 'nothing'}.",
            code="model_not_found",
            param="model",
        )

    async def _cool(self, d: Deployment, seconds: float | None) -> float:
        policy = self.config.policy
        wanted = policy.default_cooldown if seconds is None else seconds
        wanted = min(max(wanted, 0.0), policy.max_cooldown)
        if wanted > 0:
            await self.cooldowns.extend(d.key, self.clock() + wanted)
        return round(wanted, 3)

    async def run(
        self,
        label: str,
        plan: list[Deployment],
        endpoint: str,
        payload: Mapping[str, Any],
        client_headers: Iterable[tuple[str, str]],
        stream: bool,
    ) -> Served:
        """Try ``plan`` in order for a request to ``endpoint`` (e.g. ``/chat/completions``)."""
        attempts: list[Attempt] = []
        passthrough = forwarded_headers(client_headers)
        for d in plan:
            now = self.clock()
            until = await self.cooldowns.get(d.key)
            if until is not None and until > now:
                attempts.append(
                    Attempt(d.key, "cooling", detail=f"cooling down, {until - now:.3g}s left")
                )
                continue
            started = time.monotonic()
            try:
                served = await self._attempt(d, endpoint, payload, passthrough, stream)
            except _Failed as failure:
                cooled = await self._cool(d, failure.hint)
                attempts.append(
                    Attempt(
                        d.key,
                        failure.outcome,
                        failure.status,
                        time.monotonic() - started,
                        cooled if cooled > 0 else None,
                        failure.detail,
                    )
                )
                continue
            status = served.response.status
            outcome = "served" if status < 400 else "rejected"
            attempts.append(Attempt(d.key, outcome, status, time.monotonic() - started))
            served.attempts = attempts
            if status < 400 and self.config.policy.cool_on_zero_remaining:
                seconds = preemptive_hint(served.response.headers, self.clock())
                if seconds is not None and seconds > 0:
                    await self._cool(d, seconds)
            return served
        raise Exhausted(label, attempts, await self._retry_after(plan))

    async def _retry_after(self, plan: list[Deployment]) -> int:
        now = self.clock()
        deadlines = [await self.cooldowns.get(d.key) for d in plan]
        soonest = min((u if u is not None else now) for u in deadlines) if deadlines else now
        return max(0, math.ceil(round(soonest - now, 6)))

    async def _attempt(
        self,
        d: Deployment,
        endpoint: str,
        payload: Mapping[str, Any],
        passthrough: list[tuple[str, str]],
        stream: bool,
    ) -> Served:
        provider = self.config.providers[d.provider]
        t = provider.timeouts
        own, timeouts = self._sends[d.provider]
        headers = [(k, v) for k, v in passthrough if k.lower() not in own]
        headers += own.items()
        body = _ENCODE({**payload, "model": d.model}).encode()
        # One timer bounds every wait of this attempt: the headers and the first event by
        # first_byte, each later read by read (see Deadline).
        deadline = Deadline()
        # The timer is armed at the stall timeout if that is sooner, the earliest a stream's
        # relay needs (see relay_stream): its reads then only move it later, lazily (a wait
        # past it re-arms it, once).
        stall, first = t.stall, t.first_byte
        first_byte = deadline.after(stall if stall < first else first).when
        if stall < first:
            first_byte += first - stall
        try:
            with deadline:
                if stall < first:
                    deadline.at(first_byte)
                response = await self.upstream.request(
                    "POST",
                    provider.base_url + endpoint,
                    headers,
                    body,
                    timeouts,
                )
        except BaseException as exc:
            deadline.close()
            if isinstance(exc, TimeoutError):
                raise _Failed("timeout", "timed out before the first byte") from None
            if isinstance(exc, UpstreamConnectError):
                raise _Failed("connect_error", "could not connect") from None
            if isinstance(exc, UpstreamError):
                raise _Failed("transport_error", f"transport error ({exc.name})") from None
            raise
        try:
            return await self._judge(d, response, stream, first_byte, t.read, deadline)
        except BaseException:
            deadline.close()
            await response.aclose()
            raise

    async def _judge(
        self,
        d: Deployment,
        response: UpstreamResponse,
        stream: bool,
        first_byte: float,
        read_timeout: float,
        deadline: Deadline,
    ) -> Served:
        status = response.status
        if self.config.policy.falls_through(status):
            detail = await self._error_detail(response, read_timeout)
            await response.aclose()
            hint = retry_hint(response.headers, self.clock())
            raise _Failed("status", f"HTTP {status}{detail}", status, hint)
        served = Served(d, response, b"", False, read_timeout=read_timeout, deadline=deadline)
        is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
        if stream and status < 300 and is_sse:
            if self.config.policy.accept == "first_event":
                served.prefix = await self._first_event(served, first_byte, read_timeout)
            return served
        # A whole body (JSON, or an error sent back as is): read it before committing anything.
        chunks = []
        try:
            while chunk := await served.read_chunk():
                chunks.append(chunk)
        except TimeoutError:
            raise _Failed("timeout", "timed out reading the body") from None
        except UpstreamError as exc:
            raise _Failed("transport_error", f"body cut short ({exc.name})") from None
        served.prefix, served.complete = b"".join(chunks), True
        await served.aclose()
        return served

    async def _first_event(self, served: Served, first_byte: float, read_timeout: float) -> bytes:
        parser: SSEParser | None = None  # (made only if the first read is not the usual one)
        buffered = bytearray()
        fed = 0  # how much of ``buffered`` the parser has seen: only up to the first event
        read = served.response.read_chunk
        deadline = served.deadline
        assert deadline is not None
        while True:
            # each read within read_timeout, and the first event by first_byte
            if deadline.after(read_timeout).when > first_byte:
                deadline.at(first_byte)
            try:
                with deadline:
                    chunk = await read()
            except TimeoutError:
                raise _Failed("timeout", "no stream event before the first-byte timeout") from None
            except UpstreamError as exc:
                raise _Failed(
                    "transport_error", f"stream cut before its first event ({exc.name})"
                ) from None
            if not chunk:
                raise _Failed("empty_stream", "stream ended before its first event")
            if not buffered and chunk.startswith(b"data: "):
                # The usual first read: a one-line event first, looked at where it lies.
                line_end = chunk.find(b"\n\n")
                if (
                    0 < line_end <= _EVENT_CAP  # (the parser's cap counts the line)
                    and chunk.find(b"\n", 0, line_end) < 0
                    and chunk.find(b"\r", 0, line_end) < 0
                ):
                    if chunk.find(b'"error"', 6, line_end) >= 0 and _is_error(
                        chunk[6:line_end].decode("utf-8", "replace")
                    ):
                        raise _Failed("error_event", "stream began with an error event")
                    return chunk
            buffered += chunk
            if parser is None:
                parser = SSEParser(_EVENT_CAP)
            # Parse block by block, to the first event only: a first read often holds the
            # whole stream, and the relay's observer parses it anyway.
            while (end := BLANK_LINE.search(buffered, fed)) is not None:
                events = parser.feed(bytes(buffered[fed : end.end()]))
                fed = end.end()
                if events:
                    if _is_error(events[0].data):
                        raise _Failed("error_event", "stream began with an error event")
                    return bytes(buffered)
            if len(buffered) - fed > parser.max_bytes:
                parser.feed(bytes(buffered[fed:]))
                fed = len(buffered)
            if parser.oversized:  # a first event too large to hold is content, not an error
                return bytes(buffered)

    async def _error_detail(self, response: UpstreamResponse, read_timeout: float) -> str:
        try:
            raw = bytearray()
            async with asyncio.timeout(read_timeout):
                while chunk := await response.read_chunk():
                    raw += chunk
                    if len(raw) > _ERROR_PEEK:
                        break
            error = json.loads(bytes(raw)).get("error")
            code = error.get("code") or error.get("type") if isinstance(error, dict) else None
        except (TimeoutError, UpstreamError, ValueError, AttributeError):
            return ""
        return f" {code}" if isinstance(code, str) and code.isprintable() and len(code) < 80 else ""


def _is_error(data: str) -> bool:
    if '"error"' not in data:
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict | str):
        return False
    # OpenRouter reports a streamed error with choices, each finishing with "error"
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return True
    return all(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices)


# What the router sends every provider besides its secret headers: JSON, and no compression.
_BASE_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
