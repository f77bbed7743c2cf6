"""Prometheus metrics: scripted traffic through the fakes (a 429 fall-through, a broken stream, a
disconnect, an exhaustion), then a scrape of ``/metrics`` with exact counter values."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from asgi_helpers import call
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from waterfall_asgi import MemoryLedger, RouterMetrics, WaterfallMiddleware
from waterfall_asgi.metrics import METRIC_NAMES
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "count my tokens please"}]
CHAT = {"model": "fast", "messages": MESSAGES}
STREAM = {**CHAT, "stream": True}
PRICES = {
    "a": {"unit": "msat", "prompt": "0.15", "completion": "0.6", "request": "1"},
    "b": {"unit": "msat", "prompt": "2.5", "completion": "10"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    scripts: dict[str, list[str]], *, given: RouterMetrics | None = None, **extra: Any
) -> tuple[WaterfallMiddleware, MemoryLedger]:
    clock = Clock()
    net = FakeNetwork(
        {h: FakeProvider(name=h, script=scripts.get(h, []), clock=clock) for h in "ab"}
    )
    ledger = MemoryLedger()
    config: dict[str, Any] = {
        "providers": {h: {"base_url": f"http://{h}/v1", "api_key": f"sk-secret-{h}"} for h in "ab"},
        "deployments": [
            {"provider": h, "model": f"fake-{size}", "price": PRICES[h]}
            for h, size in (("a", "small"), ("b", "medium"))
        ],
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
        "policy": {"backoff": 0},
        "metrics": {"enabled": True, "path": "/metrics"},
        **extra,
    }
    app = WaterfallMiddleware(
        None, config, transport=net, ledger=ledger, clock=clock, metrics=given
    )
    return app, ledger


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


async def scrape(app: WaterfallMiddleware, **headers: str) -> dict[Any, float]:
    result = await call(app, "GET", "/metrics", headers=headers)
    assert result.status == 200, result.body
    assert result.headers["content-type"].startswith("text/plain; version=")
    return samples(result.body.decode())


async def until_recorded(ledger: MemoryLedger) -> None:
    for _ in range(2000):  # until the stream has begun (bounded)
        if ledger.records:
            return
        await asyncio.sleep(0.001)


async def test_scripted_traffic_gives_exact_counters() -> None:
    app, ledger = make(
        {
            "a": ["rate_limit:seconds=40"],
            "b": ["ok", "cut:tokens=2", "slow_chunks:seconds=0.01"] + ["status:code=503"] * 2,
        }
    )
    try:
        first = await call(app, "POST", "/v1/chat/completions", CHAT)  # a 429, b serves
        assert first.status == 200
        broken = await call(app, "POST", "/v1/chat/completions", STREAM)  # a cooling; cut
        assert broken.status == 200
        gone = asyncio.Event()
        task = asyncio.ensure_future(
            call(app, "POST", "/v1/chat/completions", STREAM, disconnect=gone)
        )
        await until_recorded(ledger)
        gone.set()
        with anyio.fail_after(5):
            await task
        exhausted = await call(app, "POST", "/v1/chat/completions", CHAT)
        assert exhausted.status == 503
        statuses = [r.status for r in ledger.records.values()]
        assert statuses == ["success", "upstream_error", "client_disconnected", "exhausted"]
        got = await scrape(app)
    finally:
        await app.shutdown()

    path = "/v1/chat/completions"
    requests = {
        ("success", "200"): 1,
        ("upstream_error", "200"): 1,
        ("client_disconnected", "200"): 1,
        ("exhausted", "503"): 1,
    }
    for (status, code), n in requests.items():
        labels = {"path": path, "status": status, "code": code, "chain": "fast"}
        assert value(got, "waterfall_requests_total", **labels) == n
    assert sum(v for (name, _), v in got.items() if name == "waterfall_requests_total") == 4
    attempts = {
        ("a", "fake-small", "429"): 1,
        ("a", "fake-small", "cooling"): 3,
        ("b", "fake-medium", "served"): 3,
        ("b", "fake-medium", "retried"): 1,
        ("b", "fake-medium", "5xx"): 1,
    }
    for (provider, model, outcome), n in attempts.items():
        labels = {"provider": provider, "model": model, "outcome": outcome}
        assert value(got, "waterfall_attempts_total", **labels) == n, (labels, got)
    assert sum(v for (name, _), v in got.items() if name == "waterfall_attempts_total") == 9
    falls = {("429",): 1, ("cooling",): 3}
    for (reason,), n in falls.items():
        labels = {"provider": "a", "model": "fake-small", "reason": reason}
        assert value(got, "waterfall_fall_throughs_total", **labels) == n
    assert sum(v for (name, _), v in got.items() if name == "waterfall_fall_throughs_total") == 4
    assert value(got, "waterfall_exhausted_total", chain="fast") == 1
    # tokens and cost: exactly what the ledger recorded, summed
    records = list(ledger.records.values())
    prompt = sum(r.prompt_tokens or 0 for r in records)
    completion = sum(r.completion_tokens or 0 for r in records)
    cost = sum(r.cost or 0 for r in records)
    assert prompt > 0
    assert completion > 0
    assert cost > 0
    labels = {"provider": "b", "model": "fake-medium"}
    assert value(got, "waterfall_tokens_total", **labels, type="prompt") == prompt
    assert value(got, "waterfall_tokens_total", **labels, type="completion") == completion
    assert value(got, "waterfall_cost_total", **labels, unit="msat") == cost
    for status in ("upstream_error", "client_disconnected"):
        assert value(got, "waterfall_stream_outcomes_total", **labels, status=status) == 1
    assert value(got, "waterfall_time_to_first_byte_seconds_count", path=path, provider="b") == 3
    for status in ("success", "upstream_error", "client_disconnected", "exhausted"):
        labels = {"path": path, "status": status}
        assert value(got, "waterfall_request_duration_seconds_count", **labels) == 1
    # a, under its 429's Retry-After (b's 503s count against its circuit: no cooldown)
    assert value(got, "waterfall_entries_cooling") == 1
    assert value(got, "waterfall_ledger_queue_depth") == 0  # the memory ledger has no queue
    assert value(got, "waterfall_ledger_write_errors_total") == 0
    # no secret, no client input in any label
    text = "\n".join(f"{n} {sorted(labels)}" for n, labels in got)
    assert "sk-secret" not in text
    assert "count my tokens" not in text


async def test_every_documented_metric_is_exported() -> None:
    app, _ = make({})
    try:
        result = await call(app, "GET", "/metrics")
    finally:
        await app.shutdown()
    types = {
        line.split()[2]: line.split()[3]
        for line in result.body.decode().splitlines()
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
    }
    expected = {
        name: "counter"
        if name.endswith("_total")
        else "histogram"
        if name.endswith("_seconds")
        else "gauge"
        for name in METRIC_NAMES
    }
    assert types == expected


async def test_a_model_the_config_does_not_name_is_counted_as_other() -> None:
    app, _ = make({})
    try:
        for n in range(5):
            await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": f"made-up-{n}"})
        got = await scrape(app)
    finally:
        await app.shutdown()
    chains = {dict(labels).get("chain") for name, labels in got if name.startswith("waterfall_req")}
    assert chains == {"other", None}  # (None: the histogram's series have no chain label)
    assert sum(v for (n, _), v in got.items() if n == "waterfall_requests_total") == 5


async def test_the_registry_is_injectable() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    app, _ = make({}, given=metrics)
    try:
        assert app.metrics is metrics
        await call(app, "POST", "/v1/chat/completions", CHAT)
    finally:
        await app.shutdown()
    text = generate_latest(registry).decode()
    labels = 'chain="fast",code="200",path="/v1/chat/completions",status="success"'
    assert f"waterfall_requests_total{{{labels}}} 1.0" in text


async def test_one_metrics_object_serves_two_routers() -> None:
    metrics = RouterMetrics()
    first, _ = make({}, given=metrics)
    second, _ = make({}, given=metrics)
    try:
        await call(first, "POST", "/v1/chat/completions", CHAT)
        await call(second, "POST", "/v1/chat/completions", CHAT)
        got = await scrape(second)
    finally:
        await first.shutdown()
        await second.shutdown()
    labels = {"path": "/v1/chat/completions", "status": "success", "code": "200"}
    assert value(got, "waterfall_requests_total", **labels, chain="fast") == 2


# -- the endpoint ---------------------------------------------------------------------------
async def test_metrics_are_off_by_default() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    config = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"fast": ["a/m"]}}
    app = WaterfallMiddleware(None, config, transport=net, ledger=MemoryLedger())
    try:
        assert app.metrics is None
        assert (await call(app, "GET", "/metrics")).status == 404
    finally:
        await app.shutdown()


async def test_collected_but_not_served_without_a_path() -> None:
    async def host(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the host's own metrics"})

    config = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/m"]},
        "metrics": {"enabled": True},
    }
    net = FakeNetwork({"a": FakeProvider(name="a")})
    app = WaterfallMiddleware(host, config, transport=net, ledger=MemoryLedger())
    try:
        assert app.metrics is not None
        result = await call(app, "GET", "/metrics")
        assert result.body == b"the host's own metrics"
    finally:
        await app.shutdown()


async def test_the_path_is_configurable_and_answers_get_only() -> None:
    app, _ = make({})
    try:
        result = await call(app, "POST", "/metrics")
        assert result.status == 405
        assert result.json()["error"]["code"] == "method_not_allowed"
    finally:
        await app.shutdown()
    moved, _ = make({}, metrics={"enabled": True, "path": "/internal/prom"})
    try:
        assert (await call(moved, "GET", "/internal/prom")).status == 200
        assert (await call(moved, "GET", "/metrics")).status == 404
    finally:
        await moved.shutdown()


async def test_the_client_keys_guard_the_metrics() -> None:
    keys = {"client_keys": ["ck-1"]}
    app, _ = make({}, **keys)
    try:
        refused = await call(app, "GET", "/metrics")
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        await scrape(app, authorization="Bearer ck-1")
        await call(app, "POST", "/v1/chat/completions", CHAT)  # no key: 401, counted
        got = await scrape(app, authorization="Bearer ck-1")
        labels = {"path": "/v1/chat/completions", "status": "rejected", "code": "401"}
        assert value(got, "waterfall_requests_total", **labels, chain="") == 1
    finally:
        await app.shutdown()
    open_, _ = make({}, metrics={"enabled": True, "path": "/metrics", "require_client_key": False})
    try:
        await scrape(open_)
    finally:
        await open_.shutdown()


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ({"metrics": {"path": "metrics"}}, "metrics.path"),
        ({"metrics": {"enabled": "sometimes"}}, "metrics.enabled"),
        ({"tracing": {"propagate": "yes please"}}, "tracing.propagate"),
        ({"tracing": {"exporter": "otlp"}}, "tracing.exporter"),
    ],
)
def test_check_config_names_a_wrong_observability_key(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], section: dict[str, Any], said: str
) -> None:
    import json

    from waterfall_asgi.cli import main

    config = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"f": ["a/m"]}}
    path = tmp_path / "router.json"
    path.write_text(json.dumps({**config, **section}))
    assert main(["check-config", str(path)]) == 1
    assert said in capsys.readouterr().err


class FailingLedger(MemoryLedger):
    """A memory ledger that loses every record it is given, and says so as the SQLite and
    PostgreSQL ledgers do (``pending``, ``failures``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 3
        self.failures = 0

    async def save(self, record: Any) -> None:
        self.failures += 1


@pytest.mark.anyio
async def test_the_ledgers_queue_and_lost_records_are_counted() -> None:
    clock = Clock()
    net = FakeNetwork({"a": FakeProvider(name="a", clock=clock)})
    config = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "chains": {"fast": ["a/fake-small"]},
        "metrics": {"enabled": True, "path": "/metrics"},
    }
    ledger = FailingLedger()
    app = WaterfallMiddleware(None, config, transport=net, ledger=ledger, clock=clock)
    try:
        for _ in range(3):  # each saved twice (accepted, then finished): 6 lost
            assert (await call(app, "POST", "/v1/chat/completions", CHAT)).status == 200
        got = await scrape(app)
        assert value(got, "waterfall_ledger_write_errors_total") == 6
        assert value(got, "waterfall_ledger_queue_depth") == 3
        ledger.failures, ledger.pending = 7, 0  # one more lost, meanwhile; the queue drained
        got = await scrape(app)
        assert value(got, "waterfall_ledger_write_errors_total") == 7
        assert value(got, "waterfall_ledger_queue_depth") == 0
    finally:
        await app.shutdown()


@pytest.mark.parametrize(
    ("section", "name", "said"),
    [
        ({"metrics": {"enabled": True}}, "RouterMetrics", "pip install 'waterfall-asgi[metrics]'"),
        ({"tracing": {"enabled": True}}, "RouterTracing", "pip install 'waterfall-asgi[otel]'"),
    ],
)
def test_check_config_says_which_extra_is_missing(
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    section: dict[str, Any],
    name: str,
    said: str,
) -> None:
    import json

    from waterfall_asgi import middleware
    from waterfall_asgi.cli import main

    def missing(*args: Any, **kwargs: Any) -> None:
        raise ImportError("No module named 'the_extra'")

    monkeypatch.setattr(middleware, name, missing)
    config = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"f": ["a/m"]}}
    path = tmp_path / "router.json"
    path.write_text(json.dumps({**config, **section}))
    assert main(["check-config", str(path)]) == 1
    assert said in capsys.readouterr().err


class BrokenMetrics(RouterMetrics):
    def observe(self, record: Any, *, now: float, ledger: object = None) -> None:
        raise RuntimeError("a metrics bug")


@pytest.mark.anyio
async def test_a_failing_metrics_object_never_breaks_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, ledger = make({}, given=BrokenMetrics())
    try:
        for payload in (CHAT, STREAM):
            result = await call(app, "POST", "/v1/chat/completions", payload)
            assert result.status == 200
            assert result.finished
    finally:
        await app.shutdown()
    assert [r.status for r in ledger.records.values()] == ["success", "success"]
    failures = [r for r in caplog.records if r.getMessage().startswith("observability failed")]
    assert len(failures) == 2


async def test_open_health_circuits_are_counted_at_each_scrape() -> None:
    app, ledger = make({"a": ["status:code=500"] * 6})  # no hint: health failures, no cooldown
    try:
        assert value(await scrape(app), "waterfall_circuits_open") == 0
        for _ in range(3):  # each: a 500, its retry's 500, then b serves
            assert (await call(app, "POST", "/v1/chat/completions", CHAT)).status == 200
        got = await scrape(app)
    finally:
        await app.shutdown()
    outcomes = [a["outcome"] for r in ledger.records.values() for a in r.attempts]
    assert outcomes.count("served") == 3
    assert value(got, "waterfall_circuits_open") == 1  # a's circuit: six failures in a row
