"""The router in front of fakes passes the fakes' conduct verdict: it waits out a hint for
every request to that entry, and what it retries on the same entry it retries with backoff."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgi_helpers import call

from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider, judge_conduct

pytestmark = pytest.mark.anyio


def chat(text: str) -> dict[str, Any]:
    """A client request; each has its own text, so that the fakes tell requests apart."""
    return {"model": "fast", "messages": [{"role": "user", "content": text}]}


def make(scripts: dict[str, list[str]]) -> tuple[WaterfallMiddleware, FakeNetwork]:
    net = FakeNetwork({h: FakeProvider(name=h, script=scripts.get(h, [])) for h in ("a", "b")})
    config = {
        "providers": {h: {"base_url": f"http://{h}/v1", "api_key": f"sk-{h}"} for h in "ab"},
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
    }
    return WaterfallMiddleware(None, config, transport=net, clock=time.time), net


async def test_the_router_honours_a_hint_for_every_request() -> None:
    app, net = make({"a": ["rate_limit:dialect=retry-after-ms,seconds=0.4"]})
    first = await call(app, "POST", "/v1/chat/completions", chat("one"))
    assert first.headers["x-waterfall-provider"] == "b"
    second = await call(app, "POST", "/v1/chat/completions", chat("two"))
    assert second.headers["x-waterfall-provider"] == "b"  # a is cooling down
    await asyncio.sleep(0.45)
    third = await call(app, "POST", "/v1/chat/completions", chat("three"))
    assert third.headers["x-waterfall-provider"] == "a"
    for host in ("a", "b"):
        verdict = judge_conduct(net[host])
        assert verdict.passed, verdict.report()
    assert judge_conduct(net["a"]).check("retry_after").status == "pass"


async def test_two_replicas_without_a_shared_cooldown_store_fail() -> None:
    """A second replica that never heard of the hint sends the next request straight to the
    fake, during the wait: the verdict sees it (a shared cooldown store is the cure)."""
    app, net = make({"a": ["rate_limit:dialect=retry-after-ms,seconds=0.5"]})
    other = WaterfallMiddleware(None, app.config, transport=net, clock=time.time)
    await call(app, "POST", "/v1/chat/completions", chat("one"))
    await asyncio.sleep(0.1)
    answer = await call(other, "POST", "/v1/chat/completions", chat("two"))
    assert answer.headers["x-waterfall-provider"] == "a"
    check = judge_conduct(net["a"]).check("retry_after")
    assert check.status == "fail"
    assert "another request for fake-small came" in check.violations[0].message


async def test_the_router_retries_a_transient_failure_with_backoff() -> None:
    app, net = make({"a": ["status:code=503", "ok"]})
    answer = await call(app, "POST", "/v1/chat/completions", chat("one"))
    assert answer.status == 200
    assert [r.status for r in net["a"].requests] == [503, 200]  # retried on the same entry
    verdict = judge_conduct(net["a"])
    assert verdict.passed, verdict.report()
    assert verdict.check("backoff").status == "pass"


async def test_the_router_never_retries_a_request_error() -> None:
    app, net = make({"a": ["status:code=400"]})
    answer = await call(app, "POST", "/v1/chat/completions", chat("one"))
    assert answer.status == 400
    verdict = judge_conduct(net["a"])
    assert verdict.passed, verdict.report()
    assert verdict.check("no_retry_4xx").status == "pass"


async def test_the_router_under_seeded_chaos_passes() -> None:
    """A provider failing 30% of its requests at random (seed 0): every request is served,
    and neither fake sees misconduct."""
    app, net = make({})
    net["a"].add_rule({"name": "chaos", "p": 0.3, "behaviours": "status:code=503"})
    statuses = [
        (await call(app, "POST", "/v1/chat/completions", chat(f"request {i}"))).status
        for i in range(20)
    ]
    assert statuses == [200] * 20
    assert any(r.status == 503 for r in net["a"].requests)
    for host in ("a", "b"):
        verdict = judge_conduct(net[host])
        assert verdict.passed, verdict.report()
