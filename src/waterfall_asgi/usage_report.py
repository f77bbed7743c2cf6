"""The usage report: what a ledger recorded, grouped and totalled (``waterfall-asgi usage``).

Per group (any of ``provider``, ``model`` — the label the request asked for —,
``upstream_model``, ``route`` and ``status``) and in total: requests; errors (finished with any
status but ``success``; ``pending`` ones are in flight, counted apart) and their rate; prompt,
completion and total tokens; cost summed per ``cost_unit`` (units are never mixed); for
cost-routed requests, what the route's reference deployment would have cost
(``reference_cost``, summed per unit) and the saving, ``reference_cost - cost`` summed per unit
over the records that have both (negative when the route paid more than its reference would
have); and the 50th and 95th percentile of the time to first byte, by nearest rank (always one
of the recorded values, exact on small data). The table shows the reference and saving columns
only when some record of the report has a reference cost; the JSON always has them. The ledger
is read through a read-only connection.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .ledger import UsageRecord
from .ledger_sqlite import TABLE, LedgerError, _connect_readonly, _select_list

__all__ = ["GROUP_KEYS", "GroupUsage", "UsageReport", "parse_since", "read_usage"]

GROUP_KEYS: tuple[str, ...] = ("provider", "model", "upstream_model", "route", "status")
"""What a report can be grouped by."""

_FIELDS = (
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "cost_unit",
    "reference_cost",
    "ttfb_ms",
)
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> float:
    """The Unix time ``text`` names: a span back from ``now`` (``45s``, ``30m``, ``1h``, ``2d``,
    ``1w``) or an ISO 8601 date or date-time (without an offset: local time).

    >>> parse_since("90m", now=10_000.0)
    4600.0
    >>> parse_since("2024-01-01T00:00:00Z")
    1704067200.0
    >>> parse_since("soon")
    Traceback (most recent call last):
    ...
    ValueError: 'soon' is neither a span (30m, 1h, 2d) nor an ISO date/time
    """
    value = text.strip()
    match = _RELATIVE.fullmatch(value)
    if match:
        span = float(match.group(1)) * _SECONDS[match.group(2)]
        return (time.time() if now is None else now) - span
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither a span (30m, 1h, 2d) nor an ISO date/time") from None
    return moment.timestamp()


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile of ``values`` by nearest rank (``None`` if there are none).

    >>> percentile([40.0, 10.0, 30.0, 20.0], 50)
    20.0
    >>> percentile([40.0, 10.0, 30.0, 20.0], 95)
    40.0
    >>> percentile([], 50) is None
    True
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class GroupUsage:
    """The totals of one group of records (or of all of them)."""

    key: dict[str, str | None]
    """The group's value of each grouping field (empty for the total)."""
    requests: int = 0
    errors: int = 0
    """Finished with any status but ``success``."""
    pending: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: dict[str, int] = field(default_factory=dict)
    """The sum of ``cost`` per ``cost_unit``."""
    reference_cost: dict[str, int] = field(default_factory=dict)
    """The sum of ``reference_cost`` per ``cost_unit``: what the routes' reference deployments
    would have cost (cost-routed requests only)."""
    saved: dict[str, int] = field(default_factory=dict)
    """The sum of ``reference_cost - cost`` per ``cost_unit``, over the records that have both
    (negative: the route paid more than its reference would have)."""
    ttfb_ms: list[float] = field(default_factory=list, repr=False)
    """Every recorded time to first byte (ms)."""

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one record (a mapping with ``status``, the token counts, ``cost``,
        ``cost_unit``, ``reference_cost`` and ``ttfb_ms``)."""
        self.requests += 1
        if row["status"] == "pending":
            self.pending += 1
        elif row["status"] != "success":
            self.errors += 1
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        self.total_tokens += row["total_tokens"] or 0
        if row["cost"] is not None:
            unit = row["cost_unit"] or "unknown"
            self.cost[unit] = self.cost.get(unit, 0) + row["cost"]
        reference = row["reference_cost"]
        if reference is not None:
            unit = row["cost_unit"] or "unknown"
            self.reference_cost[unit] = self.reference_cost.get(unit, 0) + reference
            if row["cost"] is not None:
                self.saved[unit] = self.saved.get(unit, 0) + reference - row["cost"]
        if row["ttfb_ms"] is not None:
            self.ttfb_ms.append(float(row["ttfb_ms"]))

    @property
    def error_rate(self) -> float:
        """``errors / requests`` (0 when there are no requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttfb_p50(self) -> float | None:
        """The median time to first byte (ms), by nearest rank."""
        return percentile(self.ttfb_ms, 50)

    @property
    def ttfb_p95(self) -> float | None:
        """The 95th percentile time to first byte (ms), by nearest rank."""
        return percentile(self.ttfb_ms, 95)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the totals (not the raw TTFB values)."""
        return {
            **self.key,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "pending": self.pending,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": dict(sorted(self.cost.items())),
            "reference_cost": dict(sorted(self.reference_cost.items())),
            "saved": dict(sorted(self.saved.items())),
            "ttfb_ms_p50": self.ttfb_p50,
            "ttfb_ms_p95": self.ttfb_p95,
        }


def _check_by(by: Sequence[str]) -> tuple[str, ...]:
    keys = tuple(by)
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if not keys or unknown or len(set(keys)) != len(keys):
        raise ValueError(
            f"group by one or more distinct of {', '.join(GROUP_KEYS)} (got {', '.join(keys)})"
        )
    return keys


def _sort_key(group: GroupUsage) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, value or "") for value in group.key.values())


@dataclass
class UsageReport:
    """Groups of records and their total; render with :meth:`table` or :meth:`to_json`."""

    by: tuple[str, ...]
    since: float | None
    groups: list[GroupUsage]
    total: GroupUsage

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], *, by: Sequence[str], since: float | None = None
    ) -> UsageReport:
        """Aggregate ``rows`` (mappings with the grouping fields and those
        :meth:`GroupUsage.add` reads), already limited to ``since``."""
        keys = _check_by(by)
        groups: dict[tuple[str | None, ...], GroupUsage] = {}
        total = GroupUsage(key={})
        for row in rows:
            key = tuple(row[k] for k in keys)
            group = groups.get(key)
            if group is None:
                group = groups[key] = GroupUsage(key=dict(zip(keys, key, strict=True)))
            group.add(row)
            total.add(row)
        return cls(by=keys, since=since, groups=sorted(groups.values(), key=_sort_key), total=total)

    @classmethod
    def from_records(
        cls, records: Iterable[UsageRecord], *, by: Sequence[str], since: float | None = None
    ) -> UsageReport:
        """Aggregate the ``records`` started at or after ``since``."""
        names = (*GROUP_KEYS, *_FIELDS)
        rows = (
            {name: getattr(r, name) for name in names}
            for r in records
            if since is None or r.started_at >= since
        )
        return cls.from_rows(rows, by=by, since=since)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``by``, ``since`` (Unix seconds and ISO), ``groups``, ``total``."""
        return {
            "by": list(self.by),
            "since": self.since,
            "since_iso": _iso(self.since) if self.since is not None else None,
            "groups": [g.to_dict() for g in self.groups],
            "total": self.total.to_dict(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A fixed-width text table: a title, one line per group, and the total. The
        ``reference`` and ``saved`` columns (after ``cost``) are there only when some record
        has a reference cost.

        >>> report = UsageReport.from_rows([], by=["provider"])
        >>> print(report.table())
        usage (all time), by provider
        provider  requests  errors  error %  prompt  completion  total  cost  ttfb p50 ms  ttfb p95 ms
        --------  --------  ------  -------  ------  ----------  -----  ----  -----------  -----------
        --------  --------  ------  -------  ------  ----------  -----  ----  -----------  -----------
        TOTAL            0       0     0.0%       0           0      0     -            -            -
        """  # noqa: E501
        head = [*self.by, "requests", "errors", "error %", "prompt", "completion", "total"]
        head += ["cost"]
        savings = bool(self.total.reference_cost)
        if savings:
            head += ["reference", "saved"]
        head += ["ttfb p50 ms", "ttfb p95 ms"]
        body = [self._cells(g, [_text(v) for v in g.key.values()], savings) for g in self.groups]
        total = self._cells(self.total, ["TOTAL"] + [""] * (len(self.by) - 1), savings)
        widths = [max(len(row[i]) for row in (head, *body, total)) for i in range(len(head))]
        keys = len(self.by)

        def line(cells: list[str]) -> str:
            out = [
                c.ljust(w) if i < keys else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(out).rstrip()

        rule = line(["-" * w for w in widths])
        since = f"since {_iso(self.since)}" if self.since is not None else "(all time)"
        title = f"usage {since}, by {', '.join(self.by)}"
        return "\n".join([title, line(head), rule, *map(line, body), rule, line(total)])

    @staticmethod
    def _cells(group: GroupUsage, keys: list[str], savings: bool) -> list[str]:
        amounts = [group.cost, group.reference_cost, group.saved] if savings else [group.cost]
        return [
            *keys,
            str(group.requests),
            str(group.errors),
            f"{group.error_rate * 100:.1f}%",
            str(group.prompt_tokens),
            str(group.completion_tokens),
            str(group.total_tokens),
            *map(_amounts, amounts),
            _ms(group.ttfb_p50),
            _ms(group.ttfb_p95),
        ]


def _amounts(per_unit: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {u}" for u, v in sorted(per_unit.items())) or "-"


def _text(value: str | None) -> str:
    return "-" if value is None else value


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def read_usage(
    path: str | os.PathLike[str],
    *,
    by: Sequence[str] = ("provider",),
    since: float | None = None,
) -> UsageReport:
    """The report of the ledger at ``path`` (opened read-only; a ``postgresql://`` URL reads a
    PostgreSQL ledger), records started at or after ``since`` (Unix seconds). Raises
    :class:`~waterfall_asgi.ledger_sqlite.LedgerError` if the file is missing or is not a
    ledger (or the database cannot be read), :class:`ValueError` for an unknown grouping."""
    keys = _check_by(by)
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from .ledger_postgres import fetch_rows, run_sync

        columns = list(dict.fromkeys((*keys, *_FIELDS)))
        rows = run_sync(lambda: fetch_rows(path, columns, since=since))
        return UsageReport.from_rows(rows, by=keys, since=since)
    conn = _connect_readonly(path)
    try:
        query = f"SELECT {_select_list(conn, list(dict.fromkeys((*keys, *_FIELDS))))} FROM {TABLE}"
        params: tuple[float, ...] = ()
        if since is not None:
            query += " WHERE started_at >= ?"
            params = (since,)
        return UsageReport.from_rows(conn.execute(query, params), by=keys, since=since)
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot read the ledger database: {exc}") from exc
    finally:
        conn.close()
