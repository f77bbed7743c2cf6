"""Cost routing end to end: requests land on the cheapest fitting deployment, move down the price
list under 429s, and the ledger's totals match the fakes' own usage to the last msat."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from asgi_helpers import call, sse_data

from waterfall_asgi import ConfigError, MemoryLedger, WaterfallMiddleware
from waterfall_fakes import DEFAULT_MODELS, FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

CATALOG = {m.id: m for m in DEFAULT_MODELS}
QUALITY = {"fake-small": 40, "fake-medium": 70, "fake-large": 90}
CAPABILITIES = {"fake-small": [], "fake-medium": ["tools"], "fake-large": ["tools", "vision"]}
HOSTS = {"cheap": "fake-small", "mid": "fake-medium", "dear": "fake-large"}


def msat_price(model: str) -> dict[str, str]:
    """The fakes publish sats per token; the router is configured in msat, exactly."""
    m = CATALOG[model]
    return {
        "unit": "msat",
        "prompt": str(m.sats_prompt * 1000),
        "completion": str(m.sats_completion * 1000),
        "request": str(m.sats_request * 1000),
    }


def make(
    scripts: dict[str, list[str]] | None = None, *, cost_event: bool = False, **route: Any
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    scripts = scripts or {}
    net = FakeNetwork({h: FakeProvider(name=h, script=scripts.get(h, [])) for h in HOSTS})
    ledger = MemoryLedger()
    config = {
        "providers": {h: {"base_url": f"http://{h}/v1"} for h in HOSTS},
        "deployments": [
            {"provider": h, "model": m, "price": msat_price(m)} for h, m in HOSTS.items()
        ],
        "models": {
            m: {
                "quality": QUALITY[m],
                "context_window": CATALOG[m].context_length,
                "capabilities": CAPABILITIES[m],
            }
            for m in HOSTS.values()
        },
        "routes": {"auto": {"min_quality": 50, "quality_bounds": [30, 95], **route}},
        "ledger": {"path": None, "cost_event": cost_event},
    }
    return WaterfallMiddleware(None, config, transport=net, ledger=ledger), net, ledger


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "price me"}], **extra}


async def test_the_cheapest_deployment_meeting_the_bar_serves() -> None:
    app, net, ledger = make()
    result = await call(app, "POST", "/v1/chat/completions", ask(max_tokens=10))
    assert result.headers["x-waterfall-provider"] == "mid"  # small is cheaper but below 50
    (record,) = ledger.records.values()
    # estimated with the fast heuristic (6 prompt tokens): 6 x 1 + 10 x 4 + 1000 msat;
    # charged with the provider's own count (5 prompt tokens): 5 x 1 + 10 x 4 + 1000 msat
    assert result.headers["x-waterfall-estimated-cost"] == "1046 msat"
    assert (record.cost, record.cost_unit) == (1045, "msat")
    # the reference (the dearest fitting: large) for the same tokens: 5 x 5 + 10 x 15 + 2000
    assert record.reference_cost == 2175
    assert [r.path for r in net["cheap"].requests] == []


async def test_a_429_falls_to_the_next_cheapest() -> None:
    app, _, ledger = make({"mid": ["rate_limit"]})
    result = await call(app, "POST", "/v1/chat/completions", ask(max_tokens=10, stream=True))
    assert result.headers["x-waterfall-attempts"] == "mid/fake-medium 429, dear/fake-large 200"
    assert sse_data(result.body)[-1] == "[DONE]"
    (record,) = ledger.records.values()
    # 5 x 5 + 10 x 15 + 2000 msat: the dearer deployment, exactly
    assert (record.provider, record.cost) == ("dear", 2175)


async def test_quality_can_be_lowered_by_header_within_bounds() -> None:
    app, _, _ = make()
    low = {"x-waterfall-min-quality": "30"}
    result = await call(app, "POST", "/v1/chat/completions", ask(), low)
    assert result.headers["x-waterfall-provider"] == "cheap"
    out = await call(app, "POST", "/v1/chat/completions", ask(), {"x-waterfall-min-quality": "10"})
    assert (out.status, out.json()["error"]["code"]) == (400, "invalid_value")


async def test_capabilities_and_budgets_exclude_with_reasons() -> None:
    app, _, _ = make()
    tools = ask(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    headers = {"x-waterfall-min-quality": "30"}
    result = await call(app, "POST", "/v1/chat/completions", tools, headers)
    assert result.headers["x-waterfall-provider"] == "mid"  # cheap cannot do tools
    broke = await call(
        app, "POST", "/v1/chat/completions", ask(max_tokens=10), {"x-waterfall-budget": "100"}
    )
    assert broke.status == 400
    error = broke.json()["error"]
    assert error["code"] == "no_fitting_deployment"
    message = error["message"]
    assert "mid/fake-medium: worst case 1046 msat exceeds the budget of 100 msat" in message
    assert "cheap/fake-small: quality 40 is below 50" in message


async def test_routes_are_listed() -> None:
    app, _, _ = make()
    models = (await call(app, "GET", "/v1/models")).json()["data"]
    route = next(m for m in models if m["id"] == "auto")
    assert route["waterfall"]["kind"] == "route"
    assert route["waterfall"]["entries"] == [
        "cheap/fake-small",
        "mid/fake-medium",
        "dear/fake-large",
    ]


async def test_ledger_totals_match_the_fakes_usage_to_the_last_msat() -> None:
    app, net, ledger = make({"mid": ["ok", "rate_limit", "ok", "status:code=503"]})
    requests = [ask(max_tokens=n) for n in (3, 7, 11, 2, 9)]
    for body in requests:
        assert (await call(app, "POST", "/v1/chat/completions", body)).status == 200
    expected = Decimal(0)
    for host, model in HOSTS.items():
        price = msat_price(model)
        for r in net[host].requests:
            if r.status != 200:
                continue
            usage = json.loads(FakeProvider(name=host).handle(r.method, r.path, {}, r.body).body)
            tokens = usage["usage"]
            exact = (
                tokens["prompt_tokens"] * Decimal(price["prompt"])
                + tokens["completion_tokens"] * Decimal(price["completion"])
                + Decimal(price["request"])
            )
            expected += exact.to_integral_value(rounding="ROUND_CEILING")
    records = list(ledger.records.values())
    assert len(records) == len(requests)
    assert {r.cost_unit for r in records} == {"msat"}
    assert sum(r.cost or 0 for r in records) == expected


async def test_prices_imported_at_startup_route_requests() -> None:
    net = FakeNetwork({h: FakeProvider(name=h) for h in HOSTS})
    config = {
        "providers": {h: {"base_url": f"http://{h}/v1", "import_prices": "routstr"} for h in HOSTS},
        "deployments": [f"{h}/{m}" for h, m in HOSTS.items()],
        "routes": {"auto": {"unit": "msat"}},
    }
    ledger = MemoryLedger()
    app = WaterfallMiddleware(None, config, transport=net, ledger=ledger)
    await app.startup()
    try:
        # published in sats, imported in msat, exactly
        assert app.prices["mid/fake-medium"].prompt == CATALOG["fake-medium"].sats_prompt * 1000
        result = await call(app, "POST", "/v1/chat/completions", ask(max_tokens=10))
        assert result.headers["x-waterfall-provider"] == "cheap"  # no quality bar: cheapest
        (record,) = ledger.records.values()
        # 5 x 0.15 + 10 x 0.6 msat = 6.75, rounded up once
        assert (record.cost, record.cost_unit) == (7, "msat")
        assert net["cheap"].requests[0].path == "/v1/models"
    finally:
        await app.shutdown()


async def test_a_candidate_without_any_price_is_a_config_error() -> None:
    base = {
        "providers": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
        "routes": {"auto": {"deployments": ["a/fake-small"]}},
    }
    unpriced = WaterfallMiddleware(None, base)  # kept, and raised at startup
    assert "no price for a/fake-small" in str(unpriced.config_error)
    with pytest.raises(ConfigError, match="no price for a/fake-small"):
        await unpriced.startup()
    importing = {
        **base,
        "providers": {"a": {"base_url": "http://a/v1", "import_prices": "openrouter"}},
        "routes": {"auto": {"deployments": ["a/not-listed"]}},
    }
    app = WaterfallMiddleware(
        None, importing, transport=FakeNetwork({"a": FakeProvider()}), ledger=MemoryLedger()
    )
    with pytest.raises(ConfigError, match="no price for a/not-listed"):
        await app.startup()
    await app.shutdown()


async def test_the_prompt_estimator_is_pluggable() -> None:
    app, _, _ = make()
    app.prompt_estimator = lambda payload: 200_000  # far beyond every context window
    result = await call(app, "POST", "/v1/chat/completions", ask(max_tokens=10))
    assert result.status == 400
    assert "context window" in result.json()["error"]["message"]


def test_a_reference_that_cannot_be_converted_is_a_config_error() -> None:
    config = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "deployments": [
            {"provider": "a", "model": "m", "price": {"unit": "msat", "prompt": "1"}},
            {"provider": "a", "model": "r", "price": {"unit": "usd", "prompt": "1"}},
        ],
        "routes": {"auto": {"unit": "msat", "deployments": ["a/m"], "reference": "a/r"}},
    }
    app = WaterfallMiddleware(None, config)  # kept, and raised at startup
    assert isinstance(app.config_error, ConfigError)
    assert str(app.config_error).startswith("routes.auto.reference: no rate from 'usd' to")


async def test_the_cost_event_says_what_the_ledger_records() -> None:
    app, _, ledger = make(cost_event=True)
    result = await call(app, "POST", "/v1/chat/completions", ask(max_tokens=10, stream=True))
    event = json.loads(result.body.decode().split("event: waterfall.cost\ndata: ", 1)[1])
    (record,) = ledger.records.values()
    assert (event["cost"], event["unit"]) == (record.cost, record.cost_unit)


async def test_a_budget_in_other_digits_is_refused_cleanly() -> None:
    app, _, _ = make()
    result = await call(app, "POST", "/v1/chat/completions", ask(), {"x-waterfall-budget": "²"})
    assert (result.status, result.json()["error"]["code"]) == (400, "invalid_value")
    assert "whole number" in result.json()["error"]["message"]
