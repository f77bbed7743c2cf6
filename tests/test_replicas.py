"""Several real replicas: ``waterfall-asgi serve`` processes on loopback sharing one ledger, in
front of ``waterfall-fakes serve``.

- Workers on one host sharing one SQLite file: a worker that starts leaves a live one's
  ``pending`` rows alone; one killed (SIGKILL) mid-stream has its rows marked ``interrupted`` by
  another once its lease lapses, none lost, none counted twice, while the others keep serving.

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
