"""The rate-limit hints of Azure OpenAI, Anthropic and Google: read on their own, and through the
router, where a failing entry cools exactly as long as the provider said."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from asgi_helpers import Result, call, chat_completion
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.cooldown import body_retry_hint, preemptive_hint, retry_hint
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.router import Router
from waterfall_fakes import FakeNetwork, FakeProvider
from waterfall_fakes.ratelimit import (
    Limits,
    RateLimiter,
    format_rfc3339,
    rate_limit_headers,
    remaining_headers,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def anthropic(**limits: tuple[int, str]) -> dict[str, str]:
    """Anthropic's headers: ``tokens=(remaining, reset)`` for each limit named."""
    out = {}
    for what, (remaining, reset) in limits.items():
        what = what.replace("_", "-")
        out[f"anthropic-ratelimit-{what}-limit"] = "1000"
        out[f"anthropic-ratelimit-{what}-remaining"] = str(remaining)
        out[f"anthropic-ratelimit-{what}-reset"] = reset
    return out


def at(seconds: float) -> str:
    """The RFC 3339 time ``seconds`` after NOW, as Anthropic writes it."""
    return format_rfc3339(NOW + seconds)


def google(delay: Any, *, wrapped: bool = False, status: int = 429) -> bytes:
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": RETRY_INFO, "retryDelay": delay},
    ]
    error = {"code": status, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}
    body: Any = {"error": {**error, "details": details}}
    return json.dumps([body] if wrapped else body).encode()


# -- Azure OpenAI: x-ms-retry-after-ms ----------------------------------------------------------
def test_azure_ms_header() -> None:
    assert retry_hint({"x-ms-retry-after-ms": "2500"}, NOW) == 2.5
    assert retry_hint({"x-ms-retry-after-ms": " 20 "}, NOW) == 0.02
    assert retry_hint({"x-ms-retry-after-ms": "0"}, NOW) == 0.0


def test_azure_ms_header_precedence() -> None:
    both = {"retry-after-ms": "1000", "x-ms-retry-after-ms": "3000", "retry-after": "9"}
    assert retry_hint(both, NOW) == 1.0  # retry-after-ms first
    del both["retry-after-ms"]
    assert retry_hint(both, NOW) == 3.0  # then Azure's, before Retry-After
    assert retry_hint({**both, "retry-after-ms": "soon"}, NOW) == 3.0  # a junk one is passed over
    resets = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "40s"}
    assert retry_hint({"x-ms-retry-after-ms": "3000", **resets}, NOW) == 3.0


@pytest.mark.parametrize(
    "value", ["soon", "", "-1", "nan", "inf", "1e400", "3s", "Fri, 15 Jan 2027 08:00:30 GMT"]
)
def test_azure_ms_header_junk(value: str) -> None:
    assert retry_hint({"x-ms-retry-after-ms": value}, NOW) is None
    assert retry_hint({"x-ms-retry-after-ms": value, "retry-after": "5"}, NOW) == 5.0


# -- Anthropic: anthropic-ratelimit-*-reset as RFC 3339 times ----------------------------------
@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("2027-01-15T08:00:30Z", 30.0),
        ("2027-01-15T08:00:30z", 30.0),
        ("2027-01-15t08:00:30Z", 30.0),
        ("2027-01-15 08:00:30Z", 30.0),
        ("  2027-01-15T08:00:30Z ", 30.0),
        ("2027-01-15T08:00:30.5Z", 30.5),
        ("2027-01-15T08:00:30.123456789Z", 30.123456789),
        ("2027-01-15T09:00:30+01:00", 30.0),
        ("2027-01-15T02:30:30-05:30", 30.0),
        ("2027-01-15T08:00:30.25+00:00", 30.25),
        ("2027-01-15T08:00:30-00:00", 30.0),
        ("2027-01-15T08:01:00Z", 60.0),
        ("2027-01-16T08:00:00Z", 86_400.0),
        ("2027-01-15T07:59:59Z", 0.0),  # already past: 0, never negative
        ("1970-01-01T00:00:00Z", 0.0),
        ("0001-01-01T00:00:00+01:00", 0.0),
        ("2027-01-15T08:00:00Z", 0.0),
    ],
)
def test_anthropic_reset_forms(stamp: str, seconds: float) -> None:
    headers = anthropic(requests=(0, stamp))
    assert retry_hint(headers, NOW) == pytest.approx(seconds, abs=1e-6)
    assert preemptive_hint(headers, NOW) == pytest.approx(seconds, abs=1e-6)


def test_anthropic_leap_second() -> None:
    leap = anthropic(tokens=(0, "2026-12-31T23:59:60Z"))
    new_year = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert retry_hint(leap, new_year - 10) == 10.0


@pytest.mark.parametrize(
    "stamp",
    [
        "",
        "soon",
        "30",  # not a delay: Anthropic's resets are times
        "2027-01-15",
        "2027-01-15T08:00:30",  # no zone: the instant is unknown
        "2027-01-15T08:00Z",  # no seconds
        "20270115T080030Z",
        "2027-01-15T08:00:30+0100",
        "2027-01-15T08:00:30+01",
        "2027-01-15T08:00:30.Z",
        "2027-01-15T08:00:30ZZ",
        "2027-1-15T08:00:30Z",
        "2027-13-15T08:00:30Z",
        "2027-02-30T08:00:30Z",
        "2027-01-15T24:00:30Z",
        "2027-01-15T08:60:30Z",
        "2027-01-15T08:00:61Z",
        "2027-01-15T08:00:30+24:00",
        "2027-01-15T08:00:30+01:60",
        "0000-01-01T00:00:00Z",
        "２０２７-01-15T08:00:30Z",  # full-width digits
        "Fri, 15 Jan 2027 08:00:30 GMT",
    ],
)
def test_anthropic_reset_junk(stamp: str) -> None:
    headers = anthropic(requests=(0, stamp))
    assert retry_hint(headers, NOW) is None
    assert preemptive_hint(headers, NOW) is None
    assert retry_hint({**headers, "retry-after": "5"}, NOW) == 5.0


def test_anthropic_far_future_is_read() -> None:
    headers = anthropic(requests=(0, "9999-12-31T23:59:59.999999-23:59"))
    seconds = retry_hint(headers, NOW)
    assert seconds is not None
    assert math.isfinite(seconds)
    assert seconds > 250_000_000_000 - NOW


def test_anthropic_takes_the_exhausted_limit_else_the_latest() -> None:
    one_spent = anthropic(requests=(0, at(10)), tokens=(5000, at(50)))
    assert retry_hint(one_spent, NOW) == 10.0
    assert preemptive_hint(one_spent, NOW) == 10.0
    two_spent = anthropic(
        requests=(0, at(10)),
        tokens=(0, at(50)),
        input_tokens=(0, at(20)),
        output_tokens=(9, at(90)),
    )
    assert retry_hint(two_spent, NOW) == 50.0  # the longest of the spent ones
    assert preemptive_hint(two_spent, NOW) == 50.0
    none_spent = anthropic(requests=(3, at(10)), tokens=(5000, at(50)), output_tokens=(9, at(5)))
    assert retry_hint(none_spent, NOW) == 50.0  # nothing says which: the latest
    assert preemptive_hint(none_spent, NOW) is None  # a success with something left: no cooling
    spent_reset_unreadable = anthropic(requests=(0, "later"), tokens=(5000, at(50)))
    assert retry_hint(spent_reset_unreadable, NOW) == 50.0
    assert preemptive_hint(spent_reset_unreadable, NOW) is None
    no_remaining = {"anthropic-ratelimit-output-tokens-reset": at(12)}
    assert retry_hint(no_remaining, NOW) == 12.0
    assert preemptive_hint(no_remaining, NOW) is None  # nothing says it is spent
    odd_zero = anthropic(input_tokens=(0, at(7)))
    odd_zero["anthropic-ratelimit-input-tokens-remaining"] = " 0.0 "
    assert preemptive_hint(odd_zero, NOW) == 7.0


def test_anthropic_retry_after_wins() -> None:
    # the fakes' anthropic dialect sends Retry-After (whole seconds) with the resets (whole
    # seconds, as times): half a second past a whole one, the two differ
    now = NOW + 0.5
    headers = dict(rate_limit_headers("anthropic", 7.2, now))
    assert headers["retry-after"] == "8"
    assert retry_hint(headers, now) == 8.0
    del headers["retry-after"]
    assert retry_hint(headers, now) == 7.5  # the resets alone: until NOW + 8


def test_precedence_across_dialects() -> None:
    headers = {
        "x-ratelimit-reset": str(int((NOW + 11) * 1000)),
        **anthropic(requests=(0, at(9))),
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "7s",
        "retry-after": "5",
        "x-ms-retry-after-ms": "3000",
        "retry-after-ms": "2000",
    }
    seen = []
    for prefix in (
        "retry-after-ms",
        "x-ms-retry-after-ms",
        "retry-after",
        "x-ratelimit-reset-",
        "anthropic-",
        "x-ratelimit-reset",
    ):
        seen.append(retry_hint(headers, NOW))
        headers = {k: v for k, v in headers.items() if not k.startswith(prefix)}
    seen.append(retry_hint(headers, NOW))
    assert seen == [2.0, 3.0, 5.0, 7.0, 9.0, 11.0, None]


def test_preemptive_hint_after_the_last_allowed_anthropic_request() -> None:
    clock_now = [NOW]
    limiter = RateLimiter(Limits(requests=2, window=60, dialect="anthropic"), lambda: clock_now[0])
    first = limiter.check(10)
    headers = dict(remaining_headers(first, "anthropic", NOW, first.window_reset))
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert preemptive_hint(headers, NOW) is None
    clock_now[0] = NOW + 15
    second = limiter.check(10)
    headers = dict(remaining_headers(second, "anthropic", clock_now[0], second.window_reset))
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert preemptive_hint(headers, clock_now[0]) == 45.0


# -- Google: RetryInfo.retryDelay in the error body ---------------------------------------------
@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("1.500s", 1.5),
        ("0.000000001s", 1e-9),
        ("0s", 0.0),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("30", 30.0),
        ({"seconds": 30}, 30.0),
        ({"seconds": "30", "nanos": 500_000_000}, 30.5),
        ({"nanos": 250_000_000}, 0.25),
    ],
)
@pytest.mark.parametrize("wrapped", [False, True])
def test_google_retry_delay(delay: Any, seconds: float, wrapped: bool) -> None:
    assert body_retry_hint(google(delay, wrapped=wrapped)) == pytest.approx(seconds, abs=1e-12)


def test_google_retry_delay_the_first_readable_one() -> None:
    body = json.loads(google("30s"))
    body["error"]["details"][1:1] = [{"@type": RETRY_INFO, "retryDelay": "soon"}]
    assert body_retry_hint(json.dumps(body).encode()) == 30.0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json retryDelay",
        b"\xff\xfe retryDelay",
        b'{"error": {"message": "slow down"}}',
        b'{"retryDelay": "30s"}',
        b'{"error": "retryDelay 30s"}',
        b'{"error": {"details": {"@type": "' + RETRY_INFO.encode() + b'", "retryDelay": "30s"}}}',
        b'{"error": {"details": [{"retryDelay": "30s"}]}}',  # no @type: not a RetryInfo
        b'{"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "30s"}]}}',
        b'{"error": {"details": [null, 1, "retryDelay"]}}',
        json.dumps([json.loads(google("30s"))] * 2).encode(),  # a list of two: not one error
        b"[" * 100_000 + b'"retryDelay"' + b"]" * 100_000,
        google("-1s"),
        google("soon"),
        google(""),
        google("30 s"),
        google("1e3s"),
        google("9" * 400 + "s"),
        google("9" * 400),
        google(30),
        google(None),
        google(True),
        google([]),
        google({"seconds": -30}),
        google({"seconds": True}),
        google({"seconds": "soon"}),
        google({"seconds": 10**400}),
        google({"seconds": 1, "nanos": "5"}),
    ],
)
def test_google_retry_delay_junk(body: bytes) -> None:
    assert body_retry_hint(body) is None


# -- never raise, never negative, never infinite ------------------------------------------------
HEADER_NAMES = [
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "retry-after",
    "x-ratelimit-reset",
    "x-ratelimit-remaining",
    *(f"x-ratelimit-{f}-{w}" for f in ("reset", "remaining") for w in ("requests", "tokens")),
    *(f"anthropic-ratelimit-{w}-{f}" for f in ("reset", "remaining") for w in LIMITS),
]
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=23, minutes=59))]
TIMES = st.datetimes(timezones=st.sampled_from(ZONES)).map(lambda d: d.isoformat())
VALUES = (
    st.text(max_size=40)
    | st.sampled_from(["0", "-0", "0.0", "1e400", "nan", "-inf", "9" * 400, "9" * 400 + "h"])
    | st.floats().map(str)
    | TIMES
)


def finite(seconds: float | None) -> bool:
    return seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), VALUES),
    now=st.floats(0, 4e9) | st.just(NOW),
)
def test_header_hints_never_raise_nor_go_negative(headers: dict[str, str], now: float) -> None:
    assert finite(retry_hint(headers, now))
    assert finite(preemptive_hint(headers, now))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


@given(
    delay=JSON | VALUES,
    seconds=JSON,
    nanos=JSON,
    wrapped=st.booleans(),
)
def test_body_hint_never_raises_nor_goes_negative(
    delay: Any, seconds: Any, nanos: Any, wrapped: bool
) -> None:
    assert finite(body_retry_hint(google(delay, wrapped=wrapped)))
    assert finite(body_retry_hint(google({"seconds": seconds, "nanos": nanos}, wrapped=wrapped)))


@given(st.binary(max_size=200) | JSON.map(lambda j: json.dumps(j).encode()))
def test_any_body_never_raises(body: bytes) -> None:
    assert finite(body_retry_hint(body))
    assert finite(body_retry_hint(b'{"retryDelay": 1, "x": ' + body + b"}"))


# -- through the router: the first entry cools as long as it was told, the second serves ------
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}
A, B = "a/fake-small", "b/fake-medium"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(transport: httpx.AsyncBaseTransport, clock: Clock, **policy: Any) -> WaterfallMiddleware:
    config: dict[str, Any] = {
        "providers": {
            h: {
                "base_url": f"http://{h}/v1",
                "api_key": "sk-upstream-secret-0123456789",
                "timeouts": {"first_byte": 0.5, "read": 0.5},
            }
            for h in "ab"
        },
        "chains": {"fast": [A, B]},
        "policy": {"backoff": 0, **policy},
        "ledger": {"path": None},
    }
    return WaterfallMiddleware(None, config, transport=transport, clock=clock)


def ok(model: str) -> httpx.Response:
    return httpx.Response(200, json=chat_completion(model))


def scripted(first: Callable[[], httpx.Response], calls: Counter[str]) -> httpx.AsyncBaseTransport:
    """``a`` answers ``first()`` on its first call, then 200; ``b`` always answers 200."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.host] += 1
        if request.url.host == "a" and calls["a"] == 1:
            return first()
        return ok(json.loads(request.content)["model"])

    return httpx.MockTransport(handler)


def anthropic_429() -> httpx.Response:
    headers = anthropic(requests=(0, at(42)), tokens=(800, at(5)), output_tokens=(0, at(17)))
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}
    return httpx.Response(429, json=body, headers=headers)


def azure_429() -> httpx.Response:
    body = {"error": {"code": "429", "message": "Rate limit reached."}}
    return httpx.Response(429, json=body, headers={"x-ms-retry-after-ms": "2500"})


def google_429() -> httpx.Response:
    return httpx.Response(429, content=google("12.5s", wrapped=True))


def google_503() -> httpx.Response:
    return httpx.Response(503, content=google("1.5s", status=503))


async def chat(app: WaterfallMiddleware) -> Result:
    return await call(app, "POST", "/v1/chat/completions", CHAT, {})


def router_of(app: WaterfallMiddleware) -> Router:
    assert app.router is not None
    return app.router


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "status", "seconds"),
    [
        (anthropic_429, 429, 42.0),  # the longer of the two spent limits
        (azure_429, 429, 2.5),
        (google_429, 429, 12.5),  # (not policy.default_cooldown, 30)
        (google_503, 503, 1.5),  # any failing status with a hint is an instruction
    ],
)
async def test_a_hint_cools_the_first_entry_and_the_second_serves(
    answer: Callable[[], httpx.Response], status: int, seconds: float
) -> None:
    clock, calls = Clock(), Counter[str]()
    app = make(scripted(answer, calls), clock)
    served = await chat(app)
    assert served.status == 200
    assert served.headers["x-waterfall-attempts"] == f"{A} {status}, {B} 200"
    assert await app.cooldowns.snapshot() == {A: NOW + seconds}
    assert calls == {"a": 1, "b": 1}  # never retried
    # while it cools, a is passed over without a call; once it is over, a is called again
    clock.now = NOW + seconds - 0.01
    cooling = await chat(app)
    assert cooling.headers["x-waterfall-attempts"] == f"{A} cooling, {B} 200"
    assert calls == {"a": 1, "b": 2}
    clock.now = NOW + seconds
    again = await chat(app)
    assert again.headers["x-waterfall-attempts"] == f"{A} 200"
    assert calls == {"a": 2, "b": 2}
    assert A not in router_of(app).circuits  # an instruction is no evidence against its health
    await app.shutdown()


@pytest.mark.anyio
async def test_a_header_hint_wins_over_the_body() -> None:
    def both() -> httpx.Response:
        return httpx.Response(429, content=google("30s"), headers={"retry-after": "4"})

    clock, calls = Clock(), Counter[str]()
    app = make(scripted(both, calls), clock)
    assert (await chat(app)).status == 200
    assert await app.cooldowns.get(A) == NOW + 4
    await app.shutdown()


@pytest.mark.anyio
async def test_a_529_with_retry_after_cools_the_entry_that_long() -> None:
    def overloaded() -> httpx.Response:
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return httpx.Response(529, json=body, headers={"retry-after": "12"})

    clock, calls = Clock(), Counter[str]()
    app = make(scripted(overloaded, calls), clock)
    served = await chat(app)
    assert served.status == 200
    assert served.headers["x-waterfall-attempts"] == f"{A} 529, {B} 200"
    assert await app.cooldowns.snapshot() == {A: NOW + 12}
    assert calls == {"a": 1, "b": 1}
    await app.shutdown()


@pytest.mark.anyio
async def test_a_529_without_a_hint_is_a_health_signal() -> None:
    clock = Clock()
    a = FakeProvider(name="a", clock=clock, script=["status:code=529", "status:code=529"])
    net = FakeNetwork({"a": a, "b": FakeProvider(name="b", clock=clock)})
    app = make(net, clock)
    served = await chat(app)
    assert served.status == 200
    assert served.headers["x-waterfall-provider"] == "b"
    assert served.headers["x-waterfall-attempts"] == f"{A} 529 retried, {A} 529, {B} 200"
    assert await app.cooldowns.snapshot() == {}  # nothing cooled for everyone
    assert router_of(app).circuits[A].consecutive == 2  # counted against a's health
    await app.shutdown()


@pytest.mark.anyio
async def test_the_fakes_anthropic_429_cools_by_its_retry_after() -> None:
    clock = Clock(NOW + 0.5)
    a = FakeProvider(name="a", clock=clock, script=["rate_limit:dialect=anthropic,seconds=7.2"])
    net = FakeNetwork({"a": a, "b": FakeProvider(name="b", clock=clock)})
    app = make(net, clock)
    served = await chat(app)
    assert served.headers["x-waterfall-attempts"] == f"{A} 429, {B} 200"
    assert await app.cooldowns.get(A) == NOW + 0.5 + 8  # Retry-After: 8, not the resets' 7.5
    await app.shutdown()


@pytest.mark.anyio
async def test_an_anthropic_success_with_nothing_left_cools_until_the_reset() -> None:
    clock = Clock()
    limits = {"requests": 1, "window": 60, "dialect": "anthropic"}
    a = FakeProvider(name="a", clock=clock, limits=limits)
    net = FakeNetwork({"a": a, "b": FakeProvider(name="b", clock=clock)})
    app = make(net, clock)
    first = await chat(app)
    assert first.headers["x-waterfall-attempts"] == f"{A} 200"
    assert await app.cooldowns.get(A) == NOW + 60
    clock.now = NOW + 20
    second = await chat(app)
    assert second.headers["x-waterfall-attempts"] == f"{A} cooling, {B} 200"
    assert len(a.requests) == 1
    await app.shutdown()
