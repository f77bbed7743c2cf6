"""A real rate limiter (requests and tokens per fixed window) and the 429 header dialects."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate

from pydantic import BaseModel, ConfigDict, Field

from .behaviours import Dialect

__all__ = [
    "Limits",
    "RateLimiter",
    "Verdict",
    "format_duration",
    "format_rfc3339",
    "rate_limit_headers",
    "remaining_headers",
]


class Limits(BaseModel):
    """How much a fake allows per window before it answers 429."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int | None = Field(default=None, ge=0, description="requests per window")
    tokens: int | None = Field(
        default=None, ge=0, description="tokens per window (prompt + max_tokens, as OpenAI counts)"
    )
    window: float = Field(default=60.0, gt=0, description="window length in seconds")
    dialect: Dialect = "openai"


def format_duration(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do (Go style).

    >>> format_duration(383.456), format_duration(0.5), format_duration(2), format_duration(3723)
    ('6m23.456s', '500ms', '2s', '1h2m3s')
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-9))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


def format_rfc3339(at: float) -> str:
    """The time ``at`` (Unix seconds, rounded up to a whole second) as Anthropic's rate-limit
    headers give a reset: RFC 3339 in UTC.

    >>> format_rfc3339(1_700_000_000.2)
    '2023-11-14T22:13:21Z'
    """
    return datetime.fromtimestamp(math.ceil(at - 1e-9), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _anthropic_family(
    what: str, limit: int, remaining: int, reset_at: float
) -> list[tuple[str, str]]:
    return [
        (f"anthropic-ratelimit-{what}-limit", str(limit)),
        (f"anthropic-ratelimit-{what}-remaining", str(remaining)),
        (f"anthropic-ratelimit-{what}-reset", format_rfc3339(reset_at)),
    ]


@dataclass(frozen=True)
class Verdict:
    """The limiter's answer for one request."""

    allowed: bool
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float
    window_reset: float = 0.0
    """Seconds until the current window ends and every limit is full again."""

    @property
    def retry_after(self) -> float:
        """Seconds until the request would be allowed."""
        return max(self.reset_requests, self.reset_tokens)


class RateLimiter:
    """Fixed-window request and token limiter with an injectable clock; thread-safe."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._start: float | None = None
        self._requests = 0
        self._tokens = 0

    def reset(self) -> None:
        """Forget everything counted so far."""
        with self._lock:
            self._start, self._requests, self._tokens = None, 0, 0

    def check(self, tokens: int) -> Verdict:
        """Count one request costing ``tokens`` if it fits, and say whether it did."""
        lim = self.limits
        with self._lock:
            now = self._clock()
            if self._start is None or now >= self._start + lim.window:
                self._start, self._requests, self._tokens = now, 0, 0
            # to the microsecond: epoch clocks carry float noise that would round up a second
            reset = round(self._start + lim.window - now, 6)
            ok_requests = lim.requests is None or self._requests + 1 <= lim.requests
            ok_tokens = lim.tokens is None or self._tokens + tokens <= lim.tokens
            allowed = ok_requests and ok_tokens
            if allowed:
                self._requests += 1
                self._tokens += tokens
            return Verdict(
                allowed=allowed,
                limit_requests=lim.requests,
                remaining_requests=None if lim.requests is None else lim.requests - self._requests,
                reset_requests=0.0 if ok_requests and allowed else reset,
                limit_tokens=lim.tokens,
                remaining_tokens=None if lim.tokens is None else lim.tokens - self._tokens,
                reset_tokens=0.0 if ok_tokens and allowed else reset,
                window_reset=reset,
            )


def _openai_headers(v: Verdict, window_reset: float) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for what, limit, remaining, reset in (
        ("requests", v.limit_requests, v.remaining_requests, v.reset_requests),
        ("tokens", v.limit_tokens, v.remaining_tokens, v.reset_tokens),
    ):
        if limit is None:
            continue
        out += [
            (f"x-ratelimit-limit-{what}", str(limit)),
            (f"x-ratelimit-remaining-{what}", str(remaining)),
            (f"x-ratelimit-reset-{what}", format_duration(reset or window_reset)),
        ]
    return out


def rate_limit_headers(dialect: Dialect, seconds: float, now: float) -> list[tuple[str, str]]:
    """The headers a 429 in ``dialect`` carries to say "come back in ``seconds``"."""
    if dialect == "retry-after":
        return [("retry-after", str(math.ceil(seconds)))]
    if dialect == "retry-after-date":
        return [("retry-after", formatdate(math.ceil(now + seconds), usegmt=True))]
    if dialect == "retry-after-ms":
        return [("retry-after-ms", str(math.ceil(seconds * 1000)))]
    if dialect == "openai":
        return [
            ("x-ratelimit-limit-requests", "1"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", format_duration(seconds)),
            ("x-ratelimit-limit-tokens", "1"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", format_duration(seconds)),
        ]
    if dialect == "openrouter":
        return [
            ("x-ratelimit-limit", "1"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", str(math.ceil((now + seconds) * 1000))),
        ]
    if dialect == "anthropic":
        out = [("retry-after", str(math.ceil(seconds)))]
        for what in ("requests", "tokens", "input-tokens", "output-tokens"):
            out += _anthropic_family(what, 1, 0, now + seconds)
        return out
    return []


def remaining_headers(
    v: Verdict, dialect: Dialect, now: float, window_reset: float
) -> list[tuple[str, str]]:
    """The headers that report the limiter's state: on a success, or on its own 429.

    ``window_reset`` is the reset to report for a limit that is not exhausted (the time left in
    the current window). The ``none`` dialect reports nothing.
    """
    if dialect == "none":
        return []
    if dialect == "anthropic":
        out: list[tuple[str, str]] = []
        if v.limit_requests is not None and v.remaining_requests is not None:
            reset = v.reset_requests or window_reset
            out += _anthropic_family(
                "requests", v.limit_requests, v.remaining_requests, now + reset
            )
        if v.limit_tokens is not None and v.remaining_tokens is not None:
            reset = v.reset_tokens or window_reset
            out += _anthropic_family("tokens", v.limit_tokens, v.remaining_tokens, now + reset)
        if not v.allowed:
            out.insert(0, ("retry-after", str(math.ceil(v.retry_after))))
        return out
    if dialect == "openrouter":
        limit = v.limit_requests if v.limit_requests is not None else v.limit_tokens
        remaining = v.remaining_requests if v.limit_requests is not None else v.remaining_tokens
        reset = v.retry_after or window_reset
        return [
            ("x-ratelimit-limit", str(limit)),
            ("x-ratelimit-remaining", str(remaining)),
            ("x-ratelimit-reset", str(math.ceil((now + reset) * 1000))),
        ]
    return _openai_headers(v, window_reset)
