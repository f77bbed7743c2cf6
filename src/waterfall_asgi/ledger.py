"""The usage ledger: one record per request the router handles, whatever happened.

A :class:`UsageRecord` is saved when the response is accepted (time to first byte known, status
``pending``) and saved again, finished, at the end, with tokens, cost, duration and a terminal
status. A request answered by the router itself (a bad request, all providers exhausted) is saved
once, already finished. Stores sit behind the small async :class:`LedgerStore` protocol;
:class:`MemoryLedger` keeps records in memory (tests, or no persistence), and
:class:`~waterfall_asgi.ledger_sqlite.SQLiteLedger` is the embedded default;
:class:`~waterfall_asgi.ledger_postgres.PostgresLedger` keeps them in PostgreSQL, for many
replicas.

Statuses:

- ``pending``: accepted, not finished (a record left so by a process that died is marked
  ``interrupted``: at the next start for the memory store; once that process's lease has
  lapsed for the SQLite and PostgreSQL stores, which several processes may share);
- ``success``: complete (a stream ended with ``data: [DONE]``);
- ``client_disconnected``: the client went away before the end;
- ``stream_incomplete``: the upstream stream ended without ``[DONE]``;
- ``upstream_error``: the upstream failed after acceptance (an error event, a cut, a timeout);
- ``exhausted``: every entry failed or was cooling (503);
- ``rejected``: the request was refused: by the router (bad input, auth, unknown model), or by
  the upstream with a 4xx that was passed back as it was;
- ``interrupted``: found ``pending`` after its process ended (or cancelled at shut-down).
"""

from __future__ import annotations

import dataclasses
import operator
import random
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "TERMINAL_STATUSES",
    "LedgerStore",
    "MemoryLedger",
    "Status",
    "UsageRecord",
    "new_request_id",
]

Status: TypeAlias = Literal[
    "pending",
    "success",
    "client_disconnected",
    "stream_incomplete",
    "upstream_error",
    "exhausted",
    "rejected",
    "interrupted",
]
"""Where a request ended up (see the module docs)."""

TERMINAL_STATUSES: frozenset[str] = frozenset(
    {
        "success",
        "client_disconnected",
        "stream_incomplete",
        "upstream_error",
        "exhausted",
        "rejected",
        "interrupted",
    }
)
"""Every status but ``pending``."""


_RANDOM_B = (1 << 62) - 1


def new_request_id() -> str:
    """A new request id: a UUIDv7 (RFC 9562) as 32 hex digits, so ids sort by their millisecond
    and the ledger's index on them grows at its end instead of anywhere (a random id costs a
    SQLite write more); 74 random bits below the millisecond keep them unique.

    >>> a, b = new_request_id(), new_request_id()
    >>> len(a), a[12], a != b, a[:8] <= b[:8]
    (32, '7', True, True)
    """
    bits = random.getrandbits(74)  # the module's generator: reseeded in a forked child
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version 7
        | (bits >> 62) << 64
        | 0b10 << 62  # the RFC's variant
        | bits & _RANDOM_B
    )
    return f"{value:032x}"


@dataclass
class UsageRecord:
    """One request, as the ledger keeps it. Times are Unix seconds; durations milliseconds;
    ``cost`` is an integer number of ``cost_unit`` (the deployment's price unit), rounded up once.
    """

    id: str
    started_at: float
    route: str
    model: str | None = None
    """What the request asked for (a chain, a model, ``provider/model``)."""
    provider: str | None = None
    """The provider that served (``None`` if none did)."""
    upstream_model: str | None = None
    """The model name sent to that provider."""
    stream: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Each entry tried or skipped: ``entry``, ``outcome``, ``status``, ``elapsed_ms``,
    ``cooldown_s``."""
    status: Status = "pending"
    http_status: int | None = None
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: int | None = None
    cost_unit: str | None = None
    reference_cost: int | None = None
    """What the route's reference deployment would have cost for the same tokens, in
    ``cost_unit``; cost-routed requests only."""
    error: str | None = None
    """A short reason for any status but ``success`` (never a secret)."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready) of every field (a copy: changing it leaves the record)."""
        data = dict(self.__dict__)  # the fields hold scalars, but for the list of attempts
        data["attempts"] = [dict(a) for a in self.attempts]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRecord:
        """The record ``to_dict`` gave (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@runtime_checkable
class LedgerStore(Protocol):
    """Where usage records go. Every method may be called from the event loop: a store that
    does blocking I/O must do it elsewhere (a thread, a writer task)."""

    async def open(self) -> None:
        """Get ready (create or migrate storage; mark records left ``pending`` as
        ``interrupted``)."""
        ...

    async def save(self, record: UsageRecord) -> None:
        """Insert ``record``, or replace the one with the same ``id``; but a ``pending`` record
        never replaces a terminal one (saves of one id that land out of order, or twice, keep
        the terminal status)."""
        ...

    async def close(self) -> None:
        """Write everything still buffered and release resources."""
        ...


class MemoryLedger:
    """Records in memory, in this process: for tests, or when nothing should be persisted.

    It keeps the latest ``max_records`` requests (``None``: all of them), so that a router
    left running with ``ledger.path = None`` does not grow without end; the oldest go first.
    :attr:`records` reads them.

    >>> import asyncio
    >>> ledger = MemoryLedger(max_records=2)
    >>> for n in range(3):
    ...     asyncio.run(ledger.save(UsageRecord(id=f"r{n}", started_at=0.0, route="/v1/x")))
    >>> list(ledger.records)
    ['r1', 'r2']
    """

    def __init__(self, max_records: int | None = 10_000) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be at least 1 (or None)")
        # A record is kept as one flat tuple of plain values (see _row), which the garbage
        # collector stops tracking at its first look, where a record (an object, its dict, a
        # list, a dict per attempt) would stay on its lists, walked by every full collection for
        # as long as it is kept. The OrderedDict forgets its oldest in O(1) (a dict finds its
        # first key by skipping every key deleted before it).
        self._rows: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self.max_records = max_records
        self.opened = self.closed = False

    @property
    def records(self) -> Mapping[str, UsageRecord]:
        """The records kept, by ``id``, oldest first: a read-only view, whose every read is a
        new :class:`UsageRecord` (changing it changes nothing here)."""
        return _Records(self._rows)

    async def open(self) -> None:
        """Mark records left ``pending`` (from before a restart) as ``interrupted``."""
        self.opened = True
        rows = self._rows
        for key, row in rows.items():
            if row[_STATUS] == "pending":
                values = list(row)
                values[_STATUS] = "interrupted"
                if values[_ERROR] is None:
                    values[_ERROR] = "the process ended before the request finished"
                rows[key] = tuple(values)

    async def save(self, record: UsageRecord) -> None:
        """Keep a copy of ``record`` (so later changes to it are not seen until saved again).
        A ``pending`` save never replaces a terminal one (the store's contract)."""
        rows = self._rows
        if record.status == "pending":
            kept = rows.get(record.id)
            if kept is not None and kept[_STATUS] != "pending":
                return
        rows[record.id] = _row(record)
        if self.max_records is not None and len(rows) > self.max_records:
            rows.popitem(last=False)  # the oldest request (a save again keeps the place)

    async def close(self) -> None:
        """Nothing to flush."""
        self.closed = True


_SCALARS = tuple(f.name for f in dataclasses.fields(UsageRecord) if f.name != "attempts")
_SCALAR_VALUES = operator.attrgetter(*_SCALARS)
_STATUS = _SCALARS.index("status")
_ERROR = _SCALARS.index("error")
_ATTEMPTS_AT = len(_SCALARS)


def _row(record: UsageRecord) -> tuple[Any, ...]:
    """``record`` as one flat tuple: every field but ``attempts``, in order, then each attempt as
    its number of items, its keys and its values."""
    values = list(_SCALAR_VALUES(record))
    for attempt in record.attempts:
        values.append(len(attempt))
        values += attempt.keys()
        values += attempt.values()
    return tuple(values)


def _record(row: tuple[Any, ...]) -> UsageRecord:
    """The record :func:`_row` made ``row`` of."""
    attempts: list[dict[str, Any]] = []
    at, end = _ATTEMPTS_AT, len(row)
    while at < end:
        n = row[at]
        keys, values = row[at + 1 : at + 1 + n], row[at + 1 + n : at + 1 + 2 * n]
        attempts.append(dict(zip(keys, values, strict=True)))
        at += 1 + 2 * n
    scalars = zip(_SCALARS, row[:_ATTEMPTS_AT], strict=True)
    return UsageRecord(**dict(scalars), attempts=attempts)


class _Records(Mapping[str, UsageRecord]):
    """A :class:`MemoryLedger`'s records, as :class:`UsageRecord` objects made on each read."""

    __slots__ = ("_rows",)

    def __init__(self, rows: OrderedDict[str, tuple[Any, ...]]) -> None:
        self._rows = rows

    def __getitem__(self, key: str) -> UsageRecord:
        return _record(self._rows[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"
