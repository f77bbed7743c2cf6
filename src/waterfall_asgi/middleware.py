"""``WaterfallMiddleware``: the router as pure ASGI middleware.

It answers the routes of every dialect (``POST {prefix}/chat/completions``,
``{prefix}/completions`` and ``{prefix}/embeddings``; ``{prefix}/responses``;
``{prefix}/messages``: see :mod:`~waterfall_asgi.dialects`), ``GET {prefix}/models`` and
``GET {health_path}``, and hands every other request, websocket and lifespan message to the
wrapped app untouched. It owns one shared upstream client (an
:class:`~waterfall_asgi.upstream.Upstream`) through lifespan when the server speaks it, and opens
it on first use when it does not.

Where this deliberately differs from the obvious implementation:

- nothing is sent to the client before an upstream has been accepted (see :mod:`.router`), so a
  fallback is invisible to the client, streaming included;
- after that point an upstream failure ends the stream with an explicit SSE error event, never a
  silent clean end;
- the client's ``Authorization`` (and every hop-by-hop header) never travels upstream, and the
  upstream key never travels back or into a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from ._bodytimer import BodyTimer
from ._charges import Charge, continued, cost_event, estimated_cost
from ._defaults import (
    config_problem,
    default_cooldowns,
    default_ledger,
    misconfigured,
    startup_failure,
    unconfigured,
)
from ._endpoints import health, model_list, send_whole, serve_metrics
from ._records import attempt_log, refused, trail
from ._requests import (
    Disconnected,
    authorize,
    bounded,
    checked,
    client_headers,
    read_json,
    route_path,
)
from .config import ConfigError, Deployment, Price, RouterConfig, load_config
from .continuation import Continuation
from .cooldown import CooldownStore
from .cost import PromptEstimator, Ranking, estimate_prompt_tokens, rank, request_limits
from .dialects import DIALECTS, Dialect
from .dialects.chat import with_usage
from .errors import RouterError, send_error
from .ledger import LedgerStore, UsageRecord, new_request_id
from .metrics import RouterMetrics, known_labels
from .pricing import PriceBook, missing_prices
from .relay import ClientWatch, RelayOutcome, WatchStarter, relay_stream
from .router import Router, Served
from .tracing import RouterTracing
from .upstream import AiohttpUpstream, HttpxUpstream, Upstream

__all__ = ["WaterfallMiddleware", "with_usage"]

logger = logging.getLogger("waterfall_asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CHAT = DIALECTS["chat"]
_MODEL_LIST = ("/models", _CHAT)  # (the endpoint and dialect of GET {prefix}/models)

_Relaying = tuple[str, bool, int, bool, Continuation | None, Callable[[bytes], bytes], Dialect]
"""What the relay of a stream needs to know of its request (see :func:`relay_stream`): its id,
whether to strip the usage the router asked for, the choices and usage a whole answer holds,
the continuation (if it may be continued), the redaction of what is sent, and the dialect.
Only this is kept while a stream is relayed (it may take minutes): the request's JSON and plan
are let go at once, but for a stream that may be continued. (What a request holds while it
waits also sets the garbage collector off sooner: see the benchmarks.) A plain tuple: the
relay's set-up is on every stream's way."""


def _header(value: str) -> bytes:
    return value.encode("latin-1", "replace")


class WaterfallMiddleware:
    """Mount the waterfall router in front of ``app`` (``None``: answer 404 for everything else).

    ``config`` is a :class:`~waterfall_asgi.config.RouterConfig`, a mapping, or a config file path.
    Providers are called with aiohttp by default (``config.upstream``); an httpx ``transport`` (or
    a whole httpx ``client``) makes the router use httpx over it instead, which is how the fakes
    plug in without patching, and ``upstream`` replaces the client altogether (neither a given
    ``client`` nor a given ``upstream`` is closed by the middleware); ``cooldowns`` replaces the
    cooldown store (default: shared through Redis with ``config.cooldowns.url``, else in
    memory; a store with ``open``/``close`` is opened and closed with the middleware);
    ``ledger`` the usage store (default: SQLite at ``config.ledger.path``), opened and closed
    with the middleware; ``on_complete`` receives each finished record; ``prompt_estimator``
    estimates a request's prompt tokens for cost routes; ``metrics`` (a
    :class:`~waterfall_asgi.metrics.RouterMetrics`, e.g. on the host's own registry) and
    ``tracing`` (a :class:`~waterfall_asgi.tracing.RouterTracing`) are fed each finished record
    (default: made when ``config.metrics.enabled`` / ``config.tracing.enabled``, else none).

    A config that cannot be used does not raise here (Starlette and FastAPI build their
    middleware lazily, inside the server's first lifespan or request call, where an exception
    would be hidden): it is kept in :attr:`config_error` and reported at startup, which fails
    (``lifespan.startup.failed`` with the message; :meth:`startup` raises it). Where the server
    speaks no lifespan, the router's routes and its health path answer 503
    ``router_misconfigured`` while every other path still reaches ``app``.
    """

    def __init__(
        self,
        app: ASGIApp | None,
        config: RouterConfig | Mapping[str, Any] | str | Path,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        upstream: Upstream | None = None,
        cooldowns: CooldownStore | None = None,
        clock: Callable[[], float] = time.time,
        health_path: str | None = "/health",
        ledger: LedgerStore | None = None,
        on_complete: Callable[[UsageRecord], Any] | None = None,
        prompt_estimator: PromptEstimator = estimate_prompt_tokens,
        metrics: RouterMetrics | None = None,
        tracing: RouterTracing | None = None,
    ) -> None:
        self.app = app
        self.config_error: ConfigError | None = None
        """Why the config cannot be used (``None``: it can); see the class docs."""
        try:
            self.config = load_config(config)
        except ConfigError as exc:
            self.config, self.config_error = unconfigured(config), exc
        self.health_path = health_path
        self.ledger: LedgerStore = ledger if ledger is not None else default_ledger(self.config)
        self.on_complete = on_complete
        self.prompt_estimator = prompt_estimator
        self.price_book = PriceBook(self.config)
        self.prices: Mapping[str, Price] = self.price_book.prices
        """Prices imported from providers (``provider/model`` -> price); config prices win."""
        self._listed_prices = self.config.listed_prices()  # the config never changes here
        self._refresher: asyncio.Task[None] | None = None
        if self.config_error is None:
            self.config_error = config_problem(self.config, self.price_book)
        self._transport = transport
        self._given_client = client
        self._given = upstream
        self._upstream: Upstream | None = None
        self.clock = clock
        self.cooldowns = (
            cooldowns if cooldowns is not None else default_cooldowns(self.config, clock)
        )
        self._router: Router | None = None
        self._lock = asyncio.Lock()
        self._watches = WatchStarter()
        self._body_timer = BodyTimer(self.config.limits.body_timeout)
        self.refused_unauthenticated = 0
        """Requests refused for a missing or wrong client key (they write no ledger row)."""
        self._told = False  # whether the config error has been logged
        prefix = self.config.prefix
        self._routes: dict[str, tuple[str, Dialect]] = {
            prefix + route: (route, dialect)
            for dialect in DIALECTS.values()
            for route in dialect.routes
        }
        self._models_path = prefix + "/models"
        self.metrics = metrics
        """The Prometheus metrics fed (given, or made when ``metrics.enabled``; else ``None``)."""
        self.tracing = tracing
        """The OpenTelemetry spans and metrics made (given, or when ``tracing.enabled``)."""
        self._metrics_path: str | None = None
        try:
            self._observability()
        except ConfigError as exc:
            if self.config_error is None:
                self.config_error = exc

    def _observability(self) -> None:
        """Make the metrics and tracing the config enables (unless given), and tell them which
        requested-model labels to keep."""
        settings = self.config.metrics
        if self.metrics is None and settings.enabled:
            try:
                self.metrics = RouterMetrics()
            except ImportError:
                raise ConfigError(
                    "metrics.enabled: Prometheus metrics need prometheus-client: "
                    "pip install 'waterfall-asgi[metrics]'"
                ) from None
        if self.metrics is not None:
            self.metrics.known.update(known_labels(self.config))
            self._metrics_path = settings.path
        tracing = self.config.tracing
        if self.tracing is None and tracing.enabled:
            try:
                self.tracing = RouterTracing(propagate=tracing.propagate, prefix=self.config.prefix)
            except ImportError:
                raise ConfigError(
                    "tracing.enabled: OpenTelemetry needs opentelemetry-api: "
                    "pip install 'waterfall-asgi[otel]'"
                ) from None
        if self.tracing is not None:
            self.tracing.known.update(known_labels(self.config))

    @property
    def router(self) -> Router | None:
        """The router (made by :meth:`startup` or the first request): its circuits, retry budget
        and local health are there."""
        return self._router

    # -- resources -----------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the upstream client (done by lifespan, or on the first request)."""
        if self.config_error is not None:
            raise ConfigError(str(self.config_error))
        async with self._lock:
            if self._router is not None:
                return
            if self._upstream is None:
                self._upstream = self._make_upstream()
            if self.price_book.styles:
                await self.price_book.refresh(self._upstream)
                gaps = missing_prices(self.config, self.price_book)
                if gaps:
                    raise ConfigError(f"routes: no price for {', '.join(gaps)} (not imported)")
                self._refresher = asyncio.ensure_future(self.price_book.run(self._upstream))
            await self.ledger.open()
            opening = getattr(self.cooldowns, "open", None)
            if opening is not None:
                await opening()  # never fails for want of Redis: the store starts degraded
            self._router = Router(self.config, self._upstream, self.cooldowns, clock=self.clock)

    def _make_upstream(self) -> Upstream:
        if self._given is not None:
            return self._given
        if self._given_client is not None:
            return HttpxUpstream(self._given_client)  # not closed: the caller's
        settings = self.config.upstream
        if self._transport is not None or settings.client == "httpx":
            return HttpxUpstream(
                transport=self._transport,
                max_connections=settings.max_connections,
                max_keepalive=settings.max_keepalive,
            )
        return AiohttpUpstream(max_connections=settings.max_connections)

    async def shutdown(self) -> None:
        """Flush and close the ledger, and close the upstream client if this middleware opened
        it."""
        async with self._lock:
            if self._refresher is not None:
                self._refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._refresher
                self._refresher = None
            if self._router is not None:
                await self.ledger.close()
                closing = getattr(self.cooldowns, "close", None)
                if closing is not None:
                    await closing()
            if self._upstream is not None:
                if self._upstream is not self._given:
                    await self._upstream.aclose()
                self._upstream = None
            self._router = None
            self._watches.close()

    async def _get_router(self) -> Router:
        """The router, made on the first request where the server speaks no lifespan (a
        request looks at :attr:`_router` first: it is set only once the config is usable)."""
        if self.config_error is not None:
            raise self._misconfigured()
        if self._router is None:
            await self.startup()
        assert self._router is not None
        return self._router

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind == "http":
            path = route_path(scope)
            if path in self._routes or path == self._models_path:
                await self._http(scope, receive, send, path)
                return
            if self.health_path is not None and path == self.health_path:
                await self._health(scope, send)
                return
            if path == self._metrics_path and self._metrics_path is not None:
                await self._serve_metrics(scope, send)
                return
        if self.app is None:
            if kind == "http":
                await send_error(
                    send,
                    RouterError(404, f"Unknown path {bounded(scope['path'])}.", code="unknown_url"),
                )
            elif kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        await self.app(scope, receive, send)

    def _misconfigured(self) -> RouterError:
        """The answer of the router's routes while its config cannot be used (the details go
        to the log, once: a client never sees the config)."""
        if not self._told:
            self._told = True
            logger.error("%s", startup_failure(self.config_error))
        return misconfigured()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config_error is not None:  # the server must not start, nor pretend to
            message = await receive()
            if message["type"] == "lifespan.startup":
                failure = startup_failure(self.config_error)
                await send({"type": "lifespan.startup.failed", "message": failure})
            return
        state = {"startup": False, "answered": False, "done": False}

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["startup"] = True
            return message

        async def wrapped_send(message: Message) -> None:
            kind = message["type"]
            state["answered"] = True
            if kind == "lifespan.startup.complete":
                await self.startup()
            elif kind == "lifespan.startup.failed":
                state["done"] = True  # the app failed to start: so does the server
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shutdown()
                state["done"] = True
            await send(message)

        if self.app is not None:
            try:
                await self.app(scope, wrapped_receive, wrapped_send)
            except Exception:
                if state["answered"]:  # the app speaks lifespan, and failed: let it be seen
                    await self.shutdown()
                    raise
                logger.debug("the wrapped app does not handle lifespan; the router does")
            if state["done"] or state["answered"]:
                await self.shutdown()
                return
        # The wrapped app does not speak lifespan: speak it ourselves.
        if not state["startup"]:
            message = await receive()
            if message["type"] != "lifespan.startup":  # pragma: no cover - protocol violation
                return
        try:
            await self.startup()
        except ConfigError as exc:  # e.g. prices that could not be imported
            await send({"type": "lifespan.startup.failed", "message": startup_failure(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _health(self, scope: Scope, send: Send) -> None:
        if self.config_error is not None:
            await send_error(send, self._misconfigured())
            return
        await health(scope, send, {"cooldowns": self.cooldowns, "ledger": self.ledger})

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        assert self.metrics is not None
        await serve_metrics(
            scope,
            send,
            self.metrics,
            keys=self.config.client_keys if self.config.metrics.require_client_key else (),
            cooldowns=self.cooldowns,
            ledger=self.ledger,
            router=self._router,
            clock=self.clock,
        )

    # -- the router's routes -------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """One request to the router's routes, top to bottom: checked, planned, sent down the
        waterfall, answered, and recorded at the end whatever happened. (A stream is relayed
        from here: no coroutine of ours sits between this one and the relay's, which every
        chunk would pass through.)

        The steps' details live in private modules: ``_requests`` (the path, the client key,
        the body and its checks, the headers passed on), ``_charges`` (what a request costs),
        ``_records`` (its attempts, in the ledger and the ``x-waterfall-attempts`` header),
        ``_endpoints`` (health, metrics and the model list) and ``_defaults`` (the default
        stores, and what a config that cannot be used says)."""
        started = time.monotonic()
        start_ns = time.time_ns() if self.tracing is not None else 0
        span = self.tracing.begin(scope, start_ns) if self.tracing is not None else None
        record = UsageRecord(id=new_request_id(), started_at=self.clock(), route=path)
        endpoint, dialect = self._routes.get(path, _MODEL_LIST)
        accounted = path != self._models_path  # the ledger does not count model lists
        watch: ClientWatch | None = None
        try:
            router = self._router if self._router is not None else await self._get_router()
            authorize(scope, self.config.client_keys, dialect)
            if not accounted:
                await self._list_models(scope, send, router, record)
                return
            payload = await read_json(scope, receive, self.config.limits, self._body_timer)
            stream, model = checked(payload, endpoint, dialect, self.config.limits, record)
            label, plan, ranking = self._plan(router, model, payload, scope, record)
            # One task listens for a disconnect for the rest of the request (if it runs long
            # enough to start it: see WatchStarter): until an upstream is accepted, a
            # disconnect cancels the waterfall; then the relay takes it over.
            current = asyncio.current_task()
            assert current is not None
            watch = self._watches.watch(receive, current.cancel)
            answer = await self._run_waterfall(
                router, label, plan, endpoint, payload, stream, dialect, scope, span, watch, record
            )
            if answer is None:  # the client went away before an upstream answered
                return
            served, relaying = answer
            del payload, plan  # not needed while the answer is relayed: see _Relaying
            charge = await self._commit(send, served, record, ranking, dialect, started)
            if relaying is not None:  # not complete: the rest is relayed
                outcome = await self._relay(served, send, receive, watch, charge, relaying)
                self._relayed(record, outcome, charge, router, served)
        except RouterError as exc:
            if exc.code == "invalid_api_key":  # counted, not recorded: see refused_unauthenticated
                accounted = False
                self.refused_unauthenticated += 1
            await self._answer_error(send, exc, record, dialect)
        except Disconnected:
            record.status, record.error = "client_disconnected", "client went away"
        except asyncio.CancelledError:
            record.status, record.error = "interrupted", "cancelled (server shutting down?)"
            raise
        finally:
            if watch is not None:
                watch.close()
            await self._finish_request(record, started, accounted, scope["method"], span, start_ns)

    async def _list_models(
        self, scope: Scope, send: Send, router: Router, record: UsageRecord
    ) -> None:
        """Answer ``GET {prefix}/models`` (see :func:`model_list`)."""
        if scope["method"] != "GET":
            raise RouterError(
                405, "Use GET.", code="method_not_allowed", headers=[("allow", "GET")]
            )
        await send_whole(
            send,
            200,
            model_list(self.config, router, self._price),
            [(b"x-waterfall-request-id", record.id.encode())],
        )
        record.status, record.http_status = "success", 200

    def _plan(
        self,
        router: Router,
        model: str | None,
        payload: Mapping[str, Any],
        scope: Scope,
        record: UsageRecord,
    ) -> tuple[str, list[Deployment], Ranking | None]:
        """The request's label and its candidates in order (noting the label on ``record``):
        a cost route's, ranked for this request (the ranking is kept: it says what the
        candidate that serves was estimated to cost), else the chain's or model's."""
        if model is not None and model in self.config.routes:
            ranking = self._rank(model, payload, scope)
            label, plan = model, ranking.plan
        else:
            ranking = None
            label, plan = router.plan(model)
        record.model = label
        return label, plan, ranking

    def _rank(self, route: str, payload: Mapping[str, Any], scope: Scope) -> Ranking:
        """Rank the route's candidates, with the request's own quality bar and budget."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            min_quality, budget = request_limits(
                self.config,
                route,
                headers.get("x-waterfall-min-quality"),
                headers.get("x-waterfall-budget"),
            )
        except ValueError as exc:
            raise RouterError(400, str(exc), code="invalid_value") from None
        return rank(
            self.config,
            route,
            payload,
            prices=self.prices,
            min_quality=min_quality,
            budget=budget,
            estimator=self.prompt_estimator,
        )

    async def _run_waterfall(
        self,
        router: Router,
        label: str,
        plan: list[Deployment],
        endpoint: str,
        payload: dict[str, Any],
        stream: bool,
        dialect: Dialect,
        scope: Scope,
        span: Any,
        watch: ClientWatch,
        record: UsageRecord,
    ) -> tuple[Served, _Relaying | None] | None:
        """The upstream answer accepted (see :meth:`Router.run`; the client's headers passed
        on, with the trace context of the request's ``span`` when tracing), and, unless it is
        complete, what its relay needs to know of the request; ``None`` if the client went
        away first (its ``watch`` cancelled the waterfall; noted on ``record``)."""
        sent, injected = dialect.usage_request(payload, stream) if stream else (payload, False)
        headers = client_headers(scope, self.config.limits)
        try:
            if self.tracing is not None:
                headers = self.tracing.upstream_headers(headers, span)
            served = await router.run(label, plan, endpoint, sent, headers, stream, dialect)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            assert current is not None
            if not watch.gone or current.uncancel() > 0:  # not (only) the client leaving
                raise
            record.status = "client_disconnected"
            record.error = "client went away before an upstream answered"
            return None
        finally:
            watch.on_gone = None  # no await since run() returned: nothing cancels now
        if served.complete:  # nothing to relay
            return served, None
        continuation = (
            Continuation(router, label, plan, endpoint, sent, headers)
            if self.config.policy.continue_streams
            and stream
            and Continuation.possible(self.config, endpoint, sent, plan)
            else None
        )
        choices, usage_asked = 1, False  # what a whole answer holds: see relay_stream
        if stream and dialect is _CHAT:  # (with_usage made stream_options a mapping)
            n = payload.get("n")
            choices = n if type(n) is int and n > 1 else 1
            usage_asked = sent["stream_options"]["include_usage"] is True
        redact = router.redactor.bytes
        return served, (record.id, injected, choices, usage_asked, continuation, redact, dialect)

    async def _commit(
        self,
        send: Send,
        served: Served,
        record: UsageRecord,
        ranking: Ranking | None,
        dialect: Dialect,
        started: float,
    ) -> Charge:
        """Record the accepted answer (its attempts, entry, status and time to first byte, the
        request having ``started`` at that ``time.monotonic()``) and save the record: it exists
        from now on. Then send the response start (and a whole body, recorded); return how to
        price the tokens of a stream, which the caller then relays."""
        record.attempts = [attempt_log(a) for a in served.attempts]
        record.provider = served.deployment.provider
        record.upstream_model = served.deployment.model
        record.http_status = served.response.status
        record.ttfb_ms = round((time.monotonic() - started) * 1000, 3)
        await self._save(record)
        response = served.response
        headers = [
            (b"content-type", _header(response.headers.get("content-type", "application/json"))),
            (b"x-waterfall-request-id", record.id.encode()),
            (b"x-waterfall-provider", _header(served.deployment.provider)),
            (b"x-waterfall-model", _header(served.deployment.model)),
            (b"x-waterfall-attempts", _header(trail(served.attempts))),
        ]
        price = self._price(served.deployment)
        charge = Charge(self.config, price)
        if ranking is not None:
            headers.append(
                (b"x-waterfall-estimated-cost", estimated_cost(ranking, served.deployment))
            )
            reference = ranking.reference.price if ranking.reference else None
            charge = Charge(self.config, price, ranking.unit, reference)
        if served.complete:
            headers.append((b"content-length", str(len(served.prefix)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": served.prefix, "more_body": False})
            charge.apply(record, served.usage or dialect.observe_body(served.prefix))
            if response.status < 400:
                record.status = "success"
            else:  # a 4xx passed back as it was: the request itself was refused upstream
                record.status, record.error = "rejected", f"upstream HTTP {response.status}"
            return charge
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        try:
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
        except BaseException:  # the relay never starts: release the upstream here
            await served.aclose()
            raise
        return charge

    async def _save(self, record: UsageRecord) -> None:
        try:
            await self.ledger.save(record)
        except Exception:  # the ledger must never break a request
            logger.exception("ledger save failed for request %s", record.id)

    def _relay(
        self,
        served: Served,
        send: Send,
        receive: Receive,
        watch: ClientWatch,
        charge: Charge,
        relaying: _Relaying,
    ) -> Coroutine[Any, Any, RelayOutcome]:
        """The relay of the rest of ``served`` (its response start sent): a coroutine for the
        request's own to await, not a coroutine of ours around it (see :meth:`_http`)."""
        request_id, strip_usage, choices, usage, continuation, redact, dialect = relaying
        return relay_stream(
            served,
            send,
            receive,
            strip_usage=strip_usage,
            drain_seconds=self.config.ledger.drain_seconds,
            request_id=request_id,
            closing_event=(  # (chat only: its clients stop reading at [DONE])
                cost_event(charge, request_id)
                if self.config.ledger.cost_event and dialect is _CHAT
                else None
            ),
            watch=watch,
            choices=choices,
            usage=usage,
            stall=self.config.providers[served.deployment.provider].timeouts.stall,
            continuation=continuation,
            redact=redact,
            dialect=dialect,
        )

    def _relayed(
        self,
        record: UsageRecord,
        outcome: RelayOutcome,
        charge: Charge,
        router: Router,
        served: Served,
    ) -> None:
        """Record how a relayed stream ended (its tokens, cost, status and error, redacted: it
        may quote an upstream's error event), and tell the router's health circuits of each
        entry whose stream failed after it began."""
        charge.apply(record, outcome.usage)
        if outcome.parts or outcome.attempts:
            continued(record, outcome, charge, self._price)
        record.status, record.error = outcome.status, outcome.error
        if outcome.error is not None:
            record.error = router.redactor.text(outcome.error)
        if outcome.status in _STREAM_FAILED or outcome.parts:  # health signals
            for part in outcome.parts:
                router.stream_failed(part.deployment)
            if outcome.status in _STREAM_FAILED:
                router.stream_failed(outcome.deployment or served.deployment)

    async def _answer_error(
        self, send: Send, exc: RouterError, record: UsageRecord, dialect: Dialect
    ) -> None:
        """Answer with ``exc`` in the dialect's error shape, and note it on ``record``."""
        if self._router is not None:  # an upstream's words may be in it: never a secret
            exc.message = self._router.redactor.text(exc.message)
        await send_error(send, exc, refused(record, exc), dialect.error_body)

    async def _finish_request(
        self,
        record: UsageRecord,
        started: float,
        accounted: bool,
        method: str,
        span: Any,
        start_ns: int,
    ) -> None:
        """End the request's record (its duration; a terminal status even after an unexpected
        exception), save it and hand it to ``on_complete`` if ``accounted``, log it, and feed
        it to the metrics and the request's span."""
        record.duration_ms = round((time.monotonic() - started) * 1000, 3)
        if record.status == "pending":  # an unexpected exception: still a terminal status
            record.status, record.error = "upstream_error", "internal error"
        if accounted:
            try:  # (as _save, inline: one coroutine fewer on every request's way)
                await self.ledger.save(record)
            except Exception:  # the ledger must never break a request
                logger.exception("ledger save failed for request %s", record.id)
            hook = self.on_complete
            if hook is not None:
                try:
                    outcome = hook(record)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:  # the hook's errors never reach the client
                    logger.exception("on_complete hook failed for request %s", record.id)
        if logger.isEnabledFor(logging.INFO):  # the line costs more than many requests do
            fields = {"method": method, **record.to_dict()}
            logger.info(json.dumps(fields), extra={"waterfall_request": fields})
        if self.metrics is not None or span is not None:
            self._observe(record, span, start_ns, method)

    def _observe(self, record: UsageRecord, span: Any, start_ns: int, method: str) -> None:
        """Feed the finished record to the metrics and to the request's span (when tracing);
        their failures are logged, never the request's."""
        try:
            if self.metrics is not None:
                self.metrics.observe(record, now=self.clock(), ledger=self.ledger)
            if span is not None and self.tracing is not None:
                self.tracing.end(span, record, start_ns, method)
        except Exception:
            logger.exception("observability failed for request %s", record.id)

    def _price(self, deployment: Deployment) -> Price | None:
        """As ``config.price_of(deployment)``, else the imported price, without walking the
        config's entries per request."""
        if deployment.price is not None:
            return deployment.price
        key = deployment.key
        return self._listed_prices.get(key) or self.prices.get(key)


_STREAM_FAILED = frozenset({"stream_incomplete", "upstream_error"})
"""The statuses of a stream that failed after it began: the entry's fault."""
