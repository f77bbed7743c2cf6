"""Prometheus metrics of the router (``pip install 'waterfall-asgi[metrics]'``).

:class:`RouterMetrics` holds the router's metrics in a registry of its own (or one given, such as
``prometheus_client.REGISTRY`` for a host that already exposes its own ``/metrics``). It is fed
from one place: the finished :class:`~waterfall_asgi.ledger.UsageRecord` of each request, once,
at the end (nothing per chunk); the ledger's queue and write errors and the entries cooling down
are read at the end of a request and when the metrics are scraped.

Where this deliberately differs from the obvious implementation:

- every label value is bounded: providers, models and entries come from the config, paths from
  the router's own routes, statuses and outcomes from the code; the model a client asked for is
  kept only when the config names it (a chain, a cost route, a model or an entry), else it is
  counted as ``other`` — a client cannot grow the number of series;
- label children are cached (a dict lookup instead of ``labels()`` per increment);
- with ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode, for several
  worker processes), :func:`exposition` answers for every worker of the directory; the gauges
  say how they add up (``livesum`` for the ledger queue, ``livemax`` for the cooling entries).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .router import NO_CALL

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .circuits import Circuit
    from .config import RouterConfig
    from .ledger import UsageRecord

__all__ = ["METRIC_NAMES", "RouterMetrics", "attempt_outcome", "exposition", "known_labels"]

OTHER = "other"
"""The label value of a requested model the config does not name."""

METRIC_NAMES: tuple[str, ...] = (
    "waterfall_requests_total",
    "waterfall_attempts_total",
    "waterfall_fall_throughs_total",
    "waterfall_exhausted_total",
    "waterfall_tokens_total",
    "waterfall_cost_total",
    "waterfall_time_to_first_byte_seconds",
    "waterfall_request_duration_seconds",
    "waterfall_stream_outcomes_total",
    "waterfall_entries_cooling",
    "waterfall_circuits_open",
    "waterfall_ledger_queue_depth",
    "waterfall_ledger_write_errors_total",
)
"""Every metric the router exports (a histogram's series add ``_bucket``, ``_sum`` and
``_count``)."""

TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def attempt_outcome(outcome: str, status: int | None) -> str:
    """The ``outcome`` label of an attempt: the router's outcome, but for a failing status,
    which is ``429`` or its class (``5xx``, ``4xx``).

    >>> attempt_outcome("status", 429), attempt_outcome("status", 503)
    ('429', '5xx')
    >>> attempt_outcome("served", 200), attempt_outcome("cooling", None)
    ('served', 'cooling')
    """
    if outcome != "status" or status is None:
        return outcome
    return "429" if status == 429 else f"{status // 100}xx"


def known_labels(config: RouterConfig) -> frozenset[str]:
    """The requested-model values kept as labels: the config's chains, cost routes, models and
    entries (``provider/model``)."""
    names: set[str] = set(config.chains) | set(config.routes)
    for d in config.all_deployments():
        names.update((d.key, d.model))
    return frozenset(names)


def _split(entry: str) -> tuple[str, str]:
    provider, _, model = entry.partition("/")
    return provider, model


class _Family:
    """One labelled metric with its children cached by label values."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class RouterMetrics:
    """The router's Prometheus metrics, in ``registry`` (default: a new registry of its own,
    never the global one unless given). One instance may serve several middlewares.

    >>> from prometheus_client import CollectorRegistry
    >>> metrics = RouterMetrics(CollectorRegistry())
    >>> b"# TYPE waterfall_requests_total counter" in metrics.exposition()[1]
    True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = registry if registry is not None else CollectorRegistry()
        """Where the metrics are registered (what :meth:`exposition` renders)."""
        r = self.registry
        self.known: set[str] = set()
        """The requested-model label values kept (see :func:`known_labels`)."""
        self.requests = _Family(
            Counter(
                "waterfall_requests",
                "Requests answered by the router's routes, by path, ledger status, HTTP status "
                "(empty if none was sent) and the chain, cost route or model asked for",
                ["path", "status", "code", "chain"],
                registry=r,
            )
        )
        self.attempts = _Family(
            Counter(
                "waterfall_attempts",
                "Entries tried or passed over, by provider, model and outcome",
                ["provider", "model", "outcome"],
                registry=r,
            )
        )
        self.fall_throughs = _Family(
            Counter(
                "waterfall_fall_throughs",
                "Moves from one entry to the next within a request, by the entry left and why",
                ["provider", "model", "reason"],
                registry=r,
            )
        )
        self.exhausted = _Family(
            Counter(
                "waterfall_exhausted",
                "Requests answered 503 all_providers_exhausted, by the chain asked for",
                ["chain"],
                registry=r,
            )
        )
        self.tokens = _Family(
            Counter(
                "waterfall_tokens",
                "Tokens the providers reported, by provider, model and type (prompt, completion)",
                ["provider", "model", "type"],
                registry=r,
            )
        )
        self.cost = _Family(
            Counter(
                "waterfall_cost",
                "Exact cost of the requests served (whole units, as in the ledger), by provider, "
                "model and unit",
                ["provider", "model", "unit"],
                registry=r,
            )
        )
        self.ttfb = _Family(
            Histogram(
                "waterfall_time_to_first_byte_seconds",
                "From a request's arrival to the accepted upstream answer, by path and provider",
                ["path", "provider"],
                buckets=TTFB_BUCKETS,
                registry=r,
            )
        )
        self.duration = _Family(
            Histogram(
                "waterfall_request_duration_seconds",
                "From a request's arrival to its end (a stream's last byte), by path and status",
                ["path", "status"],
                buckets=DURATION_BUCKETS,
                registry=r,
            )
        )
        self.streams = _Family(
            Counter(
                "waterfall_stream_outcomes",
                "How relayed streams ended, by provider, model and ledger status",
                ["provider", "model", "status"],
                registry=r,
            )
        )
        self.cooling = Gauge(
            "waterfall_entries_cooling",
            "Entries cooling down now (as this process knows them: a shared cooldown store "
            "is read when the metrics are scraped)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuits_open = Gauge(
            "waterfall_circuits_open",
            "Entries whose health circuit is open in this process now (waiting for, or running, "
            "its probe), read when the metrics are scraped",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ledger_queue = Gauge(
            "waterfall_ledger_queue_depth",
            "Records saved but not yet written by the ledger",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_errors = Counter(
            "waterfall_ledger_write_errors",
            "Records the ledger could not write",
            registry=r,
        )
        self._failures: dict[int, int] = {}  # id(ledger) -> its failures counted so far
        self._until: dict[str, float] = {}  # entry -> until when it cools, as seen here
        self._bound: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # a request's shape -> children

    # -- feeding ----------------------------------------------------------------------------
    def observe(self, record: UsageRecord, *, now: float, ledger: object = None) -> None:
        """Count one finished request (``now``: the time on the clock cooldowns use)."""
        chain = record.model
        if chain is None:
            chain = ""
        elif chain not in self.known:
            chain = OTHER
        status, provider = record.status, record.provider
        shape = (
            record.route,
            status,
            record.http_status,
            chain,
            provider,
            record.upstream_model,
            record.cost_unit,
            record.stream,
        )
        bound = self._bound.get(shape)
        if bound is None:
            bound = self._bound[shape] = self._bind(*shape)
        requests, duration, exhausted, ttfb, prompt, completion, cost, stream = bound
        requests.inc()
        duration.observe((record.duration_ms or 0.0) / 1000)
        if exhausted is not None:
            exhausted.inc()
        attempts = record.attempts
        if attempts:
            self._attempts(attempts, now)
        if provider is not None:
            if ttfb is not None and record.ttfb_ms is not None:
                ttfb.observe(record.ttfb_ms / 1000)
            if prompt is not None and record.prompt_tokens:
                prompt.inc(record.prompt_tokens)
            if completion is not None and record.completion_tokens:
                completion.inc(record.completion_tokens)
            if cost is not None and record.cost is not None:
                cost.inc(record.cost)
            if stream is not None:
                stream.inc()
        if ledger is not None:
            self.sample_ledger(ledger)

    def _bind(
        self,
        path: str,
        status: str,
        http_status: int | None,
        chain: str,
        provider: str | None,
        upstream_model: str | None,
        unit: str | None,
        stream: bool,
    ) -> tuple[Any, ...]:
        """The children a request of this shape counts in (``None``: none of that metric)."""
        code = "" if http_status is None else str(http_status)
        common = (
            self.requests(path, status, code, chain),
            self.duration(path, status),
            self.exhausted(chain) if status == "exhausted" else None,
        )
        if provider is None:
            return (*common, None, None, None, None, None)
        model = upstream_model or ""
        return (
            *common,
            self.ttfb(path, provider),
            self.tokens(provider, model, "prompt"),
            self.tokens(provider, model, "completion"),
            self.cost(provider, model, unit) if unit is not None else None,
            self.streams(provider, model, status) if stream else None,
        )

    def _attempts(self, attempts: list[dict[str, Any]], now: float) -> None:
        cooled = False
        last = len(attempts) - 1
        for i, a in enumerate(attempts):
            entry = a["entry"]
            provider, model = _split(entry)
            outcome = attempt_outcome(a["outcome"], a.get("status"))
            self.attempts(provider, model, outcome).inc()
            if i < last and attempts[i + 1]["entry"] != entry:
                self.fall_throughs(provider, model, outcome).inc()
            cooldown = a.get("cooldown_s")
            if cooldown and a["outcome"] not in NO_CALL:
                cooled = True
                self._until[entry] = max(self._until.get(entry, 0.0), now + cooldown)
        if cooled:
            self._set_cooling(now)

    def _set_cooling(self, now: float) -> None:
        for entry in [e for e, until in self._until.items() if until <= now]:
            del self._until[entry]
        self.cooling.set(len(self._until))

    def set_cooling(self, snapshot: Mapping[str, float], *, now: float) -> None:
        """Merge a cooldown store's snapshot (entry -> until) and set the cooling gauge."""
        for entry, until in snapshot.items():
            if until > self._until.get(entry, 0.0):
                self._until[entry] = until
        self._set_cooling(now)

    def set_circuits(self, circuits: Iterable[Circuit]) -> None:
        """Set the open-circuits gauge from a router's circuits (open or half-open)."""
        self.circuits_open.set(sum(1 for c in circuits if c.open_until is not None))

    def sample_ledger(self, ledger: object) -> None:
        """Read a ledger's queue depth (``pending``) and lost records (``failures``), where it
        tells them."""
        pending = getattr(ledger, "pending", None)
        if isinstance(pending, int):
            self.ledger_queue.set(pending)
        failures = getattr(ledger, "failures", None)
        if isinstance(failures, int):
            key = id(ledger)
            seen = self._failures.get(key, 0)
            if failures > seen:
                self.ledger_errors.inc(failures - seen)
            self._failures[key] = failures

    def exposition(self) -> tuple[str, bytes]:
        """``(content type, body)`` of a scrape (see :func:`exposition`)."""
        return exposition(self.registry)


def exposition(registry: CollectorRegistry | None = None) -> tuple[str, bytes]:
    """``(content type, body)`` of a scrape of ``registry`` in Prometheus' text format; in
    multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set), of every process's metrics in that
    directory instead."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if registry is None:
        registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return CONTENT_TYPE_LATEST, generate_latest(registry)
