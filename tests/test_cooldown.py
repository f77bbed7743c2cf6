"""Cooldown hints (every rate-limit dialect the fakes speak) and the in-memory store."""

from __future__ import annotations

from email.utils import formatdate
from typing import get_args

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.cooldown import (
    CooldownStore,
    InMemoryCooldownStore,
    parse_duration,
    preemptive_hint,
    retry_hint,
)
from waterfall_fakes.behaviours import Dialect
from waterfall_fakes.ratelimit import Limits, RateLimiter, rate_limit_headers, remaining_headers

NOW = 1_800_000_000.0  # a fixed wall clock (2027-01-15T08:00:00Z)


def headers_of(dialect: Dialect, seconds: float, now: float = NOW) -> dict[str, str]:
    return dict(rate_limit_headers(dialect, seconds, now))


# -- parse_duration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m23.456s", 383.456),
        ("500ms", 0.5),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("2s", 2.0),
        ("0s", 0.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("1m0.5s", 60.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("1s500ms", 1.5),
        (".5s", 0.5),
        ("2", 2.0),
        ("0", 0.0),
        ("1.25", 1.25),
        (" 7s ", 7.0),
        ("\t3\n", 3.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "x",
        "s",
        "ms",
        "5x",
        "5 s",
        "1h 2m",
        "5s5",
        "h1",
        "5mm",
        "1.2.3s",
        "1e3s",
        "-1s",
        "-1",
        "-0.5",
        "nan",
        "inf",
        "-inf",
        "1h-2m",
        "Wed, 21 Oct 2026 07:28:00 GMT",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_of_any_go_duration(h: int, m: int, s: int, ms: int) -> None:
    text = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}.{ms:03d}s"
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000, abs=1e-9)


# -- retry_hint: each dialect of the fakes -----------------------------------------------------
@pytest.mark.parametrize(
    ("dialect", "seconds", "now", "hint"),
    [
        ("retry-after", 7.0, NOW, 7.0),
        ("retry-after", 7.2, NOW, 8.0),  # whole seconds, rounded up
        ("retry-after", 0.0, NOW, 0.0),
        ("retry-after-ms", 1.2345, NOW, 1.235),
        ("retry-after-ms", 0.02, NOW, 0.02),
        ("retry-after-date", 7.0, NOW, 7.0),
        ("retry-after-date", 7.2, NOW, 8.0),  # an HTTP date has whole seconds
        ("retry-after-date", 7.2, NOW + 0.25, 7.75),  # ... counted from a now between two
        ("openai", 383.4561, NOW, 383.457),
        ("openai", 0.5, NOW, 0.5),
        ("openai", 3723.0, NOW, 3723.0),
        ("openrouter", 12.3456, NOW, 12.346),
        ("openrouter", 60.0, NOW, 60.0),
        ("openrouter", 60.0, 1000.0, 60.0),  # a test clock: the deadline is still read as ms
        ("openrouter", 30.0, 0.0, 30.0),
    ],
)
def test_retry_hint_reads_every_dialect(
    dialect: Dialect, seconds: float, now: float, hint: float
) -> None:
    assert retry_hint(headers_of(dialect, seconds, now), now) == pytest.approx(hint, abs=1e-6)


def test_the_none_dialect_gives_no_hint() -> None:
    assert headers_of("none", 30) == {}
    assert retry_hint({}, NOW) is None


def test_precedence_of_the_hints() -> None:
    headers = {
        **headers_of("openrouter", 11),
        **headers_of("openai", 9),
        **headers_of("retry-after", 5),
        **headers_of("retry-after-ms", 2),
    }
    order = ["retry-after-ms", "retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset"]
    seen = []
    for key in order:
        seen.append(retry_hint(headers, NOW))
        headers = {k: v for k, v in headers.items() if not k.startswith(key)}
        if key == "x-ratelimit-reset-requests":
            headers.pop("x-ratelimit-reset-tokens")
    seen.append(retry_hint(headers, NOW))
    assert seen == [2.0, 5.0, 9.0, pytest.approx(11.0, abs=1e-6), None]


@pytest.mark.parametrize(
    ("garbage", "then"),
    [
        ({"retry-after-ms": "soon"}, 5.0),
        ({"retry-after-ms": "-1"}, 5.0),
        ({"retry-after-ms": "nan"}, 5.0),
        ({"retry-after-ms": ""}, 5.0),
        ({"retry-after-ms": "Fri, 15 Jan 2027 08:00:30 GMT"}, 5.0),
        ({"retry-after-ms": "inf"}, 5.0),
    ],
)
def test_a_garbage_hint_gives_way_to_the_next(garbage: dict[str, str], then: float) -> None:
    assert retry_hint({**garbage, "retry-after": "5"}, NOW) == then


def test_regression_retry_after_ms_is_never_read_as_a_date() -> None:
    # "retry-after-ms" used to go through the Retry-After parser, dates included, and a date
    # was then divided by 1000 (30 s ahead became 0.03 s; a day ahead, 86 s).
    date = formatdate(NOW + 86_400, usegmt=True)
    assert retry_hint({"retry-after-ms": date}, NOW) is None


@pytest.mark.parametrize(
    "value",
    ["soon", "", "-5", "nan", "inf", "5 seconds", "Fri, 99 Jan 2027 08:00:30 GMT", "Fri, 15 Jan"],
)
def test_garbage_retry_after_gives_none(value: str) -> None:
    assert retry_hint({"retry-after": value}, NOW) is None


def test_retry_after_date_forms() -> None:
    assert retry_hint({"retry-after": "Fri, 15 Jan 2027 08:00:30 GMT"}, NOW) == 30.0
    assert retry_hint({"retry-after": "15 Jan 2027 08:00:30 GMT"}, NOW) == 30.0  # no weekday
    assert retry_hint({"retry-after": "Fri, 15 Jan 2027 09:00:30 +0100"}, NOW) == 30.0
    assert retry_hint({"retry-after": "  Fri, 15 Jan 2027 08:00:30 GMT "}, NOW) == 30.0
    assert retry_hint({"retry-after": "Fri, 15 Jan 2027 07:00:00 GMT"}, NOW) == 0.0  # past
    # "-0000" means the zone is unknown: no usable hint
    assert retry_hint({"retry-after": "Fri, 15 Jan 2027 08:00:30 -0000"}, NOW) is None


def test_openai_resets_take_the_exhausted_limit() -> None:
    requests_left = {
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "20.5s",
    }
    assert retry_hint(requests_left, NOW) == 20.5
    tokens_left = {**requests_left, "x-ratelimit-remaining-tokens": "900"}
    tokens_left["x-ratelimit-remaining-requests"] = "0"
    assert retry_hint(tokens_left, NOW) == 1.0
    both = {**requests_left, "x-ratelimit-remaining-requests": "0"}
    assert retry_hint(both, NOW) == 20.5
    neither = {**requests_left, "x-ratelimit-remaining-tokens": "7"}
    assert retry_hint(neither, NOW) == 20.5  # nothing says which: the longest
    assert retry_hint({"x-ratelimit-reset-tokens": "6m0s"}, NOW) == 360.0


def test_openai_garbage_resets_fall_back_to_openrouter_style() -> None:
    headers = {"x-ratelimit-reset-requests": "later", "x-ratelimit-remaining-requests": "0"}
    assert retry_hint(headers, NOW) is None
    headers["x-ratelimit-reset"] = str(int((NOW + 42) * 1000))
    assert retry_hint(headers, NOW) == 42.0


@pytest.mark.parametrize(
    ("value", "now", "hint"),
    [
        (str(int((NOW + 42) * 1000)), NOW, 42.0),  # Unix milliseconds
        (str(int(NOW + 42)), NOW, 42.0),  # Unix seconds
        (str(int((NOW - 5) * 1000)), NOW, 0.0),  # already past
        (str(int(NOW - 5)), NOW, 0.0),
        ("42", NOW, 42.0),  # a plain delay
        ("0", NOW, 0.0),
        ("1030000", 1000.0, 30.0),  # milliseconds under a test clock
        ("30000", 0.0, 30.0),
        ("42", 1000.0, 42.0),
    ],
)
def test_openrouter_reset(value: str, now: float, hint: float) -> None:
    assert retry_hint({"x-ratelimit-reset": value}, now) == hint


def test_regression_openrouter_ms_deadline_under_a_test_clock() -> None:
    # A deadline below 1e11 ms used to be read as Unix seconds (clock at 1000 s: 1029000 s)
    # or as a delay (clock at 0: 30000 s), so a router under a test clock cooled for hours.
    for now in (0.0, 1000.0, 1_000_000.0):
        assert retry_hint(headers_of("openrouter", 30, now), now) == pytest.approx(30.0)


@pytest.mark.parametrize("value", ["soon", "", "-1", "nan", "inf", "1e400", "12s"])
def test_garbage_openrouter_reset_gives_none(value: str) -> None:
    assert retry_hint({"x-ratelimit-reset": value}, NOW) is None


# -- the round trip through the fakes ----------------------------------------------------------
RESOLUTION: dict[str, float] = {
    "retry-after": 1.0,
    "retry-after-date": 1.0,
    "retry-after-ms": 0.001,
    "openai": 0.001,
    "openrouter": 0.001,
    "anthropic": 1.0,  # Retry-After, which wins over its RFC 3339 resets
}
# Grids counted from now (absolute deadlines) rather than from zero:
ABSOLUTE = {"retry-after-date", "openrouter"}


@given(
    dialect=st.sampled_from(sorted(RESOLUTION)),
    seconds=st.floats(0, 86_400, allow_nan=False) | st.integers(0, 86_400).map(float),
    now=st.just(NOW) | st.floats(1_600_000_000, 2_000_000_000) | st.integers(0, 10**6).map(float),
)
def test_round_trip_through_the_fakes_headers(dialect: str, seconds: float, now: float) -> None:
    assert dialect in get_args(Dialect)
    hint = retry_hint(headers_of(dialect, seconds, now), now)  # type: ignore[arg-type]
    assert hint is not None
    step = RESOLUTION[dialect]
    # Float rounding of ``now + seconds`` near 1.8e9 is ~2.4e-7; the fakes' own duration
    # format forgives 1e-9. Beyond that the hint is never shorter than asked for...
    eps = 1e-6 if dialect in ABSOLUTE else 1e-9
    assert hint >= seconds - eps
    # ... and is the first point of the dialect's grid at or after it.
    assert hint < seconds + step + eps
    base = now if dialect in ABSOLUTE else 0.0
    ticks = (base + hint) / step
    assert abs(ticks - round(ticks)) < 1e-3


# -- preemptive_hint ---------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("dialect", ["openai", "openrouter"])
def test_preemptive_hint_after_the_last_allowed_request(dialect: Dialect) -> None:
    clock = Clock(NOW)
    limiter = RateLimiter(Limits(requests=2, window=60, dialect=dialect), clock)
    first = limiter.check(10)
    assert first.allowed
    assert preemptive_hint(dict(remaining_headers(first, dialect, NOW, 60.0)), NOW) is None
    clock.now = NOW + 15
    second = limiter.check(10)
    assert second.allowed
    assert second.remaining_requests == 0
    headers = dict(remaining_headers(second, dialect, clock.now, second.window_reset))
    assert preemptive_hint(headers, clock.now) == pytest.approx(45.0, abs=1e-6)


def test_preemptive_hint_takes_only_the_exhausted_openai_limit() -> None:
    clock = Clock(NOW)
    limiter = RateLimiter(Limits(requests=10, tokens=100, window=60), clock)
    verdict = limiter.check(100)
    assert (verdict.remaining_requests, verdict.remaining_tokens) == (9, 0)
    headers = dict(remaining_headers(verdict, "openai", NOW, verdict.window_reset))
    assert preemptive_hint(headers, NOW) == 60.0
    headers["x-ratelimit-reset-requests"] = "7m"  # not exhausted: not taken
    assert preemptive_hint(headers, NOW) == 60.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "5"},
        {"retry-after-ms": "500"},
        {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"},
        {"x-ratelimit-remaining-tokens": "1", "x-ratelimit-reset-tokens": "1s"},
        {"x-ratelimit-reset-tokens": "1s"},  # no remaining: nothing says it is exhausted
        {"x-ratelimit-remaining": "1", "x-ratelimit-reset": str(int((NOW + 9) * 1000))},
        {"x-ratelimit-reset": str(int((NOW + 9) * 1000))},
        {"x-ratelimit-remaining": "0"},
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "never"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "never"},
    ],
)
def test_no_preemptive_hint_while_something_remains(headers: dict[str, str]) -> None:
    assert preemptive_hint(headers, NOW) is None


def test_preemptive_hint_openrouter_style() -> None:
    reset = str(int((NOW + 9) * 1000))
    assert preemptive_hint({"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, NOW) == 9.0
    assert preemptive_hint({"x-ratelimit-remaining": " 0 ", "x-ratelimit-reset": "9"}, NOW) == 9.0


# -- InMemoryCooldownStore ---------------------------------------------------------------------
def test_store_satisfies_the_protocol() -> None:
    assert isinstance(InMemoryCooldownStore(), CooldownStore)


@pytest.mark.anyio
async def test_store_extend_get_and_snapshot() -> None:
    store = InMemoryCooldownStore()
    assert await store.get("a/m") is None
    assert await store.snapshot() == {}
    assert await store.extend("a/m", NOW + 10) == NOW + 10
    assert await store.extend("a/m", NOW + 5) == NOW + 10  # never shortened
    assert await store.extend("a/m", NOW + 10) == NOW + 10
    assert await store.extend("b/m", NOW + 1) == NOW + 1
    assert await store.extend("a/m", NOW + 20) == NOW + 20
    assert await store.get("a/m") == NOW + 20
    snap = await store.snapshot()
    assert snap == {"a/m": NOW + 20, "b/m": NOW + 1}
    snap["a/m"] = 0.0  # a copy: changing it changes nothing
    snap["c/m"] = 1.0
    await store.extend("b/m", NOW + 30)
    assert snap["b/m"] == NOW + 1  # ... nor does it change later
    assert await store.snapshot() == {"a/m": NOW + 20, "b/m": NOW + 30}
    assert await store.get("c/m") is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["a/m", "b/m", "c/x/y"]), st.floats(0, 4e9, allow_nan=False)),
        max_size=40,
    )
)
def test_extend_never_shortens(extends: list[tuple[str, float]]) -> None:
    async def scenario() -> None:
        store = InMemoryCooldownStore()
        longest: dict[str, float] = {}
        for key, until in extends:
            longest[key] = max(longest.get(key, until), until)
            assert await store.extend(key, until) == longest[key]
            assert await store.get(key) == longest[key]
            assert await store.snapshot() == longest

    anyio.run(scenario)
