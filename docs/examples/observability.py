"""Prometheus metrics and OpenTelemetry spans of a fall-through, from the fakes."""

import asyncio

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from waterfall_asgi import MemoryLedger, RouterMetrics, RouterTracing, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

upstreams = FakeNetwork(
    {
        "openai": FakeProvider(script=["rate_limit:dialect=retry-after,seconds=20"]),
        "groq": FakeProvider(),
    }
)
config = {
    "providers": {
        "openai": {"base_url": "http://openai/v1"},
        "groq": {"base_url": "http://groq/v1"},
    },
    "chains": {"fast": ["openai/fake-small", "groq/fake-medium"]},
    "metrics": {"path": "/metrics"},  # served here (metrics given below: no need to enable)
}
registry = CollectorRegistry()  # or prometheus_client.REGISTRY, beside the host's own metrics
spans = InMemorySpanExporter()  # a real host exports to a collector (OTLP) instead
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
app = WaterfallMiddleware(
    None,
    config,
    transport=upstreams,
    ledger=MemoryLedger(),
    metrics=RouterMetrics(registry),
    tracing=RouterTracing(tracer_provider=tracer_provider),
)


async def main() -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        hi = [{"role": "user", "content": "Say hello"}]
        answer = await client.post("/v1/chat/completions", json={"model": "fast", "messages": hi})
        assert answer.status_code == 200
        scrape = await client.get("/metrics")
    await app.shutdown()
    assert scrape.text == generate_latest(registry).decode()  # the same registry
    for line in scrape.text.splitlines():
        if line.startswith(("waterfall_attempts_total", "waterfall_fall_throughs_total")):
            print(line)
    for span in sorted(spans.get_finished_spans(), key=lambda s: s.start_time):
        attributes = span.attributes or {}
        print(span.kind.name, span.name, attributes.get("waterfall.outcome", ""))


asyncio.run(main())
