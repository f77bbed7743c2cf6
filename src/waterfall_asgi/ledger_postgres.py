"""The usage ledger in PostgreSQL: :class:`PostgresLedger`, one truth for many replicas.

Install the driver with ``pip install 'waterfall-asgi[postgres]'`` (asyncpg). The record
semantics are those of :class:`~waterfall_asgi.ledger_sqlite.SQLiteLedger`: one row per request,
``pending`` at acceptance, then terminal; attempts as JSON (``jsonb``); tokens ``bigint`` and
costs ``numeric`` (exact, never a float). Where it differs from the obvious implementation:

- **Writes off the request path.** :meth:`PostgresLedger.save` snapshots the record into an
  in-memory buffer keyed by request id (a later save of an id replaces the earlier one in place;
  a ``pending`` save never replaces a terminal one) and returns. One writer task takes up to
  ``batch_size`` records at a time and upserts them in one statement (``unnest`` of one array a
  column: one round trip for the whole batch). The buffer is bounded (``max_pending``): while
  the database answers, ``save()`` waits for room (backpressure, as the SQLite writer does).
- **A terminal row is never turned back to pending**: the upsert only replaces a row whose
  status is ``pending`` or with a terminal one, so concurrent or replayed saves of one id keep
  the terminal one, whatever order they land in.
- **The database away** (a restart, a failover, a network cut): the batch in hand stays in hand
  and is written again (upserts by id: a batch written twice is still one row a request) after a
  back-off that grows to ``retry_max`` seconds, while new saves go on filling the buffer. One
  warning is logged per outage, and one line when writing resumes. Only when the buffer is full
  *and* the database is unreachable is a record dropped (counted in :attr:`failures`, logged):
  a request never waits on a database that is not there. :meth:`close` waits at most
  ``close_timeout`` seconds for an unreachable database, then counts what is left as lost.
- **Leases, not "everything pending at start"**: several replicas share the table, so a replica
  that starts must not mark another live replica's ``pending`` rows ``interrupted``. Each ledger
  has an :attr:`instance_id` (unique per process unless given) and a lease in the
  ``waterfall_ledger_instances`` table, renewed every ``lease / 3`` seconds by the writer (and
  in the transaction of any batch written when a renewal is due), on the database's clock (no
  skew between hosts). Every renewal also marks ``interrupted`` the ``pending`` rows of every
  instance whose lease has lapsed (or was released by a clean close): one ``UPDATE`` of
  ``pending`` rows only, so a row is marked once, by whichever replica gets there first. At
  :meth:`open`, a ledger also marks its own instance id's rows from a previous life. A row of a
  replica that died is therefore ``interrupted`` within ``lease + lease / 3`` seconds (40 s with
  the default 30 s lease); on Linux, one that died on the same host as a replica that starts or
  renews (same boot and pid namespace: its pid is gone or used again) at once. A replica cut
  off from the database for longer than its lease may find its rows marked ``interrupted``
  meanwhile: its terminal saves, written when it is back, replace them.
- **Migrations** are versioned (table ``waterfall_ledger_schema``) and run in one transaction
  under a transaction-level advisory lock, so replicas that start together migrate once; a
  database migrated by a newer waterfall-asgi is refused.
- **NUL characters** and lone surrogates, which PostgreSQL's ``text`` and ``jsonb`` cannot hold,
  are stored as U+FFFD (a client could otherwise name a model that makes its row unwritable).
- **No password** in any log line, error or ``repr``: the URL is shown with its password
  replaced by ``***`` (see :func:`redact_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from ._fastjson import encoder
from .ledger import UsageRecord
from .ledger_sqlite import (
    COLUMNS,
    LedgerError,
    default_instance_id,
    process_gone,
    process_token,
    utf8_text,
)
from .redact import redact_url, url_secrets

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresLedger", "read_postgres_records"]

logger = logging.getLogger("waterfall_asgi.ledger")

TABLE = "waterfall_usage"
INSTANCES = "waterfall_ledger_instances"
VERSIONS = "waterfall_ledger_schema"
LOCK_KEY = 0x57464C47  # "WFLG": the advisory lock that serialises migrations
REAP_LOCK_KEY = LOCK_KEY + 1  # the one that lets one replica at a time mark lapsed rows

_TYPES: dict[str, str] = {
    "id": "text",
    "started_at": "float8",
    "route": "text",
    "model": "text",
    "provider": "text",
    "upstream_model": "text",
    "stream": "bool",
    "attempts": "text",  # sent as JSON text, stored as jsonb
    "status": "text",
    "http_status": "int4",
    "ttfb_ms": "float8",
    "duration_ms": "float8",
    "prompt_tokens": "int8",
    "completion_tokens": "int8",
    "total_tokens": "int8",
    "cost": "numeric",
    "cost_unit": "text",
    "reference_cost": "numeric",
    "error": "text",
}
assert set(_TYPES) == set(COLUMNS), "every field of UsageRecord has a column type"

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the usage table, one row per request; the leases; the indexes of the usage report and
    # of the search for rows left pending
    (
        f"""CREATE TABLE {TABLE} (
            id text PRIMARY KEY,
            started_at double precision NOT NULL,
            route text NOT NULL,
            model text,
            provider text,
            upstream_model text,
            stream boolean NOT NULL DEFAULT false,
            attempts jsonb NOT NULL DEFAULT '[]',
            status text NOT NULL,
            http_status integer,
            ttfb_ms double precision,
            duration_ms double precision,
            prompt_tokens bigint,
            completion_tokens bigint,
            total_tokens bigint,
            cost numeric,
            cost_unit text,
            reference_cost numeric,
            error text,
            instance_id text
        )""",
        f"CREATE INDEX {TABLE}_started_at ON {TABLE} (started_at)",
        f"CREATE INDEX {TABLE}_provider ON {TABLE} (provider, started_at)",
        f"CREATE INDEX {TABLE}_status ON {TABLE} (status)",
        f"CREATE INDEX {TABLE}_pending ON {TABLE} (instance_id) WHERE status = 'pending'",
        f"""CREATE TABLE {INSTANCES} (
            id text PRIMARY KEY,
            expires_at timestamptz NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            host text,
            pid integer
        )""",
    ),
    # 2: which process holds a lease, as its host's kernel knows it (boot, pid namespace, pid,
    # start time), so a process that starts on the same host can tell a dead one at once
    (f"ALTER TABLE {INSTANCES} ADD COLUMN process text",),
)

_ALL = (*COLUMNS, "instance_id")
_UNNEST = ", ".join(
    f"${n}::{_TYPES[c]}[]" for n, c in enumerate(COLUMNS, start=1)
)  # then the instance id
_SELECTED = ", ".join("u.attempts::jsonb" if c == "attempts" else f"u.{c}" for c in COLUMNS)
_UPSERT = (
    f"INSERT INTO {TABLE} AS t ({', '.join(_ALL)}) "
    f"SELECT {_SELECTED}, ${len(COLUMNS) + 1}::text "
    f"FROM unnest({_UNNEST}) AS u({', '.join(COLUMNS)}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ALL[1:])
    + " WHERE t.status = 'pending' OR excluded.status <> 'pending'"
)
_INTERRUPTED = "the process ended before the request finished"
_RENEW = (
    f"INSERT INTO {INSTANCES} AS i (id, expires_at, host, pid, process) "
    "VALUES ($1, now() + make_interval(secs => $2), $3, $4, $5) "
    "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, process = excluded.process "
    "RETURNING (xmax = 0) AS inserted"
)
_HOLDERS = f"SELECT id, process FROM {INSTANCES} WHERE process IS NOT NULL AND id <> $1"
_DEAD = f"DELETE FROM {INSTANCES} WHERE id = $1 AND process = $2"
_REAP = (
    f"UPDATE {TABLE} AS t SET status = 'interrupted', error = COALESCE(error, '{_INTERRUPTED}') "
    "WHERE status = 'pending' AND NOT EXISTS ("
    f"SELECT 1 FROM {INSTANCES} i WHERE i.id = t.instance_id AND i.expires_at > now())"
)
_FORGET = f"DELETE FROM {INSTANCES} WHERE expires_at <= now()"
_OWN = (
    f"UPDATE {TABLE} SET status = 'interrupted', error = COALESCE(error, '{_INTERRUPTED}') "
    "WHERE status = 'pending' AND instance_id = $1"
)
_RELEASE = f"DELETE FROM {INSTANCES} WHERE id = $1"

_Row = tuple[Any, ...]
_State = Literal["new", "open", "closing", "closed"]
_T = TypeVar("_T")

_COLUMN_VALUES = operator.attrgetter(*COLUMNS)
_ATTEMPTS = COLUMNS.index("attempts")
_STATUS = COLUMNS.index("status")
_STREAM = COLUMNS.index("stream")
_TEXTS = tuple(i for i, c in enumerate(COLUMNS) if _TYPES[c] == "text" and c != "attempts")
_ENCODE_ATTEMPTS = encoder(ensure_ascii=False, separators=(",", ":"), default=str)


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database (rather than a SQLite file).

    >>> is_postgres_url("postgresql://db.internal/usage"), is_postgres_url("usage.db")
    (True, False)
    """
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - the extra is installed where tests run
        raise LedgerError(
            "the PostgreSQL ledger needs asyncpg: pip install 'waterfall-asgi[postgres]'"
        ) from None
    return asyncpg


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or went away (so writing again
    later may work), rather than that the write itself is wrong."""
    asyncpg = _import_asyncpg()
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.OperatorInterventionError  # shutting down, starting up
        | asyncpg.exceptions.TransactionRollbackError  # a deadlock or serialization failure
        | asyncpg.exceptions.InsufficientResourcesError  # too many connections, disk full
        | asyncpg.exceptions.InternalClientError,
    )


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing us for good: bad credentials, no such database."""
    asyncpg = _import_asyncpg()
    return isinstance(
        exc,
        asyncpg.exceptions.InvalidAuthorizationSpecificationError
        | asyncpg.exceptions.InvalidPasswordError
        | asyncpg.exceptions.InvalidCatalogNameError,
    )


def _snapshot(record: UsageRecord) -> _Row:
    """The record's column values as they are now (its attempts copied)."""
    values: _Row = _COLUMN_VALUES(record)
    attempts = values[_ATTEMPTS]
    if not attempts:
        return values
    return (*values[:_ATTEMPTS], [dict(a) for a in attempts], *values[_ATTEMPTS + 1 :])


def _columns(rows: Sequence[_Row]) -> tuple[list[list[Any]], list[str], int, Exception | None]:
    """The batch as one list per column (attempts as JSON text, stream as a bool), the ids of
    the rows it holds, and how many could not be encoded (lost) with the first such error."""
    kept: list[_Row] = []
    lost, first = 0, None
    for row in rows:
        attempts = row[_ATTEMPTS]
        try:
            text = _ENCODE_ATTEMPTS(attempts) if attempts else "[]"
        except Exception as exc:  # (a circular list of attempts): that record only
            lost += 1
            first = first or exc
            continue
        values = list(row)
        if not text.isascii():
            text = utf8_text(text)
        values[_ATTEMPTS] = text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text
        values[_STREAM] = bool(values[_STREAM])
        for at in _TEXTS:
            value = values[at]
            if value is None:
                continue
            if not value.isascii():
                value = values[at] = utf8_text(value)
            if "\x00" in value:  # PostgreSQL's text cannot hold NUL
                values[at] = value.replace("\x00", "\ufffd")
        kept.append(tuple(values))
    columns = [list(column) for column in zip(*kept, strict=True)] if kept else []
    return columns, [row[0] for row in kept], lost, first


def _from_row(row: Any) -> UsageRecord:
    data = {name: row[name] for name in COLUMNS}
    data["attempts"] = json.loads(data["attempts"]) if data["attempts"] else []
    for name in ("cost", "reference_cost"):
        if isinstance(data[name], Decimal):
            data[name] = int(data[name])
    return UsageRecord.from_dict(data)


class PostgresLedger:
    """A :class:`~waterfall_asgi.ledger.LedgerStore` in a PostgreSQL database (asyncpg).

    ``url``: a ``postgresql://`` URL (a password in it is never shown); ``batch_size``: the
    most records one statement writes; ``flush_interval``: how long (s) the writer waits after a
    record arrives for more to fill a batch; ``max_pending``: how many records may wait in
    memory (see the module docs for what happens when it is full); ``lease``: how long (s) this
    ledger's claim on its ``pending`` rows lasts without renewal (renewed every ``lease / 3``);
    ``instance_id``: this process's name in the leases (default: host, pid and a random part;
    give a stable one, unique per process, to have a restarted process mark its own rows at
    once); ``connect_timeout``, ``command_timeout``: bounds (s) on connecting and on one
    statement; ``retry_max``: the longest back-off (s) between tries while the database is away;
    ``close_timeout``: how long :meth:`close` waits for an unreachable database.

    Counters (read them from the event loop): :attr:`written`, :attr:`failures` (records that
    could not be written), :attr:`transactions` (batches committed), :attr:`interrupted` (rows
    this ledger marked ``interrupted``), :attr:`outages` (times the database went away).
    """

    migrations: ClassVar[tuple[tuple[str, ...], ...]] = _MIGRATIONS
    """The schema's steps: step ``n`` (counting from 1) takes version ``n - 1`` to ``n``."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 1024,
        flush_interval: float = 0.25,
        max_pending: int = 10_000,
        lease: float = 30.0,
        instance_id: str | None = None,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        retry_max: float = 1.0,
        close_timeout: float = 10.0,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"not a postgresql:// URL: {redact_url(url)!r}")
        if batch_size < 1 or max_pending < 1:
            raise ValueError("batch_size and max_pending must be at least 1")
        if lease <= 0 or connect_timeout <= 0 or command_timeout <= 0 or retry_max <= 0:
            raise ValueError("lease, timeouts and retry_max must be positive")
        if flush_interval < 0 or close_timeout < 0:
            raise ValueError("flush_interval and close_timeout must not be negative")
        if instance_id is not None and not instance_id.strip():
            raise ValueError("instance_id must not be blank")
        self._url = url
        self._secrets = url_secrets(url)
        self.url = redact_url(url)
        """The database URL, its password replaced by ``***``."""
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.lease = lease
        self.heartbeat = lease / 3
        self.instance_id = instance_id or default_instance_id()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self.written = 0
        self.failures = 0
        self.transactions = 0
        self.interrupted = 0
        self.outages = 0
        self._state: _State = "new"
        self._buffer: dict[str, _Row] = {}
        self._inflight = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._hurry = False
        self._open_lock = asyncio.Lock()
        self._conn: asyncpg.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Future[None] | None = None
        self._down_since: float | None = None  # the loop's time the database went away
        self._renewed = -1e18  # the loop's time of the last lease renewal
        self._registered = False
        self._failing = False
        self._close_deadline: float | None = None

    def __repr__(self) -> str:
        return f"PostgresLedger({self.url!r}, instance_id={self.instance_id!r})"

    def _closed(self) -> bool:
        return self._state == "closed"

    @property
    def schema_version(self) -> int:
        """The version :meth:`open` brings the database to."""
        return len(self.migrations)

    @property
    def pending(self) -> int:
        """How many saved records wait to be written (the batch in hand included)."""
        return len(self._buffer) + self._inflight

    @property
    def connected(self) -> bool:
        """Whether the last try to reach the database worked."""
        return self._down_since is None

    def health(self) -> dict[str, Any]:
        """What ``/health`` shows of this ledger (the URL with its password redacted):
        ``state`` ``ok`` or ``degraded`` (the database did not answer the last try; records wait
        in memory), for how long, the records waiting and those lost so far."""
        report: dict[str, Any] = {
            "store": "postgres",
            "state": "ok" if self._down_since is None else "degraded",
            "url": self.url,
            "pending": self.pending,
            "lost": self.failures,
        }
        if self._down_since is not None:
            report["degraded_for_s"] = round(time.monotonic() - self._down_since, 1)
        return report

    # -- the event loop's side --------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate, mark this instance id's rows left ``pending`` by its previous life
        and those of every lapsed lease ``interrupted``, take this ledger's lease and start the
        writer. A database that cannot be reached now is tried again by the writer (saves wait
        in the buffer meanwhile; a warning is logged); one that refuses us (bad credentials, no
        such database, a newer schema, not a ledger) raises :class:`LedgerError`.
        """
        async with self._open_lock:
            if self._closer is not None:
                await asyncio.shield(self._closer)
            if self._state in ("open", "closing"):
                return
            _import_asyncpg()
            self._wake, self._room, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self._idle.set()
            self._closer = None
            self._registered = False
            self._close_deadline = None
            try:
                await self._connection()
            except LedgerError:
                raise
            except Exception as exc:
                if not _unreachable(exc):
                    raise LedgerError(
                        f"cannot open the usage ledger {self.url}: {self._clean(exc)}"
                    ) from None
                self._went_away(exc)
            self._state = "open"
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="waterfall-ledger-writer"
            )

    async def save(self, record: UsageRecord) -> None:
        """Buffer a snapshot of ``record`` for writing (insert, or replace the row of its id).

        Returns at once unless the buffer is full (then it waits for room while the database
        answers, and drops the record, counted, while it does not). Never raises for a storage
        problem. A ledger not yet opened is opened first; after :meth:`close`, the record is
        written on its own connection.
        """
        row = _snapshot(record)
        if self._state == "new":
            try:
                await self.open()
            except Exception as exc:
                self._failed(1, exc)
                return
        if self._state == "closed":
            await self._write_detached(row)
            return
        key = row[0]
        buffer = self._buffer
        if key not in buffer:
            while len(buffer) >= self.max_pending and not self._closed():
                if self._down_since is not None:
                    self._failed(1, LedgerError("the buffer is full and the database is away"))
                    return
                self._room.clear()
                await self._room.wait()
            if self._closed():
                await self._write_detached(row)
                return
        elif row[_STATUS] == "pending" and buffer[key][_STATUS] != "pending":
            return  # a terminal save is never replaced by a pending one
        buffer[key] = row
        self._idle.clear()
        if len(buffer) == 1 or len(buffer) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every record saved before this call is written (or counted lost)."""
        if self._state not in ("open", "closing"):
            return
        self._hurry = True
        self._wake.set()
        await self._idle.wait()

    async def close(self) -> None:
        """Write every buffered record (waiting at most ``close_timeout`` seconds for a database
        that is away), release the lease and close the connection. Idempotent."""
        if self._state == "new":
            self._state = "closed"
            return
        if self._closer is None:
            if self._writer is None and self._conn is None:
                self._state = "closed"
                return
            self._closer = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        self._close_deadline = loop.time() + self.close_timeout
        if self._state == "open":
            self._state = "closing"
            self._wake.set()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if not writer.done():
                await asyncio.wait([writer])
            if not writer.cancelled() and (exc := writer.exception()) is not None:
                logger.error("usage ledger %s: the writer failed", self.url, exc_info=exc)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if self._registered and self._down_since is None:
                    await conn.execute(_RELEASE, self.instance_id, timeout=self.command_timeout)
            except Exception as exc:
                logger.debug("usage ledger %s: lease not released: %s", self.url, self._clean(exc))
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), self.command_timeout)
                conn.terminate()
        self._state = "closed"
        self._room.set()
        self._idle.set()

    # -- the writer -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._buffer:
                    self._hurry = False
                    self._idle.set()
                    if self._state == "closing":
                        return
                    self._wake.clear()
                    wait = self._renewed + self.heartbeat - loop.time()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait):
                                await self._wake.wait()
                    if not self._buffer and self._state == "open":
                        await self._beat()
                    continue
                if (
                    self._state == "open"
                    and not self._hurry
                    and len(self._buffer) < self.batch_size
                    and self.flush_interval > 0
                ):
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.flush_interval):
                            await self._wake.wait()
                batch = self._take()
                self._room.set()
                try:
                    await self._write(batch)
                finally:
                    self._inflight = 0
        finally:
            if self._buffer:  # cancelled, or a bug: count what is left
                self._failed(len(self._buffer), RuntimeError("the ledger writer stopped"))
                self._buffer.clear()
            self._state = "closed"
            self._room.set()
            self._idle.set()

    def _take(self) -> list[_Row]:
        buffer = self._buffer
        if len(buffer) <= self.batch_size:
            batch = list(buffer.values())
            buffer.clear()
        else:
            keys = [key for key, _ in zip(buffer, range(self.batch_size), strict=False)]
            batch = [buffer.pop(key) for key in keys]
        self._inflight = len(batch)
        return batch

    async def _write(self, batch: list[_Row]) -> None:
        """Write ``batch`` until it is written, whatever outages come between (or until close
        gives up); a batch the database rejects is written row by row, to lose only the bad."""
        columns, ids, lost, error = _columns(batch)
        if lost:
            self._failed(lost, error or ValueError("unencodable record"))
        if not ids:
            return

        async def upsert(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                if asyncio.get_running_loop().time() - self._renewed >= self.heartbeat:
                    await self._renew(conn)
                    await self._reap(conn)
                await conn.execute(
                    _UPSERT, *columns, self.instance_id, timeout=self.command_timeout
                )

        try:
            await self._retrying(upsert)
        except _GaveUp as exc:
            self._failed(len(ids), exc.__cause__ or exc)
            return
        except Exception as exc:
            if len(ids) == 1:
                self._failed(1, exc)
                return
            for row in batch:  # the database rejected a value: find which
                await self._write([row])
            return
        self.transactions += 1
        self._succeeded(len(ids))

    async def _retrying(self, action: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """``action`` on the connection, reconnecting and trying again while the database is
        away. Raises :class:`_GaveUp` when closing and out of time; any other error as is."""
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            try:
                conn = await self._connection()
                result = await action(conn)
            except LedgerError:
                raise
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                self._went_away(exc)
                await self._drop_connection()
                deadline = self._close_deadline
                if deadline is not None and loop.time() + delay > deadline:
                    raise _GaveUp("the database is away and the ledger is closing") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self._came_back()
            return result

    async def _connection(self) -> asyncpg.Connection:
        """The writer's connection: made (migrated, lease taken) if there is none."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        pg = _import_asyncpg()
        try:
            conn: asyncpg.Connection = await pg.connect(
                self._url,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={"application_name": "waterfall-asgi ledger"},
            )
        except Exception as exc:
            if _refused(exc):
                raise LedgerError(
                    f"cannot open the usage ledger {self.url}: {self._clean(exc)}"
                ) from None
            raise
        try:
            await self._migrate(conn)
            async with conn.transaction():
                if not self._registered:  # our previous life's rows (a stable instance id)
                    mine = await conn.execute(_OWN, self.instance_id)
                    self._count_interrupted(mine, "left pending by this instance's previous life")
                await self._renew(conn)
                await self._reap(conn)
        except BaseException:
            conn.terminate()
            raise
        self._registered = True
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        known = len(self.migrations)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS} (version integer NOT NULL)")
            version = await conn.fetchval(f"SELECT max(version) FROM {VERSIONS}") or 0
            if version > known:
                raise LedgerError(
                    f"cannot open the usage ledger {self.url}: its schema version {version} is "
                    f"newer than this waterfall-asgi knows ({known}); upgrade waterfall-asgi or "
                    "use another database"
                )
            if version == 0:
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
                if exists:
                    raise LedgerError(
                        f"cannot open the usage ledger {self.url}: a table {TABLE} exists that "
                        "this waterfall-asgi did not make"
                    )
            for step in self.migrations[version:]:
                for statement in step:
                    await conn.execute(statement)
            if version < known:
                await conn.execute(f"DELETE FROM {VERSIONS}")
                await conn.execute(f"INSERT INTO {VERSIONS} (version) VALUES ($1)", known)

    async def _renew(self, conn: asyncpg.Connection) -> None:
        mine = process_token(os.getpid())
        inserted = await conn.fetchval(
            _RENEW, self.instance_id, self.lease, socket.gethostname(), os.getpid(), mine
        )
        if mine is not None:  # a holder on this host whose process has ended: released now
            for holder in await conn.fetch(_HOLDERS, self.instance_id):
                if process_gone(holder["process"], mine):
                    await conn.execute(_DEAD, holder["id"], holder["process"])
        if inserted and self._registered:
            logger.warning(
                "usage ledger %s: the lease of instance %s had lapsed (the database was out "
                "of reach for longer than %.0f s): other replicas may have marked its pending "
                "rows interrupted; their terminal saves replace that",
                self.url,
                self.instance_id,
                self.lease,
            )
        self._renewed = asyncio.get_running_loop().time()

    async def _reap(self, conn: asyncpg.Connection) -> None:
        """Mark the rows of lapsed leases (in the caller's transaction); one replica at a time
        (the others skip: the next beat comes soon), so two never lock the same rows."""
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REAP_LOCK_KEY):
            return
        reaped = await conn.execute(_REAP)
        await conn.execute(_FORGET)
        self._count_interrupted(reaped, "whose replica's lease had lapsed")

    def _count_interrupted(self, status: str, whose: str) -> None:
        count = int(status.rpartition(" ")[2] or 0)
        if count:
            self.interrupted += count
            logger.info(
                "usage ledger %s: %d record(s) %s marked interrupted", self.url, count, whose
            )

    async def _beat(self) -> None:
        """Renew the lease and mark the rows of lapsed leases (the writer, when idle)."""

        async def beat(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await self._renew(conn)
                await self._reap(conn)

        try:
            await self._retrying(beat)
        except Exception as exc:  # a beat missed is tried again at the next
            logger.debug("usage ledger %s: lease not renewed: %s", self.url, self._clean(exc))
            self._renewed = asyncio.get_running_loop().time()

    async def _write_detached(self, row: _Row) -> None:
        columns, _, lost, error = _columns([row])
        if lost:
            self._failed(lost, error or ValueError("unencodable record"))
            return
        pg = _import_asyncpg()
        try:
            conn = await pg.connect(self._url, timeout=self.connect_timeout)
            try:
                await conn.execute(
                    _UPSERT, *columns, self.instance_id, timeout=self.command_timeout
                )
            finally:
                await conn.close()
        except Exception as exc:
            self._failed(1, exc)
        else:
            self._succeeded(1)

    # -- accounting and logs ----------------------------------------------------------------

    def _clean(self, exc: BaseException) -> str:
        """``exc`` as text, with the password (if it somehow appears) taken out."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text.replace(self._url, self.url)

    def _went_away(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.outages += 1
        logger.warning(
            "usage ledger %s: the database is out of reach (%s); up to %d record(s) wait in "
            "memory and are written when it is back",
            self.url,
            self._clean(exc),
            self.max_pending,
        )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        away = time.monotonic() - self._down_since
        self._down_since = None
        logger.warning(
            "usage ledger %s: the database is back after %.1f s; writing again", self.url, away
        )

    def _failed(self, count: int, exc: BaseException) -> None:
        self.failures += count
        if self._failing:
            logger.debug(
                "usage ledger %s: %d more record(s) not written: %s",
                self.url,
                count,
                self._clean(exc),
            )
            return
        self._failing = True
        logger.error(
            "usage ledger %s: %d record(s) not written: %s (further failures are counted, "
            "not logged, until a write succeeds)",
            self.url,
            count,
            self._clean(exc),
        )

    def _succeeded(self, count: int) -> None:
        self.written += count
        if self._failing:
            self._failing = False
            logger.warning(
                "usage ledger %s: writing again; %d record(s) lost so far", self.url, self.failures
            )


class _GaveUp(Exception):
    """The database stayed away until the ledger's close ran out of time."""


# -- reading -------------------------------------------------------------------------------


def run_sync(coroutine_factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to its end from sync code, in this thread if no loop runs here, else in
    a thread of its own (so a caller inside an event loop is not refused)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(coroutine_factory))
    result: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(_as_coroutine(coroutine_factory)))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="waterfall-ledger-reader")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def _as_coroutine(factory: Callable[[], Awaitable[_T]]) -> _T:
    return await factory()


async def fetch_rows(
    url: str, columns: Sequence[str], *, since: float | None = None, order: bool = False
) -> list[dict[str, Any]]:
    """The ``columns`` of every row of the ledger at ``url`` (or those started at or after
    ``since``), costs as ints. Raises :class:`LedgerError` (password redacted) on failure."""
    asyncpg = _import_asyncpg()
    shown = redact_url(url)
    secrets = url_secrets(url)
    try:
        conn = await asyncpg.connect(url, timeout=10.0)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        for secret in secrets:
            text = text.replace(secret, "***")
        raise LedgerError(f"{shown}: cannot reach the ledger database: {text}") from None
    try:
        found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
        if not found:
            raise LedgerError(f"{shown}: not a waterfall-asgi usage ledger (no {TABLE} table)")
        version = await conn.fetchval(f"SELECT max(version) FROM {VERSIONS}") or 0
        known = len(_MIGRATIONS)
        if version > known:
            raise LedgerError(
                f"{shown}: ledger schema version {version} is newer than this waterfall-asgi "
                f"knows ({known}); upgrade waterfall-asgi to read it"
            )
        select = ", ".join(f"{c}::text AS {c}" if c == "attempts" else c for c in columns)
        query = f"SELECT {select} FROM {TABLE}"
        params: list[Any] = []
        if since is not None:
            query += " WHERE started_at >= $1"
            params.append(since)
        if order:
            query += " ORDER BY started_at, id"
        rows = await conn.fetch(query, *params)
    except LedgerError:
        raise
    except Exception as exc:
        raise LedgerError(f"{shown}: cannot read the ledger database: {exc}") from None
    finally:
        await conn.close()
    out = []
    for row in rows:
        data = dict(row.items())
        for name in ("cost", "reference_cost"):
            if isinstance(data.get(name), Decimal):
                data[name] = int(data[name])
        out.append(data)
    return out


def read_postgres_records(url: str, *, since: float | None = None) -> list[UsageRecord]:
    """Every record of the ledger at ``url`` (oldest first), or those started at or after
    ``since`` (Unix seconds). Raises :class:`LedgerError` if it cannot be read."""
    rows = run_sync(lambda: fetch_rows(url, COLUMNS, since=since, order=True))
    return [_from_row(row) for row in rows]
