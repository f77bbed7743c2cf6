"""Health, as evidence: per-entry circuits, the router-wide retry budget, the router's own health.

A provider's *instruction* (a 429, a ``Retry-After``) is obeyed through the shared
:class:`~waterfall_asgi.cooldown.CooldownStore`. Everything else that goes wrong with a call is
*evidence* about the entry, weighed here, in this process:

- :class:`Circuit`: one entry's recent calls. It opens after ``failures`` health failures in a
  row, or when at least ``min_requests`` calls in the last ``window`` seconds failed at a ratio of
  ``failure_ratio`` or more (see :class:`~waterfall_asgi.config.CircuitPolicy`). An open circuit
  is left alone for its open period; then one call (the *probe*) decides: a success closes it, a
  failure opens it again for ``growth`` times longer, up to ``max_open``. So one failure never
  takes an entry out for everyone, and a dead provider costs one call per open period.
- :class:`RetryBudget`: a token bucket that lets the router retry at most ``ratio`` of its
  requests (plus a small reserve), so that retries never multiply the load in a storm.
- :class:`LocalHealth`: the router's own trouble (out of file descriptors, its own pool limits,
  stale kept-alive connections), counted apart from any provider's, and logged (at most once in
  ``log_every`` seconds).

Where this differs from the obvious: a circuit is made only once its entry first fails, and a
closed one with no failure in its window is forgotten on the next success (see
:meth:`Circuit.success`), so while nothing fails a request pays one dict lookup per entry tried.
The sliding window is a ring of a few time buckets, not a list of calls: a failure storm allocates
nothing.
"""

from __future__ import annotations

import logging
import math

from .config import CircuitPolicy

__all__ = ["Circuit", "LocalHealth", "RetryBudget"]

logger = logging.getLogger("waterfall_asgi")

_BUCKETS = 6  # the window is measured in this many slices


class Circuit:
    """One entry's health in this process: closed (called as usual), or open until
    ``open_until`` (wall-clock seconds), after which one probe at a time may call it.

    >>> c = Circuit(CircuitPolicy(failures=2, open_for=5), max_open=60)
    >>> c.failure(100.0), c.failure(101.0), c.open_until
    (False, True, 106.0)
    >>> c.take_probe(105.0), c.take_probe(106.0), c.take_probe(106.0)
    (False, True, False)
    >>> c.failure(106.5, probe=True), c.open_until  # the probe failed: open twice as long
    (True, 116.5)
    >>> c.release()  # (the router releases a probe once it is over)
    >>> c.take_probe(117.0), c.success(117.0, probe=True), c.open_until is None
    (True, False, True)
    """

    __slots__ = (
        "_bucket",
        "_calls",
        "_fails",
        "_max_open",
        "_policy",
        "_width",
        "consecutive",
        "last_failure",
        "open_for",
        "open_until",
        "probing",
    )

    def __init__(self, policy: CircuitPolicy, max_open: float) -> None:
        self._policy = policy
        self._max_open = max(max_open, 0.0)
        self._width = policy.window / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._fails = [0] * _BUCKETS
        self._bucket = 0
        self.consecutive = 0
        """Health failures in a row."""
        self.last_failure = -math.inf
        self.open_for = min(policy.open_for, self._max_open)
        """The next open period, in seconds (grows while probes fail)."""
        self.open_until: float | None = None
        """When the open period ends (``None``: closed)."""
        self.probing = False
        """Whether a probe (or a fail-open call) is in flight."""

    def _slot(self, now: float) -> int:
        bucket = int(now // self._width)
        steps = bucket - self._bucket
        if steps:
            if steps >= _BUCKETS or steps < 0:
                self._calls[:] = [0] * _BUCKETS
                self._fails[:] = [0] * _BUCKETS
            else:
                for i in range(self._bucket + 1, bucket + 1):
                    self._calls[i % _BUCKETS] = self._fails[i % _BUCKETS] = 0
            self._bucket = bucket
        return bucket % _BUCKETS

    def counts(self, now: float) -> tuple[int, int]:
        """Calls and failures counted in the window ending at ``now``."""
        self._slot(now)
        return sum(self._calls), sum(self._fails)

    def take_probe(self, now: float) -> bool:
        """Whether the caller may call this open entry now, as its one probe (then
        :attr:`probing` is set until :meth:`release`)."""
        if self.open_until is None or now < self.open_until or self.probing:
            return False
        self.probing = True
        return True

    def take_fail_open(self) -> bool:
        """Whether the caller may call this open entry although its open period is not over,
        because nothing else can serve (one such call at a time, like a probe)."""
        if self.probing:
            return False
        self.probing = True
        return True

    def release(self) -> None:
        """The probe (or fail-open call) is over, whatever it found."""
        self.probing = False

    def success(self, now: float, probe: bool = False) -> bool:
        """Count a call that the entry answered properly. A probe's (or fail-open call's)
        success closes the circuit. Returns whether the circuit holds nothing worth keeping (closed,
        no failure in its window): the caller may forget it."""
        if self.open_until is not None:
            if not probe:  # an answer to a call made before it opened: no verdict
                return False
            self.open_until = None
            self.open_for = min(self._policy.open_for, self._max_open)
            self._calls[:] = [0] * _BUCKETS
            self._fails[:] = [0] * _BUCKETS
            self.consecutive = 0
            return False
        self.consecutive = 0
        if now - self.last_failure > self._policy.window:
            return True
        self._calls[self._slot(now)] += 1
        return False

    def failure(self, now: float, probe: bool = False) -> bool:
        """Count a health failure; returns whether the circuit is open now. A failed probe opens
        it again for longer; a failed fail-open call (``probe=False`` while open) leaves it
        as it is."""
        self.last_failure = now
        if self.open_until is not None:
            if probe:
                self.open_for = min(self.open_for * self._policy.growth, self._max_open)
                self.open_until = now + self.open_for
            return True
        self.consecutive += 1
        slot = self._slot(now)
        self._calls[slot] += 1
        self._fails[slot] += 1
        policy = self._policy
        if self.consecutive >= policy.failures:
            self.open_until = now + self.open_for
            return True
        calls = sum(self._calls)
        if calls >= policy.min_requests and sum(self._fails) >= policy.failure_ratio * calls:
            self.open_until = now + self.open_for
            return True
        return False


class RetryBudget:
    """The router-wide retry budget: a token bucket that gains ``ratio`` of a token for each
    request and holds at most ``burst`` (at least one); a retry takes a whole token. So in any
    run of requests, retries never exceed ``burst + ratio * requests``.

    >>> b = RetryBudget(ratio=0.5, burst=1)
    >>> b.take(), b.take()
    (True, False)
    >>> b.requests += 2
    >>> b.take(), b.take()
    (True, False)
    """

    __slots__ = ("_capacity", "_seen", "ratio", "requests", "retries", "tokens")

    def __init__(self, ratio: float, burst: int) -> None:
        self.ratio = ratio
        self._capacity = float(max(burst, 1))
        self.tokens = float(burst)
        self.requests = 0
        """Requests seen (the router counts them: one increment each)."""
        self._seen = 0
        self.retries = 0
        """Retries granted."""

    def take(self) -> bool:
        """Take a token for one retry, if there is one."""
        fresh = self.requests - self._seen
        if fresh:
            self._seen = self.requests
            self.tokens = min(self._capacity, self.tokens + fresh * self.ratio)
        if self.tokens >= 1:
            self.tokens -= 1
            self.retries += 1
            return True
        return False


class LocalHealth:
    """The router's own failures: counted by kind, never against a provider, and logged as the
    router's problem (at most one line per ``log_every`` seconds, with the count since the last)."""

    def __init__(self, log_every: float = 10.0) -> None:
        self.log_every = log_every
        self.errors = 0
        """Local failures seen, in all."""
        self.by_kind: dict[str, int] = {}
        """Local failures by kind (``EMFILE``, ``PoolTimeout``, ``stale_connection``, ...)."""
        self.last: float | None = None
        """When the last one happened (wall-clock seconds)."""
        self._logged_at = -math.inf
        self._unlogged = 0

    def note(self, kind: str, entry: str, detail: str, now: float) -> None:
        """Count one local failure met while calling ``entry`` (its name only: no URL, no key)."""
        self.errors += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.last = now
        self._unlogged += 1
        if now - self._logged_at >= self.log_every:
            logger.warning(
                "a failure on the router's side, not counted against any provider (%d in the "
                "last %gs); the last, calling %s: %s",
                self._unlogged,
                self.log_every,
                entry,
                detail,
            )
            self._logged_at = now
            self._unlogged = 0
