"""Real services for the tests: PostgreSQL (and whatever else joins it here).

- ``database_url`` (session): a PostgreSQL server's URL. ``DATABASE_URL`` when set; else a
  throwaway server started from the installed ``initdb``/``pg_ctl`` in a temporary directory
  (stopped at the end); else the test is skipped with a reason that says what to install, or
  fails when ``WATERFALL_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets it). A fresh database is made
  for the run on that server and dropped afterwards.
- ``pg_url`` (each test): that database with a fresh schema of its own (the URL's
  ``search_path``), dropped after the test.
- :class:`PostgresServer`: a throwaway server a test may stop and start (a fault test never
  restarts the machine's shared one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "PostgresServer",
    "database_url",
    "execute",
    "missing_service",
    "pg_url",
    "with_search_path",
]


def missing_service(reason: str) -> None:
    """Skip the test (or fail it when ``WATERFALL_REQUIRE_SERVICES=1``) for ``reason``."""
    if os.environ.get("WATERFALL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (WATERFALL_REQUIRE_SERVICES=1: a missing service fails)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


class PostgresServer:
    """A PostgreSQL server of its own, in a temporary directory, on a free loopback port, with
    trust authentication for the user ``postgres``. Runs as the ``postgres`` system user when
    the tests run as root (``initdb`` refuses root)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError(
                "no PostgreSQL binaries (initdb, pg_ctl): install PostgreSQL "
                "(apt-get install postgresql) or set DATABASE_URL"
            )
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="waterfall-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("running as root with no postgres user") from None
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self._dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(self._initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            self._pg_ctl, "-D", str(self.data), "-l", str(self._dir / "log"), "-w",
            "-t", "30", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "status"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self._dir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (asyncpg sends unknown URL query parameters as
    server settings)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"search_path={schema}") if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` on the database at ``url``, from sync code (in a thread of its own,
    so that no event loop of the caller's is in the way)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _server_url() -> Iterator[str]:
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    try:
        server = PostgresServer()
    except (FileNotFoundError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        missing_service(f"no PostgreSQL: set DATABASE_URL, or install PostgreSQL ({exc})")
        return
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, on ``DATABASE_URL``'s server or a throwaway one;
    dropped at the end."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing_service("asyncpg is not installed: pip install 'waterfall-asgi[postgres]'")
    for server in _server_url():
        name = f"waterfall_test_{secrets.token_hex(6)}"
        try:
            execute(server, f'CREATE DATABASE "{name}"')
        except (OSError, TimeoutError) as exc:
            missing_service(f"PostgreSQL at DATABASE_URL is not reachable: {exc}")
        try:
            yield with_database(server, name)
        finally:
            execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(database_url: str) -> Iterator[str]:
    """The run's database, with a fresh schema for this test (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    execute(database_url, f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(database_url, schema)
    finally:
        execute(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
