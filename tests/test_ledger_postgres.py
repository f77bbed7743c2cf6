"""PostgresLedger beyond the shared contract (tests/test_ledger_contract.py): its schema and
migrations (several replicas at once), exact money past 64 bits, values PostgreSQL refuses, no
password anywhere, the database away and back (its own throwaway server, restarted under load,
also behind the router), and the ``usage`` command on a database."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from asgi_helpers import call
from services import PostgresServer, execute, missing_service

from waterfall_asgi import LedgerError, PostgresLedger, UsageRecord, WaterfallMiddleware
from waterfall_asgi.cli import main
from waterfall_asgi.ledger_postgres import read_postgres_records
from waterfall_asgi.ledger_sqlite import read_records
from waterfall_asgi.redact import redact_url
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio


def record(n: int, **changes: Any) -> UsageRecord:
    data: dict[str, Any] = {
        "id": f"r{n}",
        "started_at": 1_750_000_000.0 + n,
        "route": "/v1/chat/completions",
        "model": "fast",
        "provider": "alpha",
        "status": "success",
        "prompt_tokens": n,
        "completion_tokens": 1,
        "total_tokens": n + 1,
        "cost": n,
        "cost_unit": "msat",
    }
    return UsageRecord.from_dict({**data, **changes})


async def fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_schema_keeps_money_exact_and_indexes_the_usage_queries(pg_url: str) -> None:
    ledger = PostgresLedger(pg_url)
    async with _opened(ledger):
        huge = 10**30 + 1  # past 64 bits: numeric keeps it
        await ledger.save(record(1, cost=huge, reference_cost=huge + 1))
        await ledger.flush()
    types = {
        r["column_name"]: r["data_type"]
        for r in await fetch(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'waterfall_usage' AND table_schema = current_schema()",
        )
    }
    assert types["cost"] == types["reference_cost"] == "numeric"
    assert types["prompt_tokens"] == types["total_tokens"] == "bigint"
    assert types["attempts"] == "jsonb"
    assert types["started_at"] == "double precision"
    indexes = {r["indexname"] for r in await fetch(pg_url, "SELECT indexname FROM pg_indexes")}
    assert {
        "waterfall_usage_started_at",
        "waterfall_usage_provider",
        "waterfall_usage_status",
        "waterfall_usage_pending",
    } <= indexes
    (got,) = read_postgres_records(pg_url)
    assert (got.cost, got.reference_cost) == (10**30 + 1, 10**30 + 2)
    assert [
        tuple(r) for r in await fetch(pg_url, "SELECT version FROM waterfall_ledger_schema")
    ] == [(2,)]


async def test_replicas_that_start_together_migrate_once(pg_url: str) -> None:
    ledgers = [PostgresLedger(pg_url, instance_id=f"replica-{n}") for n in range(6)]
    await asyncio.gather(*(ledger.open() for ledger in ledgers))
    try:
        await asyncio.gather(*(ledger.save(record(n)) for n, ledger in enumerate(ledgers)))
        await asyncio.gather(*(ledger.flush() for ledger in ledgers))
        assert sorted(r.id for r in read_postgres_records(pg_url)) == [f"r{n}" for n in range(6)]
        leases = await fetch(pg_url, "SELECT id FROM waterfall_ledger_instances ORDER BY id")
        assert [r["id"] for r in leases] == [f"replica-{n}" for n in range(6)]
    finally:
        await asyncio.gather(*(ledger.close() for ledger in ledgers))
    versions = await fetch(pg_url, "SELECT version FROM waterfall_ledger_schema")
    assert [r["version"] for r in versions] == [2]
    assert await fetch(pg_url, "SELECT id FROM waterfall_ledger_instances") == []  # released


async def test_a_newer_schema_or_a_foreign_table_is_refused(pg_url: str) -> None:
    async with _opened(PostgresLedger(pg_url)):
        pass
    execute(pg_url, "UPDATE waterfall_ledger_schema SET version = 7")
    with pytest.raises(LedgerError, match="schema version 7 is newer than this waterfall-asgi"):
        await PostgresLedger(pg_url).open()
    with pytest.raises(LedgerError, match="newer than this waterfall-asgi"):
        read_postgres_records(pg_url)
    execute(pg_url, "DROP TABLE waterfall_usage, waterfall_ledger_schema")
    execute(pg_url, "CREATE TABLE waterfall_usage (x int)")
    with pytest.raises(LedgerError, match="did not make"):
        await PostgresLedger(pg_url).open()


async def test_a_value_postgresql_refuses_loses_only_its_row(pg_url: str) -> None:
    async with _opened(PostgresLedger(pg_url, flush_interval=60)) as ledger:
        await ledger.save(record(1))
        await ledger.save(record(2, prompt_tokens=2**70))  # past bigint
        await ledger.save(record(3, model="nul\x00in a name", attempts=[{"e": "a\x00b"}]))
        await ledger.flush()
        assert (ledger.written, ledger.failures) == (2, 1)
    got = {r.id: r for r in read_postgres_records(pg_url)}
    assert sorted(got) == ["r1", "r3"]
    assert got["r3"].model == "nul\ufffdin a name"
    assert got["r3"].attempts == [{"e": "a\ufffdb"}]


async def test_no_password_in_repr_errors_or_logs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-secret"
    away = f"postgresql://app:{secret}@127.0.0.1:{closed_port()}/db?password={secret}"
    ledger = PostgresLedger(away, connect_timeout=1, close_timeout=0.2)
    assert secret not in repr(ledger)
    assert secret not in ledger.url
    assert "***" in ledger.url
    caplog.set_level(logging.DEBUG, "waterfall_asgi.ledger")
    await ledger.open()  # unreachable: not an error at start; the writer tries again
    await ledger.save(record(1))
    health = ledger.health()
    assert health.pop("degraded_for_s") >= 0
    assert health == {
        "store": "postgres",
        "state": "degraded",
        "url": f"postgresql://app:***@127.0.0.1:{away.split(':')[3].split('/')[0]}/db"
        "?password=%2A%2A%2A",
        "pending": 1,
        "lost": 0,
    }
    await ledger.close()
    assert ledger.failures == 1
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "out of reach" in text
    assert secret not in text
    # a server that refuses us for good (no such database) fails at open, clearly
    server = database_url.rpartition("/")[0].replace("postgresql://", "")
    missing = f"postgresql://postgres:{secret}@{server.split('@')[-1]}/no_such_db_here"
    with pytest.raises(LedgerError) as info:
        await PostgresLedger(missing).open()
    assert secret not in str(info.value)
    assert "no_such_db_here" in str(info.value)
    with pytest.raises(LedgerError) as read_info:
        read_postgres_records(away)
    assert secret not in str(read_info.value)


def test_redact_url_hides_every_password() -> None:
    assert redact_url("postgres://u:p%40ss@h/d") == "postgres://u:***@h/d"
    assert redact_url("postgresql://u@h/d?sslmode=require") == "postgresql://u@h/d?sslmode=require"


# -- the database away and back --------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A throwaway server this module may stop and start."""
    try:
        server = PostgresServer()
    except (FileNotFoundError, OSError) as exc:
        missing_service(f"no PostgreSQL binaries to start a server of its own: {exc}")
        raise
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_url(own_server: PostgresServer) -> str:
    if not own_server.running():
        own_server.start()
    execute(own_server.url, "DROP SCHEMA IF EXISTS public CASCADE", "CREATE SCHEMA public")
    return own_server.url


async def test_rows_saved_while_the_database_restarts_are_all_written(
    own_server: PostgresServer, own_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "waterfall_asgi.ledger")
    ledger = PostgresLedger(own_url, flush_interval=0.01, retry_max=0.2)
    async with _opened(ledger):
        for n in range(100):
            await ledger.save(record(n, status="pending"))
        await ledger.flush()
        await anyio.to_thread.run_sync(own_server.stop)  # fast: connections are cut
        for n in range(100):
            await ledger.save(record(n))  # finished while the database is away
        for n in range(100, 300):
            await ledger.save(record(n))
            if n % 50 == 0:
                await anyio.sleep(0.05)
        assert ledger.pending >= 200  # nothing lost: they wait
        assert not ledger.connected
        await anyio.to_thread.run_sync(own_server.start)
        with anyio.fail_after(30):
            await ledger.flush()
        assert ledger.connected
    assert (ledger.failures, ledger.outages) == (0, 1)
    rows = read_postgres_records(own_url)
    assert len(rows) == 300
    assert {r.status for r in rows} == {"success"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("out of reach" in w for w in warnings) == 1
    assert sum("is back after" in w for w in warnings) == 1


async def test_a_full_buffer_while_away_drops_and_counts_never_waits(
    own_server: PostgresServer, own_url: str
) -> None:
    ledger = PostgresLedger(own_url, max_pending=10, batch_size=5, close_timeout=0.5)
    await ledger.open()
    await anyio.to_thread.run_sync(own_server.stop)
    try:
        await ledger.save(record(0))
        for _ in range(100):  # the writer finds the database away
            if not ledger.connected:
                break
            await anyio.sleep(0.05)
        with anyio.fail_after(5):  # never waits for room while the database is away
            for n in range(1, 40):
                await ledger.save(record(n))
        assert ledger.pending <= 10 + 5
        assert ledger.failures >= 40 - 15
    finally:
        await ledger.close()  # gives up after close_timeout: what is left is counted lost
        await anyio.to_thread.run_sync(own_server.start)
    assert ledger.failures + len(read_postgres_records(own_url)) == 40


async def test_the_router_serves_through_a_database_restart_and_loses_no_row(
    own_server: PostgresServer, own_url: str
) -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    ledger = PostgresLedger(own_url, flush_interval=0.01, retry_max=0.2)
    app = WaterfallMiddleware(
        None,
        {
            "providers": {"a": {"base_url": "http://a/v1"}},
            "deployments": [{"provider": "a", "model": "fake-small"}],
            "chains": {"fast": ["a/fake-small"]},
        },
        transport=net,
        ledger=ledger,
    )
    await app.startup()
    statuses: list[int] = []

    async def client(n: int) -> None:
        body = {"model": "fast", "messages": [{"role": "user", "content": f"hi {n}"}]}
        if n % 2:
            body["stream"] = True
        for _ in range(20):
            statuses.append((await call(app, "POST", "/v1/chat/completions", body)).status)
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(client, n)
            await anyio.sleep(0.1)
            await anyio.to_thread.run_sync(own_server.stop)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(own_server.start)
        with anyio.fail_after(30):
            await ledger.flush()
    finally:
        await app.shutdown()
    assert statuses == [200] * 200
    assert ledger.failures == 0
    rows = read_postgres_records(own_url)
    assert len(rows) == 200
    assert {r.status for r in rows} == {"success"}


# -- reading ---------------------------------------------------------------------------------


async def test_usage_and_read_records_read_a_database(
    pg_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with _opened(PostgresLedger(pg_url)) as ledger:
        await ledger.save(record(1, cost=2**64, provider="alpha"))
        await ledger.save(record(2, provider="beta", status="rejected", error="bad"))
        await ledger.save(record(3, provider="alpha", status="pending"))
    assert [r.id for r in read_records(pg_url)] == ["r1", "r2", "r3"]
    assert [r.id for r in read_records(pg_url, since=1_750_000_002.0)] == ["r2", "r3"]
    assert await anyio.to_thread.run_sync(main, ["usage", "--db", pg_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["requests"] == 3
    assert report["total"]["cost"] == {"msat": 2**64 + 2 + 3}
    assert main(["usage", "--db", f"postgresql://postgres@127.0.0.1:{closed_port()}/x"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    config = tmp_path / "router.toml"
    config.write_text(
        f'[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[ledger]\nurl = "{pg_url}"\n'
    )
    assert await anyio.to_thread.run_sync(main, ["usage", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 3


def test_the_config_chooses_postgres_and_check_config_names_it_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_URL", "postgresql://app:s3cret-pw@db.internal:5432/usage")
    file = tmp_path / "router.toml"
    file.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[chains]\nfast = ["a/m"]\n'
        '[ledger]\nurl_env = "LEDGER_URL"\nlease = 12\ninstance_id = "replica-1"\n'
    )
    assert main(["check-config", str(file)]) == 0
    out = capsys.readouterr().out
    assert "PostgreSQL at postgresql://app:***@db.internal:5432/usage" in out
    assert "s3cret" not in out
    app = WaterfallMiddleware(None, str(file))
    assert isinstance(app.ledger, PostgresLedger)
    assert (app.ledger.lease, app.ledger.instance_id) == (12, "replica-1")
    assert "s3cret" not in repr(app.ledger) + repr(app.config)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if the extra were not installed
    assert main(["check-config", str(file)]) == 1
    assert "pip install 'waterfall-asgi[postgres]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "asyncpg")
    file.write_text(file.read_text().replace("LEDGER_URL", "NOT_SET_ANYWHERE"))
    assert main(["check-config", str(file)]) == 1
    assert "ledger.url_env: environment variable NOT_SET_ANYWHERE is not set" in (
        capsys.readouterr().err
    )


class _opened:
    """``async with _opened(ledger) as ledger``: open, then close whatever happens."""

    def __init__(self, ledger: PostgresLedger) -> None:
        self.ledger = ledger

    async def __aenter__(self) -> PostgresLedger:
        await self.ledger.open()
        return self.ledger

    async def __aexit__(self, *exc: object) -> None:
        await self.ledger.close()


async def test_health_reports_the_ledger_without_its_password(pg_url: str) -> None:
    secret = "hunter2-secret"
    config = {
        "providers": {"a": {"base_url": "http://a/v1"}},
        "deployments": [{"provider": "a", "model": "fake-small"}],
        "chains": {"fast": ["a/fake-small"]},
    }
    net = FakeNetwork({"a": FakeProvider(name="a")})
    live = WaterfallMiddleware(None, config, transport=net, ledger=PostgresLedger(pg_url))
    await live.startup()
    try:
        body = (await call(live, "GET", "/health")).json()
    finally:
        await live.shutdown()
    assert body["status"] == "ok"
    assert body["ledger"]["state"] == "ok"
    away = PostgresLedger(
        f"postgresql://app:{secret}@127.0.0.1:{closed_port()}/db",
        connect_timeout=1,
        close_timeout=0.1,
    )
    down = WaterfallMiddleware(None, config, transport=net, ledger=away)
    await down.startup()  # the router starts all the same, and serves
    try:
        served = await call(down, "POST", "/v1/chat/completions", {"model": "fast", "messages": []})
        result = await call(down, "GET", "/health")
    finally:
        await down.shutdown()
    assert served.status == 200
    assert result.status == 200  # the router serves: a balancer must not take it out
    assert secret not in result.body.decode()
    assert result.json()["status"] == "degraded"
    ledger = result.json()["ledger"]
    assert (ledger["state"], ledger["url"]) == (
        "degraded",
        f"postgresql://app:***@127.0.0.1:{away.url.split(':')[3].split('/')[0]}/db",
    )


_WORKER = """
import asyncio, sys
from waterfall_asgi.ledger import UsageRecord
from waterfall_asgi.ledger_postgres import PostgresLedger

async def main():
    ledger = PostgresLedger(sys.argv[1], lease=3600)
    await ledger.open()
    await ledger.save(UsageRecord(id="w1", started_at=1.0, route="/v1/chat/completions"))
    await ledger.flush()
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
def worker(pg_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Another process on this host with a ledger (an hour-long lease) and a pending row;
    killed at the end (by its pid) if the test has not."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER, pg_url], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
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
async def test_a_replica_that_died_on_this_host_has_its_rows_marked_at_once(
    pg_url: str, worker: subprocess.Popen[bytes]
) -> None:
    async with _opened(PostgresLedger(pg_url, lease=3600)) as while_alive:
        assert while_alive.interrupted == 0
    assert [r.status for r in read_postgres_records(pg_url)] == ["pending"]
    worker.kill()
    assert worker.wait(10) == -9
    async with _opened(PostgresLedger(pg_url, lease=3600)) as after:
        assert after.interrupted == 1
    assert [(r.status, r.error) for r in read_postgres_records(pg_url)] == [
        ("interrupted", "the process ended before the request finished")
    ]
