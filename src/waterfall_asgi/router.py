"""The waterfall: try each entry of a plan in order until one is accepted.

Every failure is classified, and acted on by its class:

- a provider's *instruction* (a 429 or 402, or any failing status with a ``Retry-After`` or
  ``x-ratelimit-*`` hint; a success saying nothing is left) cools the entry in the shared
  :class:`~waterfall_asgi.cooldown.CooldownStore` for exactly as long as it said (else
  ``policy.default_cooldown``): it is never called while it cools;
- a *health signal* (a 5xx or other fall-through status without a hint, a timeout, a connect
  error, a reset, a stream that ends or errs before its first event) is evidence, counted in the
  entry's :class:`~waterfall_asgi.circuits.Circuit`; a transient one (not a timeout) is retried on
  the same entry within the budgets, then the request falls through;
- a *request error* (any other 4xx) goes back to the client unchanged and cools nothing; but a 400
  saying the context is too long falls through to the next entry with a larger declared
  ``context_window``;
- the router's *own* failure (out of file descriptors or buffers, its own pool limit, a kept-alive
  connection closed before any response byte) never counts against the provider
  (:class:`~waterfall_asgi.circuits.LocalHealth`).

A streaming attempt is *accepted* only once its first complete SSE event has arrived and is not an
error (policy ``accept = "first_event"``), so a 200 that closes, stalls or fails straight away
still falls through. Nothing reaches the client before that: the caller commits a :class:`Served`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._fastjson import encoder
from .circuits import Circuit, LocalHealth, RetryBudget
from .config import Deployment, RouterConfig
from .cooldown import CooldownStore, body_retry_hint, preemptive_hint, retry_hint
from .cost import completion_limit, estimate_prompt_tokens
from .deadline import Deadline
from .dialects import DIALECTS, Dialect
from .errors import RouterError
from .redact import Redactor
from .sse import BLANK_LINE, SSEEvent, SSEParser
from .upstream import (
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamLocalError,
    UpstreamResponse,
    UpstreamStaleConnection,
)
from .usage import UsageResult

__all__ = [
    "NO_CALL",
    "Attempt",
    "Exhausted",
    "Router",
    "Served",
    "forwarded_headers",
    "is_context_length_error",
]

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
_ENCODE = encoder(ensure_ascii=False, allow_nan=False)
CHAT: Dialect = DIALECTS["chat"]
"""The dialect of a request that names none (Chat Completions)."""


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
    """What the call did: ``served``; ``rejected`` (a 4xx sent back as is); ``status`` (a
    failing status), ``timeout``, ``connect_error``, ``transport_error``, ``empty_stream`` or
    ``error_event`` (the request moved on); ``retried`` (a transient failure, called again);
    ``waited`` (a 429 with a short hint, waited out and called again); ``too_long`` (a 400 saying
    the context is too long: on to a larger window); ``local_error`` (the router's own trouble).
    Or why there was no call (see :data:`NO_CALL`): ``cooling`` (under a provider's hint),
    ``open_circuit`` (its health circuit is open), ``skipped_context`` (its declared context window
    is too small), ``skipped_api`` (its provider does not speak the request's API) or ``budget``
    (the request's attempt budget was spent)."""
    status: int | None = None
    elapsed: float = 0.0
    cooldown: float | None = None
    """Seconds the entry now stays out: its cooldown, or its circuit's open period."""
    detail: str = ""
    kind: str = ""
    """``probe`` (the one call after an open period) or ``fail_open`` (a call to an open entry
    because nothing else could serve), else empty."""

    def describe(self) -> str:
        """One human-readable phrase, for error messages and logs."""
        text = f"{self.entry}: {self.detail or self.outcome}"
        if self.outcome == "retried":
            text += ", retried"
        if self.kind:
            text += f" ({self.kind.replace('_', '-')})"
        if self.cooldown is not None and self.outcome not in NO_CALL:
            text += f" (cooling down {self.cooldown:g}s)"
        return text


NO_CALL = frozenset({"cooling", "open_circuit", "skipped_context", "skipped_api", "budget"})
"""The :attr:`Attempt.outcome` values of an entry passed over without a call."""


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
    usage: UsageResult | None = None
    """What a whole 2xx body reported (it was parsed to check that it is JSON)."""

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


# the classes of failure (see the module's docstring)
_HINT, _HEALTH, _LOCAL, _STALE = "hint", "health", "local", "stale"


class _Failed(Exception):
    def __init__(
        self,
        outcome: str,
        detail: str,
        status: int | None = None,
        hint: float | None = None,
        *,
        kind: str = _HEALTH,
        transient: bool = True,
    ) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.status, self.hint = outcome, detail, status, hint
        self.kind = kind
        self.transient = transient
        """Worth calling the same entry again (not a timeout: that wait was spent already)."""


# What providers say when the prompt does not fit: OpenAI, Azure, Groq, DeepSeek, vLLM and
# OpenRouter ("maximum context length", "context_length_exceeded", "reduce the length of the
# messages"), Anthropic ("prompt is too long"), Gemini ("input token count ... exceeds the
# maximum"), Mistral ("too large for model with ... maximum context length"), Bedrock ("input is
# too long"), llama.cpp ("exceeds the available context size"), TGI ("must be <= ...").
_TOO_LONG = re.compile(
    r"context[_ ]length|context[_ ]window|context size|maximum model length|prompt is too long"
    r"|input is too long|too many (?:input |prompt )?tokens|reduce the length of the messages"
    r"|input token count.{0,40}exceeds|tokens \+ `?max_new_tokens`? must be",
    re.IGNORECASE,
)


def is_context_length_error(body: bytes) -> bool:
    """Whether an upstream's 400 body says the request's context is too long for the model.

    >>> is_context_length_error(b'{"error": {"code": "context_length_exceeded", "message": "x"}}')
    True
    >>> is_context_length_error(b'{"error": {"message": "prompt is too long: 210000 tokens"}}')
    True
    >>> is_context_length_error(b'{"error": {"code": "content_filter", "message": "flagged"}}')
    False
    """
    try:
        error = json.loads(body[:_ERROR_PEEK]).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False
    if isinstance(error, str):
        return _TOO_LONG.search(error) is not None
    if not isinstance(error, dict):
        return False
    code = error.get("code")
    if code == "context_length_exceeded":
        return True
    if isinstance(code, str) and "content" in code and "filter" in code:
        return False  # a content-policy refusal, whatever its message says
    message = error.get("message")
    return isinstance(message, str) and _TOO_LONG.search(message[:2000]) is not None


def _max_tokens(payload: Mapping[str, Any]) -> int:
    return completion_limit(payload) or 0


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
        self.redactor = Redactor.from_config(config)
        """Removes the config's secrets from what an upstream says on an error path."""
        self._by_model: dict[str, list[Deployment]] = {}
        self._by_key: dict[str, Deployment] = {}
        # made once: what the router sends each provider in each API it speaks (the key the
        # way the API sends it), and the client's timeouts for it
        self._sends: dict[tuple[str, str], tuple[dict[str, str], Any, dict[str, str]]] = {}
        for name, p in config.providers.items():
            key = p.api_key.get_secret_value() if p.api_key is not None else None
            extra = {k.lower(): v.get_secret_value() for k, v in p.headers.items()}
            for api in p.apis:
                dialect = DIALECTS[api]
                own = {**_BASE_HEADERS, **extra, **dialect.upstream_headers(key)}
                defaults = {k: v for k, v in dialect.default_headers().items() if k not in own}
                self._sends[name, api] = (own, p.timeouts.for_headers(), defaults)
        for d in config.all_deployments():
            self._by_model.setdefault(d.model, []).append(d)
            self._by_key[d.key] = d
        policy = config.policy
        self.circuits: dict[str, Circuit] = {}
        """Each entry's health circuit in this process, made on its first failure."""
        self.retry_budget = RetryBudget(policy.retry_budget, policy.retry_burst)
        self.local = LocalHealth()
        """The router's own failures, kept apart from every provider's."""
        # declared context windows, by entry key (only entries whose model declares one)
        self._windows: dict[str, int] = {}
        for d in [
            *config.all_deployments(),
            *(d for r in config.routes.values() for d in r.deployments),
        ]:
            info = config.models.get(d.model)
            if info is not None and info.context_window is not None:
                self._windows[d.key] = info.context_window

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
            f"The model {_echo(model)!r} does not exist; this router serves: "
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
        dialect: Dialect = CHAT,
    ) -> Served:
        """Try ``plan`` in order for a request to ``endpoint`` (e.g. ``/chat/completions``) in
        ``dialect``'s API; entries whose provider does not speak it are skipped."""
        attempts: list[Attempt] = []
        passthrough = forwarded_headers(client_headers)
        self.retry_budget.requests += 1
        circuits = self.circuits
        fits = need = 0  # the smallest context window an entry may declare (0: any)
        declared = False  # whether only entries that declare a window may be tried
        if self._windows:
            fits, need = self._fit(plan, payload)
        opened: list[Deployment] | None = None  # passed over for an open circuit
        index = 0
        while True:
            kind = ""
            if index < len(plan):
                d = plan[index]
                index += 1
            elif opened is not None and (d_open := self._fail_open(opened)) is not None:
                d, opened, kind = d_open, None, "fail_open"
            else:
                break
            key = d.key
            if (d.provider, dialect.name) not in self._sends:
                attempts.append(
                    Attempt(
                        key, "skipped_api", detail=f"{d.provider} does not speak {dialect.name}"
                    )
                )
                if kind:
                    self.circuits[key].release()
                continue
            if fits or declared:
                window = self._windows.get(key)
                if (window is None and declared) or (window is not None and window < fits):
                    attempts.append(
                        Attempt(
                            key,
                            "skipped_context",
                            detail=f"context window {window} < {fits} tokens"
                            if window is not None
                            else "no declared context window",
                        )
                    )
                    if kind:
                        self.circuits[key].release()
                    continue
            now = self.clock()
            circuit = circuits.get(key) if circuits else None  # (none while nothing fails)
            if not kind:
                until = await self.cooldowns.get(key)
                if until is not None and until > now:
                    attempts.append(
                        Attempt(key, "cooling", detail=f"cooling down, {until - now:.3g}s left")
                    )
                    continue
                if circuit is not None and circuit.open_until is not None:
                    if not circuit.take_probe(now):
                        left = circuit.open_until - now
                        attempts.append(
                            Attempt(
                                key,
                                "open_circuit",
                                detail=f"circuit open, {left:.3g}s left"
                                if left > 0
                                else "circuit open, its probe in flight",
                            )
                        )
                        if opened is None:
                            opened = []
                        opened.append(d)
                        continue
                    kind = "probe"
            served = None
            tries = 0
            try:
                while True:  # calls to this entry: the first, then retries
                    if attempts and self._spent(attempts):
                        attempts.append(
                            Attempt(key, "budget", detail="the request's attempt budget is spent")
                        )
                        index, opened = len(plan), None  # and no further entry either
                        break
                    started = time.monotonic()
                    try:
                        served = await self._attempt(
                            d, endpoint, payload, passthrough, stream, dialect
                        )
                    except _Failed as failure:
                        elapsed = time.monotonic() - started
                        if await self._failed(d, failure, kind, tries, attempts, elapsed):
                            tries += 1
                            continue
                    break
            finally:
                if kind:
                    assert circuit is not None
                    circuit.release()
            if served is None:
                continue
            status = served.response.status
            if not kind and circuits:  # (made meanwhile, perhaps: by a retry, or another request)
                circuit = circuits.get(key)
            if circuit is not None and circuit.success(now, bool(kind)):
                del circuits[key]  # nothing failed in its window: forget it
            if status == 400 and self._windows:
                floor = self._too_long(d, served, plan[index:], max(fits, need))
                if floor:
                    await served.aclose()
                    fits, declared = floor, True
                    attempts.append(
                        Attempt(
                            key,
                            "too_long",
                            400,
                            time.monotonic() - started,
                            detail="HTTP 400 context too long",
                            kind=kind,
                        )
                    )
                    continue
            outcome = "served" if status < 400 else "rejected"
            elapsed = time.monotonic() - started
            attempts.append(
                Attempt(key, outcome, status, elapsed, None, "", kind)
                if kind
                else Attempt(key, outcome, status, elapsed)  # (the usual case, the fastest)
            )
            served.attempts = attempts
            if status < 400 and self.config.policy.cool_on_zero_remaining:
                seconds = preemptive_hint(served.response.headers, self.clock())
                if seconds is not None and seconds > 0:
                    await self._cool(d, seconds)
            return served
        if attempts and all(a.outcome == "skipped_api" for a in attempts):
            raise RouterError(
                400,
                f"{_echo(label)!r} is not served in the {dialect.name} API: none of its "
                "entries' providers speaks it (their `apis`).",
                code="api_not_served",
                param="model",
            )
        raise Exhausted(label, attempts, await self._retry_after(plan))

    def _spent(self, attempts: list[Attempt], more: int = 0) -> bool:
        """Whether the request has made as many upstream calls as it may (counting ``more``
        not yet recorded)."""
        calls = sum(1 for a in attempts if a.outcome not in NO_CALL) + more
        return calls >= self.config.policy.max_attempts

    async def _failed(
        self,
        d: Deployment,
        failure: _Failed,
        kind: str,
        tries: int,
        attempts: list[Attempt],
        elapsed: float,
    ) -> bool:
        """Act on a failed call by its class and record it; whether to call ``d`` again."""
        policy = self.config.policy
        now = self.clock()
        if failure.kind == _HINT:
            hint = failure.hint
            cooled = await self._cool(d, hint)
            if (
                failure.status == 429
                and hint is not None
                and hint <= policy.max_wait
                and not any(a.entry == d.key and a.outcome == "waited" for a in attempts)
                and not self._spent(attempts, 1)
            ):
                attempts.append(
                    Attempt(
                        d.key,
                        "waited",
                        429,
                        elapsed,
                        cooled or None,
                        f"{failure.detail}, waited {hint:g}s",
                        kind,
                    )
                )
                return await self._wait_out(d)
            attempts.append(
                Attempt(
                    d.key,
                    failure.outcome,
                    failure.status,
                    elapsed,
                    cooled if cooled > 0 else None,
                    failure.detail,
                    kind,
                )
            )
            return False
        if failure.kind == _STALE and any(
            a.entry == d.key and a.outcome == "local_error" for a in attempts
        ):
            # closed again on a fresh connection: that is the provider's doing
            failure.kind, failure.outcome = _HEALTH, "transport_error"
            failure.detail = "connection closed before any response byte, again"
        if failure.kind in (_LOCAL, _STALE):
            self.local.note(failure.outcome, d.key, failure.detail, now)
            # a stale kept-alive connection: sent again at once, on another connection, once
            again = failure.kind == _STALE and not any(
                a.entry == d.key and a.outcome == "local_error" for a in attempts
            )
            if again and self._spent(attempts, 1):
                again = False
            elif (
                not again
                and tries < policy.retries
                and not self._spent(attempts, 1)
                and self.retry_budget.take()
            ):
                again = True
                await asyncio.sleep(self._backoff(tries))
            attempts.append(
                Attempt(d.key, "local_error", None, elapsed, None, failure.detail, kind)
            )
            return again
        circuit = self._circuit(d.key)
        opened = circuit.failure(now, kind == "probe")
        if (
            failure.transient
            and not opened
            and not kind
            and tries < policy.retries
            and not self._spent(attempts, 1)
            and self.retry_budget.take()
        ):
            attempts.append(
                Attempt(d.key, "retried", failure.status, elapsed, None, failure.detail)
            )
            await asyncio.sleep(self._backoff(tries))
            return True
        left = None
        if opened and circuit.open_until is not None:
            left = round(max(circuit.open_until - now, 0.0), 3)
        attempts.append(
            Attempt(d.key, failure.outcome, failure.status, elapsed, left, failure.detail, kind)
        )
        return False

    def stream_failed(self, deployment: Deployment) -> None:
        """A stream accepted from ``deployment`` failed after it began (cut, stalled, closed in
        the middle of its answer, or an error event): a health signal, counted in the entry's
        circuit as one failure (it may open it). Called by the relay's caller."""
        self._circuit(deployment.key).failure(self.clock())

    def _circuit(self, key: str) -> Circuit:
        """The circuit of entry ``key``, made on its first failure."""
        circuit = self.circuits.get(key)
        if circuit is None:
            policy = self.config.policy
            longest = min(policy.circuit.max_open, policy.max_cooldown)
            circuit = self.circuits[key] = Circuit(policy.circuit, longest)
        return circuit

    def _backoff(self, tries: int) -> float:
        """Seconds before retry number ``tries + 1``: jittered, doubling."""
        return float(self.config.policy.backoff * 2.0**tries * (0.5 + random.random()))

    async def _wait_out(self, d: Deployment) -> bool:
        """Wait out ``d``'s short cooldown; whether it is over (else the request moves on)."""
        limit = self.config.policy.max_wait
        for _ in range(2):
            until = await self.cooldowns.get(d.key)
            left = 0.0 if until is None else until - self.clock()
            if left <= 0:
                return True
            if left > limit:
                return False  # extended meanwhile beyond what is worth a wait
            await asyncio.sleep(left)
        until = await self.cooldowns.get(d.key)
        return until is None or until <= self.clock()

    def _fit(self, plan: list[Deployment], payload: Mapping[str, Any]) -> tuple[int, int]:
        """The smallest context window an entry of ``plan`` may declare to be tried, and the
        tokens the request needs (its estimated prompt plus ``max_tokens``); ``(0, 0)`` when no
        entry declares a window. When no entry that declares one would fit, nothing is skipped
        (the estimate is rough: the entries are tried, and a provider's own "too long" moves the
        request on as usual)."""
        windows = [self._windows.get(d.key) for d in plan]
        if all(w is None for w in windows):
            return 0, 0
        need = estimate_prompt_tokens(payload) + _max_tokens(payload)
        if all(w is not None and w < need for w in windows):
            return 0, need
        return need, need

    def _too_long(self, d: Deployment, served: Served, rest: list[Deployment], need: int) -> int:
        """For a 400: the smallest window the next entry must declare, if the body says the
        context is too long and one of ``rest`` declares a window that large; else 0 (the 400
        goes back to the client)."""
        if not is_context_length_error(served.prefix):
            return 0
        own = self._windows.get(d.key)
        floor = max(need, own + 1 if own is not None else 1)
        for e in rest:
            window = self._windows.get(e.key)
            if window is not None and window >= floor:
                return floor
        return 0

    def _fail_open(self, opened: list[Deployment]) -> Deployment | None:
        """The open entry most likely to answer (the soonest to end its open period) whose one
        call at a time is free, taken; ``None`` if every one is in use."""
        candidates = [(c, d) for d in opened if (c := self.circuits.get(d.key)) is not None]
        candidates.sort(key=lambda cd: (cd[0].open_until or 0.0, cd[0].consecutive))
        for circuit, d in candidates:
            if circuit.take_fail_open():
                return d
        return None

    async def _retry_after(self, plan: list[Deployment]) -> int:
        """Whole seconds until the soonest entry of ``plan`` may be called again (its cooldown
        over, its circuit's open period over), at least 1: a client is never invited to loop."""
        now = self.clock()
        soonest = math.inf
        for d in plan:
            until = await self.cooldowns.get(d.key)
            ready = until if until is not None and until > now else now
            circuit = self.circuits.get(d.key)
            if circuit is not None and circuit.open_until is not None:
                ready = max(ready, circuit.open_until)
            soonest = min(soonest, ready)
        if soonest == math.inf:
            return 1
        return max(1, math.ceil(round(soonest - now, 6)))

    async def _attempt(
        self,
        d: Deployment,
        endpoint: str,
        payload: Mapping[str, Any],
        passthrough: list[tuple[str, str]],
        stream: bool,
        dialect: Dialect,
    ) -> Served:
        provider = self.config.providers[d.provider]
        t = provider.timeouts
        own, timeouts, defaults = self._sends[d.provider, dialect.name]
        headers = [(k, v) for k, v in passthrough if k.lower() not in own]
        headers += own.items()
        if defaults:  # (the dialect's, unless the client sent its own)
            sent = {k.lower() for k, _ in passthrough}
            headers += [(k, v) for k, v in defaults.items() if k not in sent]
        try:
            body = _ENCODE({**payload, "model": d.model}).encode()
        except (ValueError, RecursionError):  # NaN, a lone surrogate, too deep: not JSON
            raise RouterError(
                400, "The request cannot be sent as JSON.", code="invalid_json"
            ) from None
        # One timer bounds every wait of this attempt: the headers and the first event by
        # first_byte, each later read by read (see Deadline).
        deadline = Deadline()
        # A stream's timer is armed at the stall timeout if that is sooner, the earliest its
        # relay needs (see relay_stream): the relay's reads then only move it later, lazily (a
        # wait past it re-arms it, once).
        early = stream and t.stall < t.first_byte
        first_byte = deadline.after(t.stall if early else t.first_byte).when
        if early:
            first_byte += t.first_byte - t.stall
        try:
            with deadline:
                if early:
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
                raise _Failed(
                    "timeout", "timed out before the first byte", transient=False
                ) from None
            if isinstance(exc, UpstreamStaleConnection):
                raise _Failed(
                    "stale_connection",
                    "connection closed before any response byte (a stale kept-alive one?)",
                    kind=_STALE,
                ) from None
            if isinstance(exc, UpstreamLocalError):
                kind = str(exc).partition(":")[0] if exc.name != "PoolTimeout" else exc.name
                raise _Failed(kind, f"the router's own trouble: {exc}", kind=_LOCAL) from None
            if isinstance(exc, UpstreamConnectError):
                raise _Failed("connect_error", "could not connect") from None
            if isinstance(exc, UpstreamError):
                raise _Failed("transport_error", f"transport error ({exc.name})") from None
            raise
        try:
            return await self._judge(d, response, stream, first_byte, t.read, deadline, dialect)
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
        dialect: Dialect,
    ) -> Served:
        status = response.status
        if self.config.policy.falls_through(status):
            detail, body_hint = await self._error_detail(response, read_timeout)
            await response.aclose()
            hint = retry_hint(response.headers, self.clock())
            if hint is None:
                hint = body_hint
            if hint is not None or status in (429, 402):
                raise _Failed("status", f"HTTP {status}{detail}", status, hint, kind=_HINT)
            transient = status >= 500 or status == 408
            raise _Failed("status", f"HTTP {status}{detail}", status, transient=transient)
        if 300 <= status < 400:  # a redirect is not an answer (and is never followed)
            raise _Failed("status", f"HTTP {status} (a redirect)", status, transient=False)
        if "content-encoding" in response.headers:  # one the client could not decode
            raise _Failed(
                "status",
                f"HTTP {status} in an unsupported content-encoding",
                status,
                transient=False,
            )
        content_type = response.headers.get("content-type", "")
        if content_type and content_type not in _USUAL_TYPES:  # (relayed: without a secret)
            response.headers["content-type"] = content_type = self.redactor.text(content_type)
        served = Served(d, response, b"", False, read_timeout=read_timeout, deadline=deadline)
        is_sse = content_type.startswith("text/event-stream")
        if stream and status < 300 and is_sse:
            if self.config.policy.accept == "first_event":
                served.prefix = await self._first_event(served, first_byte, read_timeout, dialect)
            return served
        # A whole body (JSON, or an error sent back as is): read it before committing anything.
        body = await self._whole_body(served)
        if status >= 400:  # passed back to the client: without the router's secrets
            body = self.redactor.bytes(body)
        else:
            served.usage = dialect.observe_body(body)
            if not served.usage.complete:
                raise _Failed(
                    "invalid_body", f"HTTP {status} with a body that is not JSON", transient=False
                )
        served.prefix, served.complete = body, True
        await served.aclose()
        return served

    async def _whole_body(self, served: Served) -> bytes:
        """The rest of a non-stream body: at most ``limits.max_response_bytes``, within
        ``limits.max_response_seconds`` (checked after each chunk, each within the read
        timeout); else the attempt fails, and nothing of it reaches the client."""
        limits = self.config.limits
        cap = limits.max_response_bytes
        clock = asyncio.get_running_loop().time
        until = clock() + limits.max_response_seconds
        chunks = []
        size = 0
        try:
            while chunk := await served.read_chunk():
                size += len(chunk)
                if size > cap:
                    raise _Failed("too_large", f"body larger than {cap} bytes", transient=False)
                chunks.append(chunk)
                if clock() > until:
                    raise _Failed(
                        "timeout", "body not read within max_response_seconds", transient=False
                    )
        except TimeoutError:
            raise _Failed("timeout", "timed out reading the body", transient=False) from None
        except UpstreamError as exc:
            raise _Failed("transport_error", f"body cut short ({exc.name})") from None
        return b"".join(chunks)

    async def _first_event(
        self, served: Served, first_byte: float, read_timeout: float, dialect: Dialect
    ) -> bytes:
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
                raise _Failed(
                    "timeout", "no stream event before the first-byte timeout", transient=False
                ) from None
            except UpstreamError as exc:
                raise _Failed(
                    "transport_error", f"stream cut before its first event ({exc.name})"
                ) from None
            if not chunk:
                raise _Failed("empty_stream", "stream ended before its first event")
            if not buffered and chunk.startswith((b"data: ", b"event: ")):
                # The usual first read: a one-line event first (after its name, for named
                # events: the Responses API's and Anthropic's), looked at where it lies.
                named = chunk.startswith(b"event: ")
                line = chunk.find(b"\n") if named else -1  # (the end of its name's line)
                line_end = chunk.find(b"\n\n", line + 1)
                if (
                    0 < line_end <= _EVENT_CAP  # (the parser's cap counts the lines)
                    and chunk.startswith(b"data: ", line + 1)
                    and chunk.find(b"\n", line + 1, line_end) < 0
                    and chunk.find(b"\r", 0, line_end) < 0
                ):
                    # (an unnamed event is looked at only if it could be an error: chat's)
                    if (
                        named or chunk.find(b'"error"', 6, line_end) >= 0
                    ) and dialect.failed_first_event(
                        SSEEvent(
                            chunk[line + 7 : line_end].decode("utf-8", "replace"),
                            (chunk[7:line].decode("utf-8", "replace") if named else "")
                            or "message",
                        )
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
                    if dialect.failed_first_event(events[0]):
                        raise _Failed("error_event", "stream began with an error event")
                    return bytes(buffered)
            if len(buffered) - fed > parser.max_bytes:
                parser.feed(bytes(buffered[fed:]))
                fed = len(buffered)
            if parser.oversized:  # a first event too large to hold is content, not an error
                return bytes(buffered)

    async def _error_detail(
        self, response: UpstreamResponse, read_timeout: float
    ) -> tuple[str, float | None]:
        """A failing body's error code (for the attempt's detail) and its retry hint, if any."""
        raw = bytearray()
        try:
            async with asyncio.timeout(read_timeout):
                while chunk := await response.read_chunk():
                    raw += chunk
                    if len(raw) > _ERROR_PEEK:
                        break
        except (TimeoutError, UpstreamError):
            return "", None
        body = bytes(raw)
        hint = body_retry_hint(body)
        try:
            error = json.loads(body).get("error")
            code = error.get("code") or error.get("type") if isinstance(error, dict) else None
        except (ValueError, AttributeError, RecursionError):
            return "", hint
        # a code, never the provider's free text (which may echo what it was sent)
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            return "", hint
        return f" {self.redactor.text(code)}", hint


def _echo(text: str, limit: int = 256) -> str:
    """What a client sent, cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


_USUAL_TYPES = frozenset(
    {
        "application/json",
        "application/json; charset=utf-8",
        "text/event-stream",
        "text/event-stream; charset=utf-8",
    }
)
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # what an error code looks like


# What the router sends every provider besides its secret headers: JSON, and no compression.
_BASE_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
