"""The conduct verdict: does the client behave well towards a provider that fails?

:func:`judge_conduct` reads one fake's journal and checks how the client under test retried:

- ``retry_after``: no attempt before the time a failure's hint (``Retry-After``,
  ``retry-after-ms``, the ``x-ratelimit-reset*`` headers of an exhausted limit) named;
- ``backoff``: after failures with no hint, the gaps between attempts are at least
  ``min_gap``, grow, and are jittered;
- ``storm``: at most ``max_retries`` retries in any ``window`` seconds;
- ``no_retry_4xx``: a 4xx that is the request's fault (400, 404, 405, 413, 422) is not retried;
- ``stop``: no attempt after the client was told to stop (401, 402, 403, or
  ``x-should-retry: false``).

What a fake can know is limited to what reached it, and the verdict says so: an attempt that
never arrived (a proxy that fell through to another provider, a client that gave up) is no
evidence against the client, so every check accepts it. Retries are recognised by their bytes:
after a failure, a request with the same method, path and body is taken as a retry of the one
that failed, until one of them succeeds (a request whose ``x-stainless-retry-count`` header,
sent by the official SDKs, is ``0`` starts afresh). Two distinct requests with the same body,
the second sent after the first failed, look like a retry.

>>> from waterfall_fakes import FakeProvider
>>> fake = FakeProvider()
>>> judge_conduct(fake.requests).passed  # nothing to judge: nothing failed
True
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .provider import FakeProvider, RecordedRequest

__all__ = [
    "CONDUCT_CHECKS",
    "ConductCheck",
    "ConductThresholds",
    "ConductVerdict",
    "ConductViolation",
    "assert_good_conduct",
    "hint_seconds",
    "judge_conduct",
]

VERDICT_VERSION = 1

REQUEST_FAULT = frozenset({400, 404, 405, 413, 422})
"""4xx statuses that say the request itself is wrong: sending it again cannot help."""

STOP = frozenset({401, 402, 403})
"""Statuses that tell the client to stop: the key, the account or the permission is wrong."""

TRANSIENT_KINDS = frozenset({"truncate", "error_event", "cut", "hang", "stall"})
"""Behaviours that break an answer sent with status 200 (a retry of it is fair)."""

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ConductThresholds(BaseModel):
    """The verdict's tolerances; every one can be given to ``waterfall-fakes verdict`` and to
    ``GET /_fake/verdict`` by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    NAMES: ClassVar[tuple[str, ...]] = (
        "tolerance",
        "min_gap",
        "max_backoff",
        "window",
        "max_retries",
    )

    tolerance: float = Field(
        default=0.05, ge=0, description="seconds an attempt may come before a hinted time"
    )
    min_gap: float = Field(
        default=0.01, ge=0, description="seconds, the shortest gap after a failure with no hint"
    )
    max_backoff: float = Field(
        default=8.0, gt=0, description="seconds; gaps of half this need not grow any more (a cap)"
    )
    window: float = Field(default=1.0, gt=0, description="seconds of the storm check's window")
    max_retries: float = Field(
        default=10, ge=0, description="retries allowed in any one window (storm)"
    )


@dataclass(frozen=True)
class ConductViolation:
    """One thing the client did wrong: the journal index of the attempt, and of the answer it
    disregarded."""

    index: int
    after: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """The JSON shape (version 1)."""
        return {"index": self.index, "after": self.after, "message": self.message}


Status = Literal["pass", "fail", "not_judged"]


@dataclass(frozen=True)
class ConductCheck:
    """One check's result: ``judged`` counts the cases it looked at."""

    name: str
    status: Status
    judged: int
    summary: str
    assumes: str
    violations: tuple[ConductViolation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON shape (version 1)."""
        return {
            "name": self.name,
            "status": self.status,
            "judged": self.judged,
            "summary": self.summary,
            "assumes": self.assumes,
            "violations": [v.to_json() for v in self.violations],
        }


CONDUCT_CHECKS: dict[str, str] = {
    "retry_after": (
        "A hint counts from when the failed answer's headers were sent. It holds back the "
        "retry (the next request with the same body) and every other request for the same "
        "model and path that arrives more than `tolerance` after the hint was sent (one in "
        "flight before is no fault): a rate limit is the account's, not one request's, so a "
        "client that keeps other requests going during the wait fails too. Hints read: "
        "Retry-After (seconds or HTTP date), retry-after-ms, and on a 429 the "
        "x-ratelimit-reset* headers of a limit whose remaining count is 0."
    ),
    "backoff": (
        "After a failure with no hint (a 5xx, 408, 409 or 429 without a hint, a cut or broken "
        "stream, a hang the client gave up on): every gap to the retry is at least min_gap; in a "
        "run of 3 or more gaps each gap is longer than the one two places before it, unless "
        "the run grew from under max_backoff/2 to that (exponential backoff, however wide its "
        "jitter, up to a cap); gaps are jittered: 3 or more gaps at the same place in their "
        "runs are not all within 1 ms of each other, and a run of 4 or more gaps does not grow "
        "by one fixed ratio (to 1%). A client using full jitter (a delay drawn from 0 up) can "
        "draw a gap under min_gap by chance: give it min_gap=0."
    ),
    "storm": (
        "Counts retries (requests repeating one that failed) in every window of `window` "
        "seconds; first attempts are the application's load, not the client's conduct."
    ),
    "no_retry_4xx": (
        "400, 404, 405, 413 and 422 say the request is wrong; the same bytes sent again are a "
        "retry. A client may send a corrected request (other bytes) or go elsewhere."
    ),
    "stop": (
        "401, 402 and 403 (key, account, permission) and `x-should-retry: false` tell the "
        "client to stop sending that request here; the same bytes sent again are a retry."
    ),
}

CANNOT_KNOW = (
    "Attempts that never reached this fake: a proxy that fell through to another provider, or "
    "a client that gave up, leaves no trace here, and no check counts that against it.",
    "Which requests are retries: taken from identical method, path and body after a failure "
    "(x-stainless-retry-count: 0 starts afresh); two distinct requests with the same body look "
    "like one retried.",
    "What the client saw and when: times are the fake's, taken when it received a request and "
    "sent an answer; the network between them is not seen.",
)


@dataclass(frozen=True)
class ConductVerdict:
    """The result of :func:`judge_conduct`: ``passed`` unless some check failed."""

    checks: tuple[ConductCheck, ...]
    thresholds: ConductThresholds
    requests: int
    attempts: int
    retries: int
    cannot_know: tuple[str, ...] = CANNOT_KNOW

    @property
    def passed(self) -> bool:
        """Whether no check failed (a check with nothing to judge does not fail)."""
        return all(c.status != "fail" for c in self.checks)

    def check(self, name: str) -> ConductCheck:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape ``GET /_fake/verdict`` and ``verdict --json`` print (version 1)."""
        return {
            "version": VERDICT_VERSION,
            "passed": self.passed,
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "thresholds": self.thresholds.model_dump(),
            "checks": [c.to_json() for c in self.checks],
            "cannot_know": list(self.cannot_know),
        }

    def report(self) -> str:
        """A readable report: one line a check, the violations under it."""
        failed = sum(c.status == "fail" for c in self.checks)
        head = "PASS" if self.passed else "FAIL"
        lines = [
            f"conduct verdict: {head} ({failed} of {len(self.checks)} checks failed; "
            f"{self.requests} requests, {self.attempts} attempts, {self.retries} retries)"
        ]
        for c in self.checks:
            mark = {"pass": "pass", "fail": "FAIL", "not_judged": "----"}[c.status]
            lines.append(f"  {mark}  {c.name:<13} {c.summary}")
            for v in c.violations[:10]:
                lines.append(f"          #{v.index}: {v.message}")
            if len(c.violations) > 10:
                lines.append(f"          ... and {len(c.violations) - 10} more")
        lines.append("not known to a fake:")
        lines += [f"  - {text}" for text in self.cannot_know]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# -- reading the journal -----------------------------------------------------------------------
@dataclass
class _Attempt:
    index: int
    method: str
    path: str
    body: bytes
    headers: Mapping[str, str]
    status: int
    response_headers: Mapping[str, str]
    behaviours: frozenset[str]
    received_at: float
    told_at: float  # when the answer (or its failure) reached the client, as far as we know
    end: str

    @property
    def model(self) -> str | None:
        """The request's ``model``, if its body is a JSON object naming one."""
        try:
            obj = json.loads(self.body)
        except ValueError:
            return None
        model = obj.get("model") if isinstance(obj, dict) else None
        return model if isinstance(model, str) else None


def _from_record(r: RecordedRequest) -> _Attempt:
    d = r.delivery
    told = d.headers_at if d.headers_at is not None else r.received_at
    if d.end in ("cut", "client_gone") and d.ended_at is not None:
        told = d.ended_at
    return _Attempt(
        r.index,
        r.method,
        r.path,
        r.body,
        r.headers,
        r.status,
        {k.lower(): v for k, v in r.response_headers},
        frozenset(b.kind for b in r.behaviours),
        r.received_at,
        told,
        d.end,
    )


def _from_entry(e: Mapping[str, Any]) -> _Attempt:
    import base64

    received = float(e["received_at"])
    timings = e.get("timings") or {}
    told = received
    if timings.get("headers_ms") is not None:
        told = received + timings["headers_ms"] / 1000
    end = e.get("end", "complete")
    if end in ("cut", "client_gone") and timings.get("end_ms") is not None:
        told = received + timings["end_ms"] / 1000
    body = e.get("body") or ""
    raw = base64.b64decode(body) if e.get("body_encoding") == "base64" else body.encode()
    return _Attempt(
        int(e["index"]),
        e["method"],
        e["path"],
        raw,
        {k.lower(): v for k, v in (e.get("headers") or {}).items()},
        int(e["status"]),
        {k.lower(): v for k, v in (e.get("response_headers") or {}).items()},
        frozenset(b.get("kind", "") for b in e.get("behaviours") or []),
        received,
        told,
        end,
    )


def _go_seconds(text: str) -> float | None:
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def hint_seconds(status: int, headers: Mapping[str, str], told_at: float) -> float | None:
    """Seconds from ``told_at`` that an answer's headers ask the client to wait (``None``: no
    hint). Header names are lower case.

    >>> hint_seconds(429, {"retry-after": "2"}, 0.0), hint_seconds(503, {}, 0.0)
    (2.0, None)
    >>> hint_seconds(429, {"x-ratelimit-remaining-requests": "0",
    ...                    "x-ratelimit-reset-requests": "1m0.5s"}, 0.0)
    60.5
    >>> hint_seconds(429, {"anthropic-ratelimit-requests-remaining": "0",
    ...                    "anthropic-ratelimit-requests-reset": "1970-01-01T00:00:30Z"}, 0.0)
    30.0
    """
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in headers:
        value = headers["retry-after"].strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - told_at)
        except (TypeError, ValueError):
            pass
    if status != 429:
        return None
    waits = []
    for what in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{what}") == "0":
            reset = _go_seconds(headers.get(f"x-ratelimit-reset-{what}", ""))
            if reset is not None:
                waits.append(reset)
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        with contextlib.suppress(ValueError):
            waits.append(max(0.0, float(headers["x-ratelimit-reset"]) / 1000 - told_at))
    for what in ("requests", "tokens", "input-tokens", "output-tokens"):  # Anthropic's
        if headers.get(f"anthropic-ratelimit-{what}-remaining") == "0":
            stamp = headers.get(f"anthropic-ratelimit-{what}-reset", "")
            with contextlib.suppress(ValueError):
                waits.append(max(0.0, datetime.fromisoformat(stamp).timestamp() - told_at))
    return max(waits) if waits else None


def _is_attempt(a: _Attempt) -> bool:
    return a.method == "POST" and a.path.startswith("/v1/")


Kind = Literal["ok", "fault", "stop", "hinted", "unhinted", "other"]


def _kind(a: _Attempt) -> tuple[Kind, float | None]:
    if a.response_headers.get("x-should-retry", "").lower() == "false" or a.status in STOP:
        return "stop", None
    if a.status in REQUEST_FAULT:
        return "fault", None
    transient = a.status >= 500 or a.status in (408, 409, 429)
    if transient:
        hint = hint_seconds(a.status, a.response_headers, a.told_at)
        return ("hinted", hint) if hint is not None else ("unhinted", None)
    if a.status < 400:
        broken = a.end in ("cut", "client_gone") or bool(a.behaviours & TRANSIENT_KINDS)
        return ("unhinted", None) if broken else ("ok", None)
    return "other", None


def _groups(attempts: list[_Attempt]) -> list[list[_Attempt]]:
    """Attempts split into logical requests: same bytes, until one is answered well."""
    open_groups: dict[tuple[str, str, bytes], list[_Attempt]] = {}
    out: list[list[_Attempt]] = []
    for a in attempts:
        key = (a.method, a.path, a.body)
        group = open_groups.get(key)
        if group is None or a.headers.get("x-stainless-retry-count") == "0":
            group = []
            out.append(group)
            open_groups[key] = group
        group.append(a)
        if _kind(a)[0] == "ok":
            del open_groups[key]
    return out


def _records(
    source: FakeProvider | Sequence[RecordedRequest] | Mapping[str, Any],
) -> list[_Attempt]:
    if isinstance(source, Mapping):  # a journal as the control plane serves it
        return [_from_entry(e) for e in source.get("entries", [])]
    from .provider import FakeProvider

    requests = source.requests if isinstance(source, FakeProvider) else source
    return [_from_record(r) for r in requests]


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f} s"


# -- the checks --------------------------------------------------------------------------------
def _retry_after(groups: list[list[_Attempt]], t: ConductThresholds) -> ConductCheck:
    judged, bad = 0, []
    for g in groups:
        for prev, nxt in itertools.pairwise(g):
            kind, hint = _kind(prev)
            if kind != "hinted" or hint is None:
                continue
            judged += 1
            waited = nxt.received_at - prev.told_at
            if waited < hint - t.tolerance:
                bad.append(
                    ConductViolation(
                        nxt.index,
                        prev.index,
                        f"retried {_fmt(waited)} after a {prev.status} that said to wait "
                        f"{_fmt(hint)}",
                    )
                )
    # the hint covers the model, not only the request: nothing else for it while it lasts
    everything = sorted((a for g in groups for a in g), key=lambda a: a.received_at)
    for told in everything:
        kind, hint = _kind(told)
        if kind != "hinted" or hint is None:
            continue
        start, until = told.told_at + t.tolerance, told.told_at + hint - t.tolerance
        for other in everything:
            if (
                start < other.received_at < until
                and other.index != told.index
                and (other.path, other.model) == (told.path, told.model)
                and other.body != told.body
            ):
                bad.append(
                    ConductViolation(
                        other.index,
                        told.index,
                        f"another request for {told.model or told.path} came "
                        f"{_fmt(other.received_at - told.told_at)} after a {told.status} that "
                        f"said to wait {_fmt(hint)}",
                    )
                )
    last = [g[-1] for g in groups if _kind(g[-1])[0] == "hinted"]
    if not judged and not last:
        return ConductCheck(
            "retry_after",
            "not_judged",
            0,
            "no failure carried a hint",
            CONDUCT_CHECKS["retry_after"],
        )
    summary = (
        f"{len(bad)} requests came before a hinted time ({judged} retries after a hint)"
        if bad
        else f"{judged} retries after a hint waited for it"
        + (f"; {len(last)} hinted failures not retried here" if last else "")
    )
    return ConductCheck(
        "retry_after",
        "fail" if bad else "pass",
        judged + len(last),
        summary,
        CONDUCT_CHECKS["retry_after"],
        tuple(bad),
    )


def _runs(g: list[_Attempt]) -> list[list[tuple[_Attempt, _Attempt, float]]]:
    """Runs of consecutive unhinted failures in a group: (failed, retry, gap) each."""
    runs: list[list[tuple[_Attempt, _Attempt, float]]] = []
    current: list[tuple[_Attempt, _Attempt, float]] = []
    for prev, nxt in itertools.pairwise(g):
        if _kind(prev)[0] == "unhinted":
            current.append((prev, nxt, nxt.received_at - prev.told_at))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _backoff(groups: list[list[_Attempt]], t: ConductThresholds) -> ConductCheck:
    bad: list[ConductViolation] = []
    gaps = 0
    by_depth: dict[int, list[tuple[float, _Attempt, _Attempt]]] = {}
    for g in groups:
        for run in _runs(g):
            gaps += len(run)
            for depth, (prev, nxt, gap) in enumerate(run):
                by_depth.setdefault(depth, []).append((gap, prev, nxt))
                if gap < t.min_gap:
                    bad.append(
                        ConductViolation(
                            nxt.index,
                            prev.index,
                            f"retried {_fmt(gap)} after a {prev.status} with no hint "
                            f"(min_gap {_fmt(t.min_gap)})",
                        )
                    )
            values = [gap for _, _, gap in run]
            capped = t.max_backoff / 2
            flat = [
                i
                for i in range(len(values) - 2)
                if values[i + 2] <= values[i] and (values[i] < capped or values[0] >= capped)
            ]
            if flat:
                bad.append(
                    ConductViolation(
                        run[flat[0] + 2][1].index,
                        run[flat[0]][0].index,
                        "gaps did not grow: "
                        + ", ".join(_fmt(v) for v in values)
                        + " after failures with no hint",
                    )
                )
            if len(values) >= 4 and min(values) > 0.02:
                ratios = [b / a for a, b in itertools.pairwise(values)]
                if max(ratios) - min(ratios) <= 0.01 * min(ratios):
                    bad.append(
                        ConductViolation(
                            run[-1][1].index,
                            run[0][0].index,
                            "gaps are not jittered: each is "
                            f"{ratios[0]:.2f} times the one before ("
                            + ", ".join(_fmt(v) for v in values)
                            + ")",
                        )
                    )
    for depth, items in sorted(by_depth.items()):
        values = [gap for gap, _, _ in items]
        if len(values) >= 3 and max(values) - min(values) <= 0.001 and min(values) > 0.002:
            bad.append(
                ConductViolation(
                    items[-1][2].index,
                    items[-1][1].index,
                    f"gaps are not jittered: retry {depth + 1} came {_fmt(values[0])} after its "
                    f"failure in all of {len(values)} requests",
                )
            )
    if not gaps:
        return ConductCheck(
            "backoff",
            "not_judged",
            0,
            "no failure without a hint was retried",
            CONDUCT_CHECKS["backoff"],
        )
    summary = (
        f"{len(bad)} problems in {gaps} gaps after failures with no hint"
        if bad
        else f"{gaps} gaps after failures with no hint: long enough, growing, jittered"
    )
    return ConductCheck(
        "backoff", "fail" if bad else "pass", gaps, summary, CONDUCT_CHECKS["backoff"], tuple(bad)
    )


def _storm(groups: list[list[_Attempt]], t: ConductThresholds) -> ConductCheck:
    retries = sorted((a for g in groups for a in g[1:]), key=lambda a: a.received_at)
    if not retries:
        return ConductCheck("storm", "not_judged", 0, "no retries", CONDUCT_CHECKS["storm"])
    worst, worst_at, start = 0, 0, 0
    for end, a in enumerate(retries):
        while a.received_at - retries[start].received_at >= t.window:
            start += 1
        if end - start + 1 > worst:
            worst, worst_at = end - start + 1, end
    limit = math.floor(t.max_retries)
    if worst > limit:
        a = retries[worst_at]
        v = ConductViolation(
            a.index,
            retries[worst_at - worst + 1].index,
            f"{worst} retries within {_fmt(t.window)} (at most {limit})",
        )
        return ConductCheck(
            "storm",
            "fail",
            len(retries),
            f"{worst} retries in one {_fmt(t.window)} window, over {limit}",
            CONDUCT_CHECKS["storm"],
            (v,),
        )
    return ConductCheck(
        "storm",
        "pass",
        len(retries),
        f"at most {worst} retries in any {_fmt(t.window)} window (limit {limit})",
        CONDUCT_CHECKS["storm"],
    )


def _after(groups: list[list[_Attempt]], name: str, kind: Kind, what: str) -> ConductCheck:
    judged, bad = 0, []
    for g in groups:
        for i, a in enumerate(g):
            if _kind(a)[0] != kind:
                continue
            judged += 1
            if i + 1 < len(g):
                nxt = g[i + 1]
                gap = nxt.received_at - a.told_at
                bad.append(
                    ConductViolation(
                        nxt.index, a.index, f"sent again {_fmt(gap)} after a {a.status}"
                    )
                )
    if not judged:
        return ConductCheck(name, "not_judged", 0, f"no {what}", CONDUCT_CHECKS[name])
    summary = (
        f"{len(bad)} retries after {judged} {what}"
        if bad
        else f"none of {judged} {what} was retried"
    )
    return ConductCheck(
        name, "fail" if bad else "pass", judged, summary, CONDUCT_CHECKS[name], tuple(bad)
    )


def judge_conduct(
    source: FakeProvider | Sequence[RecordedRequest] | Mapping[str, Any],
    thresholds: ConductThresholds | None = None,
    **overrides: float,
) -> ConductVerdict:
    """Judge the client's conduct from a fake's journal.

    ``source`` is a :class:`~waterfall_fakes.FakeProvider`, its ``requests``, or a journal as
    ``GET /_fake/journal`` serves it. ``overrides`` set :class:`ConductThresholds` fields by name.
    """
    t = thresholds or ConductThresholds()
    if overrides:
        t = t.model_validate({**t.model_dump(), **overrides})
    every = _records(source)
    attempts = [a for a in every if _is_attempt(a)]
    groups = _groups(attempts)
    checks = (
        _retry_after(groups, t),
        _backoff(groups, t),
        _storm(groups, t),
        _after(groups, "no_retry_4xx", "fault", "answers that blamed the request"),
        _after(groups, "stop", "stop", "answers that said to stop"),
    )
    return ConductVerdict(
        checks,
        t,
        requests=len(every),
        attempts=len(attempts),
        retries=sum(len(g) - 1 for g in groups),
    )


def assert_good_conduct(
    source: FakeProvider | Sequence[RecordedRequest] | Mapping[str, Any],
    thresholds: ConductThresholds | None = None,
    **overrides: float,
) -> ConductVerdict:
    """:func:`judge_conduct`, raising ``AssertionError`` with the report when a check fails.

    >>> from waterfall_fakes import FakeProvider
    >>> assert_good_conduct(FakeProvider()).passed
    True
    """
    verdict = judge_conduct(source, thresholds, **overrides)
    if not verdict.passed:
        raise AssertionError(verdict.report())
    return verdict
