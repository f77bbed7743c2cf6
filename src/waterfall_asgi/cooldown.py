"""Cooldowns: how long a provider+model entry is left alone, and where that is kept.

Providers say when to come back in many dialects; :func:`retry_hint` reads them all:

- ``retry-after-ms: 1500`` (milliseconds; OpenAI, Azure);
- ``Retry-After: 7`` (seconds) or ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`` (HTTP date);
- ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` as Go-style durations
  (``6m23.456s``, ``500ms``, ``1h2m``) or plain seconds, taking the exhausted one(s);
- OpenRouter's ``X-RateLimit-Reset`` as a Unix timestamp in milliseconds (or seconds, or a
  plain delay in seconds when it is too small to be either).

A cooldown only ever grows: a later, longer one extends it, a shorter one never shortens it.
Stores keep an absolute wall-clock deadline per entry key, so a shared store can serve replicas.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "CooldownStore",
    "InMemoryCooldownStore",
    "parse_duration",
    "preemptive_hint",
    "retry_hint",
]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``6m23.456s``, ``500ms``, ``1h2m3s``) or a plain number.

    >>> [parse_duration(t) for t in ("6m23.456s", "500ms", "2", "x")]
    [383.456, 0.5, 2.0, None]
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return round(total, 9) if pos == len(text) and pos else None


def _retry_after(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _number(value: str) -> float | None:
    """A finite, non-negative plain number, or ``None``."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _epoch(value: str, now: float) -> float | None:
    number = _number(value)
    if number is None:
        return None
    # Unix milliseconds (OpenRouter's documented form): any realistic one is > 1e11; the second
    # test reads a deadline as milliseconds under a test clock near 0 too (a fake's ``now + s``).
    if number > 1e11 or number / 1000 >= now:
        return max(0.0, number / 1000 - now)
    if number > 1e9:  # Unix seconds
        return max(0.0, number - now)
    return number  # already a delay in seconds


def _openai_resets(headers: Mapping[str, str], only_exhausted: bool) -> float | None:
    resets = []
    for what in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{what}")
        if reset is None:
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{what}")
        exhausted = remaining is not None and remaining.strip() in ("0", "0.0")
        if only_exhausted and not exhausted:
            continue
        seconds = parse_duration(reset)
        if seconds is not None:
            resets.append((exhausted, seconds))
    if not resets:
        return None
    spent = [s for e, s in resets if e]
    return max(spent) if spent else max(s for _, s in resets)


def retry_hint(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the provider asked us to wait, from a failed response's headers (lower-case keys).

    ``None`` when the response gives no usable hint. ``now`` is the wall clock, for dates.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        millis = _number(ms)  # a plain number only: never an HTTP date
        if millis is not None:
            return millis / 1000
    after = headers.get("retry-after")
    if after is not None:
        seconds = _retry_after(after, now)
        if seconds is not None:
            return seconds
    seconds = _openai_resets(headers, only_exhausted=False)
    if seconds is not None:
        return seconds
    reset = headers.get("x-ratelimit-reset")
    return _epoch(reset, now) if reset is not None else None


def preemptive_hint(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to cool down after a *success* that says nothing is left (remaining = 0)."""
    seconds = _openai_resets(headers, only_exhausted=True)
    if seconds is not None:
        return seconds
    remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
    if remaining is not None and reset is not None and remaining.strip() == "0":
        return _epoch(reset, now)
    return None


@runtime_checkable
class CooldownStore(Protocol):
    """Where cooldown deadlines live: absolute wall-clock seconds, per entry key."""

    async def get(self, key: str) -> float | None:
        """The deadline of ``key``'s cooldown, or ``None`` if it never cooled down."""
        ...

    async def extend(self, key: str, until: float) -> float:
        """Make ``key`` cool until at least ``until``; return its deadline (never shortened)."""
        ...

    async def snapshot(self) -> dict[str, float]:
        """Every known deadline (expired ones may be included)."""
        ...


class InMemoryCooldownStore:
    """The default store: a dict in this process (thread-safe; one per router)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    async def get(self, key: str) -> float | None:
        """The deadline of ``key``'s cooldown, or ``None``."""
        return self._until.get(key)

    async def extend(self, key: str, until: float) -> float:
        """Extend ``key``'s cooldown to ``until`` unless it already lasts longer."""
        with self._lock:
            current = self._until.get(key)
            if current is None or until > current:
                self._until[key] = until
                return until
            return current

    async def snapshot(self) -> dict[str, float]:
        """A copy of every deadline."""
        with self._lock:
            return dict(self._until)
