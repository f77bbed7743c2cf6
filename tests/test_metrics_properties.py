"""Properties of the Prometheus metrics: for any finished records, the counters are the sums of
the records, and no label takes a value outside the bounded sets (a client's model name never
becomes a label)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from waterfall_asgi import TERMINAL_STATUSES, RouterMetrics, UsageRecord, attempt_outcome

ENTRIES = ["a/small", "a/large", "b/medium"]
KNOWN = {"fast", "cheap", *ENTRIES, "small", "large", "medium"}
OUTCOMES = ["served", "status", "timeout", "cooling", "retried", "connect_error"]


@st.composite
def records(draw: st.DrawFn) -> UsageRecord:
    attempts = [
        {
            "entry": draw(st.sampled_from(ENTRIES)),
            "outcome": draw(st.sampled_from(OUTCOMES)),
            "status": draw(st.sampled_from([None, 200, 429, 500, 503])),
            "elapsed_ms": 1.0,
            "cooldown_s": draw(st.sampled_from([None, 5.0])),
        }
        for _ in range(draw(st.integers(0, 4)))
    ]
    served = draw(st.sampled_from([None, *ENTRIES]))
    record = UsageRecord(
        id="x",
        started_at=0.0,
        route=draw(st.sampled_from(["/v1/chat/completions", "/v1/embeddings"])),
        model=draw(st.one_of(st.none(), st.sampled_from(sorted(KNOWN)), st.text(max_size=8))),
        stream=draw(st.booleans()),
        attempts=attempts,
        status=draw(st.sampled_from(sorted(TERMINAL_STATUSES))),
        http_status=draw(st.sampled_from([None, 200, 400, 503])),
        duration_ms=draw(st.floats(0, 1e6)),
    )
    if served is not None:
        record.provider, _, record.upstream_model = served.partition("/")
        record.ttfb_ms = draw(st.floats(0, 1e5))
        record.prompt_tokens = draw(st.one_of(st.none(), st.integers(0, 10**6)))
        record.completion_tokens = draw(st.one_of(st.none(), st.integers(0, 10**6)))
        if draw(st.booleans()):
            record.cost, record.cost_unit = draw(st.integers(0, 10**9)), "msat"
    return record


def _samples(registry: CollectorRegistry) -> list[Any]:
    return [s for family in registry.collect() for s in family.samples]


@settings(max_examples=60, deadline=None)
@given(st.lists(records(), max_size=25))
def test_the_counters_are_the_sums_of_the_records(batch: list[UsageRecord]) -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.known.update(KNOWN)
    for record in batch:
        metrics.observe(record, now=0.0)
    samples = _samples(registry)

    def total(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("waterfall_requests_total") == len(batch)
    assert total("waterfall_request_duration_seconds_count") == len(batch)
    assert total("waterfall_exhausted_total") == sum(r.status == "exhausted" for r in batch)
    attempts = Counter(
        (a["entry"], attempt_outcome(a["outcome"], a["status"])) for r in batch for a in r.attempts
    )
    for (entry, outcome), n in attempts.items():
        provider, _, model = entry.partition("/")
        labels = {"provider": provider, "model": model, "outcome": outcome}
        assert total("waterfall_attempts_total", **labels) == n
    assert total("waterfall_attempts_total") == sum(len(r.attempts) for r in batch)
    for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        expected = sum(getattr(r, field) or 0 for r in batch if r.provider is not None)
        assert total("waterfall_tokens_total", type=kind) == expected
    assert total("waterfall_cost_total") == sum(
        r.cost or 0 for r in batch if r.provider is not None and r.cost_unit is not None
    )
    served = [r for r in batch if r.provider is not None]
    assert total("waterfall_time_to_first_byte_seconds_count") == len(served)
    assert total("waterfall_stream_outcomes_total") == sum(r.stream for r in served)
    # bounded labels: a chain is a name the config knows, "other", or empty
    chains = {s.labels["chain"] for s in samples if "chain" in s.labels}
    assert chains <= KNOWN | {"other", ""}
