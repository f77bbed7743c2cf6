"""Several real replicas: ``waterfall-asgi serve`` processes on loopback sharing one ledger (and
one Redis for cooldowns), in front of ``waterfall-fakes serve``.

- Three replicas sharing one Redis and one PostgreSQL database: a provider answers 429 with
  ``Retry-After: 30`` once, and 300 requests spread round-robin over the replicas call it exactly
  once (the cooldown one replica learnt is honoured by the others); every request leaves exactly
  one terminal row. Then one replica is killed (SIGKILL) with streams in flight: its rows become
  ``interrupted`` (marked by another replica once its lease lapses), none lost, none counted
  twice, and the other replicas keep serving.
- Workers on one host sharing one SQLite file: a worker that starts leaves a live one's
  ``pending`` rows alone; one killed mid-stream has its rows marked by another.

Bounded: every wait is a bounded loop; every process is stopped at the end, by its pid.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import pytest

pytestmark = [pytest.mark.loopback, pytest.mark.anyio]

BIN = Path(sys.executable).parent
LEASE = 1.5  # s: short, so that the killed replica's rows are marked soon
INTERRUPTED = "the process ended before the request finished"
CHAT = "/v1/chat/completions"


class Processes:
    """The processes a test started, stopped (by pid) at its end whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            list(args), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
        self.started.append((process, log))
        return process

    def stop_all(self) -> None:
        for process, log in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
            log.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def fake(processes: Processes, name: str, *script: str, cycle: bool = False) -> str:
    """Start ``waterfall-fakes serve`` with ``script``; its base URL (``.../v1``)."""
    steps = [arg for step in script for arg in ("--script", step)]
    process = processes.start(
        f"fake-{name}",
        str(BIN / "waterfall-fakes"),
        "serve",
        "--port",
        "0",
        "--name",
        name,
        *steps,
        *(["--cycle"] if cycle else []),
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()  # the first line: the base URL
    assert line.startswith("http://127.0.0.1:"), line
    return line


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def router_config(path: Path, fakes: dict[str, str], *sections: str) -> Path:
    """A router config: a provider per fake, the chains ``fast`` (``limited``, then ``backup``)
    and ``slow``, and ``sections`` (the ledger's, the cooldowns')."""
    lines = [
        *(f'[providers.{n}]\nbase_url = "{u}"' for n, u in fakes.items()),
        "[chains]",
        'fast = ["limited/fake-small", "backup/fake-small"]',
        'slow = ["slow/fake-small"]',
        *sections,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def replica(processes: Processes, name: str, config: Path, port: int) -> subprocess.Popen[bytes]:
    """``waterfall-asgi serve`` on ``port``."""
    return processes.start(
        name,
        str(BIN / "waterfall-asgi"),
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    )


async def streams_in_flight(
    client: httpx.AsyncClient, base: str, count: int
) -> tuple[list[str], list[httpx.Response]]:
    """``count`` slow streams opened on ``base`` (accepted: the headers are in); their request
    ids and responses."""
    ids, responses = [], []
    for n in range(count):
        request = client.build_request("POST", base + CHAT, json=chat(f"s{n}", "slow", True))
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        ids.append(response.headers["x-waterfall-request-id"])
        responses.append(response)
    return ids, responses


async def kill(process: subprocess.Popen[bytes], responses: list[httpx.Response]) -> None:
    """SIGKILL ``process``, then let its clients see their streams end."""
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL
    for response in responses:
        try:
            await response.aread()
        except httpx.TransportError:
            pass  # the replica is gone mid-stream
        finally:
            await response.aclose()


async def wait_healthy(client: httpx.AsyncClient, base: str) -> None:
    for _ in range(300):  # at most ~30 s
        try:
            if (await client.get(base + "/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{base} never became healthy")


def sqlite_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute("SELECT id, status, error, instance_id FROM usage").fetchall()
    except sqlite3.OperationalError:  # not made yet
        return {}
    finally:
        conn.close()
    return {r["id"]: dict(r) for r in found}


async def rows(ledger: str | Path) -> dict[str, dict[str, Any]]:
    """Every row of the ledger (a PostgreSQL URL or a SQLite file), by request id."""
    if isinstance(ledger, Path):
        return sqlite_rows(ledger)
    pg = await asyncpg.connect(ledger)
    try:
        got = await pg.fetch("SELECT id, status, error, instance_id FROM waterfall_usage")
    finally:
        await pg.close()
    return {r["id"]: dict(r) for r in got}


async def until(ledger: str | Path, done: Any, what: str) -> dict[str, dict[str, Any]]:
    """Poll the ledger until ``done(rows)`` (at most ~60 s)."""
    for _ in range(600):
        got = await rows(ledger)
        if done(got):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ledger never showed {what}")


def chat(text: str, model: str = "fast", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


async def test_three_replicas_share_one_truth(
    pg_url: str, redis_url: str, redis_prefix: str, processes: Processes, tmp_path: Path
) -> None:
    fakes = {
        "limited": fake(processes, "limited", "rate_limit:dialect=retry-after,seconds=30"),
        "backup": fake(processes, "backup"),
        "slow": fake(processes, "slow", "slow_chunks:seconds=0.5", cycle=True),
    }
    config = router_config(
        tmp_path / "router.toml",
        fakes,
        f'[ledger]\nurl = "{pg_url}"\nlease = {LEASE}',
        f'[cooldowns]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"',
    )
    ports = [free_port() for _ in range(3)]
    replicas = [replica(processes, f"replica-{n}", config, port) for n, port in enumerate(ports)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for base in bases:
            await wait_healthy(client, base)

        async def send(n: int, base: str) -> None:
            response = await client.post(base + CHAT, json=chat(f"request {n}"))
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-waterfall-request-id"])

        # the first request meets the 429 (Retry-After: 30); the 299 after it go round-robin
        await send(0, bases[0])
        for start in range(1, 300, 3):
            await asyncio.gather(
                *(send(n, bases[n % 3]) for n in range(start, min(start + 3, 300)))
            )
        journal = (await client.get(fakes["limited"].removesuffix("/v1") + "/_fake/journal")).json()
        calls = [e for e in journal["entries"] if e["path"].endswith(CHAT)]
        assert [e["status"] for e in calls] == [429]  # called exactly once, by all three
        got = await until(
            pg_url,
            lambda r: all(r.get(i, {}).get("status") == "success" for i in ids),
            "300 finished rows",
        )
        assert len(got) == len(ids) == len(set(ids)) == 300

        # streams in flight on the third replica, then kill -9
        victim, survivors = bases[2], bases[:2]
        in_flight, streams = await streams_in_flight(client, victim, 6)
        await until(
            pg_url,
            lambda r: all(r.get(i, {}).get("status") == "pending" for i in in_flight),
            "the streams' pending rows",
        )
        await kill(replicas[2], streams)
        after: list[str] = []
        for n in range(30):  # the others keep serving
            response = await client.post(survivors[n % 2] + CHAT, json=chat(f"after {n}"))
            assert response.status_code == 200
            after.append(response.headers["x-waterfall-request-id"])
        final = await until(
            pg_url,
            lambda r: (
                all(r.get(i, {}).get("status") == "interrupted" for i in in_flight)
                and all(r.get(i, {}).get("status") == "success" for i in after)
            ),
            "the killed replica's rows interrupted",
        )
    everyone = [*ids, *in_flight, *after]
    assert sorted(final) == sorted(everyone)  # none lost, none counted twice
    for request_id in in_flight:
        assert final[request_id]["error"] == INTERRUPTED
    victims = {final[i]["instance_id"] for i in in_flight}
    assert len(victims) == 1
    assert all(final[i]["instance_id"] not in victims for i in after)
    assert all(r["status"] in ("success", "interrupted") for r in final.values())


async def test_workers_sharing_one_sqlite_file_never_mark_each_others_rows(
    processes: Processes, tmp_path: Path
) -> None:
    """Workers on one host on one SQLite file: a worker that starts leaves a live one's pending
    rows alone; a worker killed mid-stream has its rows marked by another, once its lease
    lapses."""
    fakes = {
        "limited": fake(processes, "limited"),
        "backup": fake(processes, "backup"),
        "slow": fake(processes, "slow", "slow_chunks:seconds=0.5", cycle=True),
    }
    db = tmp_path / "usage.db"
    config = router_config(
        tmp_path / "router.toml", fakes, f'[ledger]\npath = "{db}"\nlease = {LEASE}'
    )
    ports = [free_port() for _ in range(3)]
    first, second = (replica(processes, f"worker-{n}", config, ports[n]) for n in range(2))
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    async with httpx.AsyncClient(timeout=30) as client:
        for base in bases[:2]:
            await wait_healthy(client, base)
        in_flight, streams = await streams_in_flight(client, bases[1], 4)
        await until(
            db,
            lambda r: all(r.get(i, {}).get("status") == "pending" for i in in_flight),
            "the streams' pending rows",
        )
        replica(processes, "worker-late", config, ports[2])  # starts while they are in flight
        await wait_healthy(client, bases[2])
        assert {(await rows(db))[i]["status"] for i in in_flight} == {"pending"}
        await kill(second, streams)
        served = []
        for n in range(10):
            response = await client.post(bases[(0, 2)[n % 2]] + CHAT, json=chat(f"after {n}"))
            assert response.status_code == 200
            served.append(response.headers["x-waterfall-request-id"])
        final = await until(
            db,
            lambda r: (
                all(r.get(i, {}).get("status") == "interrupted" for i in in_flight)
                and all(r.get(i, {}).get("status") == "success" for i in served)
            ),
            "the killed worker's rows interrupted",
        )
    assert first.poll() is None  # the first worker served throughout
    assert sorted(final) == sorted([*in_flight, *served])
    assert {final[i]["error"] for i in in_flight} == {INTERRUPTED}
