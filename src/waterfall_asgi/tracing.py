"""OpenTelemetry spans and GenAI client metrics of the router (``pip install
'waterfall-asgi[otel]'``), through the tracer and meter providers the host configured (the
global ones unless given): with the API alone (no SDK), every span is a non-recording one and
nothing is recorded.

One span per request (kind ``SERVER``), started when the request arrives (continuing the
client's ``traceparent``) and ended at its end, with its attributes set once, at the end; one
child span per upstream call (kind ``CLIENT``), made at the end from the request's record with
explicit start and end times; entries passed over without a call (cooling, open circuit, …) are
events on the request span. The names follow the OpenTelemetry semantic conventions for
generative AI (``gen_ai.*``, status *Development*, as of semantic conventions 1.44.0, which
mark them as moved to the semantic-conventions-genai repository, under the same names) and for
HTTP; the router adds its own ``waterfall.*`` attributes. See the Observability page for the list.

Where this deliberately differs from the obvious implementation:

- nothing happens per chunk: a stream's span gets its tokens and end from the finished record;
- the child spans' times are derived from each attempt's elapsed time, laid end to end back
  from the moment an answer was accepted (the router's attempts are sequential);
- the ``gen_ai.request.model`` of the request span and metrics is the chain, cost route or model
  the client asked for when the config names it, else ``other``: a client cannot grow the
  number of metric series;
- while tracing is enabled, a client's ``traceparent``/``tracestate`` are not forwarded
  upstream as they came: the request span's context is sent instead if ``propagate`` is set,
  and none otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .router import NO_CALL

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from .ledger import UsageRecord

__all__ = ["OPERATIONS", "TRACE_HEADERS", "RouterTracing"]

OPERATIONS: Mapping[str, str] = {
    "/chat/completions": "chat",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
    "/responses": "chat",
    "/messages": "chat",
}
"""``gen_ai.operation.name`` of each endpoint."""

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
"""The W3C trace-context headers (never forwarded as the client sent them while tracing)."""

_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48]
_DURATION_BUCKETS += [40.96, 81.92]
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
_TOKEN_BUCKETS += [16777216, 67108864]


class RouterTracing:
    """Spans and GenAI metrics for a :class:`~waterfall_asgi.middleware.WaterfallMiddleware`
    (``tracer_provider``/``meter_provider``: default, the global ones; ``propagate``: send the
    request span's context upstream)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        propagate: bool = False,
        prefix: str = "/v1",
    ) -> None:
        from opentelemetry import metrics, trace

        version = metadata.version("waterfall-asgi")
        self.propagate = propagate
        self.known: set[str] = set()
        """The requested-model values kept as they are (see
        :func:`~waterfall_asgi.metrics.known_labels`)."""
        self._operations = {prefix + path: name for path, name in OPERATIONS.items()}
        self._tracer = trace.get_tracer("waterfall_asgi", version, tracer_provider)
        meter = metrics.get_meter("waterfall_asgi", version, meter_provider)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    # -- a request ---------------------------------------------------------------------------
    def begin(self, scope: Mapping[str, Any], start_ns: int) -> Span:
        """The request's span, started (not made current), continuing the client's trace."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            if key in TRACE_HEADERS or key == "baggage":
                carrier[key] = value.decode("latin-1")
        context = propagate.extract(carrier) if carrier else None
        return self._tracer.start_span(
            f"{scope['method']} {scope['path']}",
            context=context,
            kind=SpanKind.SERVER,
            start_time=start_ns,
        )

    def upstream_headers(self, headers: list[tuple[str, str]], span: Span) -> list[tuple[str, str]]:
        """``headers`` for upstream, less the client's trace context, plus the request span's
        when propagating."""
        kept = [(k, v) for k, v in headers if k.lower() not in TRACE_HEADERS]
        if self.propagate:
            from opentelemetry import propagate, trace

            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            kept.extend((k, v) for k, v in carrier.items() if k in TRACE_HEADERS)
        return kept

    def end(self, span: Span, record: UsageRecord, start_ns: int, method: str) -> None:
        """Set the request span's attributes from the finished ``record``, add a child span per
        upstream call, record the GenAI metrics, and end the span."""
        end_ns = start_ns + int((record.duration_ms or 0.0) * 1_000_000)
        operation = self._operations.get(record.route)
        requested = record.model
        if requested is not None and requested not in self.known:
            requested = "other"
        attributes: dict[str, Any] = {}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
            if requested is not None:
                attributes["gen_ai.request.model"] = requested
        if record.provider is not None:
            attributes["gen_ai.provider.name"] = record.provider
        if record.upstream_model is not None:
            attributes["gen_ai.response.model"] = record.upstream_model
        error = _error_type(record)
        if error is not None:
            attributes["error.type"] = error
        if operation is not None:
            self._record_metrics(record, attributes)
        if not span.is_recording():
            span.end(end_time=end_ns)
            return
        from opentelemetry.trace import Status, StatusCode

        if operation is not None:
            span.update_name(f"{operation} {requested}" if requested else operation)
        span.set_attributes({**attributes, **_request_attributes(record, method)})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, record.error or record.status))
        if record.attempts:
            self._attempt_spans(span, record, operation or "request", start_ns, end_ns)
        span.end(end_time=end_ns)

    def _record_metrics(self, record: UsageRecord, attributes: Mapping[str, Any]) -> None:
        self._duration.record((record.duration_ms or 0.0) / 1000, attributes)
        if record.prompt_tokens is not None:
            self._tokens.record(record.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        if record.completion_tokens is not None:
            self._tokens.record(
                record.completion_tokens, {**attributes, "gen_ai.token.type": "output"}
            )
        if record.stream and record.ttfb_ms is not None:
            self._first_chunk.record(record.ttfb_ms / 1000, attributes)

    def _attempt_spans(
        self, parent: Span, record: UsageRecord, operation: str, start_ns: int, end_ns: int
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        context = trace.set_span_in_context(parent)
        accepted = end_ns
        if record.ttfb_ms is not None:
            accepted = start_ns + int(record.ttfb_ms * 1_000_000)
        for when, a in _timeline(record.attempts, accepted):
            entry = a["entry"]
            provider, _, model = entry.partition("/")
            outcome = a["outcome"]
            cooldown = a.get("cooldown_s")
            if outcome in NO_CALL:  # no call: an event on the request span
                event = {"waterfall.entry": entry, "waterfall.outcome": outcome}
                if cooldown is not None:
                    event["waterfall.cooldown_s"] = cooldown
                parent.add_event("waterfall.skipped", event, timestamp=when[0])
                continue
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "waterfall.entry": entry,
                "waterfall.outcome": outcome,
            }
            status = a.get("status")
            if status is not None:
                attributes["http.response.status_code"] = status
            if cooldown is not None:
                attributes["waterfall.cooldown_s"] = cooldown
            if a.get("kind"):
                attributes["waterfall.attempt.kind"] = a["kind"]
            end = when[1]
            if outcome == "served":
                end = end_ns  # the served call lasts until the answer has been relayed
                attributes.update(_usage_attributes(record))
            elif outcome != "rejected":
                attributes["error.type"] = str(status) if status is not None else outcome
            span = self._tracer.start_span(
                f"{operation} {model}",
                context=context,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=when[0],
            )
            if "error.type" in attributes:
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end(end_time=end)


_Timed = tuple[tuple[int, int], dict[str, Any]]


def _timeline(attempts: Sequence[dict[str, Any]], accepted: int) -> list[_Timed]:
    """Each attempt with its ``(start, end)`` in ns: laid end to end, the last ending at
    ``accepted``."""
    out: list[_Timed] = []
    end = accepted
    for a in reversed(attempts):
        start = end - int((a.get("elapsed_ms") or 0.0) * 1_000_000)
        out.append(((start, end), a))
        end = start
    out.reverse()
    return out


def _error_type(record: UsageRecord) -> str | None:
    """``error.type`` of a request: empty for a success, the router's error code for a request
    it refused or could not serve, else the ledger status."""
    status = record.status
    if status == "success":
        return None
    error = record.error
    if status in ("exhausted", "rejected") and error and " " not in error:
        return error
    if status == "rejected" and record.http_status is not None:
        return str(record.http_status)
    return status


def _usage_attributes(record: UsageRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if record.upstream_model is not None:
        attributes["gen_ai.response.model"] = record.upstream_model
    if record.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
    if record.completion_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
    return attributes


def _request_attributes(record: UsageRecord, method: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": record.route,
        "waterfall.request_id": record.id,
        "waterfall.status": record.status,
        "waterfall.stream": record.stream,
        "waterfall.attempts": len(record.attempts),
        **_usage_attributes(record),
    }
    if record.http_status is not None:
        attributes["http.response.status_code"] = record.http_status
    if record.cost is not None and record.cost_unit is not None:
        attributes["waterfall.cost"] = record.cost
        attributes["waterfall.cost_unit"] = record.cost_unit
    return attributes
