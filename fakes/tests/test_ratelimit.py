"""Rate limit dialects, header by header, and the real limiter driven by a controllable clock."""

from __future__ import annotations

import json
import math
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from waterfall_fakes import FakeProvider, FakeTransport, Limits, format_duration
from waterfall_fakes.ratelimit import RateLimiter, Verdict, rate_limit_headers, remaining_headers

CHAT = "/v1/chat/completions"
NOW = 1_700_000_000.25  # Tue, 14 Nov 2023 22:13:20.25 GMT
MESSAGES = [{"role": "user", "content": "one two three"}]  # 6 prompt tokens
RATE_HEADERS = ("retry-after", "retry-after-ms", "x-ratelimit-")


class Clock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": MESSAGES, **extra}


def rate_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.items() if k.startswith(RATE_HEADERS)]


def limited(clock: Clock, **limits: Any) -> httpx.Client:
    fake = FakeProvider(limits=limits, clock=clock)
    return httpx.Client(transport=FakeTransport(fake), base_url="http://fake")


# -- format_duration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (383.456, "6m23.456s"),
        (0.5, "500ms"),
        (0.0004, "1ms"),
        (0.999, "999ms"),
        (0, "0ms"),
        (-3, "0ms"),
        (1, "1s"),
        (2, "2s"),
        (1.5, "1.5s"),
        (1.05, "1.05s"),
        (59.9999, "1m0s"),
        (60, "1m0s"),
        (61.001, "1m1.001s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
        (90061.5, "25h1m1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- the dialects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "seconds", "headers"),
    [
        ("retry-after", 2.1, [("retry-after", "3")]),
        ("retry-after", 2, [("retry-after", "2")]),
        ("retry-after", 0, [("retry-after", "0")]),
        ("retry-after", 0.001, [("retry-after", "1")]),
        ("retry-after-date", 2.5, [("retry-after", "Tue, 14 Nov 2023 22:13:23 GMT")]),
        ("retry-after-date", 0, [("retry-after", "Tue, 14 Nov 2023 22:13:21 GMT")]),
        ("retry-after-ms", 1.2345, [("retry-after-ms", "1235")]),
        ("retry-after-ms", 2, [("retry-after-ms", "2000")]),
        (
            "openai",
            383.456,
            [
                ("x-ratelimit-limit-requests", "1"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "6m23.456s"),
                ("x-ratelimit-limit-tokens", "1"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m23.456s"),
            ],
        ),
        (
            "openai",
            0.5,
            [
                ("x-ratelimit-limit-requests", "1"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "500ms"),
                ("x-ratelimit-limit-tokens", "1"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "500ms"),
            ],
        ),
        (
            "openrouter",
            2.5,
            [
                ("x-ratelimit-limit", "1"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000002750"),
            ],
        ),
        ("none", 5, []),
    ],
)
def test_rate_limit_headers(dialect: Any, seconds: float, headers: list[tuple[str, str]]) -> None:
    assert rate_limit_headers(dialect, seconds, NOW) == headers


@pytest.mark.parametrize("seconds", [0, 0.2, 1, 2.5, 59.01])
def test_retry_after_date_is_the_next_whole_second(seconds: float) -> None:
    [(name, value)] = rate_limit_headers("retry-after-date", seconds, NOW)
    assert name == "retry-after"
    assert parsedate_to_datetime(value).timestamp() == math.ceil(NOW + seconds)


@pytest.mark.parametrize(
    ("spec", "headers"),
    [
        ("rate_limit", [("retry-after", "1")]),
        ("rate_limit:seconds=2.5", [("retry-after", "3")]),
        (
            "rate_limit:dialect=retry-after-date,seconds=2.5",
            [("retry-after", "Tue, 14 Nov 2023 22:13:23 GMT")],
        ),
        ("rate_limit:dialect=retry-after-ms,seconds=0.25", [("retry-after-ms", "250")]),
        (
            "rate_limit:dialect=openai,seconds=383.456",
            [
                ("x-ratelimit-limit-requests", "1"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "6m23.456s"),
                ("x-ratelimit-limit-tokens", "1"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m23.456s"),
            ],
        ),
        (
            "rate_limit:dialect=openrouter,seconds=10",
            [
                ("x-ratelimit-limit", "1"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000010250"),
            ],
        ),
        ("rate_limit:dialect=none,seconds=10", []),
    ],
)
def test_scripted_rate_limit_over_httpx(spec: str, headers: list[tuple[str, str]]) -> None:
    fake = FakeProvider(clock=Clock())
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake") as c:
        r = c.post(CHAT, json=chat(stream=True), headers={"x-fake-behaviour": spec})
    assert r.status_code == 429
    assert rate_headers(r) == headers
    seconds = fake.requests[0].behaviours[0].seconds  # type: ignore[union-attr]
    assert r.json() == {
        "error": {
            "message": f"Rate limit reached. Please try again in {seconds}s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert r.headers["content-type"] == "application/json"


def test_insufficient_balance_body() -> None:
    fake = FakeProvider(script=["insufficient_balance"])
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake") as c:
        r = c.post(CHAT, json=chat())
        assert c.post(CHAT, json=chat()).status_code == 200
    assert r.status_code == 402
    assert r.content == (
        b'{"error":{"message":"Insufficient balance. Please top up your account.",'
        b'"type":"insufficient_quota","param":null,"code":"insufficient_balance",'
        b'"details":{"required_msats":1000,"available_msats":0}}}'
    )
    assert rate_headers(r) == []


# -- the real limiter ------------------------------------------------------------------------------


def test_requests_limit_then_429_until_the_window_passes() -> None:
    clock = Clock()
    c = limited(clock, requests=3, window=10, dialect="retry-after")
    seen = []
    for _ in range(3):
        r = c.post(CHAT, json=chat())
        seen.append((r.status_code, r.headers["x-ratelimit-remaining-requests"]))
        clock.now += 1
    assert seen == [(200, "2"), (200, "1"), (200, "0")]
    r = c.post(CHAT, json=chat())
    assert r.status_code == 429
    assert rate_headers(r) == [("retry-after", "7")]
    assert r.json()["error"] == {
        "message": "Rate limit reached. Please try again later.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    clock.now = NOW + 9.5
    r = c.post(CHAT, json=chat())
    assert r.status_code == 429
    assert rate_headers(r) == [("retry-after", "1")]
    clock.now = NOW + 10
    r = c.post(CHAT, json=chat())
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining-requests"] == "2"
    assert r.headers["x-ratelimit-reset-requests"] == "10s"


def test_remaining_headers_on_successes_count_down_the_window() -> None:
    clock = Clock()
    c = limited(clock, requests=5, tokens=1000, window=60, dialect="openai")
    r = c.post(CHAT, json=chat(max_tokens=10))
    assert rate_headers(r) == [
        ("x-ratelimit-limit-requests", "5"),
        ("x-ratelimit-remaining-requests", "4"),
        ("x-ratelimit-reset-requests", "1m0s"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-tokens", "984"),
        ("x-ratelimit-reset-tokens", "1m0s"),
    ]
    clock.now += 36.5
    r = c.post(CHAT, json=chat(max_tokens=10))
    assert rate_headers(r) == [
        ("x-ratelimit-limit-requests", "5"),
        ("x-ratelimit-remaining-requests", "3"),
        ("x-ratelimit-reset-requests", "23.5s"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-tokens", "968"),
        ("x-ratelimit-reset-tokens", "23.5s"),
    ]


def test_token_limit_counts_prompt_plus_max_tokens() -> None:
    clock = Clock()
    c = limited(clock, tokens=100, window=60)
    # 6 prompt tokens + max_tokens 30 = 36 per request
    assert c.post(CHAT, json=chat(max_tokens=30)).headers["x-ratelimit-remaining-tokens"] == "64"
    assert c.post(CHAT, json=chat(max_tokens=30)).headers["x-ratelimit-remaining-tokens"] == "28"
    refused = c.post(CHAT, json=chat(max_tokens=30))
    assert refused.status_code == 429
    assert rate_headers(refused) == [
        ("x-ratelimit-limit-tokens", "100"),
        ("x-ratelimit-remaining-tokens", "28"),
        ("x-ratelimit-reset-tokens", "1m0s"),
    ]
    # a smaller request still fits: 6 + 22 = 28
    ok = c.post(CHAT, json=chat(max_tokens=22))
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-remaining-requests" not in ok.headers


def test_token_cost_without_max_tokens_is_the_reply_length_times_n() -> None:
    clock = Clock()
    fake = FakeProvider(limits={"tokens": 1000}, clock=clock, reply_words=5)
    c = httpx.Client(transport=FakeTransport(fake), base_url="http://fake")
    assert c.post(CHAT, json=chat()).headers["x-ratelimit-remaining-tokens"] == "989"  # 6 + 5
    r = c.post(CHAT, json=chat(n=3, max_tokens=2))
    assert r.headers["x-ratelimit-remaining-tokens"] == "977"  # 6 + 2 * 3
    r = c.post(CHAT, json=chat(max_tokens=-4))
    assert r.headers["x-ratelimit-remaining-tokens"] == "971"  # 6 + 0
    r = c.post("/v1/embeddings", json={"model": "fake-small", "input": ["a b", "c"]})
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining-tokens"] == "968"  # 3 input tokens


def test_a_request_larger_than_the_whole_budget_is_always_refused() -> None:
    clock = Clock()
    c = limited(clock, tokens=10, window=5, dialect="retry-after-ms")
    r = c.post(CHAT, json=chat(max_tokens=5))
    assert r.status_code == 429
    assert rate_headers(r) == [("retry-after-ms", "5000")]
    clock.now += 100
    assert c.post(CHAT, json=chat(max_tokens=5)).status_code == 429
    assert c.post(CHAT, json=chat(max_tokens=4)).status_code == 200


def test_refused_requests_are_not_counted() -> None:
    clock = Clock()
    c = limited(clock, requests=1, window=1, dialect="none")
    assert c.post(CHAT, json=chat()).status_code == 200
    for _ in range(5):
        refused = c.post(CHAT, json=chat())
        assert refused.status_code == 429
        assert rate_headers(refused) == []
    clock.now += 1
    ok = c.post(CHAT, json=chat())
    assert ok.status_code == 200
    assert rate_headers(ok) == []
    assert c.post(CHAT, json=chat()).status_code == 429


def test_retry_after_date_dialect_from_the_limiter() -> None:
    clock = Clock()
    c = limited(clock, requests=1, window=30, dialect="retry-after-date")
    assert c.post(CHAT, json=chat()).status_code == 200
    clock.now += 12.5
    r = c.post(CHAT, json=chat())
    assert rate_headers(r) == [("retry-after", "Tue, 14 Nov 2023 22:13:51 GMT")]
    assert parsedate_to_datetime(r.headers["retry-after"]).timestamp() == math.ceil(NOW + 30)


def test_openrouter_dialect_from_the_limiter() -> None:
    clock = Clock()
    c = limited(clock, requests=2, window=60, dialect="openrouter")
    first = c.post(CHAT, json=chat())
    assert rate_headers(first) == [
        ("x-ratelimit-limit", "2"),
        ("x-ratelimit-remaining", "1"),
        ("x-ratelimit-reset", "1700000060250"),
    ]
    clock.now += 10
    second = c.post(CHAT, json=chat())
    assert rate_headers(second) == [
        ("x-ratelimit-limit", "2"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000060250"),
    ]
    clock.now += 20
    refused = c.post(CHAT, json=chat())
    assert refused.status_code == 429
    assert rate_headers(refused) == [
        ("x-ratelimit-limit", "2"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000060250"),
    ]


def test_openrouter_dialect_with_only_a_token_limit() -> None:
    clock = Clock()
    c = limited(clock, tokens=50, window=60, dialect="openrouter")
    assert rate_headers(c.post(CHAT, json=chat(max_tokens=4))) == [
        ("x-ratelimit-limit", "50"),
        ("x-ratelimit-remaining", "40"),
        ("x-ratelimit-reset", "1700000060250"),
    ]


def test_openai_dialect_429_from_the_limiter() -> None:
    clock = Clock()
    c = limited(clock, requests=1, tokens=500, window=400, dialect="openai")
    c.post(CHAT, json=chat(max_tokens=4))
    clock.now += 16.544
    r = c.post(CHAT, json=chat(max_tokens=4))
    assert r.status_code == 429
    assert rate_headers(r) == [
        ("x-ratelimit-limit-requests", "1"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "6m23.456s"),
        ("x-ratelimit-limit-tokens", "500"),
        ("x-ratelimit-remaining-tokens", "490"),
        ("x-ratelimit-reset-tokens", "6m23.456s"),
    ]


def test_limiter_does_not_count_health_or_models() -> None:
    clock = Clock()
    fake = FakeProvider(limits={"requests": 1}, clock=clock)
    c = httpx.Client(transport=FakeTransport(fake), base_url="http://fake")
    for _ in range(3):
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").status_code == 200
    assert c.post(CHAT, json=chat()).status_code == 200
    assert c.post(CHAT, json=chat()).status_code == 429


def test_reset_empties_the_limiter() -> None:
    clock = Clock()
    fake = FakeProvider(limits={"requests": 1, "window": 60}, clock=clock)
    c = httpx.Client(transport=FakeTransport(fake), base_url="http://fake")
    assert c.post(CHAT, json=chat()).status_code == 200
    assert c.post(CHAT, json=chat()).status_code == 429
    fake.reset()
    assert c.post(CHAT, json=chat()).status_code == 200


def test_limiter_429_wins_over_scripted_faults() -> None:
    clock = Clock()
    fake = FakeProvider(limits={"requests": 1, "dialect": "retry-after"}, clock=clock)
    c = httpx.Client(transport=FakeTransport(fake), base_url="http://fake")
    c.post(CHAT, json=chat())
    r = c.post(CHAT, json=chat(), headers={"x-fake-behaviour": "status:code=500"})
    assert r.status_code == 429
    assert rate_headers(r) == [("retry-after", "60")]


def test_rate_limiter_verdicts() -> None:
    clock = Clock(100.0)
    limiter = RateLimiter(Limits(requests=2, tokens=10, window=5), clock)
    assert limiter.check(4) == Verdict(True, 2, 1, 0.0, 10, 6, 0.0, 5.0)
    clock.now = 102.0
    assert limiter.check(7) == Verdict(False, 2, 1, 3.0, 10, 6, 3.0, 3.0)
    assert limiter.check(7).retry_after == 3.0
    assert limiter.check(6) == Verdict(True, 2, 0, 0.0, 10, 0, 0.0, 3.0)
    assert limiter.check(0) == Verdict(False, 2, 0, 3.0, 10, 0, 3.0, 3.0)
    clock.now = 105.0
    assert limiter.check(0) == Verdict(True, 2, 1, 0.0, 10, 10, 0.0, 5.0)
    limiter.reset()
    clock.now = 106.0
    assert limiter.check(1).window_reset == 5.0


def test_remaining_headers_directly() -> None:
    verdict = Verdict(True, 10, 7, 0.0, None, None, 0.0, 12.0)
    assert remaining_headers(verdict, "openai", NOW, 12.0) == [
        ("x-ratelimit-limit-requests", "10"),
        ("x-ratelimit-remaining-requests", "7"),
        ("x-ratelimit-reset-requests", "12s"),
    ]
    assert remaining_headers(verdict, "openrouter", NOW, 12.0) == [
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "7"),
        ("x-ratelimit-reset", "1700000012250"),
    ]
    assert remaining_headers(verdict, "none", NOW, 12.0) == []


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError, match="window"):
        Limits(window=0)
    with pytest.raises(ValidationError, match="requests"):
        Limits(requests=-1)
    with pytest.raises(ValidationError, match="dialect"):
        Limits(dialect="smoke")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="burst"):
        FakeProvider(limits={"burst": 3})
    assert json.loads(Limits().model_dump_json()) == {
        "requests": None,
        "tokens": None,
        "window": 60.0,
        "dialect": "openai",
    }
