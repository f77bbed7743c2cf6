"""OpenTelemetry: an in-memory exporter sees one span per request and one child span per upstream
call, with the GenAI attributes, for a fall-through, a stream and an exhaustion; the GenAI client
metrics have their points; the client's trace is continued, and propagated upstream only when
configured."""

from __future__ import annotations

from typing import Any

import pytest
from asgi_helpers import call
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from waterfall_asgi import MemoryLedger, RouterTracing, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "count my tokens please"}]}
STREAM = {**CHAT, "stream": True}
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        out: dict[str, list[Any]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out


def make(
    scripts: dict[str, list[str]], otel: Otel, *, propagate: bool = False
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    net = FakeNetwork({h: FakeProvider(name=h, script=scripts.get(h, [])) for h in "ab"})
    ledger = MemoryLedger()
    config: dict[str, Any] = {
        "providers": {h: {"base_url": f"http://{h}/v1", "api_key": f"sk-secret-{h}"} for h in "ab"},
        "deployments": [
            {"provider": "a", "model": "fake-small", "price": {"prompt": "1", "completion": "2"}},
            {"provider": "b", "model": "fake-medium", "price": {"prompt": "3", "completion": "4"}},
        ],
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
        "policy": {"backoff": 0},
    }
    tracing = RouterTracing(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        propagate=propagate,
    )
    app = WaterfallMiddleware(None, config, transport=net, ledger=ledger, tracing=tracing)
    return app, net, ledger


def split(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    children = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time)
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    return root, children


async def test_a_fall_through_is_a_request_span_with_two_attempt_spans() -> None:
    otel = Otel()
    app, _, ledger = make({"a": ["rate_limit:seconds=30"]}, otel)
    try:
        result = await call(app, "POST", "/v1/chat/completions", CHAT)
        assert result.status == 200
    finally:
        await app.shutdown()
    (record,) = ledger.records.values()
    root, (first, second) = split(otel.finished())
    assert root.name == "chat fast"
    assert root.status.status_code is StatusCode.UNSET
    attrs = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "fast"
    assert attrs["gen_ai.provider.name"] == "b"
    assert attrs["gen_ai.response.model"] == "fake-medium"
    assert attrs["gen_ai.usage.input_tokens"] == record.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == record.completion_tokens
    assert attrs["http.response.status_code"] == 200
    assert attrs["waterfall.request_id"] == record.id
    assert attrs["waterfall.status"] == "success"
    assert attrs["waterfall.cost"] == record.cost
    assert attrs["waterfall.cost_unit"] == "msat"
    assert attrs["waterfall.attempts"] == 2
    assert "error.type" not in attrs
    assert first.name == "chat fake-small"
    assert dict(first.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "a",
        "gen_ai.request.model": "fake-small",
        "waterfall.entry": "a/fake-small",
        "waterfall.outcome": "status",
        "http.response.status_code": 429,
        "waterfall.cooldown_s": 30.0,
        "error.type": "429",
    }
    assert first.status.status_code is StatusCode.ERROR
    second_attrs = dict(second.attributes or {})
    assert second_attrs["waterfall.outcome"] == "served"
    assert second_attrs["gen_ai.provider.name"] == "b"
    assert second_attrs["gen_ai.usage.output_tokens"] == record.completion_tokens
    assert "error.type" not in second_attrs
    assert second.end_time == root.end_time
    spans_text = repr([s.to_json() for s in otel.finished()])
    assert "sk-secret" not in spans_text
    assert "count my tokens" not in spans_text  # no prompt content, ever

    points = otel.points()
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.count == 1
    assert dict(duration.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "fast",
        "gen_ai.provider.name": "b",
        "gen_ai.response.model": "fake-medium",
    }
    tokens = {p.attributes["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == record.prompt_tokens
    assert tokens["output"].sum == record.completion_tokens
    assert "gen_ai.client.operation.time_to_first_chunk" not in points  # not a stream


async def test_a_stream_continues_the_clients_trace() -> None:
    otel = Otel()
    app, net, ledger = make({}, otel)
    try:
        result = await call(
            app, "POST", "/v1/chat/completions", STREAM, headers={"traceparent": TRACEPARENT}
        )
        assert result.status == 200
    finally:
        await app.shutdown()
    (record,) = ledger.records.values()
    root, (served,) = split(otel.finished())
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == "b7ad6b7169203331"
    attrs = dict(root.attributes or {})
    assert attrs["waterfall.stream"] is True
    assert attrs["gen_ai.usage.output_tokens"] == record.completion_tokens
    assert dict(served.attributes or {})["waterfall.outcome"] == "served"
    (first_chunk,) = otel.points()["gen_ai.client.operation.time_to_first_chunk"]
    assert first_chunk.count == 1
    # not configured to propagate: the upstream saw no trace context at all
    (seen,) = net.providers["a"].requests
    assert "traceparent" not in {k.lower() for k in seen.headers}


async def test_propagation_sends_the_request_spans_context_upstream() -> None:
    otel = Otel()
    app, net, _ = make({}, otel, propagate=True)
    try:
        await call(app, "POST", "/v1/chat/completions", CHAT, headers={"traceparent": TRACEPARENT})
    finally:
        await app.shutdown()
    root, _ = split(otel.finished())
    (seen,) = net.providers["a"].requests
    sent = {k.lower(): v for k, v in seen.headers.items()}["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{root.context.span_id:016x}-01"


async def test_an_exhaustion_is_an_error_span_with_every_call() -> None:
    otel = Otel()
    app, _, _ = make({"a": ["status:code=500"] * 4, "b": ["rate_limit:seconds=9"]}, otel)
    try:
        assert (await call(app, "POST", "/v1/chat/completions", CHAT)).status == 503
        assert (await call(app, "POST", "/v1/chat/completions", CHAT)).status == 503
    finally:
        await app.shutdown()
    spans = otel.finished()
    roots = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(roots) == 2
    first = roots[0].context.span_id
    root, children = split(
        [s for s in spans if s is roots[0] or (s.parent and s.parent.span_id == first)]
    )
    attrs = dict(root.attributes or {})
    assert root.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "all_providers_exhausted"
    assert attrs["http.response.status_code"] == 503
    assert "gen_ai.provider.name" not in attrs
    outcomes = [dict(c.attributes or {})["waterfall.outcome"] for c in children]
    assert outcomes == ["retried", "status", "status"]
    assert [dict(c.attributes or {})["error.type"] for c in children] == ["500", "500", "429"]
    # the second: b cooling is an event on the request span, not a call
    second = roots[1]
    events = [(e.name, dict(e.attributes or {})) for e in second.events]
    assert (
        "waterfall.skipped",
        {"waterfall.entry": "b/fake-medium", "waterfall.outcome": "cooling"},
    ) in events
    (duration,) = otel.points()["gen_ai.client.operation.duration"]
    assert duration.count == 2
    assert duration.attributes["error.type"] == "all_providers_exhausted"


async def test_enabled_by_config_without_an_sdk_every_span_is_a_no_op() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    config = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "tracing": {"enabled": True},
    }
    app = WaterfallMiddleware(None, config, transport=net, ledger=MemoryLedger())
    try:
        assert app.tracing is not None  # the API's global providers: no SDK configured
        span = app.tracing.begin({"method": "POST", "path": "/v1/x", "headers": []}, 0)
        assert not span.is_recording()
        result = await call(app, "POST", "/v1/chat/completions", CHAT)
        assert result.status == 200
        (seen,) = net.providers["a"].requests
        assert "traceparent" not in {k.lower() for k in seen.headers}
    finally:
        await app.shutdown()
