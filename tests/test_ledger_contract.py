"""One contract for every usage ledger: the same tests, and a Hypothesis state machine against a
simple model, on the memory, SQLite and PostgreSQL ledgers.

The contract: one row per request id; a save replaces the row of its id, but a ``pending`` save
never replaces a terminal one (so saves that land out of order, twice, or from two processes
keep the terminal one); every field round-trips exactly; after a process ends, its rows left
``pending`` become ``interrupted`` (error: the process ended before the request finished) and
no other row changes. The shared stores (SQLite, PostgreSQL) add: a process that starts never
marks the rows of a live one, and a row of a process whose lease lapsed is marked once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from services import execute, with_search_path

from waterfall_asgi.ledger import TERMINAL_STATUSES, LedgerStore, MemoryLedger, UsageRecord
from waterfall_asgi.ledger_postgres import PostgresLedger, read_postgres_records
from waterfall_asgi.ledger_sqlite import SQLiteLedger, read_records

pytestmark = pytest.mark.anyio

INTERRUPTED = "the process ended before the request finished"

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
        {"entry": "gamma/m", "outcome": "skipped", "note": "délai ⏳", "nested": {"a": [1, None]}},
    ],
    status="success",
    http_status=200,
    ttfb_ms=87.5,
    duration_ms=1234.75,
    prompt_tokens=1000,
    completion_tokens=10,
    total_tokens=1010,
    cost=2**62 + 1,  # a float would lose the 1
    cost_unit="msat",
    reference_cost=420,
    error=None,
)


def record(n: int | str, **changes: Any) -> UsageRecord:
    base = UsageRecord(
        id=f"r{n}",
        started_at=1_750_000_000.0 + (n if isinstance(n, int) else 0),
        route="/v1/chat/completions",
        model="fast",
        provider="alpha",
        status="success",
        prompt_tokens=3,
        completion_tokens=1,
        total_tokens=4,
    )
    return dataclasses.replace(base, **changes)


@dataclass
class Kind:
    """How to make and read one kind of ledger over one storage: ``make`` gives a new process's
    ledger on the same storage, ``read`` waits for the ledger's writes and reads every row."""

    name: str
    shared: bool  # several processes may share the storage (leases)
    make: Callable[..., LedgerStore]
    read: Callable[[LedgerStore], Awaitable[dict[str, UsageRecord]]]


def memory_kind() -> Kind:
    ledger = MemoryLedger(max_records=None)  # one process: a "new" ledger is the same one

    async def read(store: LedgerStore) -> dict[str, UsageRecord]:
        return dict(ledger.records)

    return Kind("memory", False, lambda **_: ledger, read)


def sqlite_kind(path: Path) -> Kind:
    async def read(store: LedgerStore) -> dict[str, UsageRecord]:
        if isinstance(store, SQLiteLedger):
            await store.flush()
        return {r.id: r for r in read_records(path)} if await anyio.Path(path).exists() else {}

    return Kind(
        "sqlite",
        True,
        lambda **kw: SQLiteLedger(path, flush_interval=0.01, **kw),
        read,
    )


def postgres_kind(url: str) -> Kind:
    async def read(store: LedgerStore) -> dict[str, UsageRecord]:
        if isinstance(store, PostgresLedger):
            await store.flush()
        rows = await asyncio.to_thread(read_postgres_records, url)
        return {r.id: r for r in rows}

    return Kind(
        "postgres",
        True,
        lambda **kw: PostgresLedger(url, flush_interval=0.01, **kw),
        read,
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Kind:
    if request.param == "memory":
        return memory_kind()
    if request.param == "sqlite":
        return sqlite_kind(tmp_path / "usage.db")
    return postgres_kind(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def shared_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Kind:
    """The kinds several processes share (one file on a host; one database)."""
    if request.param == "sqlite":
        return sqlite_kind(tmp_path / "usage.db")
    return postgres_kind(request.getfixturevalue("pg_url"))


@asynccontextmanager
async def opened(ledger: LedgerStore) -> AsyncIterator[LedgerStore]:
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


async def test_every_field_round_trips_exactly(kind: Kind) -> None:
    bare = UsageRecord(id="req-2", started_at=1_750_000_001.5, route="/v1/embeddings")
    async with opened(kind.make()) as ledger:
        assert isinstance(ledger, LedgerStore)
        await ledger.save(FULL)
        await ledger.save(bare)
        got = await kind.read(ledger)
    assert got == {"req-1": FULL, "req-2": bare}
    assert isinstance(got["req-1"].cost, int)


async def test_a_save_is_a_snapshot(kind: Kind) -> None:
    mutable = record(1, attempts=[{"entry": "a/m", "outcome": "served"}])
    async with opened(kind.make()) as ledger:
        await ledger.save(mutable)
        mutable.attempts[0]["outcome"] = "changed"
        mutable.attempts.append({"entry": "b/m"})
        mutable.prompt_tokens = 99
        got = await kind.read(ledger)
    assert got["r1"] == record(1, attempts=[{"entry": "a/m", "outcome": "served"}])


async def test_pending_then_terminal_is_one_finished_row(kind: Kind) -> None:
    async with opened(kind.make()) as ledger:
        await ledger.save(record(1, status="pending", ttfb_ms=5.0, total_tokens=None))
        await ledger.save(record(1, ttfb_ms=5.0))
        got = await kind.read(ledger)
    assert got == {"r1": record(1, ttfb_ms=5.0)}


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
async def test_a_late_pending_save_never_replaces_a_terminal_row(kind: Kind, terminal: str) -> None:
    finished = record(1, status=terminal, error=None if terminal == "success" else "why")
    async with opened(kind.make()) as ledger:
        await ledger.save(finished)
        await kind.read(ledger)  # written
        await ledger.save(record(1, status="pending"))  # replayed, or from elsewhere, late
        await ledger.save(record(1, status="pending"))
        got = await kind.read(ledger)
    assert got == {"r1": finished}


async def test_a_terminal_save_replaces_another_terminal_one(kind: Kind) -> None:
    async with opened(kind.make()) as ledger:
        await ledger.save(record(1, status="interrupted", error=INTERRUPTED))
        await kind.read(ledger)
        await ledger.save(record(1, status="success"))
        got = await kind.read(ledger)
    assert got == {"r1": record(1)}


async def test_concurrent_saves_of_one_id_keep_the_terminal_one(kind: Kind) -> None:
    """Saves of the same ids raced from many tasks (and, for the shared stores, from two
    processes' ledgers at once): whatever order they land in, each id ends terminal."""
    ids = range(60)

    async def race(ledgers: list[LedgerStore], n: int) -> None:
        saves = [record(n, status="pending"), record(n, status="success", error=f"{n}")]
        if n % 2:
            saves.reverse()
        async with anyio.create_task_group() as tg:
            for i, save in enumerate(saves * 2):
                tg.start_soon(ledgers[i % len(ledgers)].save, save)

    first = kind.make()
    others = [kind.make()] if kind.shared else []
    async with opened(first):
        for other in others:
            await other.open()
        async with anyio.create_task_group() as tg:
            for n in ids:
                tg.start_soon(race, [first, *others], n)
        for other in others:
            await kind.read(other)
        got = await kind.read(first)
        for other in others:
            await other.close()
    assert {k: (v.status, v.error) for k, v in got.items()} == {
        f"r{n}": ("success", f"{n}") for n in ids
    }


async def test_a_process_that_ended_leaves_its_pending_rows_interrupted(kind: Kind) -> None:
    async with opened(kind.make()) as first:
        await first.save(record(1, status="pending", ttfb_ms=5.0, error=None))
        await first.save(record(2))
        await first.save(record(3, status="upstream_error", error="cut"))
        await first.save(record(4, status="pending", error="kept reason"))
    async with opened(kind.make()) as second:
        got = await kind.read(second)
    assert got == {
        "r1": record(1, status="interrupted", ttfb_ms=5.0, error=INTERRUPTED),
        "r2": record(2),
        "r3": record(3, status="upstream_error", error="cut"),
        "r4": record(4, status="interrupted", error="kept reason"),
    }
    async with opened(kind.make()) as third:  # marked once: nothing left to mark
        assert await kind.read(third) == got
        if not isinstance(third, MemoryLedger):
            assert getattr(third, "interrupted", 0) == 0


async def test_a_starting_process_never_marks_a_live_ones_rows(shared_kind: Kind) -> None:
    async with opened(shared_kind.make()) as live:
        await live.save(record(1, status="pending"))
        await shared_kind.read(live)
        async with opened(shared_kind.make()) as starting:
            assert (await shared_kind.read(starting))["r1"].status == "pending"
            assert getattr(starting, "interrupted", None) == 0
        await live.save(record(1))
        assert (await shared_kind.read(live))["r1"] == record(1)


async def test_a_lapsed_lease_has_its_rows_marked_once_by_a_live_process(shared_kind: Kind) -> None:
    """A process that stops renewing its lease (it hangs, or died without closing) has its
    pending rows marked by another process once the lease lapses; the first's terminal save,
    should it come after all, still wins."""
    stalled = shared_kind.make(lease=0.3, instance_id="stalled")
    await stalled.open()
    await stalled.save(record(1, status="pending"))
    await shared_kind.read(stalled)
    writer = stalled._writer  # type: ignore[attr-defined]
    writer.cancel()  # it stops renewing, without releasing its lease
    with pytest.raises(asyncio.CancelledError):
        await writer
    watchers = [shared_kind.make(lease=0.3), shared_kind.make(lease=0.3)]
    for watcher in watchers:
        await watcher.open()
    for _ in range(400):  # at most 20 s
        if (await shared_kind.read(watchers[0]))["r1"].status != "pending":
            break
        await anyio.sleep(0.05)
    await anyio.sleep(0.3)  # a beat or two more each: nobody marks it again
    marked = [getattr(w, "interrupted", 0) for w in watchers]
    assert sorted(marked) == [0, 1]
    got = (await shared_kind.read(watchers[0]))["r1"]
    assert (got.status, got.error) == ("interrupted", INTERRUPTED)
    await watchers[1].save(record(1))  # the terminal save, late: it wins
    assert (await shared_kind.read(watchers[1]))["r1"] == record(1)
    for watcher in watchers:
        await watcher.close()
    await stalled.close()


async def test_a_stable_instance_id_marks_its_previous_lifes_rows_at_once(
    shared_kind: Kind,
) -> None:
    first = shared_kind.make(instance_id="replica-a", lease=3600)
    await first.open()
    await first.save(record(1, status="pending"))
    await shared_kind.read(first)
    writer = first._writer  # type: ignore[attr-defined]
    writer.cancel()  # dies, its hour-long lease still live
    with pytest.raises(asyncio.CancelledError):
        await writer
    async with opened(shared_kind.make(instance_id="other", lease=3600)) as other:
        assert (await shared_kind.read(other))["r1"].status == "pending"  # a live lease: left alone
    async with opened(shared_kind.make(instance_id="replica-a", lease=3600)) as again:
        assert getattr(again, "interrupted", None) == 1
        assert (await shared_kind.read(again))["r1"].status == "interrupted"
    await first.close()


# -- the state machine -----------------------------------------------------------------------


class Model:
    """What any ledger must hold: the contract, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageRecord] = {}

    def save(self, rec: UsageRecord) -> None:
        kept = self.rows.get(rec.id)
        if rec.status == "pending" and kept is not None and kept.status != "pending":
            return
        self.rows[rec.id] = dataclasses.replace(rec, attempts=[dict(a) for a in rec.attempts])

    def restart(self) -> None:
        for key, rec in self.rows.items():
            if rec.status == "pending":
                self.rows[key] = dataclasses.replace(
                    rec, status="interrupted", error=INTERRUPTED if rec.error is None else rec.error
                )


texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
)
records = st.builds(
    UsageRecord,
    id=st.sampled_from(["a", "b", "c", "d"]),
    started_at=st.floats(0, 2e9, allow_nan=False),
    route=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
    model=st.none() | texts,
    stream=st.booleans(),
    attempts=st.lists(
        st.fixed_dictionaries({"entry": texts, "status": st.none() | st.integers(100, 599)}),
        max_size=2,
    ),
    status=st.sampled_from(["pending", *sorted(TERMINAL_STATUSES)]),
    prompt_tokens=st.none() | st.integers(0, 2**63 - 1),
    cost=st.none() | st.integers(0, 2**63 - 1),
    cost_unit=st.none() | st.just("msat"),
    error=st.none() | texts,
)


class LedgerMachine(RuleBasedStateMachine):
    """Saves and restarts against the model; the ledger's rows equal the model's after each."""

    kind: Kind

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = Model()
        self.ledger: LedgerStore | None = None

    @initialize()
    def start(self) -> None:
        self.ledger = self.kind.make()
        self.runner.run(self.ledger.open())

    @rule(rec=records)
    def save(self, rec: UsageRecord) -> None:
        assert self.ledger is not None
        self.runner.run(self.ledger.save(rec))
        self.model.save(rec)

    @rule(rec=records)
    def pending_then_terminal(self, rec: UsageRecord) -> None:
        assert self.ledger is not None
        pending = dataclasses.replace(rec, status="pending")
        final = rec if rec.status != "pending" else dataclasses.replace(rec, status="success")
        self.runner.run(self.ledger.save(pending))
        self.runner.run(self.ledger.save(final))
        self.model.save(pending)
        self.model.save(final)

    @rule()
    def restart(self) -> None:
        assert self.ledger is not None
        self.runner.run(self.ledger.close())
        self.ledger = self.kind.make()
        self.runner.run(self.ledger.open())
        self.model.restart()

    @invariant()
    def rows_are_the_models(self) -> None:
        if self.ledger is None:
            return
        assert self.runner.run(self.kind.read(self.ledger)) == self.model.rows

    def teardown(self) -> None:
        try:
            if self.ledger is not None:
                self.runner.run(self.ledger.close())
        finally:
            self.runner.close()


MACHINE = settings(
    max_examples=15,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def fresh_storage(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Kind]]:
    """A factory of a fresh storage per example, for the kinds that persist."""
    made: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:

        def make(name: str) -> Kind:
            if name == "memory":
                return memory_kind()
            if name == "sqlite":
                path = Path(tmp) / f"usage-{len(made)}.db"
                made.append(str(path))
                return sqlite_kind(path)
            base = request.getfixturevalue("database_url")
            schema = f"m_{len(made)}_{id(made) % 10_000}"
            execute(base, f"CREATE SCHEMA {schema}")
            made.append(schema)
            return postgres_kind(with_search_path(base, schema))

        yield make
        for schema in made:
            if not schema.endswith(".db"):
                execute(request.getfixturevalue("database_url"), f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("name", ["memory", "sqlite", "postgres"])
def test_the_ledger_state_machine(name: str, fresh_storage: Callable[[str], Kind]) -> None:
    class Machine(LedgerMachine):
        def __init__(self) -> None:
            self.kind = fresh_storage(name)
            super().__init__()

    Machine.TestCase.settings = MACHINE
    Machine.TestCase().runTest()


async def test_text_no_database_can_store_is_mended_and_the_batch_kept(shared_kind: Kind) -> None:
    """A client may send a lone surrogate, escaped, in a JSON string (a model name): its row is
    written with U+FFFD in its place, and the rows of the same batch are not lost with it."""
    async with opened(shared_kind.make()) as ledger:
        await ledger.save(record(1))
        await ledger.save(record(2, model="\ud800", error="bad \udfff", attempts=[{"e": "\ud83d"}]))
        await ledger.save(record(3))
        got = await shared_kind.read(ledger)
    assert got["r2"] == record(2, model="\ufffd", error="bad \ufffd", attempts=[{"e": "\ufffd"}])
    assert got["r1"] == record(1)
    assert got["r3"] == record(3)
    assert getattr(ledger, "failures", None) == 0
