"""The embedded usage ledger: :class:`SQLiteLedger`, one SQLite file in WAL mode.

Saving never blocks the event loop on SQLite. :meth:`SQLiteLedger.save` snapshots the record
(its values, its list of attempts copied; encoded to JSON only when written, and only for the
last save of an id in a batch) into an in-memory queue and returns; a writer task takes the
queue in batches (up to
``batch_size`` records, or whatever arrived within ``flush_interval`` seconds of the first) and
upserts each batch in one transaction, up to 256 rows to a statement where SQLite allows
that many variables (49 where it allows the fewest; a ``None`` written as ``NULL``, not bound:
see ``_statements``): few calls into SQLite, so few hand-overs of the GIL between the threads,
for many rows instead of one per row. Every SQLite
call runs in one thread that the ledger owns (a single-worker executor): a :mod:`sqlite3`
connection belongs to the thread that made it, so the connection is made, used and closed
there, and nothing else shares that thread.

The queue is bounded (``max_pending``): when writes cannot keep up, ``save()`` waits for room
instead of letting memory grow. Saves of one id land in the order they were made, so the
accept-time and the end-time saves of a request end as one row, finished. A write that fails is
logged (logger ``waterfall_asgi.ledger``: the first failure of a run of failures, with its
traceback) and counted in :attr:`SQLiteLedger.failures`; it never raises into the request.

Several processes may share the file (workers on one host). Each ledger writes its
``instance_id`` into its rows and holds a lease (table ``ledger_instances``, expiry on the host's
clock) renewed every ``lease / 3`` seconds; a ``pending`` row is marked ``interrupted`` once its
process's lease has lapsed or was released (see :class:`SQLiteLedger`), never while it lives. On
Linux a lease also records its process as the kernel knows it (boot, pid namespace, pid and
start time), so a process that died on this host (its pid gone, or used again) is known dead at
once, by the next process to start or renew: its rows are marked then, without waiting for the
lease. A
``pending`` save never replaces a terminal row of the same id.

The schema is versioned by ``PRAGMA user_version`` and grows by the steps in
:attr:`SQLiteLedger.migrations`, applied in order in one transaction; a file written by a newer
waterfall-asgi (a higher version) is refused. Readers (:func:`read_records`, the usage report)
take an older file as it is, read-only, without migrating it: the columns it lacks read as
``NULL``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import operator
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from ._fastjson import encoder
from .ledger import UsageRecord

__all__ = ["LedgerError", "SQLiteLedger", "default_instance_id", "read_records", "utf8_text"]

logger = logging.getLogger("waterfall_asgi.ledger")

APPLICATION_ID = 0x57464C47  # "WFLG" in the file header: this file is a waterfall-asgi ledger
TABLE = "usage"
INSTANCES = "ledger_instances"
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UsageRecord))
_WRITTEN = (*COLUMNS, "instance_id")  # every field, and the process that wrote the row

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the usage table, one row per request, and the indexes of the usage report
    (
        f"""CREATE TABLE {TABLE} (
            id TEXT PRIMARY KEY NOT NULL,
            started_at REAL NOT NULL,
            route TEXT NOT NULL,
            model TEXT,
            provider TEXT,
            upstream_model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            attempts TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL,
            http_status INTEGER,
            ttfb_ms REAL,
            duration_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            cost INTEGER,
            cost_unit TEXT,
            error TEXT
        )""",
        f"CREATE INDEX {TABLE}_started_at ON {TABLE} (started_at)",
        f"CREATE INDEX {TABLE}_provider ON {TABLE} (provider)",
        f"CREATE INDEX {TABLE}_status ON {TABLE} (status)",
    ),
    # 2: what the route's reference deployment would have cost (cost routing); NULL in old rows
    (f"ALTER TABLE {TABLE} ADD COLUMN reference_cost INTEGER",),
    # 3: which process wrote a row, and the leases of the processes sharing the file (several
    # workers on one host): a row left pending is marked interrupted only once its process's
    # lease has lapsed (rows of old versions have no process: no lease)
    (
        f"ALTER TABLE {TABLE} ADD COLUMN instance_id TEXT",
        f"CREATE INDEX {TABLE}_pending ON {TABLE} (instance_id) WHERE status = 'pending'",
        f"""CREATE TABLE {INSTANCES} (
            id TEXT PRIMARY KEY NOT NULL,
            expires_at REAL NOT NULL,
            host TEXT,
            pid INTEGER
        )""",
    ),
    # 4: which process holds a lease, as this host's kernel knows it (boot, pid namespace, pid,
    # start time), so a process that started on the same host can tell a dead one at once
    (f"ALTER TABLE {INSTANCES} ADD COLUMN process TEXT",),
)

_ON_CONFLICT = (
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _WRITTEN[1:])} "
    f"WHERE {TABLE}.status = 'pending' OR excluded.status != 'pending'"  # terminal stays so
)
_MAX_ROWS_PER_STATEMENT = 256
"""The most rows one upsert statement carries (fewer where the SQLite build allows fewer
variables a statement: see :func:`_rows_per_statement`). The sqlite3 module lets go of the GIL
around its calls into SQLite, several times per statement; while the event loop's thread is
busy, each time costs a hand-over of the GIL to it and back. So a batch goes in as few
statements as its rows allow. (256 rows of bench records: about 5,000 variables, a prepared
statement of a few hundred KiB, made once per size and kept by the connection's cache.)"""


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """How many rows one upsert statement of ``conn`` may carry: 999 variables a statement is
    the fewest any SQLite allows (before 3.32); most builds allow far more."""
    variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(_MAX_ROWS_PER_STATEMENT, variables // len(_WRITTEN)))


@functools.lru_cache(maxsize=64)
def _upsert(nulls: tuple[bool, ...], count: int) -> str:
    """The upsert of ``count`` rows (distinct ids) in one statement, each with ``NULL`` written
    in the columns ``nulls`` marks and a parameter in the others."""
    row = "(" + ", ".join("NULL" if null else "?" for null in nulls) + ")"
    values = ", ".join([row] * count)
    return f"INSERT INTO {TABLE} ({', '.join(_WRITTEN)}) VALUES {values} {_ON_CONFLICT}"


def _statements(rows: Sequence[_Row], most: int) -> Iterator[tuple[str, list[Any]]]:
    """The upserts (and their parameters) that write ``rows`` (distinct ids).

    A ``None`` is written as ``NULL`` in the statement, not bound: the sqlite3 module binds a
    ``None`` only after an adapter lookup that fails by raising (and clearing) an
    ``AttributeError``, which costs several times what binding the rest of the row does. So
    rows go in groups with their ``None`` in the same columns; a group's statements carry
    ``most`` rows (see :func:`_rows_per_statement`), then a power of two, so that a batch takes
    few statements and only a few distinct ones are ever made (SQLite's prepared ones are
    reused)."""
    groups: dict[tuple[bool, ...], list[_Row]] = {}
    for row in rows:
        nulls = tuple([value is None for value in row])
        group = groups.get(nulls)
        if group is None:
            groups[nulls] = [row]
        else:
            group.append(row)
    for nulls, group in groups.items():
        start, left = 0, len(group)
        while left:
            count = most if left >= most else 1 << (left.bit_length() - 1)
            part = group[start : start + count]
            start, left = start + count, left - count
            yield (
                _upsert(nulls, count),
                [value for row in part for value in row if value is not None],
            )


_INTERRUPT = (
    f"UPDATE {TABLE} SET status = 'interrupted', "
    "error = COALESCE(error, 'the process ended before the request finished') "
    "WHERE status = 'pending'"
)
_OWN = _INTERRUPT + " AND instance_id = ?"  # this instance id's previous life
_REAP = (  # rows of processes whose lease lapsed (or was released), or of no process at all
    _INTERRUPT + " AND (instance_id IS NULL OR instance_id NOT IN "
    f"(SELECT id FROM {INSTANCES} WHERE expires_at > ?))"
)
_RENEW = (
    f"INSERT OR REPLACE INTO {INSTANCES} (id, expires_at, host, pid, process) "
    "VALUES (?, ?, ?, ?, ?)"
)
_HOLDERS = f"SELECT id, process FROM {INSTANCES} WHERE process IS NOT NULL AND id != ?"
_FORGET = f"DELETE FROM {INSTANCES} WHERE expires_at <= ?"
_RELEASE = f"DELETE FROM {INSTANCES} WHERE id = ?"

_Row = tuple[Any, ...]
_State = Literal["new", "open", "closing", "closed"]


class LedgerError(Exception):
    """The ledger database cannot be used: unwritable, not a ledger, or a newer schema."""


_HOST = socket.gethostname()


def process_token(pid: int) -> str | None:
    """Process ``pid`` as this host's kernel knows it: its boot, the pid namespace this process
    sees, the pid and the process's start time (``None`` where ``/proc`` cannot say: not Linux,
    or no such process). Two tokens are equal only for the same living process: a pid used again
    has another start time, a process in another container another namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.readlink("/proc/self/ns/pid")
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        started = stat.rpartition(")")[2].split()[19]  # field 22, counting the two before ")"
    except (OSError, IndexError):
        return None
    return f"{boot}/{namespace}/{pid}/{started}"


def process_gone(token: str, mine: str) -> bool:
    """Whether the process ``token`` names (a lease holder's) has ended. Only a process of this
    host's boot and this pid namespace (those of ``mine``, this process's token) can be told;
    of any other, only its lease can."""
    parts, own = token.split("/"), mine.split("/")
    if len(parts) != 4 or parts[:2] != own[:2] or not parts[2].isdigit():
        return False
    return process_token(int(parts[2])) != token


def default_instance_id() -> str:
    """A name for this process in the ledger's leases: its host, its pid and a random part (so a
    pid used again is another instance).

    >>> default_instance_id().count("-") >= 2
    True
    """
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


_COLUMN_VALUES = operator.attrgetter(*COLUMNS)
_ATTEMPTS = COLUMNS.index("attempts")
_STREAM = COLUMNS.index("stream")
_STATUS = COLUMNS.index("status")
_TEXTS = tuple(
    COLUMNS.index(name)
    for name in ("id", "route", "model", "provider", "upstream_model", "cost_unit", "error")
)
_ENCODE_ATTEMPTS = encoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _snapshot(record: UsageRecord) -> _Row:
    """The record's column values as they are now: what :meth:`SQLiteLedger.save` queues (the
    list of attempts and its dicts copied, so later changes to them are not seen). Only the
    last save of an id in a batch is written, so only it is encoded (:func:`_to_row`)."""
    values: _Row = _COLUMN_VALUES(record)
    attempts = values[_ATTEMPTS]
    if not attempts:
        return values
    return (*values[:_ATTEMPTS], [dict(a) for a in attempts], *values[_ATTEMPTS + 1 :])


def utf8_text(value: str) -> str:
    """``value``, with any lone surrogate (which no UTF-8 database can store: a client may send
    one, escaped, in a JSON string) replaced by U+FFFD, so its row can be written.

    >>> utf8_text("plain"), utf8_text("café"), utf8_text("a" + chr(0xD800) + "b") == "a�b"
    ('plain', 'café', True)
    """
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


def _to_row(snapshot: _Row, instance_id: str | None) -> _Row:
    """A snapshot as SQLite column values (attempts as JSON text, ``stream`` as 0/1, text that
    UTF-8 cannot encode mended by :func:`utf8_text`), then the id of the process that writes
    it."""
    attempts = snapshot[_ATTEMPTS]
    values = list(snapshot)
    values[_ATTEMPTS] = utf8_text(_ENCODE_ATTEMPTS(attempts)) if attempts else "[]"
    values[_STREAM] = int(bool(values[_STREAM]))
    for at in _TEXTS:
        value = values[at]
        if value is not None and not value.isascii():
            values[at] = utf8_text(value)
    values.append(instance_id)
    return tuple(values)


def _rows(batch: Sequence[_Row], instance_id: str) -> tuple[list[_Row], int, Exception | None]:
    """The rows to write for a batch of snapshots: the last save of each id wins (but a pending
    save never replaces a terminal one), so only it is encoded. Also how many of them could not
    be encoded (lost), and the first such error."""
    rows: list[_Row] = []
    lost, first = 0, None
    last: dict[str, _Row] = {}
    for snapshot in batch:
        before = last.get(snapshot[0])
        if before is None or snapshot[_STATUS] != "pending" or before[_STATUS] == "pending":
            last[snapshot[0]] = snapshot
    for snapshot in last.values():
        try:
            rows.append(_to_row(snapshot, instance_id))
        except Exception as exc:  # (a circular list of attempts): that record only
            lost += 1
            first = first or exc
    return rows, lost, first


def _from_row(row: sqlite3.Row) -> UsageRecord:
    data = {name: row[name] for name in COLUMNS}
    data["attempts"] = json.loads(data["attempts"])
    data["stream"] = bool(data["stream"])
    return UsageRecord.from_dict(data)


def _select_list(conn: sqlite3.Connection, names: Sequence[str]) -> str:
    """``names`` as the select list of a query of the usage table, with ``NULL AS name`` for a
    column that the file's schema does not have yet (an older ledger, read without migrating
    it: a read-only reader never changes the file)."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
    return ", ".join(name if name in present else f"NULL AS {name}" for name in names)


def _connect_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection to the ledger at ``path`` (which must exist), schema checked."""
    file = Path(path)
    if not file.is_file():
        raise LedgerError(f"{path}: no such ledger database")
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open the ledger database: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        known = len(_MIGRATIONS)
        if version > known:
            raise LedgerError(
                f"{path}: ledger schema version {version} is newer than this waterfall-asgi "
                f"knows ({known}); upgrade waterfall-asgi to read it"
            )
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
        if found is None:
            raise LedgerError(f"{path}: not a waterfall-asgi usage ledger (no {TABLE} table)")
    except sqlite3.Error as exc:
        conn.close()
        raise LedgerError(f"{path}: cannot read the ledger database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def read_records(path: str | os.PathLike[str], *, since: float | None = None) -> list[UsageRecord]:
    """Every record of the ledger at ``path`` (read-only; oldest first), or those started at
    or after ``since`` (Unix seconds). Raises :class:`LedgerError` if it is not a ledger.
    A ``postgresql://`` URL reads a :class:`~waterfall_asgi.ledger_postgres.PostgresLedger`'s
    database instead (with the ``postgres`` extra)."""
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from .ledger_postgres import read_postgres_records

        return read_postgres_records(path, since=since)
    conn = _connect_readonly(path)
    try:
        query = f"SELECT {_select_list(conn, COLUMNS)} FROM {TABLE}"
        params: tuple[float, ...] = ()
        if since is not None:
            query += " WHERE started_at >= ?"
            params = (since,)
        rows = conn.execute(query + " ORDER BY started_at, id", params).fetchall()
        return [_from_row(row) for row in rows]
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot read the ledger database: {exc}") from exc
    finally:
        conn.close()


class SQLiteLedger:
    """A :class:`~waterfall_asgi.ledger.LedgerStore` in one SQLite file (WAL mode).

    ``batch_size``: the most records one transaction writes; ``flush_interval``: how long (s)
    the writer waits after a record arrives for more to fill a batch (0: write at once);
    ``max_pending``: how many records may wait in memory before ``save()`` waits for room;
    ``busy_timeout``: how long (s) a write waits for another process's lock; ``lease``: how long
    (s) this process's claim on its ``pending`` rows lasts without renewal (renewed every
    ``lease / 3`` s); ``instance_id``: this process's name in the leases (default: host, pid and
    a random part; a stable one, unique per process, has a restarted process mark its own rows
    at once).

    Several processes may share the file (``uvicorn --workers 4``): a row left ``pending`` is
    marked ``interrupted`` only once the lease of the process that wrote it has lapsed (it died)
    or was released (it closed), by whichever process renews its lease next, so a process that
    starts never marks the rows of a live one.

    Counters (read them from the event loop): :attr:`written` records written, :attr:`failures`
    records that could not be written, :attr:`transactions` batches committed,
    :attr:`interrupted` records this ledger marked ``interrupted`` (at :meth:`open` and since).
    """

    migrations: ClassVar[tuple[tuple[str, ...], ...]] = _MIGRATIONS
    """The schema's steps: step ``n`` (counting from 1) takes version ``n - 1`` to ``n``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 1024,
        flush_interval: float = 0.25,
        max_pending: int = 10_000,
        busy_timeout: float = 5.0,
        lease: float = 30.0,
        instance_id: str | None = None,
    ) -> None:
        if batch_size < 1 or max_pending < 1:
            raise ValueError("batch_size and max_pending must be at least 1")
        if flush_interval < 0 or busy_timeout < 0:
            raise ValueError("flush_interval and busy_timeout must not be negative")
        if lease <= 0:
            raise ValueError("lease must be positive")
        if instance_id is not None and not instance_id.strip():
            raise ValueError("instance_id must not be blank")
        self.lease = lease
        self.heartbeat = lease / 3
        self.instance_id = instance_id or default_instance_id()
        self.path = os.fspath(path)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.busy_timeout = busy_timeout
        self.written = 0
        self.failures = 0
        self.transactions = 0
        self.interrupted = 0
        self.writer_thread: threading.Thread | None = None
        """The thread that owns the SQLite connection (set by :meth:`open`)."""
        self._state: _State = "new"
        self._pending: collections.deque[_Row] = collections.deque()
        self._wake = asyncio.Event()  # records to write (or a full batch), or closing
        self._room = asyncio.Event()  # the queue has room again
        self._open_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only in the executor's thread
        self._per_statement = 1  # the most rows an upsert of _conn carries (set with _conn)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Future[None] | None = None
        self._failing = False
        self._idle = asyncio.Event()  # nothing queued nor being written
        self._hurry = False  # flush() waits: write without waiting for a batch to fill
        self._renewed = -1e18  # time.monotonic() of the last renewal (the ledger thread's)
        self._registered = False  # the lease is taken (the ledger thread's)

    @property
    def schema_version(self) -> int:
        """The version :meth:`open` brings the file to."""
        return len(self.migrations)

    @property
    def pending(self) -> int:
        """How many saved records wait to be written."""
        return len(self._pending)

    # -- the event loop's side --------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the file, mark records left ``pending`` as ``interrupted`` and start
        the writer. Raises :class:`LedgerError` (with the path and the reason) if the file cannot
        be written, is not a ledger, or has a newer schema. Opening an open ledger does nothing.
        """
        async with self._open_lock:
            if self._closer is not None:
                await asyncio.shield(self._closer)
            elif self._state == "closed" and self._executor is not None:
                await self.close()  # the writer died with its loop: release the file first
            if self._state in ("open", "closing"):
                return
            loop = asyncio.get_running_loop()
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="waterfall-ledger")
            try:
                self.interrupted = await loop.run_in_executor(executor, self._open_sync)
            except BaseException:
                executor.submit(self._close_sync)
                executor.shutdown(wait=False)
                raise
            if self.interrupted:
                logger.info(
                    "usage ledger %s: %d record(s) left pending by a process that ended marked "
                    "interrupted",
                    self.path,
                    self.interrupted,
                )
            self._executor = executor
            self._closer = None
            self._wake, self._room = asyncio.Event(), asyncio.Event()  # on this loop
            self._idle = asyncio.Event()
            self._idle.set()
            self._state = "open"
            self._writer = loop.create_task(self._write_loop(), name="waterfall-ledger-writer")

    async def save(self, record: UsageRecord) -> None:
        """Queue a snapshot of ``record`` for writing (insert, or replace the row of its id).

        Returns at once unless ``max_pending`` records already wait (then it waits for room).
        Never raises for a storage problem: that is logged and counted in :attr:`failures`.
        A ledger not yet opened is opened first; after :meth:`close`, the record is written
        on its own, in a worker thread.
        """
        row = _snapshot(record)
        if self._state == "new":
            try:
                await self.open()
            except Exception as exc:
                self._failed(1, exc)
                return
        while self._state != "closed" and len(self._pending) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        if self._state == "closed":
            await self._write_detached(row)
            return
        self._pending.append(row)
        self._idle.clear()
        if len(self._pending) == 1 or len(self._pending) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every record saved before this call is written (or counted lost)."""
        if self._state not in ("open", "closing"):
            return
        self._hurry = True
        self._wake.set()
        await self._idle.wait()

    async def close(self) -> None:
        """Write every queued record, stop the writer and close the file. Idempotent."""
        if self._state == "new":
            self._state = "closed"
            return
        if self._closer is None:
            if self._writer is None and self._executor is None:
                self._state = "closed"
                return
            self._closer = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        if self._state == "open":
            self._state = "closing"
            self._wake.set()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if not writer.done():  # (a writer that died has counted its losses)
                await asyncio.wait([writer])
            if not writer.cancelled() and (exc := writer.exception()) is not None:
                logger.error("usage ledger %s: the writer failed", self.path, exc_info=exc)
        executor, self._executor = self._executor, None
        if executor is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
            finally:
                executor.shutdown(wait=False)

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._pending:
                    self._hurry = False
                    self._idle.set()
                    if self._state == "closing":
                        self._state = "closed"  # with no await since the check: nothing is lost
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.heartbeat):
                            await self._wake.wait()
                    if not self._pending and self._state == "open":
                        await self._beat()
                    continue
                if (
                    self._state == "open"
                    and not self._hurry
                    and len(self._pending) < self.batch_size
                    and self.flush_interval > 0
                ):
                    self._wake.clear()  # set again by a full batch or by close()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.flush_interval):
                            await self._wake.wait()
                count = min(self.batch_size, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                self._room.set()
                await self._flush(batch)
        finally:
            if self._state != "closed":  # cancelled, or a bug: do not leave save() waiting
                self._state = "closed"
                if self._pending:
                    self._failed(len(self._pending), RuntimeError("the ledger writer stopped"))
                    self._pending.clear()
            self._room.set()
            self._idle.set()

    async def _beat(self) -> None:
        """Renew the lease and mark the rows of lapsed leases (the writer, when idle)."""
        loop = asyncio.get_running_loop()
        try:
            marked = await loop.run_in_executor(self._executor, self._beat_sync)
        except Exception as exc:  # a beat missed is tried again at the next
            logger.warning("usage ledger %s: lease not renewed: %s", self.path, exc)
        else:
            self._count(marked)

    def _count(self, marked: int) -> None:
        if marked:
            self.interrupted += marked
            logger.info(
                "usage ledger %s: %d record(s) of a process that ended marked interrupted",
                self.path,
                marked,
            )

    async def _flush(self, batch: list[_Row]) -> None:
        loop = asyncio.get_running_loop()
        try:
            lost, error, marked = await loop.run_in_executor(
                self._executor, self._write_sync, batch
            )
        except Exception as exc:
            self._failed(len(batch), exc)
        else:
            self._count(marked)
            self._succeeded(len(batch) - lost)
            self.transactions += 1
            if error is not None:
                self._failed(lost, error)

    async def _write_detached(self, row: _Row) -> None:
        try:
            await asyncio.to_thread(self._write_once, row)
        except Exception as exc:
            self._failed(1, exc)
        else:
            self._succeeded(1)

    def _failed(self, count: int, exc: BaseException) -> None:
        self.failures += count
        if self._failing:
            logger.debug(
                "usage ledger %s: %d more record(s) not written: %s", self.path, count, exc
            )
            return
        self._failing = True
        logger.error(
            "usage ledger %s: %d record(s) not written: %s (further failures are counted, "
            "not logged, until a write succeeds)",
            self.path,
            count,
            exc,
            exc_info=exc,
        )

    def _succeeded(self, count: int) -> None:
        self.written += count
        if self._failing:
            self._failing = False
            logger.warning(
                "usage ledger %s: writing again; %d record(s) lost so far",
                self.path,
                self.failures,
            )

    # -- the ledger thread's side ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> int:
        """Connect, migrate and mark ``pending`` rows ``interrupted`` (in the ledger's thread);
        returns how many were marked."""
        self.writer_thread = threading.current_thread()
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the usage ledger {self.path!r}: {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: fails here if unwritable
            self._migrate(conn)
            interrupted = conn.execute(_OWN, (self.instance_id,)).rowcount
            interrupted += self._lease_sync(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"cannot open the usage ledger {self.path!r}: {exc}") from exc
            raise
        self._conn = conn
        self._per_statement = _rows_per_statement(conn)
        return interrupted

    def _migrate(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID) or (
            version == 0 and conn.execute("SELECT 1 FROM sqlite_master").fetchone() is not None
        ):
            raise LedgerError(
                f"cannot open the usage ledger {self.path!r}: the file is another "
                "application's SQLite database"
            )
        known = len(self.migrations)
        if version > known:
            raise LedgerError(
                f"cannot open the usage ledger {self.path!r}: its schema version {version} is "
                f"newer than this waterfall-asgi knows ({known}); upgrade waterfall-asgi or "
                "use another file"
            )
        for step in self.migrations[version:]:
            for statement in step:
                conn.execute(statement)
        if version < known:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {known}")

    def _lease_sync(self, conn: sqlite3.Connection) -> int:
        """Renew this process's lease and mark the rows of lapsed leases ``interrupted`` (in the
        caller's transaction); returns how many were marked."""
        now = time.time()
        mine = process_token(os.getpid())
        conn.execute(_RENEW, (self.instance_id, now + self.lease, _HOST, os.getpid(), mine))
        if mine is not None:  # a holder on this host whose process has ended: released at once
            for holder, token in conn.execute(_HOLDERS, (self.instance_id,)).fetchall():
                if process_gone(token, mine):
                    conn.execute(_RELEASE, (holder,))
        marked: int = conn.execute(_REAP, (now,)).rowcount
        conn.execute(_FORGET, (now,))
        self._renewed = time.monotonic()
        self._registered = True
        return marked

    def _beat_sync(self) -> int:
        conn = self._conn
        if conn is None:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            marked = self._lease_sync(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return marked

    def _write_sync(self, batch: Sequence[_Row]) -> tuple[int, Exception | None, int]:
        """Upsert a batch of snapshots in one transaction (in the ledger's thread), renewing the
        lease when due; returns how many could not be encoded (see :func:`_rows`), the first
        such error, and how many rows of lapsed leases were marked ``interrupted``."""
        conn = self._conn
        if conn is None:
            raise LedgerError(f"usage ledger {self.path!r} is not open")
        rows, lost, error = _rows(batch, self.instance_id)
        marked = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if time.monotonic() - self._renewed >= self.heartbeat:
                marked = self._lease_sync(conn)
            for statement, parameters in _statements(rows, self._per_statement):
                conn.execute(statement, parameters)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return lost, error, marked

    def _write_once(self, snapshot: _Row) -> None:
        """Upsert one snapshot on a connection of its own (after close, in a worker thread)."""
        row = _to_row(snapshot, self.instance_id)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            for statement, parameters in _statements([row], 1):
                conn.execute(statement, parameters)
        finally:
            conn.close()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if self._registered:  # the lease released: rows left pending are marked at once
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(_RELEASE, (self.instance_id,))
                    self._registered = False
            finally:
                conn.close()
