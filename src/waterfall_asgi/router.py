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

import httpx

from .config import Deployment, RouterConfig
from .cooldown import CooldownStore, preemptive_hint, retry_hint
from .errors import RouterError
from .sse import SSEParser

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
# Never sent upstream: the client's credentials, hop-by-hop headers, and what httpx sets itself.
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


def forwarded_headers(client_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers that may travel upstream (no credentials, no hop-by-hop headers)."""
    pairs = list(client_headers)
    named_in_connection = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (k, v)
        for k, v in pairs
        if k.lower() not in _NOT_FORWARDED and k.lower() not in named_in_connection
    ]


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
    response: httpx.Response
    prefix: bytes
    complete: bool
    attempts: list[Attempt] = field(default_factory=list)
    read_timeout: float = 60.0
    _raw: AsyncIterator[bytes] | None = field(default=None, repr=False)

    def raw(self) -> AsyncIterator[bytes]:
        """The one iterator over the upstream body (``aiter_raw`` may be started only once)."""
        if self._raw is None:
            self._raw = self.response.aiter_raw()
        return self._raw

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining body chunks, each within the read timeout."""
        if self.complete:
            return
        chunks = self.raw()
        while True:
            try:
                # a timeout scope, not wait_for: no task is made for each chunk
                async with asyncio.timeout(self.read_timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            yield chunk

    async def aclose(self) -> None:
        """Release the upstream connection."""
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
        client: httpx.AsyncClient,
        cooldowns: CooldownStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client
        self.cooldowns = cooldowns
        self.clock = clock
        self._by_model: dict[str, list[Deployment]] = {}
        self._by_key: dict[str, Deployment] = {}
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
            status = served.response.status_code
            outcome = "served" if status < 400 else "rejected"
            attempts.append(Attempt(d.key, outcome, status, time.monotonic() - started))
            served.attempts = attempts
            if status < 400 and self.config.policy.cool_on_zero_remaining:
                headers = {k.lower(): v for k, v in served.response.headers.items()}
                seconds = preemptive_hint(headers, self.clock())
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
        headers = httpx.Headers(passthrough)
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"
        for k, v in provider.headers.items():
            headers[k] = v.get_secret_value()
        if provider.api_key is not None:
            headers["authorization"] = f"Bearer {provider.api_key.get_secret_value()}"
        body = json.dumps({**payload, "model": d.model}, ensure_ascii=False).encode()
        request = self.client.build_request(
            "POST",
            provider.base_url + endpoint,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(
                connect=t.connect, read=max(t.first_byte, t.read), write=t.write, pool=t.pool
            ),
        )
        deadline = time.monotonic() + t.first_byte
        try:
            response = await asyncio.wait_for(self.client.send(request, stream=True), t.first_byte)
        except (TimeoutError, httpx.TimeoutException):
            raise _Failed("timeout", "timed out before the first byte") from None
        except httpx.ConnectError:
            raise _Failed("connect_error", "could not connect") from None
        except httpx.TransportError as exc:
            raise _Failed("transport_error", f"transport error ({type(exc).__name__})") from None
        try:
            return await self._judge(d, response, stream, deadline, t.read)
        except BaseException:
            await response.aclose()
            raise

    async def _judge(
        self,
        d: Deployment,
        response: httpx.Response,
        stream: bool,
        deadline: float,
        read_timeout: float,
    ) -> Served:
        status = response.status_code
        if self.config.policy.falls_through(status):
            headers = {k.lower(): v for k, v in response.headers.items()}
            detail = await self._error_detail(response, read_timeout)
            await response.aclose()
            hint = retry_hint(headers, self.clock())
            raise _Failed("status", f"HTTP {status}{detail}", status, hint)
        served = Served(d, response, b"", False, read_timeout=read_timeout)
        is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
        if stream and status < 300 and is_sse:
            if self.config.policy.accept == "first_event":
                served.prefix = await self._first_event(served, deadline, read_timeout)
            return served
        # A whole body (JSON, or an error sent back as is): read it before committing anything.
        chunks = []
        try:
            async for chunk in served.rest():
                chunks.append(chunk)
        except (TimeoutError, httpx.TimeoutException):
            raise _Failed("timeout", "timed out reading the body") from None
        except httpx.TransportError as exc:
            raise _Failed("transport_error", f"body cut short ({type(exc).__name__})") from None
        served.prefix, served.complete = b"".join(chunks), True
        await response.aclose()
        return served

    async def _first_event(self, served: Served, deadline: float, read_timeout: float) -> bytes:
        parser = SSEParser()
        buffered = bytearray()
        chunks = served.raw()
        while True:
            wait = min(read_timeout, deadline - time.monotonic())
            try:
                if wait <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(anext(chunks), wait)
            except StopAsyncIteration:
                raise _Failed("empty_stream", "stream ended before its first event") from None
            except (TimeoutError, httpx.TimeoutException):
                raise _Failed("timeout", "no stream event before the first-byte timeout") from None
            except httpx.TransportError as exc:
                raise _Failed(
                    "transport_error", f"stream cut before its first event ({type(exc).__name__})"
                ) from None
            buffered += chunk
            for event in parser.feed(chunk):
                if _is_error(event.data):
                    raise _Failed("error_event", "stream began with an error event")
                return bytes(buffered)
            if parser.oversized:  # a first event too large to hold is content, not an error
                return bytes(buffered)

    async def _error_detail(self, response: httpx.Response, read_timeout: float) -> str:
        try:
            raw = bytearray()
            async with asyncio.timeout(read_timeout):
                async for chunk in response.aiter_raw():
                    raw += chunk
                    if len(raw) > _ERROR_PEEK:
                        break
            error = json.loads(bytes(raw)).get("error")
            code = error.get("code") or error.get("type") if isinstance(error, dict) else None
        except (TimeoutError, httpx.HTTPError, ValueError, AttributeError):
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
