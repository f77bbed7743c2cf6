"""Cooldowns: how long a provider+model entry is left alone, and where that is kept.

Providers say when to come back in many dialects. :func:`retry_hint` reads a failed response's
headers, first match wins:

- ``retry-after-ms: 1500`` (milliseconds; OpenAI, Azure OpenAI), then Azure's
  ``x-ms-retry-after-ms`` (the same);
- ``Retry-After: 7`` (seconds) or ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`` (HTTP date);
- ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` as Go-style durations
  (``6m23.456s``, ``500ms``, ``1h2m``) or plain seconds, taking the exhausted one(s);
- Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`` as
  RFC 3339 times (``2026-12-07T12:00:30Z``, fractions and offsets allowed), taking the
  exhausted one(s) (``-remaining: 0``), else the latest;
- OpenRouter's ``X-RateLimit-Reset`` as a Unix timestamp in milliseconds (or seconds, or a
  plain delay in seconds when it is too small to be either).

:func:`body_retry_hint` reads the one hint that comes in a body rather than a header: Google's
``google.rpc.RetryInfo`` ``retryDelay`` (``"30s"``) in an error's ``details``, as Gemini's
OpenAI-compatible endpoint sends it. :func:`preemptive_hint` reads a *success* that says a limit
is spent (OpenAI's, Anthropic's or OpenRouter's ``remaining`` at 0) and gives its reset.

Every reader returns a finite number of seconds, never negative (a time already past is 0), or
``None``; it never raises, whatever the provider sent.

A cooldown only ever grows: a later, longer one extends it, a shorter one never shortens it.
Stores keep an absolute wall-clock deadline per entry key, so a shared store can serve replicas.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "CooldownStore",
    "InMemoryCooldownStore",
    "body_retry_hint",
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
    if pos != len(text) or not pos or not math.isfinite(total):
        return None
    return round(total, 9)


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


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


def _rfc3339(value: str, now: float) -> float | None:
    """Seconds from ``now`` until an RFC 3339 time (``2026-12-07T12:00:30Z``,
    ``2026-12-07T13:00:30.25+01:00``); 0 if it is past; ``None`` if it is not one."""
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = float(match.group(7) or 0)
    sign, off_h, off_m = match.group(8, 9, 10)
    try:
        zone = UTC
        if sign is not None:
            if int(off_h) > 23 or int(off_m) > 59:
                return None
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        leap = second == 60  # a leap second: the same instant as :59 plus one second
        when = datetime(year, month, day, hour, minute, second - leap, tzinfo=zone)
        at = when.timestamp() + leap + fraction
    except (ValueError, OverflowError):
        return None
    return max(0.0, at - now)


def _resets(
    headers: Mapping[str, str],
    names: list[tuple[str, str]],
    read: Callable[[str], float | None],
    only_exhausted: bool,
) -> float | None:
    """The longest reset of the exhausted limits (remaining 0) among ``names`` (pairs of
    remaining, reset header names); else, unless ``only_exhausted``, the longest of them all."""
    resets = []
    for remaining_name, reset_name in names:
        reset = headers.get(reset_name)
        if reset is None:
            continue
        remaining = headers.get(remaining_name)
        exhausted = remaining is not None and _number(remaining) == 0
        if only_exhausted and not exhausted:
            continue
        seconds = read(reset)
        if seconds is not None:
            resets.append((exhausted, seconds))
    if not resets:
        return None
    spent = [s for e, s in resets if e]
    return max(spent) if spent else max(s for _, s in resets)


_OPENAI = [(f"x-ratelimit-remaining-{w}", f"x-ratelimit-reset-{w}") for w in ("requests", "tokens")]
_ANTHROPIC = [
    (f"anthropic-ratelimit-{w}-remaining", f"anthropic-ratelimit-{w}-reset")
    for w in ("requests", "tokens", "input-tokens", "output-tokens")
]


def _openai_resets(headers: Mapping[str, str], only_exhausted: bool) -> float | None:
    return _resets(headers, _OPENAI, parse_duration, only_exhausted)


_ANTHROPIC_RESETS = tuple(reset for _, reset in _ANTHROPIC)


def _anthropic_resets(headers: Mapping[str, str], now: float, only_exhausted: bool) -> float | None:
    return _resets(headers, _ANTHROPIC, lambda value: _rfc3339(value, now), only_exhausted)


def retry_hint(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the provider asked us to wait, from a failed response's headers (lower-case keys).

    ``None`` when the response gives no usable hint. ``now`` is the wall clock, for dates.

    >>> retry_hint({"x-ms-retry-after-ms": "2500"}, 0.0)
    2.5
    >>> retry_hint({"anthropic-ratelimit-tokens-remaining": "0",
    ...             "anthropic-ratelimit-tokens-reset": "1970-01-01T00:00:30Z"}, 0.0)
    30.0
    """
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        ms = headers.get(name)
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
    seconds = _anthropic_resets(headers, now, only_exhausted=False)
    if seconds is not None:
        return seconds
    reset = headers.get("x-ratelimit-reset")
    return _epoch(reset, now) if reset is not None else None


def preemptive_hint(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to cool down after a *success* that says nothing is left (remaining = 0)."""
    seconds = _openai_resets(headers, only_exhausted=True)
    if seconds is not None:
        return seconds
    for name in _ANTHROPIC_RESETS:  # (most successes carry none: looked up first)
        if name in headers:
            seconds = _anthropic_resets(headers, now, only_exhausted=True)
            if seconds is not None:
                return seconds
            break
    remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
    if remaining is not None and reset is not None and remaining.strip() == "0":
        return _epoch(reset, now)
    return None


_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def _delay(value: object) -> float | None:
    """A ``retryDelay``: protobuf Duration JSON (``"30s"``, ``"1.500s"``), a Go-style duration
    (``"2m"``), or the ``{"seconds": 30, "nanos": 0}`` object form."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, dict):
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if isinstance(seconds, str):  # int64 in proto JSON is a string
            seconds = _number(seconds)
        numbers = (seconds, nanos)
        if all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
            try:
                total = float(seconds) + float(nanos) / 1e9
            except OverflowError:  # an integer too large for a float
                return None
            return total if math.isfinite(total) and total >= 0 else None
    return None


def body_retry_hint(body: bytes) -> float | None:
    """Seconds a failed response's *body* asks us to wait: Google's ``RetryInfo``.

    The body is ``{"error": {..., "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
    "retryDelay": "30s"}]}}``, or that in a one-element list; ``None`` for anything else.

    >>> body_retry_hint(b'[{"error": {"code": 429, "details": [{"@type": '
    ...                 b'"type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}]')
    1.5
    """
    if b"retryDelay" not in body:  # the usual error body: not parsed at all
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            seconds = _delay(detail.get("retryDelay"))
            if seconds is not None:
                return seconds
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
