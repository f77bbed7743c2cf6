"""SQLiteLedger: the schema, round trips, batching, ordering, backpressure, failures, migrations.

Every SQLite call of the ledger runs in its own thread on a connection made there with
``check_same_thread`` on: a write from any other thread would fail and be counted in
``failures``, so ``failures == 0`` at the end of a test also says the thread rule held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi.ledger import LedgerStore, UsageRecord, new_request_id
from waterfall_asgi.ledger_sqlite import APPLICATION_ID, LedgerError, SQLiteLedger, read_records

pytestmark = pytest.mark.anyio

FULL = UsageRecord(
    id="req-1",
    started_at=1_750_000_000.125,
    route="/v1/chat/completions",
    model="fast",
    provider="alpha",
    upstream_model="vendor/m-1",
    stream=True,
    attempts=[
        {"entry": "beta/m-2", "outcome": "rate_limited", "status": 429, "cooldown_s": 1.5},
        {"entry": "alpha/vendor/m-1", "outcome": "served", "status": 200, "elapsed_ms": 12.25},
        {"entry": "gamma/m", "outcome": "skipped", "note": "délai ⏳"},
    ],
    status="success",
    http_status=200,
    ttfb_ms=87.5,
    duration_ms=1234.75,
    prompt_tokens=1000,
    completion_tokens=10,
    total_tokens=1010,
    cost=157,
    cost_unit="msat",
    reference_cost=420,
    error=None,
)


def record(n: int, **changes: object) -> UsageRecord:
    """A small finished record ``r<n>``."""
    base = UsageRecord(
        id=f"r{n}",
        started_at=1_750_000_000.0 + n,
        route="/v1/chat/completions",
        model="fast",
        provider="alpha",
        status="success",
        prompt_tokens=n,
        completion_tokens=1,
        total_tokens=n + 1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "usage.db"


@pytest.fixture
def blocker(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to ``db``, to hold its write lock (``BEGIN IMMEDIATE``)."""
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


@contextlib.asynccontextmanager
async def _opened(ledger: SQLiteLedger) -> AsyncIterator[SQLiteLedger]:
    """Open ``ledger``, close it at the end."""
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait (a bounded number of short sleeps) until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError("the condition never held")


def raw(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_schema_covers_every_field_with_the_right_types(db: Path) -> None:
    ledger = SQLiteLedger(db)
    assert isinstance(ledger, LedgerStore)
    await ledger.open()
    try:
        columns = {name: kind for _, name, kind, *_ in raw(db, "PRAGMA table_info(usage)")}
        assert set(columns) == {f.name for f in dataclasses.fields(UsageRecord)} | {"instance_id"}
        assert columns["instance_id"] == "TEXT"
        assert {k: columns[k] for k in ("started_at", "ttfb_ms", "duration_ms")} == dict.fromkeys(
            ("started_at", "ttfb_ms", "duration_ms"), "REAL"
        )
        integers = ("prompt_tokens", "completion_tokens", "total_tokens", "cost", "reference_cost")
        for name in (*integers, "http_status"):
            assert columns[name] == "INTEGER", name
        assert (columns["attempts"], columns["cost_unit"]) == ("TEXT", "TEXT")
        indexed = {row[0] for row in raw(db, "SELECT tbl_name || '.' || name FROM sqlite_master")}
        assert {"usage.usage_started_at", "usage.usage_provider", "usage.usage_status"} <= indexed
        assert raw(db, "PRAGMA journal_mode") == [("wal",)]
        assert raw(db, "PRAGMA user_version") == [(4,)] == [(ledger.schema_version,)]
        assert raw(db, "PRAGMA application_id") == [(APPLICATION_ID,)]
    finally:
        await ledger.close()


async def test_every_field_round_trips(db: Path) -> None:
    bare = UsageRecord(id="req-2", started_at=1_750_000_001.5, route="/v1/embeddings")
    async with _opened(SQLiteLedger(db)) as ledger:
        await ledger.save(FULL)
        await ledger.save(bare)
    assert read_records(db) == [FULL, bare]
    assert read_records(db, since=1_750_000_001.0) == [bare]
    stored = raw(db, "SELECT stream, attempts, typeof(cost), typeof(ttfb_ms) FROM usage")[0]
    assert stored[0] == 1
    assert stored[1] == (
        '[{"entry":"beta/m-2","outcome":"rate_limited","status":429,"cooldown_s":1.5},'
        '{"entry":"alpha/vendor/m-1","outcome":"served","status":200,"elapsed_ms":12.25},'
        '{"entry":"gamma/m","outcome":"skipped","note":"délai ⏳"}]'
    )
    assert stored[2:] == ("integer", "real")
    assert (ledger.written, ledger.failures) == (2, 0)


async def test_a_save_is_a_snapshot(db: Path) -> None:
    live = record(1, status="pending", attempts=[{"entry": "alpha/m"}])
    async with _opened(SQLiteLedger(db, flush_interval=60)) as ledger:
        await ledger.save(live)
        live.attempts[0]["entry"] = "changed later"  # (the attempts are encoded when written)
        live.attempts.append({"entry": "added later"})
        live.status = "success"
    assert read_records(db)[0].attempts == [{"entry": "alpha/m"}]
    assert read_records(db)[0].status == "pending"


async def test_a_record_that_cannot_be_encoded_is_lost_alone(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    circular: dict[str, object] = {"entry": "alpha/m"}
    circular["self"] = circular
    async with _opened(SQLiteLedger(db, flush_interval=60)) as ledger:
        await ledger.save(record(1))
        await ledger.save(record(2, attempts=[circular]))
        await ledger.save(record(3))
    assert [r.id for r in read_records(db)] == ["r1", "r3"]
    assert (ledger.written, ledger.failures, ledger.transactions) == (2, 1, 1)
    assert "1 record(s) not written: Circular reference" in caplog.records[-1].getMessage()


async def test_pending_records_become_interrupted_at_the_next_open(db: Path) -> None:
    async with _opened(SQLiteLedger(db)) as first:
        await first.save(record(1, status="pending", ttfb_ms=5.0))
        await first.save(record(2))
        await first.save(record(3, status="upstream_error", error="cut"))
    assert first.interrupted == 0
    async with _opened(SQLiteLedger(db)) as second:
        assert second.interrupted == 1
    statuses = {r.id: (r.status, r.error) for r in read_records(db)}
    assert statuses == {
        "r1": ("interrupted", "the process ended before the request finished"),
        "r2": ("success", None),
        "r3": ("upstream_error", "cut"),
    }


async def test_many_saves_are_written_in_few_transactions(db: Path) -> None:
    ledger = SQLiteLedger(db, batch_size=100, flush_interval=60)
    await ledger.open()
    for n in range(250):
        await ledger.save(record(n))
    assert (ledger.pending, ledger.transactions) == (250, 0)
    await ledger.close()
    assert (ledger.transactions, ledger.written, ledger.failures, ledger.pending) == (3, 250, 0, 0)
    assert raw(db, "SELECT count(*), sum(prompt_tokens) FROM usage") == [(250, sum(range(250)))]


class _TracedLedger(SQLiteLedger):
    """Keeps the SQL of every statement its connection runs."""

    statements: list[str]

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        self.statements = []
        conn.set_trace_callback(self.statements.append)
        return conn


async def test_a_batch_is_written_in_few_statements_and_the_last_save_of_an_id_wins(
    db: Path,
) -> None:
    # rows the batch below updates, of a process still running (its pending rows stay so)
    async with _opened(SQLiteLedger(db)) as earlier:
        for n in range(10):
            await earlier.save(record(n, status="pending", completion_tokens=None))
        await earlier.flush()
        ledger = _TracedLedger(db, batch_size=1000, flush_interval=60)
        async with _opened(ledger):
            for n in range(130):
                await ledger.save(record(n, status="pending", completion_tokens=None))
            for n in range(0, 130, 2):
                await ledger.save(record(n, completion_tokens=2 * n, error="second"))
    assert ledger.transactions == 1
    inserts = [s for s in ledger.statements if s.startswith("INSERT INTO usage")]
    # 130 distinct ids, in two groups by the columns they leave NULL (65 each): powers of two
    # (up to 256 rows a statement); 4 statements, not 195
    assert sorted(s.count("('r") for s in inserts) == [1, 1, 64, 64]
    rows = {r.id: r for r in read_records(db)}
    assert len(rows) == 130
    for n in range(130):
        got = rows[f"r{n}"]
        if n % 2:
            assert (got.status, got.completion_tokens, got.error) == ("pending", None, None)
        else:
            assert (got.status, got.completion_tokens, got.error) == ("success", 2 * n, "second")
    assert (ledger.written, ledger.failures) == (195, 0)


class _FewVariablesLedger(_TracedLedger):
    """A connection that allows 999 variables a statement, as SQLite before 3.32 did."""

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn


@pytest.mark.parametrize(
    ("cls", "sizes"),
    [(_TracedLedger, [256, 256, 8]), (_FewVariablesLedger, [49] * 10 + [16, 8, 4, 2])],
)
async def test_a_statement_carries_as_many_rows_as_sqlite_allows(
    db: Path, cls: type[_TracedLedger], sizes: list[int]
) -> None:
    ledger = cls(db, batch_size=1000, flush_interval=60)
    async with _opened(ledger):
        for n in range(520):
            await ledger.save(record(n))
    inserts = [s for s in ledger.statements if s.startswith("INSERT INTO usage")]
    assert ledger.transactions == 1
    assert sorted((s.count("('r") for s in inserts), reverse=True) == sizes
    assert len(read_records(db)) == 520


async def test_a_full_batch_is_written_without_waiting_for_the_interval(db: Path) -> None:
    ledger = SQLiteLedger(db, batch_size=10, flush_interval=60)
    await ledger.open()
    try:
        for n in range(25):
            await ledger.save(record(n))
        await until(lambda: ledger.written >= 20)
        assert (ledger.written, ledger.transactions, ledger.pending) == (20, 2, 5)
        assert raw(db, "SELECT count(*) FROM usage") == [(20,)]
    finally:
        await ledger.close()
    assert (ledger.written, ledger.transactions) == (25, 3)


async def test_records_wait_at_most_the_flush_interval(db: Path) -> None:
    ledger = SQLiteLedger(db, batch_size=1000, flush_interval=0.02)
    await ledger.open()
    try:
        await ledger.save(record(1))
        await until(lambda: ledger.written >= 1)
        assert raw(db, "SELECT id FROM usage") == [("r1",)]
    finally:
        await ledger.close()


async def test_saves_of_one_id_land_in_order(db: Path) -> None:
    async with _opened(SQLiteLedger(db, batch_size=7, flush_interval=0)) as ledger:
        for n in range(40):
            await ledger.save(record(1, completion_tokens=n, status="pending"))
            if n % 3 == 0:
                await anyio.lowlevel.checkpoint()  # let the writer take partial batches too
        await ledger.save(record(1, completion_tokens=99, status="success"))
    assert [(r.completion_tokens, r.status) for r in read_records(db)] == [(99, "success")]
    assert ledger.transactions > 1
    assert (ledger.written, ledger.failures) == (41, 0)


async def test_close_flushes_everything_and_is_idempotent(db: Path) -> None:
    ledger = SQLiteLedger(db, flush_interval=60)
    await ledger.open()
    for n in range(3):
        await ledger.save(record(n))
    assert read_records(db) == []
    await ledger.close()
    assert [r.id for r in read_records(db)] == ["r0", "r1", "r2"]
    await ledger.close()
    assert (ledger.transactions, ledger.written) == (1, 3)


async def test_concurrent_requests_each_end_as_one_finished_row(db: Path) -> None:
    async def request(n: int) -> None:
        accepted = record(n, status="pending", prompt_tokens=None, total_tokens=None)
        await ledger.save(accepted)
        for _ in range(n % 4):
            await anyio.lowlevel.checkpoint()
        await ledger.save(record(n, ttfb_ms=float(n)))

    ledger = SQLiteLedger(db, batch_size=16, flush_interval=0.005, max_pending=32)
    await ledger.open()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(60):
                tg.start_soon(request, n)
    await ledger.close()
    rows = read_records(db)
    assert [r.id for r in rows] == [f"r{n}" for n in range(60)]
    assert {r.status for r in rows} == {"success"}
    assert [(r.prompt_tokens, r.ttfb_ms) for r in rows] == [(n, float(n)) for n in range(60)]
    assert (ledger.written, ledger.failures) == (120, 0)


async def test_writes_run_in_the_ledgers_thread_while_the_loop_goes_on(
    db: Path, blocker: sqlite3.Connection
) -> None:
    ledger = SQLiteLedger(db, flush_interval=0, busy_timeout=30)
    await ledger.open()
    assert ledger.writer_thread is not None
    assert ledger.writer_thread is not threading.current_thread()
    assert ledger.writer_thread.name.startswith("waterfall-ledger")
    blocker.execute("BEGIN IMMEDIATE")  # the ledger's write now waits for this lock
    await ledger.save(record(1))
    ticks = 0
    for _ in range(10):  # the loop keeps running while the write waits, in its thread
        await anyio.sleep(0.005)
        ticks += 1
    assert (ticks, ledger.pending, ledger.written) == (10, 0, 0)
    assert read_records(db) == []
    blocker.execute("ROLLBACK")
    await ledger.close()
    assert [r.id for r in read_records(db)] == ["r1"]
    assert (ledger.written, ledger.failures) == (1, 0)


async def test_a_full_queue_makes_save_wait(db: Path, blocker: sqlite3.Connection) -> None:
    ledger = SQLiteLedger(db, batch_size=1, flush_interval=0, max_pending=2, busy_timeout=30)
    await ledger.open()
    blocker.execute("BEGIN IMMEDIATE")
    await ledger.save(record(1))
    await until(lambda: ledger.pending == 0)  # the writer took r1 and waits for the lock
    await ledger.save(record(2))
    await ledger.save(record(3))
    assert ledger.pending == 2
    done: list[int] = []

    async def late() -> None:
        await ledger.save(record(4))
        done.append(4)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
            for _ in range(5):
                await anyio.sleep(0.005)
            assert (done, ledger.pending) == ([], 2)  # waiting for room, memory bounded
            blocker.execute("ROLLBACK")
    assert done == [4]
    await ledger.close()
    assert [r.id for r in read_records(db)] == ["r1", "r2", "r3", "r4"]
    assert (ledger.written, ledger.failures) == (4, 0)


async def test_a_failing_write_is_logged_once_counted_and_never_raised(
    db: Path, blocker: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="waterfall_asgi.ledger")
    ledger = SQLiteLedger(db, flush_interval=0, busy_timeout=0)
    await ledger.open()
    blocker.execute("BEGIN IMMEDIATE")
    await ledger.save(record(1))
    await ledger.save(record(2))
    await until(lambda: ledger.failures >= 2)
    await ledger.save(record(3))
    await until(lambda: ledger.failures >= 3)
    blocker.execute("ROLLBACK")
    await ledger.save(record(4))
    await ledger.close()
    assert (ledger.failures, ledger.written) == (3, 1)
    assert [r.id for r in read_records(db)] == ["r4"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "waterfall_asgi.ledger"
    assert "database is locked" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"usage ledger {db}: writing again; 3 record(s) lost so far"]


async def test_save_before_open_opens_and_save_after_close_still_writes(db: Path) -> None:
    ledger = SQLiteLedger(db, flush_interval=0)
    await ledger.save(record(1))
    assert ledger.writer_thread is not None
    await ledger.close()
    await ledger.save(record(2, status="upstream_error"))  # a straggler, after shutdown
    assert [(r.id, r.status) for r in read_records(db)] == [
        ("r1", "success"),
        ("r2", "upstream_error"),
    ]
    assert (ledger.written, ledger.failures) == (2, 0)


async def test_a_ledger_that_cannot_open_counts_saves_as_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = SQLiteLedger(tmp_path / "missing-dir" / "usage.db")
    await ledger.save(record(1))
    await ledger.save(record(2))
    await ledger.close()
    assert (ledger.failures, ledger.written) == (2, 0)
    assert [r.levelname for r in caplog.records if r.name == "waterfall_asgi.ledger"] == ["ERROR"]


async def test_close_without_open_and_reopen_after_close(db: Path) -> None:
    await SQLiteLedger(db).close()
    assert not await anyio.Path(db).exists()
    ledger = SQLiteLedger(db, flush_interval=0)
    await ledger.open()
    await ledger.open()  # already open: nothing happens
    await ledger.save(record(1))
    await ledger.close()
    await ledger.open()
    await ledger.save(record(2))
    await ledger.close()
    assert [r.id for r in read_records(db)] == ["r1", "r2"]


def test_records_queued_when_the_loop_ends_are_counted_as_lost(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = SQLiteLedger(db, flush_interval=60)

    async def forget_to_close() -> None:
        await ledger.open()
        await ledger.save(record(1))
        await ledger.save(record(2))

    anyio.run(forget_to_close)  # the loop ends: its tasks, the writer too, are cancelled
    assert (ledger.failures, ledger.written) == (2, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"usage ledger {db}: 2 record(s) not written: the ledger writer stopped "
        "(further failures are counted, not logged, until a write succeeds)"
    ]

    async def again() -> None:  # on another loop: release the file, open it again
        await ledger.open()
        await ledger.save(record(3))
        await ledger.close()

    anyio.run(again)
    assert [r.id for r in read_records(db)] == ["r3"]
    assert (ledger.failures, ledger.written) == (2, 1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SQLiteLedger("x.db", batch_size=0)
    with pytest.raises(ValueError, match="must not be negative"):
        SQLiteLedger("x.db", flush_interval=-1)


class _LaterLedger(SQLiteLedger):
    """A ledger from a future release whose schema has one more step."""

    migrations: ClassVar[tuple[tuple[str, ...], ...]] = (
        *SQLiteLedger.migrations,
        ("ALTER TABLE usage ADD COLUMN region TEXT", "UPDATE usage SET region = 'eu'"),
    )


async def test_an_older_database_is_migrated_in_order(db: Path) -> None:
    async with _opened(SQLiteLedger(db)) as old:
        await old.save(FULL)
    assert raw(db, "PRAGMA user_version") == [(4,)]
    async with _opened(_LaterLedger(db)) as new:
        assert new.schema_version == 5
        await new.save(record(1))
    assert raw(db, "PRAGMA user_version") == [(5,)]
    assert raw(db, "SELECT id, region FROM usage ORDER BY id") == [("r1", None), ("req-1", "eu")]
    async with _opened(_LaterLedger(db)):  # up to date: no step runs again
        pass
    assert raw(db, "SELECT count(*) FROM usage WHERE region = 'eu'") == [(1,)]


V1_COLUMNS = (
    "id, started_at, route, model, provider, upstream_model, stream, attempts, status, "
    "http_status, ttfb_ms, duration_ms, prompt_tokens, completion_tokens, total_tokens, cost, "
    "cost_unit, error"
)


def version_1(db: Path, records: list[UsageRecord]) -> None:
    """A ledger as waterfall-asgi wrote it at schema version 1 (no ``reference_cost``)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in SQLiteLedger.migrations[0]:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        names = V1_COLUMNS.split(", ")
        for r in records:
            values = {**r.to_dict(), "attempts": json.dumps(r.attempts), "stream": int(r.stream)}
            conn.execute(
                f"INSERT INTO usage ({V1_COLUMNS}) VALUES ({', '.join('?' * len(names))})",
                [values[name] for name in names],
            )
    finally:
        conn.close()


async def test_a_version_1_database_is_migrated_in_place_and_keeps_its_rows(db: Path) -> None:
    old_full = dataclasses.replace(FULL, reference_cost=None)
    version_1(db, [old_full, record(1, status="pending")])
    assert [row[1] for row in raw(db, "PRAGMA table_info(usage)")] == V1_COLUMNS.split(", ")
    rowids = raw(db, "SELECT rowid, id FROM usage ORDER BY rowid")
    # read-only, a reader takes the old file as it is and leaves it at version 1
    assert read_records(db) == [old_full, record(1, status="pending")]
    assert raw(db, "PRAGMA user_version") == [(1,)]

    async with _opened(SQLiteLedger(db)) as ledger:
        assert ledger.interrupted == 1
        await ledger.save(record(2, cost=5, cost_unit="msat", reference_cost=9))
    assert (ledger.written, ledger.failures) == (1, 0)
    assert raw(db, "PRAGMA user_version") == [(4,)]
    columns = {name: kind for _, name, kind, *_ in raw(db, "PRAGMA table_info(usage)")}
    assert columns["reference_cost"] == "INTEGER"
    assert set(columns) == {f.name for f in dataclasses.fields(UsageRecord)} | {"instance_id"}
    assert raw(db, "SELECT rowid, id FROM usage WHERE id != 'r2' ORDER BY rowid") == rowids
    interrupted = record(
        1, status="interrupted", error="the process ended before the request finished"
    )
    assert read_records(db) == [
        old_full,
        interrupted,
        record(2, cost=5, cost_unit="msat", reference_cost=9),
    ]
    indexed = {row[0] for row in raw(db, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"usage_started_at", "usage_provider", "usage_status"} <= indexed


async def test_an_empty_sqlite_file_is_migrated_from_version_zero(db: Path) -> None:
    sqlite3.connect(db).close()
    assert (await anyio.Path(db).stat()).st_size == 0
    async with _opened(SQLiteLedger(db)) as ledger:
        await ledger.save(FULL)
    assert read_records(db) == [FULL]


async def test_a_newer_schema_is_refused_with_a_clear_error(db: Path) -> None:
    async with _opened(_LaterLedger(db)):
        pass
    with pytest.raises(LedgerError) as info:
        await SQLiteLedger(db).open()
    assert str(info.value) == (
        f"cannot open the usage ledger {str(db)!r}: its schema version 5 is newer than this "
        "waterfall-asgi knows (4); upgrade waterfall-asgi or use another file"
    )
    with pytest.raises(LedgerError, match="newer than this waterfall-asgi knows"):
        read_records(db)


async def test_another_applications_database_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="another application's SQLite database"):
        await SQLiteLedger(db).open()
    assert raw(db, "SELECT name FROM sqlite_master") == [("customers",)]


@pytest.mark.parametrize("where", ["missing-dir/usage.db", "a-directory", "not-sqlite.db"])
async def test_an_unusable_path_fails_clearly_at_open(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "not-sqlite.db").write_bytes(b"this is not a database, " * 100)
    path = tmp_path / where
    ledger = SQLiteLedger(path)
    with pytest.raises(LedgerError) as info:
        await ledger.open()
    reason = "file is not a database" if where == "not-sqlite.db" else "unable to open"
    assert str(info.value).startswith(f"cannot open the usage ledger {str(path)!r}: {reason}")
    assert ledger.pending == 0


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes read-only files"
)
async def test_a_read_only_file_fails_clearly_at_open(db: Path) -> None:
    async with _opened(SQLiteLedger(db)):
        pass
    os.chmod(db, 0o444)
    try:
        with pytest.raises(LedgerError) as info:
            await SQLiteLedger(db).open()
        message = str(info.value)
        assert message.startswith(f"cannot open the usage ledger {str(db)!r}: ")
        assert "readonly database" in message or "unable to open" in message
    finally:
        os.chmod(db, 0o644)


def test_request_ids_are_uuid7_ordered_by_their_millisecond_and_distinct() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert re.fullmatch("[0-9a-f]{32}", rid)
    stamps = [int(rid[:12], 16) for rid in ids]
    assert stamps == sorted(stamps)  # made one after another: never earlier
    assert abs(stamps[-1] / 1000 - time.time()) < 60  # the Unix time, in milliseconds


_NULLABLE = [
    f.name
    for f in dataclasses.fields(UsageRecord)
    if f.name not in ("id", "started_at", "route", "stream", "attempts", "status")
]


@settings(max_examples=20, deadline=None)
@given(
    masks=st.lists(
        st.tuples(*[st.tuples(st.booleans(), st.booleans()) for _ in _NULLABLE]),
        min_size=1,
        max_size=70,
    )
)
def test_none_is_written_as_null_in_any_column_and_replaces_a_value(
    masks: list[tuple[tuple[bool, bool], ...]],
) -> None:
    # the rows of a batch go in groups by their NULL columns (None is written, not bound):
    # each record, saved with some columns None and then, in a later batch, with others
    def version(n: int, save: int) -> UsageRecord:
        nulls = {name: None for name, pair in zip(_NULLABLE, masks[n], strict=True) if pair[save]}
        return dataclasses.replace(FULL, id=f"r{n}", started_at=FULL.started_at + n, **nulls)

    async def main(db: Path) -> None:
        for save in (0, 1):
            async with _opened(SQLiteLedger(db, flush_interval=0)) as ledger:
                for n in range(len(masks)):
                    await ledger.save(version(n, save))
            assert (ledger.written, ledger.failures) == (len(masks), 0)

    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "usage.db"
        anyio.run(main, db)
        assert read_records(db) == [version(n, 1) for n in range(len(masks))]


_WORKER = """
import asyncio, sys, time
from waterfall_asgi.ledger import UsageRecord
from waterfall_asgi.ledger_sqlite import SQLiteLedger

async def main():
    ledger = SQLiteLedger(sys.argv[1], lease=3600)
    await ledger.open()
    await ledger.save(UsageRecord(id="w1", started_at=1.0, route="/v1/chat/completions"))
    await ledger.flush()
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
def worker(db: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process on this host with a ledger on ``db`` (an hour-long lease) and a pending
    row in it; killed at the end (by its pid) if the test has not."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(db)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="Linux's /proc tells")
async def test_a_worker_that_died_on_this_host_has_its_rows_marked_at_once(
    db: Path, worker: subprocess.Popen[bytes]
) -> None:
    """A process on this host whose pid is gone is dead: the next worker to start marks its
    pending rows without waiting for its (hour-long) lease; while it lives, they are left."""
    async with _opened(SQLiteLedger(db, lease=3600)) as while_alive:
        assert while_alive.interrupted == 0
    assert [r.status for r in read_records(db)] == ["pending"]
    worker.kill()
    assert worker.wait(10) == -9
    async with _opened(SQLiteLedger(db, lease=3600)) as after:
        assert after.interrupted == 1
    assert [(r.status, r.error) for r in read_records(db)] == [
        ("interrupted", "the process ended before the request finished")
    ]
