"""Failures as evidence: classes, retries and budgets, health circuits, fail-open, local errors,
and context-aware fall-through, driven through ASGI in front of scripted upstreams."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from asgi_helpers import call, chat_completion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waterfall_asgi.circuits import Circuit, RetryBudget
from waterfall_asgi.config import CircuitPolicy, ConfigError, load_config
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.router import NO_CALL, Router, is_context_length_error
from waterfall_asgi.upstream import (
    UpstreamConnectError,
    UpstreamLocalError,
    UpstreamStaleConnection,
    UpstreamTransportError,
    _aiohttp_error,
)
from waterfall_fakes import FakeNetwork, FakeProvider

NOW = 1_800_000_000.0
SECRET = "sk-upstream-secret-0123456789"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello there"}]}
MODELS = {"a": "fake-small", "b": "fake-medium", "c": "fake-large"}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def _ok(model: str) -> httpx.Response:
    return httpx.Response(200, json=chat_completion(model))


def respond(step: str, model: str) -> httpx.Response:
    """One scripted upstream answer (or failure below HTTP)."""
    if step == "ok":
        return _ok(model)
    if step == "500":
        return _error(500, "server_error", "The server had an error.")
    if step == "503hint":
        return _error(503, "overloaded", "Overloaded.", **{"retry-after": "7"})
    if step == "429":
        return _error(429, "rate_limit_exceeded", "Slow down.", **{"retry-after": "5"})
    if step == "429short":
        return _error(429, "rate_limit_exceeded", "Slow down.", **{"retry-after-ms": "30"})
    if step == "400":
        return _error(400, "invalid_request", "Bad request.")
    if step == "too_long":
        return _error(
            400,
            "context_length_exceeded",
            "This model's maximum context length is 1000 tokens. However, your messages "
            "resulted in 1500 tokens. Please reduce the length of the messages.",
        )
    if step == "filter":
        return _error(400, "content_filter", "The response was filtered (content management).")
    if step == "reset":
        raise httpx.ReadError("[Errno 104] Connection reset by peer")
    if step == "timeout":
        raise httpx.ReadTimeout("timed out")
    if step == "emfile":
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise httpx.ConnectError("[Errno 24] Too many open files") from exc
    if step == "pool":
        raise httpx.PoolTimeout("no connection available")
    if step == "stale":
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    raise AssertionError(step)


class Scripted(httpx.AsyncBaseTransport):
    """Each host answers from its own script, one step per call (``ok`` once it runs out).
    ``check`` (if set) runs before each call: where the tests look at the router's state."""

    def __init__(self, scripts: dict[str, list[str]] | None = None) -> None:
        self.scripts = {h: list(s) for h, s in (scripts or {}).items()}
        self.calls: Counter[str] = Counter()
        self.check: Callable[[str], Awaitable[None]] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if self.check is not None:
            await self.check(host)
        self.calls[host] += 1
        steps = self.scripts.get(host)
        step = steps.pop(0) if steps else "ok"
        return respond(step, json.loads(request.content)["model"])


def make(
    transport: httpx.AsyncBaseTransport,
    clock: Callable[[], float],
    *,
    chain: list[str] | None = None,
    models: dict[str, Any] | None = None,
    **policy: Any,
) -> WaterfallMiddleware:
    config: dict[str, Any] = {
        "providers": {
            h: {
                "base_url": f"http://{h}/v1",
                "api_key": SECRET,
                "timeouts": {"first_byte": 0.5, "read": 0.5},
            }
            for h in "abc"
        },
        "chains": {"fast": chain or [f"{h}/{m}" for h, m in MODELS.items()][:2]},
        "policy": {"backoff": 0, **policy},
        "ledger": {"path": None},
        "models": models or {},
    }
    return WaterfallMiddleware(None, config, transport=transport, clock=clock)


def router_of(app: WaterfallMiddleware) -> Router:
    assert app.router is not None
    return app.router


async def chat(app: WaterfallMiddleware, body: dict[str, Any] | None = None, **headers: str) -> Any:
    return await call(app, "POST", "/v1/chat/completions", body or CHAT, headers)


pytestmark = pytest.mark.anyio


# -- one request's failure is evidence, never a verdict for everyone --------------------------
async def test_one_poison_request_leaves_every_other_client_served() -> None:
    clock = Clock()
    net = FakeNetwork({h: FakeProvider(name=h, clock=clock) for h in "ab"})
    app = make(net, clock)
    poison = await chat(app, **{"x-fake-behaviour": "status:code=500"})
    assert poison.status == 503
    assert poison.headers["x-waterfall-attempts"] == (
        "a/fake-small 500 retried, a/fake-small 500, b/fake-medium 500 retried, b/fake-medium 500"
    )
    assert poison.headers["retry-after"] == "1"  # nothing cools: come back at once (not 0)
    assert await app.cooldowns.snapshot() == {}
    # every other client's next requests are served, by the first entry, at once
    for _ in range(3):
        plain = await chat(app)
        assert plain.status == 200
        assert plain.headers["x-waterfall-attempts"] == "a/fake-small 200"
    # the poison again and again, between others' requests: the circuit never opens
    for _ in range(5):
        assert (await chat(app, **{"x-fake-behaviour": "status:code=500"})).status == 503
        for _ in range(3):
            assert (await chat(app)).headers["x-waterfall-provider"] == "a"
    # (b saw nothing but the poison, 12 failures in a row: its own threshold, crossed)
    assert router_of(app).circuits["a/fake-small"].open_until is None
    await app.shutdown()


async def test_a_circuit_opens_on_consecutive_failures_and_one_probe_closes_it() -> None:
    clock = Clock()
    net = Scripted({"a": ["500"] * 4})
    app = make(net, clock, retries=0, circuit={"failures": 3, "open_for": 10})
    for _ in range(3):
        assert (await chat(app)).headers["x-waterfall-provider"] == "b"
    circuit = router_of(app).circuits["a/fake-small"]
    assert circuit.open_until == clock.now + 10
    # open: passed over without a call
    skipped = await chat(app)
    assert skipped.headers["x-waterfall-attempts"] == "a/fake-small open_circuit, b/fake-medium 200"
    assert net.calls["a"] == 3
    assert await app.cooldowns.snapshot() == {}  # health is kept apart from providers' hints
    # the open period is over: one probe, which fails: open again, twice as long
    clock.advance(10)
    probed = await chat(app)
    assert probed.headers["x-waterfall-attempts"] == "a/fake-small 500 probe, b/fake-medium 200"
    assert circuit.open_until == clock.now + 20
    clock.advance(19)
    assert (await chat(app)).headers["x-waterfall-attempts"].startswith("a/fake-small open_circ")
    clock.advance(1)
    healed = await chat(app)
    assert healed.headers["x-waterfall-attempts"] == "a/fake-small 200 probe"
    assert circuit.open_until is None
    assert (await chat(app)).headers["x-waterfall-attempts"] == "a/fake-small 200"
    assert net.calls["a"] == 6
    await app.shutdown()


async def test_a_failure_ratio_over_the_window_opens_the_circuit() -> None:
    clock = Clock()
    # every other call fails: never 3 in a row, but half of the last 6 calls
    net = Scripted({"a": ["500", "ok"] * 3})
    policy = {"failures": 3, "failure_ratio": 0.5, "min_requests": 6, "window": 60}
    app = make(net, clock, retries=0, circuit=policy)
    served = [(await chat(app)).headers["x-waterfall-provider"] for _ in range(6)]
    assert served == ["b", "a", "b", "a", "b", "a"]
    assert router_of(app).circuits["a/fake-small"].open_until is None  # 3 of 5 calls
    net.scripts["a"] = ["500"]
    await chat(app)  # 4 of 7 >= 0.5
    assert router_of(app).circuits["a/fake-small"].open_until is not None
    await app.shutdown()


async def test_when_every_entry_is_open_for_health_one_is_tried_not_a_503() -> None:
    clock = Clock()
    net = Scripted({"a": ["500"], "b": ["500"]})
    app = make(net, clock, retries=0, circuit={"failures": 1, "open_for": 5})
    first = await chat(app)
    assert first.status == 503
    assert first.headers["retry-after"] == "5"  # when the soonest circuit may be probed
    assert "(cooling down 5s)" in first.json()["error"]["message"]
    clock.advance(1)
    second = await chat(app)
    assert second.status == 200
    assert second.headers["x-waterfall-attempts"] == (
        "a/fake-small open_circuit, b/fake-medium open_circuit, a/fake-small 200 fail_open"
    )
    assert router_of(app).circuits["a/fake-small"].open_until is None  # closed by the success
    assert net.calls == {"a": 2, "b": 1}
    await app.shutdown()


async def test_fail_open_skips_entries_under_a_hint_and_a_hint_alone_means_no_call() -> None:
    clock = Clock()
    net = Scripted({"a": ["429"], "b": ["500"]})
    app = make(net, clock, retries=0, circuit={"failures": 1})
    assert (await chat(app)).status == 503
    again = await chat(app)  # a cools (hint), b's circuit is open: b is tried anyway
    assert again.status == 200
    assert again.headers["x-waterfall-attempts"] == (
        "a/fake-small cooling, b/fake-medium open_circuit, b/fake-medium 200 fail_open"
    )
    net.scripts = {"a": ["429"], "b": ["429"]}
    clock.advance(5)
    assert (await chat(app)).status == 503
    calls = sum(net.calls.values())
    hinted = await chat(app)  # every entry under a provider's hint: 503 without a call
    assert hinted.status == 503
    assert sum(net.calls.values()) == calls
    assert hinted.headers["retry-after"] == "5"
    await app.shutdown()


async def test_a_failing_status_with_a_hint_is_an_instruction() -> None:
    clock = Clock()
    net = Scripted({"a": ["503hint"]})
    app = make(net, clock)
    result = await chat(app)
    assert result.headers["x-waterfall-attempts"] == "a/fake-small 503, b/fake-medium 200"
    assert await app.cooldowns.get("a/fake-small") == clock.now + 7  # exactly, not retried
    assert net.calls["a"] == 1
    await app.shutdown()


async def test_a_timeout_is_evidence_but_not_retried() -> None:
    clock = Clock()
    net = Scripted({"a": ["timeout"]})
    app = make(net, clock)
    result = await chat(app)
    assert result.headers["x-waterfall-attempts"] == "a/fake-small timeout, b/fake-medium 200"
    assert router_of(app).circuits["a/fake-small"].consecutive == 1
    assert await app.cooldowns.snapshot() == {}
    await app.shutdown()


# -- retries and their budgets ----------------------------------------------------------------
@pytest.mark.parametrize("step", ["500", "reset"])
async def test_a_transient_failure_is_retried_on_the_same_entry(step: str) -> None:
    clock = Clock()
    net = Scripted({"a": [step]})
    app = make(net, clock)
    result = await chat(app)
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "a"
    trail = result.headers["x-waterfall-attempts"]
    first = "a/fake-small 500 retried" if step == "500" else "a/fake-small retried"
    assert trail == f"{first}, a/fake-small 200"
    assert net.calls == {"a": 2}
    await app.shutdown()


@pytest.mark.parametrize("step", ["400", "filter", "too_long"])
async def test_a_client_error_goes_back_at_once_never_retried(step: str) -> None:
    clock = Clock()
    net = Scripted({"a": [step]})
    app = make(net, clock)
    result = await chat(app)
    assert result.status == 400
    assert net.calls == {"a": 1}
    assert result.headers["x-waterfall-attempts"] == "a/fake-small 400"
    assert await app.cooldowns.snapshot() == {}
    assert router_of(app).circuits == {}
    await app.shutdown()


async def test_the_router_wide_budget_stops_retries_in_a_storm() -> None:
    clock = Clock()
    net = Scripted({"a": ["500"] * 40})
    circuit = {"failures": 100, "failure_ratio": 1, "min_requests": 1000}
    app = make(net, clock, retry_budget=0.1, retry_burst=2, circuit=circuit)
    for _ in range(20):
        assert (await chat(app)).headers["x-waterfall-provider"] == "b"
    budget = router_of(app).retry_budget
    assert budget.retries <= 2 + 0.1 * 20
    assert net.calls["a"] == 20 + budget.retries
    await app.shutdown()


async def test_the_request_attempt_budget_bounds_its_calls() -> None:
    clock = Clock()
    chain = [f"{h}/{m}" for h, m in MODELS.items()]
    net = Scripted({h: ["500"] * 3 for h in "abc"})
    app = make(net, clock, chain=chain, max_attempts=3)
    result = await chat(app)
    assert result.status == 503
    assert result.headers["x-waterfall-attempts"] == (
        "a/fake-small 500 retried, a/fake-small 500, b/fake-medium 500, c/fake-large budget"
    )
    assert sum(net.calls.values()) == 3
    await app.shutdown()


async def test_a_short_429_is_waited_out_on_the_same_entry() -> None:
    net = Scripted({"a": ["429short"]})
    app = make(net, time.time, max_wait=1)  # a real wait: the 429 asks for 30 ms
    result = await chat(app)
    assert result.status == 200
    assert result.headers["x-waterfall-attempts"] == "a/fake-small 429 waited, a/fake-small 200"
    assert net.calls == {"a": 2}
    await app.shutdown()


# -- the router's own trouble ----------------------------------------------------------------
@pytest.mark.parametrize("step", ["emfile", "pool"])
async def test_a_local_resource_error_never_marks_a_provider(
    step: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "waterfall_asgi")
    clock = Clock()
    net = Scripted({h: [step] * 2 for h in "ab"})
    app = make(net, clock, circuit={"failures": 1})
    result = await chat(app)
    assert result.status == 503
    outcomes = [a.split()[-1] for a in result.headers["x-waterfall-attempts"].split(", ")]
    assert outcomes == ["local_error"] * 4  # retried once each, within the budget
    assert await app.cooldowns.snapshot() == {}
    assert router_of(app).circuits == {}
    local = router_of(app).local
    assert local.errors == 4
    assert set(local.by_kind) == {"EMFILE" if step == "emfile" else "PoolTimeout"}
    assert "the router's own trouble" in caplog.text
    assert SECRET not in caplog.text + result.body.decode()
    # the cause is gone: served at once, by the first entry
    assert (await chat(app)).headers["x-waterfall-attempts"] == "a/fake-small 200"
    await app.shutdown()


async def test_a_stale_kept_alive_connection_is_sent_again_at_once() -> None:
    clock = Clock()
    net = Scripted({"a": ["stale"]})
    app = make(net, clock, retries=0)
    result = await chat(app)
    assert result.headers["x-waterfall-attempts"] == "a/fake-small local_error, a/fake-small 200"
    assert router_of(app).circuits == {}
    # closed again on the fresh connection: now it is the provider's doing
    net.scripts["a"] = ["stale", "stale"]
    again = await chat(app)
    assert again.headers["x-waterfall-attempts"] == (
        "a/fake-small local_error, a/fake-small transport_error, b/fake-medium 200"
    )
    assert router_of(app).circuits["a/fake-small"].consecutive == 1
    await app.shutdown()


def test_upstream_errors_map_local_causes_apart() -> None:
    assert isinstance(
        _aiohttp_error(aiohttp.ClientOSError(errno.EMFILE, "Too many open files")),
        UpstreamLocalError,
    )
    assert isinstance(_aiohttp_error(OSError(errno.ENOBUFS, "No buffer")), UpstreamLocalError)
    assert isinstance(_aiohttp_error(aiohttp.ServerDisconnectedError()), UpstreamStaleConnection)
    refused = aiohttp.ClientOSError(errno.ECONNRESET, "reset")
    assert type(_aiohttp_error(refused)) is UpstreamTransportError
    assert not isinstance(_aiohttp_error(refused), UpstreamConnectError)


# -- context-aware fall-through --------------------------------------------------------------
WINDOWS = {
    "fake-small": {"context_window": 1000},
    "fake-medium": {"context_window": 1000},
    "fake-large": {"context_window": 8000},
}


async def test_a_context_length_400_falls_through_to_a_larger_window() -> None:
    clock = Clock()
    chain = [f"{h}/{m}" for h, m in MODELS.items()]
    net = Scripted({"a": ["too_long"]})
    app = make(net, clock, chain=chain, models=WINDOWS)
    result = await chat(app)
    assert result.status == 200
    assert result.headers["x-waterfall-attempts"] == (
        "a/fake-small 400 too_long, b/fake-medium skipped_context, c/fake-large 200"
    )
    assert net.calls == {"a": 1, "c": 1}
    assert await app.cooldowns.snapshot() == {}
    assert router_of(app).circuits == {}
    await app.shutdown()


async def test_a_context_length_400_without_a_larger_window_goes_back() -> None:
    clock = Clock()
    net = Scripted({"a": ["too_long"]})
    app = make(net, clock, models=WINDOWS)  # a and b: both 1000
    result = await chat(app)
    assert result.status == 400
    assert result.json()["error"]["code"] == "context_length_exceeded"
    assert net.calls == {"a": 1}
    await app.shutdown()


async def test_entries_whose_window_cannot_fit_are_skipped_up_front() -> None:
    clock = Clock()
    chain = [f"{h}/{m}" for h, m in MODELS.items()]
    net = Scripted()
    app = make(net, clock, chain=chain, models=WINDOWS)
    big = {**CHAT, "messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 500}
    result = await chat(app, big)  # about 750 + 4 prompt tokens + 500: only c fits
    assert result.headers["x-waterfall-attempts"] == (
        "a/fake-small skipped_context, b/fake-medium skipped_context, c/fake-large 200"
    )
    huge = {**big, "max_tokens": 9000}  # fits nowhere: the estimate is rough, so all are tried
    assert (await chat(app, huge)).headers["x-waterfall-attempts"] == "a/fake-small 200"
    await app.shutdown()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"code": "context_length_exceeded", "message": "x"}}, True),
        ({"error": {"message": "prompt is too long: 210000 tokens > 200000 maximum"}}, True),
        ({"error": {"message": "This endpoint's maximum context length is 8192 tokens."}}, True),
        ({"error": {"message": "The input token count (40000) exceeds the maximum number"}}, True),
        ({"error": {"message": "Input is too long for requested model."}}, True),
        ({"error": {"message": "the request exceeds the available context size"}}, True),
        ({"error": "This model's maximum context length is 4096 tokens"}, True),
        ({"error": {"code": "content_filter", "message": "context length of the filter"}}, False),
        ({"error": {"code": "invalid_request", "message": "Unknown parameter: foo."}}, False),
        ({"detail": "context length"}, False),
    ],
)
def test_context_length_errors_are_recognised(body: dict[str, Any], expected: bool) -> None:
    assert is_context_length_error(json.dumps(body).encode()) is expected


# -- config ---------------------------------------------------------------------------------
def test_new_policy_keys_are_validated_with_their_names() -> None:
    base = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"c": ["a/m"]}}
    policy = load_config(base).policy
    assert (policy.retries, policy.max_wait, policy.max_attempts) == (1, 0.0, 8)
    assert (policy.circuit.failures, policy.circuit.open_for) == (5, 5.0)
    for bad, key in [
        ({"retries": -1}, "policy.retries"),
        ({"retry_budget": 2}, "policy.retry_budget"),
        ({"circuit": {"failure_ratio": 0}}, "policy.circuit.failure_ratio"),
        ({"circuit": {"threshold": 3}}, "policy.circuit.threshold"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config({**base, "policy": bad})


# -- invariants -------------------------------------------------------------------------------
STEPS = ["ok", "ok", "500", "reset", "timeout", "429", "503hint", "400", "emfile", "stale"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scripts=st.lists(st.lists(st.sampled_from(STEPS), max_size=14), min_size=3, max_size=3),
    advances=st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0, 6.0]), min_size=1, max_size=14),
    failures=st.integers(min_value=1, max_value=3),
)
def test_the_failure_model_keeps_its_promises(
    scripts: list[list[str]], advances: list[float], failures: int
) -> None:
    """Whatever each upstream answers, over a run of requests with time passing: an entry under
    a provider's hint is never called; an open circuit's entry is called only by its one probe or
    fail-open call; a request never makes more calls than its budget, nor the router more
    retries than its own; a client error is never retried; a local error never marks a
    provider."""
    asyncio.run(_check_run(scripts, advances, failures))


async def _check_run(scripts: list[list[str]], advances: list[float], failures: int) -> None:
    clock = Clock()
    net = Scripted(dict(zip("abc", scripts, strict=True)))
    chain = [f"{h}/{m}" for h, m in MODELS.items()]
    app = make(
        net,
        clock,
        chain=chain,
        retry_budget=0.2,
        retry_burst=2,
        max_attempts=4,
        circuit={"failures": failures, "open_for": 2},
    )
    await app.startup()
    router = router_of(app)
    keys = dict(zip("abc", chain, strict=True))

    async def check(host: str) -> None:
        until = await app.cooldowns.get(keys[host])
        assert until is None or until <= clock(), "called while under a provider's hint"
        circuit = router.circuits.get(keys[host])
        if circuit is not None and circuit.open_until is not None:
            assert circuit.probing, "an open circuit called without its probe slot"

    net.check = check
    for advance in advances:
        clock.advance(advance)
        before_cool = await app.cooldowns.snapshot()
        before = {k: (c.open_until, c.consecutive) for k, c in router.circuits.items()}
        result = await chat(app)
        assert result.status in (200, 400, 503)
        trail = result.headers["x-waterfall-attempts"].split(", ")
        steps = [s.split(" ") for s in trail]  # entry, status or outcome, and more
        made = [s for s in steps if s[1] not in NO_CALL]
        assert len(made) <= 4
        if result.status == 400:  # a client error: the last call, never retried
            assert steps[-1][1] == "400"
        assert all(s[1] != "400" for s in steps[:-1])
        # a local error never marks its provider
        after_cool = await app.cooldowns.snapshot()
        for key in keys.values():
            mine = [s[1] for s in steps if s[0] == key and s[1] not in NO_CALL]
            if mine and all(s == "local_error" for s in mine):
                assert after_cool.get(key) == before_cool.get(key)
                circuit = router.circuits.get(key)
                state = None if circuit is None else (circuit.open_until, circuit.consecutive)
                assert state == before.get(key, None if circuit is None else (None, 0))
        budget = router.retry_budget
        assert budget.retries <= 2 + 0.2 * budget.requests
        assert not any(c.probing for c in router.circuits.values())  # every slot released
    await app.shutdown()


def test_circuit_and_budget_units() -> None:
    circuit = Circuit(CircuitPolicy(failures=2, open_for=5, growth=3), max_open=20)
    assert not circuit.failure(0.0)
    assert circuit.success(1.0) is False  # a failure in the window: kept
    assert not circuit.failure(2.0)  # the success broke the run
    assert circuit.failure(3.0)
    assert circuit.open_until == 8.0
    assert circuit.take_probe(8.0)
    assert circuit.failure(8.0, probe=True)
    circuit.release()
    assert circuit.open_until == 23.0  # 5 x 3 = 15
    assert circuit.take_probe(23.0)
    circuit.failure(23.0, probe=True)
    circuit.release()
    assert circuit.open_until == 43.0  # bounded by max_open
    assert circuit.take_fail_open()
    assert not circuit.take_fail_open()
    circuit.success(44.0, probe=True)
    circuit.release()
    assert circuit.open_until is None
    assert circuit.open_for == 5
    assert circuit.success(200.0) is True  # nothing failed in its window: may be forgotten
    budget = RetryBudget(0.25, 0)
    granted = 0
    for _ in range(100):
        budget.requests += 1
        granted += budget.take()
    assert granted == 25


def test_the_documented_defaults_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("GROQ_API_KEY", "sk-y")
    config = load_config(Path(__file__).resolve().parents[1] / "docs/examples/failures.toml")
    assert config.policy == load_config({"providers": {}}).policy


@settings(max_examples=40, deadline=None)
@given(
    poisoned=st.lists(st.booleans(), min_size=1, max_size=12),
    failures=st.integers(min_value=1, max_value=30),
)
def test_one_requests_failure_changes_anothers_outcome_only_past_the_threshold(
    poisoned: list[bool], failures: int
) -> None:
    """Requests that make every entry fail, between plain ones: each plain request is served by
    the first entry, unless that entry's circuit is open (its threshold crossed), and then by
    another; never a 503."""

    async def run() -> None:
        clock = Clock()
        net = FakeNetwork({h: FakeProvider(name=h, clock=clock) for h in "ab"})
        circuit = {"failures": failures, "min_requests": 1000}
        app = make(net, clock, retry_burst=100, circuit=circuit)
        await app.startup()
        router = router_of(app)
        streak = 0  # a's health failures in a row, as the router counts them
        for poison in poisoned:
            clock.advance(0.5)
            if poison:
                result = await chat(app, **{"x-fake-behaviour": "status:code=500"})
                assert result.status == 503
                streak += 2 if streak + 1 < failures else 1  # retried unless that opened it
                continue
            result = await chat(app)
            assert result.status == 200
            circuit_a = router.circuits.get("a/fake-small")
            if streak < failures:  # the threshold was not crossed: as if no poison came
                assert result.headers["x-waterfall-attempts"] == "a/fake-small 200"
                streak = 0
            else:
                assert circuit_a is not None
                assert result.headers["x-waterfall-provider"] in ("a", "b")
        await app.shutdown()

    asyncio.run(run())


async def test_one_probe_at_a_time_however_many_requests_arrive() -> None:
    clock = Clock()
    net = Scripted({"a": ["500"]})
    app = make(net, clock, retries=0, circuit={"failures": 1, "open_for": 5})
    assert (await chat(app)).headers["x-waterfall-provider"] == "b"  # a's circuit opens
    clock.advance(5)
    release = asyncio.Event()
    in_a = asyncio.Event()

    async def hold(host: str) -> None:
        if host == "a":
            in_a.set()
            await release.wait()

    net.check = hold
    probe = asyncio.ensure_future(chat(app))
    await in_a.wait()  # the probe is at a, held there
    others = await asyncio.gather(*(chat(app) for _ in range(20)))
    assert [r.headers["x-waterfall-provider"] for r in others] == ["b"] * 20
    assert all(
        r.headers["x-waterfall-attempts"].startswith("a/fake-small open_circ") for r in others
    )
    release.set()
    assert (await probe).headers["x-waterfall-attempts"] == "a/fake-small 200 probe"
    assert net.calls["a"] == 2  # the failure, then the one probe
    await app.shutdown()


def test_check_config_names_a_wrong_failure_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from waterfall_asgi.cli import main

    path = tmp_path / "router.toml"
    path.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[chains]\nfast = ["a/m"]\n'
        "[policy]\nretries = -1\nmax_wait = 2\n"
        "[policy.circuit]\nfailure_ratio = 1.5\nopen_fro = 3\n"
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    for key in ("policy.retries", "policy.circuit.failure_ratio", "policy.circuit.open_fro"):
        assert key in err
    assert "open_for" in err  # did you mean
    path.write_text(path.read_text().replace("retries = -1", "retries = 2").split("[policy.c")[0])
    assert main(["check-config", str(path)]) == 0
